"""The repo model: names, hidden files, commits, timelines, the state file, symlinks, sidecars, traversal."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import RevisionNotFoundError

from monitor.localhub import LocalHub, write_repo
from monitor.localhub.repos import RepoIndex, is_lfs, valid_repo_path


def _info(hub: LocalHub, repo_id: str, **kw: object) -> object:
    return HfApi(endpoint=hub.endpoint).model_info(repo_id, **kw)


@pytest.mark.parametrize(
    ("path", "ok"),
    [
        ("a.txt", True),
        ("sub/dir/a.bin", True),
        ("ü/名前.json", True),
        ("", False),
        ("/abs", False),
        ("a/../b", False),
        ("./a", False),
        ("a//b", False),
        ("a\\b", False),
        ("a\nb", False),
        ("x" * 1025, False),
    ],
)
def test_valid_repo_path(path: str, ok: bool) -> None:
    assert valid_repo_path(path) is ok


def test_lfs_classification() -> None:
    assert is_lfs("m.safetensors", 10)
    assert is_lfs("x/M.GGUF", 10)
    assert is_lfs("a.bin", 0)
    assert not is_lfs("vocab.txt", 1000)
    assert is_lfs("vocab.txt", 10 * 1024 * 1024)


def test_names_hidden_files_and_nesting(tmp_path: Path) -> None:
    write_repo(tmp_path, "acme/good", {"a/b/c.txt": "c", "config.json": "{}"}, sidecar={"likes": 1})
    (tmp_path / "acme" / "good" / ".git").mkdir()
    (tmp_path / "acme" / "good" / ".git" / "HEAD").write_text("ref")
    (tmp_path / "acme" / "good" / ".gitattributes").write_text("*")
    (tmp_path / "acme" / "bad--name").mkdir()
    (tmp_path / ".hidden-org" / "x").mkdir(parents=True)
    (tmp_path / "loose-file.txt").write_text("not a repo")
    with LocalHub(tmp_path) as hub:
        assert [m.id for m in HfApi(endpoint=hub.endpoint).list_models()] == ["acme/good"]
        assert [s.rfilename for s in _info(hub, "acme/good").siblings] == ["a/b/c.txt", "config.json"]
        assert "acme/bad--name" in hub.problems()
        r = httpx2.get(f"{hub.endpoint}/acme/good/resolve/main/.hub.json")
        assert r.status_code == 400 or r.headers.get("x-error-code") == "EntryNotFound"


def test_commit_changes_with_content_and_old_commits_vanish(tmp_path: Path) -> None:
    write_repo(tmp_path, "acme/m", {"config.json": '{"v": 1}'})
    with LocalHub(tmp_path) as hub:
        before = _info(hub, "acme/m")
        write_repo(tmp_path, "acme/m", {"config.json": '{"v": 2}'})
        after = _info(hub, "acme/m")
        assert after.sha != before.sha
        assert after.created_at == before.created_at
        assert after.last_modified >= before.last_modified
        with pytest.raises(RevisionNotFoundError):
            _info(hub, "acme/m", revision=before.sha)
        write_repo(tmp_path, "acme/m", {"config.json": '{"v": 1}'})
        assert _info(hub, "acme/m").sha == before.sha  # content-addressed: same files, same commit
    other = tmp_path / "copy"
    write_repo(other, "zzz/other", {"config.json": '{"v": 1}'})
    with LocalHub(other) as hub:
        assert _info(hub, "zzz/other").sha == before.sha


def test_first_sight_uses_file_mtimes(tmp_path: Path) -> None:
    repo = write_repo(tmp_path, "acme/old", {"a.txt": "a", "b.txt": "b"})
    os.utime(repo / "a.txt", (1_600_000_000, 1_600_000_000))
    os.utime(repo / "b.txt", (1_650_000_000, 1_650_000_000))
    with LocalHub(tmp_path) as hub:
        info = _info(hub, "acme/old")
        assert info.created_at.timestamp() == 1_600_000_000
        assert info.last_modified.timestamp() == 1_650_000_000


def test_state_survives_restart_without_rehashing(tmp_path: Path) -> None:
    repo = write_repo(tmp_path, "acme/w", {"w.safetensors": b"A" * 4096})
    with LocalHub(tmp_path) as hub:
        first = _info(hub, "acme/w", files_metadata=True)
    state = json.loads((tmp_path / ".localhub" / "state.json").read_text())
    assert state["repos"]["acme/w"]["commit"] == first.sha
    # Same size and mtime, different bytes: a restarted hub must trust its cache, not re-read the file.
    st = (repo / "w.safetensors").stat()
    (repo / "w.safetensors").write_bytes(b"B" * 4096)
    os.utime(repo / "w.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns))
    with LocalHub(tmp_path) as hub:
        again = _info(hub, "acme/w", files_metadata=True)
    assert (again.sha, again.created_at, again.siblings[0].lfs.sha256) == (
        first.sha,
        first.created_at,
        first.siblings[0].lfs.sha256,
    )
    (tmp_path / ".localhub" / "state.json").unlink()
    with LocalHub(tmp_path) as hub:
        assert _info(hub, "acme/w").sha != first.sha  # without the cache the new bytes are hashed


def test_corrupt_state_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_repo(tmp_path, "acme/m", {"config.json": "{}"})
    (tmp_path / ".localhub").mkdir()
    (tmp_path / ".localhub" / "state.json").write_text("{not json")
    with LocalHub(tmp_path) as hub:
        assert _info(hub, "acme/m").sha
    assert any(p.name.startswith("state.json.corrupt-") for p in (tmp_path / ".localhub").iterdir())
    assert json.loads((tmp_path / ".localhub" / "state.json").read_text())["version"] == 1
    assert "unreadable" in caplog.text


def test_unwritable_state_keeps_serving(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_repo(tmp_path, "acme/m", {"config.json": "{}"})
    (tmp_path / ".localhub").write_text("a file where the state folder should be")
    with LocalHub(tmp_path) as hub:
        assert _info(hub, "acme/m").sha
    assert "keeping state in memory" in caplog.text


def test_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    repo = write_repo(root, "acme/links", {"real.txt": "inside"})
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    (repo / "inner.txt").symlink_to(repo / "real.txt")
    (repo / "escape.txt").symlink_to(outside)
    (repo / "dirlink").symlink_to(repo, target_is_directory=True)
    (root / "acme" / "linked-repo").symlink_to(repo, target_is_directory=True)
    with LocalHub(root) as hub:
        names = [s.rfilename for s in _info(hub, "acme/links").siblings]
        assert names == ["inner.txt", "real.txt"]
        assert httpx2.get(f"{hub.endpoint}/acme/links/resolve/main/inner.txt").text == "inside"
        problems = hub.problems()
        assert "outside" in problems["acme/links/escape.txt"]
        assert "acme/links/dirlink" in problems
        assert "acme/linked-repo" in problems
        assert httpx2.get(f"{hub.endpoint}/api/models/acme/linked-repo").status_code == 401


def test_invalid_sidecar_withholds_the_repo(tmp_path: Path) -> None:
    write_repo(tmp_path, "acme/ok", {"config.json": "{}"})
    repo = write_repo(tmp_path, "acme/broken", {"config.json": "{}"})
    (repo / ".hub.json").write_text('{"private": "maybe"}')
    with LocalHub(tmp_path) as hub:
        assert [m.id for m in HfApi(endpoint=hub.endpoint).list_models()] == ["acme/ok"]
        r = httpx2.get(f"{hub.endpoint}/api/models/acme/broken")
        assert r.status_code == 500
        assert "private" in r.json()["error"]
        assert "acme/broken" in hub.problems()
        (repo / ".hub.json").write_text('{"private": false}')
        assert httpx2.get(f"{hub.endpoint}/api/models/acme/broken").status_code == 200


def test_repo_appears_changes_and_disappears_while_serving(tmp_path: Path) -> None:
    write_repo(tmp_path, "acme/keep", {"config.json": "{}"})
    with LocalHub(tmp_path) as hub:
        api = HfApi(endpoint=hub.endpoint)
        write_repo(tmp_path, "acme/new", {"config.json": "{}"})
        assert {m.id for m in api.list_models()} == {"acme/keep", "acme/new"}
        write_repo(tmp_path, "acme/new", {"extra.txt": "x"})
        assert {s.rfilename for s in api.model_info("acme/new").siblings} == {"config.json", "extra.txt"}
        created = api.model_info("acme/new").created_at
        for p in (tmp_path / "acme" / "new").iterdir():
            p.unlink()
        (tmp_path / "acme" / "new").rmdir()
        assert {m.id for m in api.list_models()} == {"acme/keep"}
        assert "acme/new" not in json.loads((tmp_path / ".localhub" / "state.json").read_text())["repos"]
        write_repo(tmp_path, "acme/new", {"config.json": "{}"})
        assert api.model_info("acme/new").created_at >= created


def test_index_is_usable_alone(tmp_path: Path) -> None:
    write_repo(tmp_path, "acme/m", {"big.txt": b"x" * 100})
    index = RepoIndex(tmp_path)
    (repo,) = index.scan()
    f = repo.files["big.txt"]
    assert f.sha256 is None
    assert repo.directories() == []
    assert index.repo("acme/missing") is None
    assert index.repo("not a repo id") is None


def _raw_get(hub: LocalHub, target: str) -> tuple[int, bytes]:
    """Send a request line exactly as written (no client-side normalisation of dot segments)."""
    host, port = hub.endpoint.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


def test_traversal_attempts_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_repo(root, "acme/m", {"config.json": "{}"})
    (tmp_path / "secret.txt").write_text("TOPSECRET")
    with LocalHub(root) as hub:
        for target in [
            "/acme/m/resolve/main/../../../secret.txt",
            "/acme/m/resolve/main/%2e%2e/%2e%2e/%2e%2e/secret.txt",
            "/acme/m/resolve/main/..%2f..%2f..%2fsecret.txt",
            "/acme/m/resolve/main//etc/passwd",
            "/acme/m/resolve/main/sub%5c..%5csecret.txt",
            "/acme/..%2f..%2fsecret.txt/resolve/main/x",
            "/api/models/acme/m/tree/main/..%2f..",
            "/cdn/..%2f..%2fsecret.txt?exp=1&sig=x",
        ]:
            status, body = _raw_get(hub, target)
            assert status in (400, 401, 403, 404), target
            assert b"TOPSECRET" not in body
            assert b"root:" not in body
