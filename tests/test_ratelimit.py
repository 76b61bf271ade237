"""HubRateLimiter: a sliding window, learning from hub headers, bounded and interruptible waits (the history
shared between processes is tested in ``test_ratestate.py``).

Every request counts for the window plus `ARRIVAL_MARGIN_S` (1 s), hence the "+ 1" in the waits below."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.errors import RateLimited
from monitor.hubs.ratelimit import (
    ANONYMOUS_LIMITS,
    ARRIVAL_MARGIN_S,
    DEFAULT_429_WAIT_S,
    MAX_HUB_WAIT_S,
    TOKEN_LIMITS,
    BucketPolicy,
    HubRateLimiter,
    SystemClock,
    bucket_for_url,
    retry_after_from_headers,
)


class FakeClock:
    """Monotonic time that only moves when someone sleeps (or the test advances it)."""

    def __init__(self) -> None:
        self.t = 1_000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.t

    def sleep(self, seconds: float, stop: threading.Event | None) -> bool:
        if stop is not None and stop.is_set():
            return True
        self.sleeps.append(seconds)
        self.t += seconds
        return False

    def advance(self, seconds: float) -> None:
        self.t += seconds


def limiter(api: int = 3, resolvers: int = 5, window: float = 300.0) -> tuple[HubRateLimiter, FakeClock]:
    clock = FakeClock()
    lim = HubRateLimiter(
        {"api": BucketPolicy(api, window), "resolvers": BucketPolicy(resolvers, window)},
        name="hf",
        clock=clock,
    )
    return lim, clock


def test_defaults_follow_the_documented_hub_limits():
    anon = HubRateLimiter.default(authenticated=False)
    token = HubRateLimiter.default(authenticated=True, resolvers=4000)
    assert anon.state("api").limit == ANONYMOUS_LIMITS["api"] == 500
    assert anon.state("resolvers").limit == 3000
    assert token.state("api").limit == TOKEN_LIMITS["api"] == 1000
    assert token.state("resolvers").limit == 4000
    assert token.state("api").window_s == 300
    assert "api=1000/300s" in repr(token)


@pytest.mark.parametrize(("limit", "window"), [(0, 300), (-1, 300), (1, 0), (1, float("inf")), (1.5, 300)])
def test_bad_policies_rejected(limit, window):
    with pytest.raises(ValueError, match="rate"):
        BucketPolicy(limit, window)


def test_grants_up_to_the_limit_then_refuses_without_waiting():
    lim, clock = limiter(api=3)
    for _ in range(3):
        assert lim.acquire("api", max_wait_s=0) == 0.0
    clock.advance(100)
    with pytest.raises(
        RateLimited, match=r"'api' bucket is closed for 201.0 s more \(budget 3 per 300 s, 3 used\)"
    ) as info:
        lim.acquire("api", max_wait_s=10)
    assert info.value.retry_after_s == pytest.approx(201)
    assert clock.sleeps == []
    state = lim.state("api")
    assert (state.used, state.granted, state.refused) == (3, 3, 1)
    # the other bucket is independent
    assert lim.acquire("resolvers", max_wait_s=0) == 0.0


def test_waits_for_the_next_window_when_allowed():
    lim, clock = limiter(api=2)
    lim.acquire("api", max_wait_s=0)
    lim.acquire("api", max_wait_s=0)
    clock.advance(250)
    assert lim.acquire("api", max_wait_s=60) == pytest.approx(51)
    assert clock.sleeps == [pytest.approx(51)]
    state = lim.state("api")
    assert state.used == 1
    assert state.resets_in_s == pytest.approx(301)
    assert state.waited_s == pytest.approx(51)


def test_window_rolls_over():
    lim, clock = limiter(api=1, window=10)
    lim.acquire("api", max_wait_s=0)
    clock.advance(10)
    with pytest.raises(RateLimited):  # still inside window + margin
        lim.acquire("api", max_wait_s=0)
    clock.advance(1)
    lim.acquire("api", max_wait_s=0)
    assert lim.state("api").granted == 2


def test_unknown_bucket_is_not_limited():
    lim, _ = limiter(api=1)
    for _ in range(10):
        assert lim.acquire("pages", max_wait_s=0) == 0.0
    with pytest.raises(KeyError):
        lim.state("pages")


def test_ratelimit_header_with_r0_closes_the_bucket_until_reset():
    lim, _ = limiter(api=100)
    lim.acquire("api", max_wait_s=0)
    lim.observe("api", {"RateLimit": '"api";r=0;t=42'}, status=200)
    with pytest.raises(RateLimited) as info:
        lim.acquire("api", max_wait_s=5)
    assert info.value.retry_after_s == pytest.approx(42)
    assert lim.acquire("api", max_wait_s=60) == pytest.approx(42)


def test_policy_header_can_only_lower_the_limit():
    lim, _ = limiter(api=100)
    lim.observe(
        "api",
        {"RateLimit": '"api";r=19;t=200', "RateLimit-Policy": '"fixed window";"api";q=20;w=300'},
        status=200,
    )
    state = lim.state("api")
    assert state.limit == 20
    assert state.hub_remaining == 19
    lim.observe(
        "api",
        {"RateLimit": '"api";r=999;t=200', "RateLimit-Policy": '"fixed window";"api";q=1000;w=600'},
        status=200,
    )
    assert lim.state("api").limit == 20
    assert lim.state("api").window_s == 600  # a longer hub window is adopted


def test_hub_remaining_covers_requests_we_cannot_see():
    lim, clock = limiter(api=10)
    for _ in range(6):
        lim.acquire("api", max_wait_s=0)
    # another process on the same IP used most of the hub's quota: 1 left, reset in 100 s
    lim.observe(
        "api",
        {"RateLimit": '"api";r=1;t=100', "RateLimit-Policy": '"fixed window";"api";q=10;w=300'},
        status=200,
    )
    lim.acquire("api", max_wait_s=0)
    with pytest.raises(RateLimited) as info:
        lim.acquire("api", max_wait_s=0)
    assert info.value.retry_after_s == pytest.approx(100)
    clock.advance(100)
    # the hub's window reset; our own window (7 of 10 used) still caps us
    for _ in range(3):
        lim.acquire("api", max_wait_s=0)
    with pytest.raises(RateLimited) as info:
        lim.acquire("api", max_wait_s=0)
    assert info.value.retry_after_s == pytest.approx(201)


def test_hub_generosity_never_lifts_our_ceiling():
    lim, _ = limiter(api=3)
    lim.observe("api", {"RateLimit": '"api";r=999;t=5'}, status=200)
    for _ in range(3):
        lim.acquire("api", max_wait_s=0)
    with pytest.raises(RateLimited):
        lim.acquire("api", max_wait_s=0)


def test_hub_bucket_name_in_header_wins():
    lim, _ = limiter(api=10, resolvers=10)
    lim.observe("api", {"RateLimit": '"resolvers";r=0;t=30'}, status=200)
    assert lim.state("resolvers").blocked_for_s == pytest.approx(30)
    assert lim.state("api").blocked_for_s == 0
    lim.acquire("api", max_wait_s=0)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "30"}, 30.0),
        (
            {
                "RateLimit": '"api";r=0;t=12',
                "RateLimit-Policy": '"fixed window";"api";q=500;w=300',
                "Retry-After": "13",
            },
            12.0,
        ),
        ({}, DEFAULT_429_WAIT_S),
    ],
)
def test_429_closes_the_bucket(headers, expected):
    lim, _ = limiter(api=100)
    assert lim.observe("api", headers, status=429) == pytest.approx(expected)
    state = lim.state("api")
    assert state.hub_429s == 1
    assert state.blocked_for_s == pytest.approx(expected)
    with pytest.raises(RateLimited) as info:
        lim.acquire("api", max_wait_s=expected - 1)
    assert info.value.retry_after_s == pytest.approx(expected)
    assert lim.acquire("api", max_wait_s=expected) == pytest.approx(expected)


def test_429_longer_than_the_window_is_honoured():
    lim, _ = limiter(api=100)
    lim.acquire("api", max_wait_s=0)
    lim.observe("api", {"Retry-After": "900"}, status=429)
    with pytest.raises(RateLimited) as info:
        lim.acquire("api", max_wait_s=600)
    assert info.value.retry_after_s == pytest.approx(900)


def test_hostile_reset_values_are_capped():
    lim, _ = limiter(api=5)
    lim.observe("api", {"Retry-After": "9" * 30}, status=429)
    assert lim.state("api").blocked_for_s == pytest.approx(MAX_HUB_WAIT_S)
    lim.observe("api", {"RateLimit": '"api";r=0;t=' + "9" * 30}, status=200)
    assert lim.state("api").blocked_for_s == pytest.approx(MAX_HUB_WAIT_S)


def test_hub_cannot_shorten_our_window():
    """A hub (or a proxy) that keeps announcing an imminent reset must not let us burst."""
    lim, clock = limiter(api=10, window=300)
    granted = 0
    while clock.t < 1_000 + 299:
        try:
            lim.acquire("api", max_wait_s=0)
            granted += 1
        except RateLimited:
            pass
        lim.observe(
            "api",
            {"RateLimit": '"api";r=999;t=0', "RateLimit-Policy": '"fixed window";"api";q=1000;w=1'},
            status=200,
        )
        clock.advance(0.5)
    assert granted == 10


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["acquire", "observe", "429", "tick"]),
            st.integers(min_value=0, max_value=400),
            st.integers(min_value=0, max_value=400),
        ),
        max_size=120,
    )
)
def test_never_more_than_the_limit_in_any_window(ops):
    """Whatever the hub says, no span of the window's length (plus the margin) holds more than `limit`
    grants: the ceiling holds in the hub's fixed windows too, wherever they start."""
    lim, clock = limiter(api=7, window=60)
    grants: list[float] = []
    for op, a, b in ops:
        if op == "acquire":
            try:
                lim.acquire("api", max_wait_s=a / 10)
                grants.append(clock.t)
            except RateLimited:
                pass
        elif op == "observe":
            lim.observe(
                "api",
                {
                    "RateLimit": f'"api";r={a};t={b}',
                    "RateLimit-Policy": f'"fixed window";"api";q={a + b};w={b}',
                },
                status=200,
            )
        elif op == "429":
            lim.observe("api", {"Retry-After": str(a)}, status=429)
        else:
            clock.advance(a / 4)
    for i, t in enumerate(grants):
        in_window = [g for g in grants[i:] if g < t + 60 + ARRIVAL_MARGIN_S]
        assert len(in_window) <= 7
    assert lim.state("api").granted == len(grants)


def test_stop_event_interrupts_and_prevents_requests():
    lim, clock = limiter(api=1)
    stop = threading.Event()
    lim.acquire("api", max_wait_s=0, stop=stop)
    stop.set()
    with pytest.raises(RateLimited, match="stopping"):
        lim.acquire("resolvers", max_wait_s=100, stop=stop)
    with pytest.raises(RateLimited, match="stopping"):
        lim.acquire("api", max_wait_s=1000, stop=stop)
    assert clock.sleeps == []


def test_stop_during_a_real_wait_returns_promptly():
    lim = HubRateLimiter({"api": BucketPolicy(1, 30.0)}, clock=SystemClock())
    stop = threading.Event()
    lim.acquire("api", max_wait_s=0)
    timer = threading.Timer(0.2, stop.set)
    timer.start()
    with pytest.raises(RateLimited, match="stopped while waiting") as info:
        lim.acquire("api", max_wait_s=60, stop=stop)
    timer.join()
    assert 25 < info.value.retry_after_s <= 31


def test_threads_never_exceed_the_budget():
    lim = HubRateLimiter({"api": BucketPolicy(50, 60.0)})
    granted = []
    refused = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(20):
            try:
                lim.acquire("api", max_wait_s=0)
                with lock:
                    granted.append(1)
            except RateLimited:
                with lock:
                    refused.append(1)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 50
    assert len(refused) == 110
    assert lim.state("api").used == 50


def test_waiting_threads_share_the_next_window():
    clock = FakeClock()
    lim = HubRateLimiter({"api": BucketPolicy(2, 10.0)}, clock=clock)
    lim.acquire("api", max_wait_s=0)
    lim.acquire("api", max_wait_s=0)
    # sequential calls with a fake clock: the 3rd and 4th get the next window, the 5th the one after
    waits = [lim.acquire("api", max_wait_s=100) for _ in range(3)]
    assert waits == [pytest.approx(11), 0.0, pytest.approx(11)]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "120"}, 120.0),
        ({"retry-after": " 7 "}, 7.0),
        ({"Retry-After": "-3"}, None),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": ""}, None),
        ({}, None),
        ({"RateLimit": '"api";r=0;t=55', "Retry-After": "99"}, 55.0),
        ({"RateLimit": '"api";r=3;t=55', "Retry-After": "99"}, 99.0),
        ({"RateLimit": '"api";r=3;t=55'}, None),
        ({"Retry-After": "1" * 20}, MAX_HUB_WAIT_S),
    ],
)
def test_retry_after_from_headers(headers, expected):
    assert retry_after_from_headers(headers) == expected


def test_retry_after_http_date():
    now = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert retry_after_from_headers({"Retry-After": later}, now=now) == pytest.approx(90)
    earlier = format_datetime(now - timedelta(seconds=90), usegmt=True)
    assert retry_after_from_headers({"Retry-After": earlier}, now=now) == 0.0


@pytest.mark.parametrize(
    ("url", "endpoint", "bucket"),
    [
        ("https://huggingface.co/api/models?sort=createdAt", "https://huggingface.co", "api"),
        ("https://huggingface.co/api/models/acme/m/revision/main", "https://huggingface.co", "api"),
        (
            "https://huggingface.co/acme/m/resolve/abc/model.safetensors",
            "https://huggingface.co",
            "resolvers",
        ),
        ("https://huggingface.co:443/acme/m/resolve/abc/x", "https://huggingface.co", "resolvers"),
        ("https://huggingface.co/acme/m", "https://huggingface.co", None),
        ("https://cdn-lfs.hf.co/acme/m/resolve/x", "https://huggingface.co", None),
        ("http://huggingface.co/api/models", "https://huggingface.co", None),
        ("https://mirror.example/hf/api/models", "https://mirror.example/hf", "api"),
        ("https://mirror.example/api/models", "https://mirror.example/hf", None),
        ("http://127.0.0.1:8080/acme/m/resolve/main/x", "http://127.0.0.1:8080", "resolvers"),
        ("http://localhost:8080/cdn/abc", "http://127.0.0.1:8080", None),
    ],
)
def test_bucket_for_url(url, endpoint, bucket):
    assert bucket_for_url(url, endpoint) == bucket
