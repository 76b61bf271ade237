"""Fixed-window rate limits: the limiter with a fake clock, then the hub's 429s seen by the real client."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import parse_ratelimit_headers

from monitor.localhub import LocalHub, RateLimitPolicy, write_repo
from monitor.localhub.ratelimit import FixedWindowLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_window_counts_refuses_and_reopens() -> None:
    clock = FakeClock()
    limiter = FixedWindowLimiter(RateLimitPolicy(api=3, resolvers=None, window_s=300), clock=clock)
    verdicts = [limiter.hit("api") for _ in range(4)]
    assert [v.allowed for v in verdicts] == [True, True, True, False]
    infos = [parse_ratelimit_headers(dict(v.headers)) for v in verdicts]
    assert [i.remaining for i in infos] == [2, 1, 0, 0]
    assert all((i.limit, i.window_seconds, i.resource_type) == (3, 300, "api") for i in infos)
    clock.now += 100.5
    refused = limiter.hit("api")
    assert not refused.allowed
    assert dict(refused.headers)["Retry-After"] == "200"
    clock.now += 199.5  # the window opened at 1000 closes at 1300
    assert limiter.hit("api").allowed
    assert limiter.hit("resolvers").headers == []
    assert limiter.hit("cdn").headers == []


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="window_s"):
        RateLimitPolicy(window_s=0)
    with pytest.raises(ValueError, match="api"):
        RateLimitPolicy(api=-1)
    assert RateLimitPolicy().quota("api") == 1000
    assert RateLimitPolicy().quota("other") is None


@pytest.fixture
def hub(tmp_path: Path) -> LocalHub:
    write_repo(tmp_path, "acme/r", {"config.json": "{}", "w.safetensors": b"\0" * 16})
    with LocalHub(tmp_path, rate_limit=RateLimitPolicy(api=3, resolvers=2, window_s=60)) as hub:
        yield hub


def test_headers_on_normal_answers_and_429(hub: LocalHub) -> None:
    api = HfApi(endpoint=hub.endpoint)
    answers = [httpx2.get(f"{hub.endpoint}/api/models/acme/r") for _ in range(3)]
    assert [parse_ratelimit_headers(r.headers).remaining for r in answers] == [2, 1, 0]
    assert answers[0].headers["ratelimit-policy"] == '"fixed window";"api";q=3;w=60'
    with pytest.raises(HfHubHTTPError) as err:
        api.model_info("acme/r")
    message = str(err.value)
    assert "429 Too Many Requests: you have reached your 'api' rate limit" in message
    assert "(0/3 requests remaining in current 60s window)" in message
    refused = err.value.response
    assert int(refused.headers["retry-after"]) == parse_ratelimit_headers(refused.headers).reset_in_seconds
    assert [r.status for r in hub.log] == [200, 200, 200, 429]
    hub.reset_rate_limits()
    assert httpx2.get(f"{hub.endpoint}/api/models/acme/r").status_code == 200


def test_resolvers_bucket_counts_resolve_but_not_cdn(hub: LocalHub) -> None:
    with httpx2.Client(follow_redirects=True) as client:
        first = client.get(f"{hub.endpoint}/acme/r/resolve/main/w.safetensors")
        assert first.status_code == 200
        assert first.content == b"\0" * 16
        assert client.head(f"{hub.endpoint}/acme/r/resolve/main/config.json").status_code == 200
        third = client.head(f"{hub.endpoint}/acme/r/resolve/main/config.json")
    assert third.status_code == 429
    assert parse_ratelimit_headers(third.headers).resource_type == "resolvers"
    cdn = hub.log.find(bucket="cdn")
    assert len(cdn) == 1
    assert "ratelimit" not in {k.lower() for k in first.headers}
    assert httpx2.get(f"{hub.endpoint}/api/models").status_code == 200  # api bucket untouched
