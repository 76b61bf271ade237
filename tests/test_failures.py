"""Failure classification by exception class, and the bounded exponential backoff of work items."""

from __future__ import annotations

import random

from monitor.errors import (
    BudgetExceeded,
    CommitMoved,
    FormatError,
    GatedRepo,
    NotFound,
    RateLimited,
    StoreError,
    TransientHubError,
    UnsupportedFormat,
)
from monitor.failures import RetryPolicy, classify


def test_classify_table() -> None:
    assert classify(RateLimited("x", retry_after_s=9)).refund
    assert classify(RateLimited("x", retry_after_s=9)).pause_hub_s == 9
    assert classify(StoreError("x")).refund
    assert classify(CommitMoved("x")).enqueue_head
    for exc in (
        NotFound("x"),
        GatedRepo("x"),
        FormatError("x"),
        UnsupportedFormat("x"),
        BudgetExceeded("x", budget=1, requested=2),
        CommitMoved("x"),
    ):
        assert classify(exc).action == "done", exc
    for exc in (
        TransientHubError("x"),
        RateLimited("x", retry_after_s=1),
        StoreError("x"),
        OSError("x"),
        KeyError("x"),
        TimeoutError("x"),
    ):
        assert classify(exc).action == "retry", exc


def test_backoff_is_bounded_exponential_with_jitter() -> None:
    policy = RetryPolicy(max_attempts=6, backoff_base_s=30, backoff_max_s=6 * 3600)
    rng = random.Random(1)
    for attempt, ceiling in ((1, 30), (2, 60), (3, 120), (10, 15360), (30, 21600), (500, 21600)):
        delays = [policy.delay(attempt, rng) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), attempt
        assert len(set(delays)) > 1
