"""HuggingFaceSource against LocalHub on 127.0.0.1 with the real huggingface_hub client.

Listings (both sorts, pagination, laziness), snapshots (single-file, sharded, private, gated, by
commit), error mapping, retries, the shared rate limiter (including the retries huggingface_hub
makes inside paginated listings), bounded waits and the stop event.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import HfApi

from monitor.errors import CommitMoved, GatedRepo, HubError, NotFound, RateLimited, TransientHubError
from monitor.hubs import HubSource, RepoSnapshot
from monitor.hubs.huggingface import HuggingFaceSource, map_hf_error
from monitor.hubs.ratelimit import ARRIVAL_MARGIN_S, BucketPolicy, HubRateLimiter
from monitor.localhub import FaultAction, FaultRule, LocalHub, RateLimitPolicy, write_repo
from monitor.remote.retry import RetryPolicy
from monitor.remote.source import git_blob_sha1, sha256_of_file
from monitor.remote.transport import HttpSettings

TOKEN = "hf_test_secret_token_value"
FAST = HttpSettings(retry=RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.05, max_wait_s=5.0))


def _populate(root: Path) -> None:
    """Five repos with distinct creation and modification times (sidecar overrides)."""
    for i in range(4):
        write_repo(
            root,
            f"org{i}/model{i}",
            {"model.safetensors": b"\x00" * (1000 + i), "config.json": {"model_type": "bert", "i": i}},
            sidecar={
                "createdAt": f"2026-01-0{i + 1}T00:00:00.000Z",
                "lastModified": f"2026-02-0{i + 1}T00:00:00.000Z",
            },
        )
    # made public late: oldest creation date, newest modification
    write_repo(
        root,
        "late/public",
        {"weights.gguf": b"GGUF" + b"\x01" * 500, "README.md": "# late\n"},
        sidecar={
            "createdAt": "2022-03-02T23:29:04.000Z",
            "lastModified": "2026-03-01T00:00:00.000Z",
            "tags": ["gguf", "llama"],
            "cardData": {"base_model": ["org0/model0", "meta-llama/Llama-3.1-8B"]},
        },
    )
    write_repo(
        root,
        "shard/ed",
        {
            "model-00001-of-00002.safetensors": b"\x01" * 3000,
            "model-00002-of-00002.safetensors": b"\x02" * 2000,
            "model.safetensors.index.json": {
                "metadata": {},
                "weight_map": {"a": "model-00001-of-00002.safetensors"},
            },
        },
        sidecar={"createdAt": "2025-06-01T00:00:00.000Z", "lastModified": "2025-06-01T00:00:00.000Z"},
    )
    write_repo(
        root,
        "secret/private",
        {"model.safetensors": b"\x03" * 100},
        sidecar={
            "private": True,
            "createdAt": "2025-01-01T00:00:00.000Z",
            "lastModified": "2025-01-01T00:00:00.000Z",
        },
    )
    write_repo(
        root,
        "gate/kept",
        {"model.safetensors": b"\x04" * 100},
        sidecar={
            "gated": "manual",
            "createdAt": "2025-01-02T00:00:00.000Z",
            "lastModified": "2025-01-02T00:00:00.000Z",
        },
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hub")
    _populate(path)
    return path


@pytest.fixture(scope="module")
def hub(root: Path) -> Iterator[LocalHub]:
    with LocalHub(root, token=TOKEN, page_size=2) as server:
        yield server


@pytest.fixture
def fresh(hub: LocalHub) -> LocalHub:
    hub.faults.clear()
    hub.clear_log()
    return hub


@pytest.fixture
def source(fresh: LocalHub) -> Iterator[HuggingFaceSource]:
    with HuggingFaceSource("hf", fresh.endpoint, TOKEN, http=FAST) as src:
        yield src


def api_requests(hub: LocalHub) -> list:
    return hub.log.find(bucket="api")


# -- listings ---------------------------------------------------------------------------------


def test_implements_the_protocol(source):
    assert isinstance(source, HubSource)
    assert source.name == "hf"


def test_list_created_newest_first_with_pagination(source, fresh):
    events = list(source.list_changes(sort="created"))
    ids = [e.repo_id for e in events]
    assert ids[:4] == ["org3/model3", "org2/model2", "org1/model1", "org0/model0"]
    assert ids[-1] == "late/public"
    assert "secret/private" in ids  # the token sees private repos
    created = [e.created_at for e in events]
    assert created == sorted(created, reverse=True)
    assert all(e.hub == "hf" and e.commit is not None and len(e.commit) == 40 for e in events)
    # 8 repos, 2 per page: 4 requests, each carrying the expand fields
    pages = api_requests(fresh)
    assert len(pages) == 4
    assert "expand=sha" in pages[0].query
    assert "sort=createdAt" in pages[0].query
    assert all(r.auth for r in pages)


def test_list_modified_finds_the_late_public_repo_first(source):
    events = list(source.list_changes(sort="modified", limit=3))
    assert [e.repo_id for e in events] == ["late/public", "org3/model3", "org2/model2"]
    assert events[0].last_modified.isoformat().startswith("2026-03-01")
    assert events[0].created_at.isoformat().startswith("2022-03-02")


def test_listing_is_lazy(source, fresh):
    first = next(iter(source.list_changes(sort="created")))
    assert first.repo_id == "org3/model3"
    assert len(api_requests(fresh)) == 1


def test_listing_commit_matches_snapshot(source):
    event = next(e for e in source.list_changes(sort="created") if e.repo_id == "org1/model1")
    assert source.snapshot("org1/model1").commit == event.commit


@pytest.mark.parametrize(
    ("kwargs", "fragment"), [({"sort": "likes"}, "sort"), ({"sort": "created", "limit": 0}, "limit")]
)
def test_listing_rejects_bad_arguments(source, kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        next(iter(source.list_changes(**kwargs)))


def test_anonymous_listing_hides_private_repos(fresh):
    with HuggingFaceSource("hf", fresh.endpoint, None, http=FAST) as anon:
        ids = [e.repo_id for e in anon.list_changes(sort="created")]
    assert "secret/private" not in ids
    assert not any(r.auth for r in fresh.log)  # no cached/ambient token was sent


def test_hostile_listing_items_are_skipped(source, fresh, caplog):
    body = json.dumps(
        [
            {"_id": "1", "id": "evil/../../etc", "sha": "0" * 40},
            {"_id": "2", "id": "ok/model", "sha": "not-a-sha", "createdAt": "2026-01-01T00:00:00.000Z"},
            {"_id": "3", "id": "x\ny/z"},
        ]
    )
    fresh.faults.add(
        FaultRule(
            "GET",
            r"^/api/models$",
            FaultAction.status(200, headers={"Content-Type": "application/json"}, body=body),
            times=1,
        )
    )
    with caplog.at_level(logging.WARNING, logger="monitor.hubs.huggingface"):
        events = list(source.list_changes(sort="created"))
    assert [(e.repo_id, e.commit) for e in events] == [("ok/model", None)]
    assert "invalid id" in caplog.text


def test_unparseable_listing_is_a_hub_error(source, fresh):
    fresh.faults.add(
        FaultRule("GET", r"^/api/models$", FaultAction.status(200, body=b"<html>oops</html>"), times=1)
    )
    with pytest.raises(HubError, match="malformed answer"):
        list(source.list_changes(sort="created"))


# -- snapshots --------------------------------------------------------------------------------


def test_snapshot_single_file_repo(source, root):
    snap = source.snapshot("late/public")
    assert isinstance(snap, RepoSnapshot)
    assert snap.hub == "hf"
    assert len(snap.commit) == 40
    assert set(snap.files) == {"weights.gguf", "README.md"}
    gguf = snap.files["weights.gguf"]
    assert gguf.size == 504
    assert gguf.sha256 == sha256_of_file(root / "late/public/weights.gguf")
    readme = snap.files["README.md"]
    assert readme.sha256 is None
    assert readme.blob_id == git_blob_sha1(b"# late\n")
    assert {"gguf", "llama"} <= set(snap.tags)
    assert snap.base_models == ("org0/model0", "meta-llama/Llama-3.1-8B")
    assert snap.created_at.year == 2022
    assert snap.gated is False
    assert snap.private is False
    assert snap.url == f"{source.endpoint}/late/public/tree/{snap.commit}"
    json.dumps(snap.extra)  # evidence must be serialisable


def test_snapshot_sharded_repo(source, root):
    snap = source.snapshot("shard/ed")
    names = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ]
    assert sorted(snap.files) == names
    for name in names:
        assert snap.files[name].size == (root / "shard/ed" / name).stat().st_size
    assert snap.files[names[0]].sha256 == sha256_of_file(root / "shard/ed" / names[0])
    assert snap.files[names[1]].sha256 == sha256_of_file(root / "shard/ed" / names[1])


def test_snapshot_by_commit_and_branch(source, fresh):
    head = source.snapshot("org2/model2")
    pinned = source.snapshot("org2/model2", head.commit)
    assert pinned.commit == head.commit
    assert source.snapshot("org2/model2", "main").commit == head.commit
    assert any(f"/revision/{head.commit}" in r.path for r in api_requests(fresh))


def test_snapshot_private_and_gated(source, fresh):
    assert source.snapshot("secret/private").private is True
    gated = source.snapshot("gate/kept")
    assert gated.gated is True
    with HuggingFaceSource("hf", fresh.endpoint, None, http=FAST) as anon:
        with pytest.raises(NotFound):
            anon.snapshot("secret/private")
        assert anon.snapshot("gate/kept").gated is True  # metadata stays readable


@pytest.mark.parametrize(
    ("repo_id", "revision"),
    [("nobody/here", None), ("nobody/here", "f" * 40), ("org0/model0", "no-such-branch")],
)
def test_snapshot_not_found(source, repo_id, revision):
    with pytest.raises(NotFound):
        source.snapshot(repo_id, revision)


def test_a_pinned_commit_that_is_gone_from_an_existing_repo_is_commit_moved(tmp_path):
    """History rewritten between the listing and the scan: the hub answers ``RevisionNotFound`` for the old
    commit of a repo that still exists. That is `CommitMoved` (scan the new head), not `NotFound`."""
    write_repo(tmp_path, "moved/repo", {"config.json": {"v": 1}})
    with (
        LocalHub(tmp_path, token=TOKEN) as hub,
        HuggingFaceSource("hf", hub.endpoint, TOKEN, http=FAST) as src,
    ):
        old = src.snapshot("moved/repo").commit
        write_repo(tmp_path, "moved/repo", {"config.json": {"v": 2}})
        with pytest.raises(CommitMoved, match=f"commit {old} is gone but the repo exists") as info:
            src.snapshot("moved/repo", old)
        assert not isinstance(info.value, NotFound)
        assert src.snapshot("moved/repo").commit != old
        with pytest.raises(NotFound):  # a deleted repo is still "gone"
            src.snapshot("nobody/here", old)


@pytest.mark.parametrize(
    ("repo_id", "revision"), [("bad id", None), ("org0/model0", "../main"), ("a/b/c", None)]
)
def test_snapshot_validates_before_sending(source, fresh, repo_id, revision):
    with pytest.raises(ValueError, match=r"repo id|revision"):
        source.snapshot(repo_id, revision)
    assert len(fresh.log) == 0


def test_snapshot_skips_hostile_file_entries(source, fresh):
    body = {
        "_id": "x",
        "id": "org0/model0",
        "sha": "1" * 40,
        "siblings": [
            {"rfilename": "../../etc/passwd", "size": 10, "blobId": "2" * 40},
            {"rfilename": "neg.bin", "size": -5},
            {"rfilename": "nosize.bin"},
            {
                "rfilename": "badsha.safetensors",
                "size": 10,
                "lfs": {"size": 10, "sha256": "XYZ", "pointerSize": 1},
            },
            {
                "rfilename": "mismatch.safetensors",
                "size": 10,
                "lfs": {"size": 11, "sha256": "a" * 64, "pointerSize": 1},
            },
            {
                "rfilename": "good.safetensors",
                "size": 10,
                "blobId": "3" * 40,
                "lfs": {"size": 10, "sha256": "b" * 64, "pointerSize": 1},
            },
        ],
    }
    fresh.faults.add(
        FaultRule("GET", r"^/api/models/org0/model0", FaultAction.status(200, body=body), times=1)
    )
    snap = source.snapshot("org0/model0")
    assert list(snap.files) == ["good.safetensors"]
    assert snap.files["good.safetensors"].sha256 == "b" * 64
    reasons = {entry["path"]: entry["reason"] for entry in snap.extra["skipped_files"]}
    assert len(reasons) == 5
    assert "'..'" in reasons["'../../etc/passwd'"]


def test_snapshot_without_commit_is_a_hub_error(source, fresh):
    fresh.faults.add(
        FaultRule(
            "GET",
            r"^/api/models/org0/model0",
            FaultAction.status(200, body={"id": "org0/model0", "siblings": []}),
            times=1,
        )
    )
    with pytest.raises(HubError, match="no usable commit"):
        source.snapshot("org0/model0")


# -- retries, rate limits, bounded waits --------------------------------------------------------


def test_model_info_is_retried_on_5xx(source, fresh):
    rule = fresh.faults.add(FaultRule("GET", r"^/api/models/org1/model1", FaultAction.status(503), times=2))
    snap = source.snapshot("org1/model1")
    assert snap.repo_id == "org1/model1"
    assert rule.fired == 2
    assert len(api_requests(fresh)) == 3
    assert source.limiter.state("api").granted == 3


def test_model_info_gives_up_after_max_attempts(source, fresh):
    fresh.faults.add(FaultRule("GET", r"^/api/models/org1/model1", FaultAction.status(502)))
    with pytest.raises(TransientHubError, match="502"):
        source.snapshot("org1/model1")
    assert len(api_requests(fresh)) == FAST.retry.max_attempts


def test_model_info_transport_errors_are_transient(source, fresh):
    fresh.faults.add(FaultRule("GET", r"^/api/models/org1/model1", FaultAction.reset()))
    with pytest.raises(TransientHubError):
        source.snapshot("org1/model1")


def test_model_info_429_waits_through_the_limiter(source, fresh):
    fresh.faults.add(FaultRule("GET", r"^/api/models/org1/model1", FaultAction.rate_limited(1), times=1))
    started = time.monotonic()
    snap = source.snapshot("org1/model1")
    assert snap.repo_id == "org1/model1"
    assert 0.9 < time.monotonic() - started < 4
    state = source.limiter.state("api")
    assert state.hub_429s == 1
    assert state.waited_s >= 0.9


def test_model_info_429_beyond_the_call_budget_raises_at_once(source, fresh):
    fresh.faults.add(FaultRule("GET", r"^/api/models/org1/model1", FaultAction.rate_limited(600), times=1))
    started = time.monotonic()
    with pytest.raises(RateLimited) as info:
        source.snapshot("org1/model1")
    assert time.monotonic() - started < 2
    assert info.value.retry_after_s == pytest.approx(600, abs=2)
    # the bucket stays closed for everyone sharing the limiter
    with pytest.raises(RateLimited):
        source.snapshot("org2/model2")
    assert len(api_requests(fresh)) == 1


def test_listing_does_not_sleep_through_a_long_retry_after(source, fresh):
    """huggingface_hub would sleep Retry-After + 1 s inside list_models; our hook refuses."""
    fresh.faults.add(
        FaultRule("GET", r"^/api/models$", FaultAction.status(429, headers={"Retry-After": "3600"}), times=1)
    )
    started = time.monotonic()
    with pytest.raises(RateLimited) as info:
        list(source.list_changes(sort="created"))
    assert time.monotonic() - started < 2
    assert info.value.retry_after_s == pytest.approx(3600)
    fresh.faults.clear()
    fresh.faults.add(
        FaultRule("GET", r"^/api/models$", FaultAction.status(503, headers={"Retry-After": "900"}), times=1)
    )
    with (
        HuggingFaceSource("hf2", fresh.endpoint, TOKEN, http=FAST) as other,
        pytest.raises(TransientHubError, match="asking to wait 900"),
    ):
        list(other.list_changes(sort="created"))


def test_library_retries_inside_listings_are_counted(source, fresh):
    """http_backoff retries a 503 on its own (after 1 s); the retry still takes a limiter slot."""
    rule = fresh.faults.add(FaultRule("GET", r"^/api/models$", FaultAction.status(503), skip=1, times=1))
    events = list(source.list_changes(sort="created"))
    assert len(events) == 8
    assert rule.fired == 1
    assert source.limiter.state("api").granted == len(api_requests(fresh)) == 5


def test_our_budget_caps_listing_requests(fresh):
    limiter = HubRateLimiter({"api": BucketPolicy(3, 300.0), "resolvers": BucketPolicy(10, 300.0)}, name="hf")
    with HuggingFaceSource("hf", fresh.endpoint, TOKEN, limiter=limiter, http=FAST) as src:
        events = src.list_changes(sort="created")
        seen = [next(events).repo_id for _ in range(6)]
        with pytest.raises(RateLimited, match="'api' bucket is closed"):
            next(events)
    assert len(seen) == 6  # three pages of two
    assert len(api_requests(fresh)) == 3


def test_hub_rate_limit_headers_are_learned(root):
    policy = RateLimitPolicy(api=3, resolvers=100, window_s=300)
    with LocalHub(root, token=TOKEN, rate_limit=policy) as limited:
        with HuggingFaceSource("hf", limited.endpoint, TOKEN, http=FAST) as src:
            for _ in range(3):
                src.snapshot("org0/model0")
            state = src.limiter.state("api")
            assert state.limit == 3  # RateLimit-Policy q=3 lowered our 1000
            assert state.hub_remaining == 0
            started = time.monotonic()
            with pytest.raises(RateLimited) as info:
                src.snapshot("org0/model0")
            assert time.monotonic() - started < 1
            assert 250 < info.value.retry_after_s <= 300 + ARRIVAL_MARGIN_S
        # the 4th request was never sent: the headers of the 3rd said r=0
        assert len(limited.log.find(bucket="api")) == 3
        assert all(r.status == 200 for r in limited.log)


def test_stop_event_aborts_before_sending(fresh):
    stop = threading.Event()
    stop.set()
    with HuggingFaceSource("hf", fresh.endpoint, TOKEN, http=FAST, stop=stop) as src:
        with pytest.raises(RateLimited, match="stopping"):
            src.snapshot("org0/model0")
        with pytest.raises(RateLimited, match="stopping"):
            list(src.list_changes(sort="created"))
    assert len(fresh.log) == 0


def test_hooks_do_not_touch_other_huggingface_hub_users(source, fresh):
    before = source.limiter.state("api").granted
    HfApi(endpoint=fresh.endpoint, token=False).model_info("org0/model0")
    assert source.limiter.state("api").granted == before


# -- secrets, errors, urls ----------------------------------------------------------------------


def test_token_never_appears_in_repr_or_errors(fresh):
    with HuggingFaceSource("hf", fresh.endpoint, TOKEN, http=FAST) as src:
        assert TOKEN not in repr(src)
        assert "authenticated=True" in repr(src)
        fresh.faults.add(FaultRule("GET", r"^/api/models/org0", FaultAction.status(500)))
        with pytest.raises(TransientHubError) as info:
            src.snapshot("org0/model0")
        assert TOKEN not in str(info.value)
        assert TOKEN not in repr(info.value)


def test_commit_url_and_validation(source):
    sha = "a" * 40
    assert source.commit_url("org0/model0", sha) == f"{source.endpoint}/org0/model0/tree/{sha}"
    with pytest.raises(ValueError, match="40 lowercase hex"):
        source.commit_url("org0/model0", "main")
    snap = source.snapshot("org0/model0")
    other = RepoSnapshot(hub="elsewhere", repo_id=snap.repo_id, commit=snap.commit, files=snap.files)
    with pytest.raises(ValueError, match="cannot be read through hub"):
        source.open_files(other, budget=None)


@pytest.mark.parametrize("endpoint", ["ftp://x", "http://user:pw@127.0.0.1:1", ""])
def test_bad_endpoint(endpoint):
    with pytest.raises(ValueError, match="endpoint"):
        HuggingFaceSource("hf", endpoint, None)


def test_error_mapping_of_real_client_errors(fresh):
    api = HfApi(endpoint=fresh.endpoint, token=False)
    cases = [
        (lambda: api.model_info("nobody/here"), NotFound),
        (lambda: api.model_info("org0/model0", revision="nope"), NotFound),
        (lambda: api.hf_hub_download("gate/kept", "model.safetensors"), GatedRepo),
    ]
    for call, expected in cases:
        with pytest.raises(Exception) as info:  # noqa: PT011 - the mapping is what is tested
            call()
        mapped = map_hf_error(info.value, what="test")
        assert isinstance(mapped, expected), (info.value, mapped)
    assert isinstance(map_hf_error(KeyError("siblings"), what="t"), HubError)


def test_hooked_session_keeps_library_defaults_and_survives_recreation(source):
    from huggingface_hub.utils import close_session, get_session

    session = get_session()
    assert session.follow_redirects is True
    assert len(session.event_hooks["request"]) >= 2  # the library's own hook is kept
    close_session()  # http_backoff does this after a ConnectError
    before = source.limiter.state("api").granted
    source.snapshot("org0/model0")
    assert source.limiter.state("api").granted == before + 1
