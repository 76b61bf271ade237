"""LocalHub against the real huggingface_hub 2.4.0 client: listings, info, trees, downloads, errors."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import httpx2
import numpy as np
import pytest
from huggingface_hub import (
    HfApi,
    HfFileSystem,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
)
from huggingface_hub.errors import (
    BadRequestError,
    DisabledRepoError,
    GatedRepoError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors.numpy import save

from monitor.localhub import LocalHub, write_repo
from monitor.localhub.modelinfo import LIST_DEFAULT_FIELDS
from monitor.remote.source import git_blob_sha1

TOKEN = "hf_localhub_test_token"
BERT = "acme/tiny-bert"
GGUF = "beta/smol-gguf"


def _tiny_safetensors(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return save({"w": rng.standard_normal((4, 8), dtype=np.float32)}, metadata={"format": "pt"})


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path, smollm_gguf: Path) -> Path:
    root = tmp_path_factory.mktemp("hub")
    names = ["model.safetensors", "config.json", "README.md", "vocab.txt", "tokenizer_config.json"]
    write_repo(
        root,
        BERT,
        {n: minilm_dir / n for n in names}
        | {"1_Pooling/config.json": minilm_dir / "1_Pooling" / "config.json"},
    )
    write_repo(
        root, GGUF, {smollm_gguf.name: smollm_gguf, "README.md": "---\nbase_model: acme/tiny-bert\n---\n"}
    )
    write_repo(
        root, "acme/private-one", {"model.safetensors": _tiny_safetensors(1)}, sidecar={"private": True}
    )
    write_repo(
        root,
        "acme/gated-one",
        {"model.safetensors": _tiny_safetensors(2), "config.json": "{}"},
        sidecar={"gated": "manual"},
    )
    write_repo(root, "acme/disabled-one", {"config.json": "{}"}, sidecar={"disabled": True})
    write_repo(
        root,
        "zeta/late-public",
        {"model.safetensors": _tiny_safetensors(3)},
        sidecar={"createdAt": "2023-01-01T00:00:00Z", "lastModified": "2030-01-01T00:00:00Z"},
    )
    return root


@pytest.fixture(scope="module")
def hub(root: Path) -> LocalHub:
    with LocalHub(root, token=TOKEN) as hub:
        yield hub


@pytest.fixture
def api(hub: LocalHub) -> HfApi:
    hub.clear_log()
    return HfApi(endpoint=hub.endpoint, token=TOKEN)


@pytest.fixture
def anon(hub: LocalHub) -> HfApi:
    return HfApi(endpoint=hub.endpoint, token=False)


# -- listings --------------------------------------------------------------------------------------


def test_list_models_sorted_descending_with_expand(api: HfApi, hub: LocalHub) -> None:
    models = list(
        api.list_models(sort="created_at", expand=["createdAt", "sha", "safetensors", "gguf", "private"])
    )
    created = [m.created_at for m in models]
    assert created == sorted(created, reverse=True)
    by_id = {m.id: m for m in models}
    assert by_id["zeta/late-public"].created_at.year == 2023
    assert models[-1].id == "zeta/late-public"
    assert by_id[BERT].safetensors.total == 22_713_728
    assert by_id[BERT].safetensors.parameters == {"F32": 22_713_216, "I64": 512}
    assert by_id[GGUF].gguf["total"] == 134_515_008
    assert by_id[GGUF].gguf["architecture"] == "llama"
    assert by_id[GGUF].gguf["context_length"] == 8192
    assert re.fullmatch(r"[0-9a-f]{40}", by_id[BERT].sha)
    assert by_id[BERT].sha == api.model_info(BERT).sha
    assert by_id["acme/private-one"].private is True
    assert models[0].likes is None  # expand returns only the listed keys


def test_list_models_last_modified_puts_late_public_repo_first(api: HfApi) -> None:
    models = list(api.list_models(sort="last_modified", expand=["lastModified", "createdAt"]))
    assert models[0].id == "zeta/late-public"
    assert models[0].created_at < models[0].last_modified


def test_list_item_default_fields_and_request_shape(hub: LocalHub, api: HfApi) -> None:
    r = httpx2.get(f"{hub.endpoint}/api/models", params={"sort": "createdAt"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    item = next(i for i in r.json() if i["id"] == BERT)
    assert set(item) == set(LIST_DEFAULT_FIELDS)
    assert item["modelId"] == BERT
    assert "safetensors" in item["tags"]
    assert item["library_name"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", item["createdAt"])
    list(api.list_models(sort="created_at", limit=2, expand=["sha"]))
    assert hub.log[-1].query == "sort=createdAt&limit=2&expand=sha"


def test_private_repos_listed_only_with_token(api: HfApi, anon: HfApi) -> None:
    assert "acme/private-one" in {m.id for m in api.list_models()}
    assert "acme/private-one" not in {m.id for m in anon.list_models()}


def test_search_author_filter_full(api: HfApi) -> None:
    assert {m.id for m in api.list_models(author="beta")} == {GGUF}
    assert {m.id for m in api.list_models(search="TINY")} == {BERT}
    assert {m.id for m in api.list_models(filter=["gguf", "base_model:acme/tiny-bert"])} == {GGUF}
    full = next(iter(api.list_models(search="smol", full=True)))
    assert [s.rfilename for s in full.siblings] == ["README.md", "SmolLM2-135M-Instruct.Q4_1.gguf"]
    assert full.siblings[0].size is None  # full siblings carry names only, as on the Hub


def test_invalid_expand_sort_and_cursor_are_400(hub: LocalHub, api: HfApi) -> None:
    with pytest.raises(BadRequestError):
        list(api.list_models(expand=["notAField"]))
    assert httpx2.get(f"{hub.endpoint}/api/models", params={"sort": "name"}).status_code == 400
    bad = httpx2.get(f"{hub.endpoint}/api/models", params={"cursor": "not-a-cursor"})
    assert bad.status_code == 400
    assert bad.json()["error"]


def test_pagination_while_repos_are_created(tmp_path: Path) -> None:
    for i in range(10):
        write_repo(
            tmp_path,
            f"org/m{i:02d}",
            {"config.json": f'{{"i": {i}}}'},
            sidecar={"createdAt": f"2024-01-{i + 1:02d}T00:00:00Z"},
        )
    with LocalHub(tmp_path, page_size=3) as hub:
        api = HfApi(endpoint=hub.endpoint)
        models = api.list_models(sort="created_at", expand=["createdAt"])
        first = [next(models).id for _ in range(3)]
        # New repos appear while the client pages: newer ones, and one whose createdAt ties a seen one.
        for j in range(4):
            write_repo(tmp_path, f"new/n{j}", {"config.json": "{}"})
        write_repo(tmp_path, "org/m08b", {"config.json": "{}"}, sidecar={"createdAt": "2024-01-09T00:00:00Z"})
        rest = [m.id for m in models]
        seen = first + rest
        assert len(seen) == len(set(seen))
        expected = [f"org/m{i:02d}" for i in range(9, -1, -1)]
        assert [s for s in seen if s != "org/m08b"] == expected  # no gaps, no duplicates, same order
        pages = hub.log.find(r"^/api/models$")
        assert len(pages) == 4
        assert all("cursor=" in p.query for p in pages[1:])
        assert all("expand=createdAt" in p.query and "sort=createdAt" in p.query for p in pages)
        # A fresh listing shows the new repos first.
        assert next(iter(api.list_models(sort="created_at"))).id.startswith("new/")


def test_limit_caps_pages_and_client_stops(tmp_path: Path) -> None:
    for i in range(7):
        write_repo(tmp_path, f"org/m{i}", {"config.json": "{}"})
    with LocalHub(tmp_path, page_size=2) as hub:
        api = HfApi(endpoint=hub.endpoint)
        assert len(list(api.list_models(limit=5))) == 5
        assert len(hub.log.find(r"^/api/models$")) == 3
        hub.clear_log()
        r = httpx2.get(f"{hub.endpoint}/api/models", params={"limit": 1})
        assert len(r.json()) == 1
        assert 'rel="next"' in r.headers["link"]
        assert r.headers["link"].startswith(f"<{hub.endpoint}/api/models?limit=1&cursor=")


# -- model info, trees, paths-info -----------------------------------------------------------------


def test_model_info_files_metadata(api: HfApi, root: Path) -> None:
    info = api.model_info(BERT, files_metadata=True, securityStatus=True)
    siblings = {s.rfilename: s for s in info.siblings}
    assert set(siblings) == {
        "1_Pooling/config.json",
        "README.md",
        "config.json",
        "model.safetensors",
        "tokenizer_config.json",
        "vocab.txt",
    }
    weights = root / BERT / "model.safetensors"
    st = siblings["model.safetensors"]
    assert st.size == weights.stat().st_size == st.lfs.size
    assert st.lfs.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{st.lfs.sha256}\nsize {st.size}\n"
    assert st.lfs.pointer_size == len(pointer)
    assert st.blob_id == git_blob_sha1(pointer.encode())
    vocab = siblings["vocab.txt"]
    assert vocab.lfs is None
    assert vocab.blob_id == git_blob_sha1((root / BERT / "vocab.txt").read_bytes())
    assert info.config == {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "tokenizer_config": info.config["tokenizer_config"],
    }
    assert info.card_data is not None
    assert info.library_name == "sentence-transformers"
    assert info.security_repo_status == {"scansDone": True, "filesWithIssues": []}
    assert info.author == "acme"
    assert info.used_storage == sum(s.size for s in info.siblings)
    pinned = api.model_info(BERT, revision=info.sha)
    assert pinned.sha == info.sha
    assert pinned.siblings[0].size is None
    with pytest.raises(RevisionNotFoundError):
        api.model_info(BERT, revision="a" * 40)
    with pytest.raises(RevisionNotFoundError):
        api.model_info(BERT, revision="refs/pr/1")


def test_tree_files_and_paths_info(api: HfApi) -> None:
    assert set(api.list_repo_files(BERT)) >= {"1_Pooling/config.json", "model.safetensors"}
    top = list(api.list_repo_tree(BERT))
    assert [e.path for e in top][:2] == ["1_Pooling", "README.md"]  # git order: folder sorts as "1_Pooling/"
    assert type(top[0]).__name__ == "RepoFolder"
    assert re.fullmatch(r"[0-9a-f]{40}", top[0].tree_id)
    sub = list(api.list_repo_tree(BERT, path_in_repo="1_Pooling", expand=True))
    assert [e.path for e in sub] == ["1_Pooling/config.json"]
    assert sub[0].last_commit.oid == api.model_info(BERT).sha
    assert sub[0].security.safe
    with pytest.raises(RemoteEntryNotFoundError):
        list(api.list_repo_tree(BERT, path_in_repo="nope"))
    infos = api.get_paths_info(BERT, ["config.json", "1_Pooling", "missing.bin", "model.safetensors"])
    assert [i.path for i in infos] == ["config.json", "1_Pooling", "model.safetensors"]
    assert infos[2].lfs.sha256
    assert infos[1].tree_id == top[0].tree_id


def test_tree_pagination(tmp_path: Path) -> None:
    write_repo(tmp_path, "org/many", {f"d{i % 3}/f{i:02d}.txt": str(i) for i in range(20)})
    with LocalHub(tmp_path, tree_page_size=4) as hub:
        entries = list(HfApi(endpoint=hub.endpoint).list_repo_tree("org/many", recursive=True))
        assert len(entries) == 23
        assert len({e.path for e in entries}) == 23
        assert len(hub.log.find("/tree/")) == 6


# -- downloads and ranged reads --------------------------------------------------------------------


def test_hf_hub_download_through_cdn_without_leaking_auth(
    hub: LocalHub, api: HfApi, root: Path, tmp_path: Path
) -> None:
    path = hf_hub_download(BERT, "model.safetensors", endpoint=hub.endpoint, token=TOKEN, cache_dir=tmp_path)
    assert Path(path).read_bytes() == (root / BERT / "model.safetensors").read_bytes()
    small = hf_hub_download(BERT, "config.json", endpoint=hub.endpoint, token=TOKEN, cache_dir=tmp_path)
    assert Path(small).read_bytes() == (root / BERT / "config.json").read_bytes()
    resolve = hub.log.find(r"/resolve/main/model\.safetensors$")
    assert resolve
    assert all(r.status == 302 and r.auth and r.bucket == "resolvers" for r in resolve)
    cdn = hub.log.find(bucket="cdn")
    assert cdn
    assert all(not r.auth and r.host.startswith("localhost:") for r in cdn)
    assert cdn[-1].status == 200
    assert cdn[-1].bytes_sent == (root / BERT / "model.safetensors").stat().st_size
    assert hub.log.find(r"/resolve/main/config\.json$", method="GET")[-1].status == 200


def test_get_hf_file_metadata(hub: LocalHub, api: HfApi) -> None:
    info = api.model_info(BERT, files_metadata=True)
    lfs = next(s for s in info.siblings if s.rfilename == "model.safetensors")
    meta = get_hf_file_metadata(hf_hub_url(BERT, "model.safetensors", endpoint=hub.endpoint), token=TOKEN)
    assert (meta.commit_hash, meta.etag, meta.size) == (info.sha, lfs.lfs.sha256, lfs.size)
    assert meta.location.startswith(f"{hub.cdn_origin}/cdn/{lfs.lfs.sha256}?exp=")
    small = get_hf_file_metadata(hf_hub_url(BERT, "config.json", endpoint=hub.endpoint), token=TOKEN)
    assert small.etag == next(s for s in info.siblings if s.rfilename == "config.json").blob_id
    assert small.location.startswith(hub.endpoint)


def test_safetensors_metadata_single_and_parse(hub: LocalHub, api: HfApi) -> None:
    meta = api.get_safetensors_metadata(BERT)
    assert not meta.sharded
    assert meta.parameter_count == {"F32": 22_713_216, "I64": 512}
    file_meta = api.parse_safetensors_file_metadata(BERT, "model.safetensors")
    assert file_meta.tensors["embeddings.word_embeddings.weight"].shape == [30522, 384]
    ranged = [r for r in hub.log.find(bucket="cdn") if r.range == "bytes=0-100000"]
    assert ranged
    assert all(r.status == 206 and r.bytes_sent == 100_001 for r in ranged)


def test_hffilesystem_ranged_read(hub: LocalHub, root: Path, smollm_gguf: Path) -> None:
    fs = HfFileSystem(endpoint=hub.endpoint, token=TOKEN)
    with fs.open(f"{GGUF}/{smollm_gguf.name}", "rb", block_size=4096) as fh:
        fh.seek(800_000)
        data = fh.read(64)
    with open(root / GGUF / smollm_gguf.name, "rb") as local:
        local.seek(800_000)
        assert data == local.read(64)
    ranged = [r for r in hub.log.find(bucket="cdn") if (r.range or "").startswith("bytes=800000-")]
    assert len(ranged) == 1
    assert ranged[0].status == 206
    first, last = map(int, ranged[0].range.removeprefix("bytes=").split("-"))
    assert ranged[0].bytes_sent == last - first + 1 < 1_000_000


def test_snapshot_download_filesystem_and_existence_checks(hub: LocalHub, api: HfApi, tmp_path: Path) -> None:
    folder = Path(snapshot_download(BERT, endpoint=hub.endpoint, token=TOKEN, cache_dir=tmp_path))
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == sorted(
        s.rfilename for s in api.model_info(BERT).siblings
    )
    fs = HfFileSystem(endpoint=hub.endpoint, token=TOKEN)
    assert fs.info(f"{BERT}/1_Pooling")["type"] == "directory"
    assert fs.info(f"{BERT}/model.safetensors")["size"] == 90_868_376
    assert fs.glob(f"{BERT}/**/config.json") == [f"{BERT}/1_Pooling/config.json", f"{BERT}/config.json"]
    assert api.repo_exists(BERT)
    assert not api.repo_exists("acme/nope")
    assert api.revision_exists(BERT, "main")
    assert not api.revision_exists(BERT, "dev")


# -- access and typed errors -----------------------------------------------------------------------


def test_typed_errors(hub: LocalHub, api: HfApi, anon: HfApi, tmp_path: Path) -> None:
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("acme/does-not-exist")
    with pytest.raises(RepositoryNotFoundError):
        anon.model_info("acme/private-one")
    assert api.model_info("acme/private-one").private is True
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(BERT, "missing.bin", endpoint=hub.endpoint, token=TOKEN, cache_dir=tmp_path)
    assert not api.file_exists(BERT, "missing.bin")
    assert api.file_exists(BERT, "config.json")
    with pytest.raises(DisabledRepoError):
        api.model_info("acme/disabled-one")
    wrong = HfApi(endpoint=hub.endpoint, token="hf_wrong")
    with pytest.raises(HfHubHTTPError, match="Invalid credentials"):
        wrong.model_info(BERT)


def test_missing_repo_status_depends_on_auth(hub: LocalHub) -> None:
    anonymous = httpx2.get(f"{hub.endpoint}/api/models/acme/nope")
    authed = httpx2.get(f"{hub.endpoint}/api/models/acme/nope", headers={"authorization": f"Bearer {TOKEN}"})
    assert (anonymous.status_code, authed.status_code) == (401, 404)
    assert anonymous.headers["x-error-code"] == authed.headers["x-error-code"] == "RepoNotFound"
    missing = httpx2.head(f"{hub.endpoint}/{BERT}/resolve/main/nope.txt")
    assert missing.status_code == 404
    assert missing.headers["x-error-code"] == "EntryNotFound"
    assert re.fullmatch(r"[0-9a-f]{40}", missing.headers["x-repo-commit"])


def test_gated_repo_metadata_public_files_need_token(hub: LocalHub, anon: HfApi, tmp_path: Path) -> None:
    info = anon.model_info("acme/gated-one")
    assert info.gated == "manual"
    assert info.siblings
    with pytest.raises(GatedRepoError):
        hf_hub_download(
            "acme/gated-one", "config.json", endpoint=hub.endpoint, token=False, cache_dir=tmp_path
        )
    with pytest.raises(GatedRepoError):
        anon.get_safetensors_metadata("acme/gated-one")
    path = hf_hub_download(
        "acme/gated-one", "config.json", endpoint=hub.endpoint, token=TOKEN, cache_dir=tmp_path
    )
    assert Path(path).read_text() == "{}"


def test_agent_harnesses_and_unknown_routes(hub: LocalHub) -> None:
    assert httpx2.get(f"{hub.endpoint}/api/agent-harnesses").json() == {
        "standardEnvVars": [],
        "harnesses": {},
    }
    assert httpx2.get(f"{hub.endpoint}/api/spaces").status_code == 404
    assert httpx2.post(f"{hub.endpoint}/api/models").status_code == 405
    assert httpx2.delete(f"{hub.endpoint}/{BERT}/resolve/main/config.json").status_code == 405


def test_public_surface() -> None:
    import types

    import monitor.localhub as pkg

    public = {
        n for n, v in vars(pkg).items() if not n.startswith("_") and not isinstance(v, types.ModuleType)
    }
    assert set(pkg.__all__) == public
