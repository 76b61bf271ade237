"""Fault rules: selection semantics, then every action over real HTTP (httpx2 and huggingface_hub)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import parse_ratelimit_headers

from monitor.localhub import FaultAction, FaultRule, FaultSet, LocalHub, write_repo

REPO = "acme/r"


# -- rule selection --------------------------------------------------------------------------------


def test_rules_apply_in_order_with_times_and_skip() -> None:
    faults = FaultSet()
    first = faults.add(FaultRule("GET", r"/resolve/", FaultAction.status(503), times=2, skip=1))
    second = faults.add(FaultRule(None, r"/resolve/", FaultAction.reset()))
    kinds = [faults.decide("GET", "/a/b/resolve/main/x", has_range=False).action for _ in range(4)]
    assert [k.kind if k else None for k in kinds] == ["reset", "status", "status", "reset"]
    assert (first.matched, first.fired, first.exhausted) == (4, 2, True)
    assert second.fired == 2
    assert faults.decide("HEAD", "/api/models", has_range=False).action is None


def test_delay_composes_with_a_later_action() -> None:
    faults = FaultSet()
    faults.add(FaultRule(None, "x", FaultAction.delay(0.25), name="slow"))
    faults.add(FaultRule(None, "x", FaultAction.truncate(3)))
    decision = faults.decide("GET", "/x", has_range=False)
    assert decision.delays == (0.25,)
    assert decision.action.kind == "truncate"
    assert decision.names == ("slow", "truncate")


def test_probability_is_deterministic_per_seed() -> None:
    def pattern(seed: int) -> list[bool]:
        faults = FaultSet()
        faults.add(FaultRule(None, ".", FaultAction.reset(), probability=0.3, seed=seed))
        return [faults.decide("GET", "/p", has_range=False).action is not None for _ in range(200)]

    assert pattern(7) == pattern(7)
    assert pattern(7) != pattern(8)
    assert 30 < sum(pattern(7)) < 90


def test_range_condition_and_validation() -> None:
    faults = FaultSet()
    rule = faults.add(FaultRule("GET", "/cdn/", FaultAction.ignore_range(), match_range=True))
    assert faults.decide("GET", "/cdn/abc", has_range=False).action is None
    assert faults.decide("GET", "/cdn/abc", has_range=True).action.kind == "ignore_range"
    assert rule.matched == 1
    faults.clear()
    assert faults.rules == []
    with pytest.raises(ValueError, match="probability"):
        FaultRule(None, ".", FaultAction.reset(), probability=1.5)
    with pytest.raises(ValueError, match="status"):
        FaultAction.status(42)
    with pytest.raises(ValueError, match="40 lowercase hex"):
        FaultAction.commit_moved("xyz")


# -- over HTTP -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> LocalHub:
    root = tmp_path_factory.mktemp("hub")
    data = os.urandom(2_000_000)
    write_repo(root, REPO, {"model.dat": data, "config.json": '{"a": 1}'})
    with LocalHub(root) as hub:
        hub.data = data  # type: ignore[attr-defined]
        yield hub


@pytest.fixture(autouse=True)
def _clean(hub: LocalHub) -> None:
    hub.faults.clear()
    hub.clear_log()


def _url(hub: LocalHub, path: str = "config.json") -> str:
    return f"{hub.endpoint}/{REPO}/resolve/main/{path}"


def test_status_fires_times_then_passes(hub: LocalHub) -> None:
    rule = hub.faults.add(FaultRule("GET", r"/config\.json$", FaultAction.status(503), times=1))
    first, second = httpx2.get(_url(hub)), httpx2.get(_url(hub))
    assert (first.status_code, second.status_code) == (503, 200)
    assert first.json()["error"].startswith("Injected fault")
    assert rule.fired == 1
    assert [r.fault for r in hub.log] == ["status", None]


def test_status_with_custom_body_and_headers(hub: LocalHub) -> None:
    hub.faults.add(
        FaultRule(None, "config", FaultAction.status(502, headers={"X-Test": "1"}, body="bad gateway"))
    )
    r = httpx2.get(_url(hub))
    assert r.status_code == 502
    assert r.text == "bad gateway"
    assert r.headers["x-test"] == "1"


def test_rate_limited_is_parsed_and_retried_by_listings(hub: LocalHub) -> None:
    hub.faults.add(FaultRule("GET", r"^/api/models$", FaultAction.rate_limited(0, quota=500), times=1))
    r = httpx2.get(f"{hub.endpoint}/api/models")
    info = parse_ratelimit_headers(r.headers)
    assert r.status_code == 429
    assert r.headers["retry-after"] == "0"
    assert (info.resource_type, info.remaining, info.reset_in_seconds, info.limit, info.window_seconds) == (
        "api",
        0,
        0,
        500,
        300,
    )
    hub.faults.add(FaultRule("GET", r"^/api/models$", FaultAction.rate_limited(0), times=1))
    assert [m.id for m in HfApi(endpoint=hub.endpoint).list_models()] == [REPO]  # http_backoff retried
    assert [r.status for r in hub.log.find(r"^/api/models$")] == [429, 429, 200]
    hub.faults.add(FaultRule("GET", r"^/api/models/", FaultAction.rate_limited(3), times=1))
    with pytest.raises(HfHubHTTPError, match="reached your 'api' rate limit"):
        HfApi(endpoint=hub.endpoint).model_info(REPO)  # model_info does not retry


def test_delay(hub: LocalHub) -> None:
    hub.faults.add(FaultRule("GET", "config", FaultAction.delay(0.3), times=1))
    started = time.monotonic()
    assert httpx2.get(_url(hub)).status_code == 200
    assert time.monotonic() - started >= 0.3


def test_reset_closes_without_answer(hub: LocalHub) -> None:
    hub.faults.add(FaultRule("GET", "config", FaultAction.reset(), times=1))
    with pytest.raises(httpx2.TransportError):
        httpx2.get(_url(hub))
    assert hub.log[-1].status == 0
    assert hub.log[-1].fault == "reset"
    assert httpx2.get(_url(hub)).status_code == 200


def test_truncate_sends_headers_then_short_body(hub: LocalHub) -> None:
    hub.faults.add(FaultRule("GET", "model", FaultAction.truncate(1000), times=1))
    with pytest.raises(httpx2.RemoteProtocolError):
        httpx2.get(_url(hub, "model.dat"))
    record = hub.log[-1]
    assert record.status == 200
    assert record.bytes_sent == 1000


def test_download_resumes_after_truncated_cdn_body(hub: LocalHub, tmp_path: Path) -> None:
    hub.faults.add(FaultRule("GET", "^/cdn/", FaultAction.truncate(500_000), times=1))
    write_repo(hub.root, "acme/lfs", {"w.safetensors": hub.data})  # type: ignore[attr-defined]
    path = hf_hub_download("acme/lfs", "w.safetensors", endpoint=hub.endpoint, cache_dir=tmp_path)
    assert Path(path).read_bytes() == hub.data  # type: ignore[attr-defined]
    cdn = hub.log.find(bucket="cdn")
    # The client buffers 10 MB chunks, so nothing of the cut body reached disk: it starts over.
    assert [(r.status, r.range, r.bytes_sent) for r in cdn] == [(200, None, 500_000), (200, None, 2_000_000)]


def test_wrong_content_range(hub: LocalHub) -> None:
    hub.faults.add(FaultRule("GET", "model", FaultAction.wrong_content_range(shift=4)))
    r = httpx2.get(_url(hub, "model.dat"), headers={"Range": "bytes=100-199"})
    assert r.status_code == 206
    assert r.headers["content-range"] == "bytes 104-203/2000000"
    assert r.content == hub.data[100:200]  # type: ignore[attr-defined]


def test_ignore_range(hub: LocalHub) -> None:
    hub.faults.add(FaultRule("GET", "model", FaultAction.ignore_range(), match_range=True))
    r = httpx2.get(_url(hub, "model.dat"), headers={"Range": "bytes=0-9"})
    assert r.status_code == 200
    assert len(r.content) == 2_000_000
    assert "content-range" not in r.headers


def test_commit_moved(hub: LocalHub) -> None:
    real = HfApi(endpoint=hub.endpoint).model_info(REPO).sha
    hub.faults.add(FaultRule("HEAD", "config", FaultAction.commit_moved()))
    meta = get_hf_file_metadata(hf_hub_url(REPO, "config.json", endpoint=hub.endpoint))
    assert meta.commit_hash != real
    assert len(meta.commit_hash) == 40
    assert httpx2.get(_url(hub)).headers["x-repo-commit"] == real  # GET not matched


def test_not_found_mid_read(hub: LocalHub) -> None:
    hub.faults.add(FaultRule("GET", "model", FaultAction.status(404), skip=2, match_range=True))
    codes = [
        httpx2.get(_url(hub, "model.dat"), headers={"Range": f"bytes={i}-{i}"}).status_code for i in range(4)
    ]
    assert codes == [206, 206, 404, 404]
