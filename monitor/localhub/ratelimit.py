"""Emulation of the Hub's fixed-window rate limits (hub-api.md §7).

The Hub counts requests per 5-minute fixed window in separate buckets: ``api`` (every ``/api/...``
request) and ``resolvers`` (every ``/resolve/`` request; the storage/CDN hits a redirect leads to do not
count). Every answer carries the IETF draft-09 headers, and an exhausted bucket answers 429::

    RateLimit: "api";r=0;t=42
    RateLimit-Policy: "fixed window";"api";q=1000;w=300
    Retry-After: 42

Here a window opens at the first request counted in its bucket and lasts ``window_s`` seconds; the
next request after that opens a new one. Anchoring windows to the first request (rather than to
multiples of ``window_s`` on the clock) makes "the (q+1)-th request is refused" deterministic in tests.
Requests refused with 429 are not counted.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["BUCKETS", "FixedWindowLimiter", "LimitVerdict", "RateLimitPolicy"]

BUCKETS = ("api", "resolvers")


@dataclass(frozen=True)
class RateLimitPolicy:
    """Per-bucket quotas of the emulated Hub.

    Attributes:
        api (`int | None`): requests per window to ``/api/...``; ``None`` means unlimited.
        resolvers (`int | None`): requests per window to ``/{repo}/resolve/...``; ``None``: unlimited.
        window_s (`int`): window length in seconds (the Hub uses 300).

    The defaults are the Hub's free-user quotas (hub-api.md §7).
    """

    api: int | None = 1000
    resolvers: int | None = 5000
    window_s: int = 300

    def __post_init__(self) -> None:
        if self.window_s < 1:
            raise ValueError("window_s must be >= 1 second")
        for name in BUCKETS:
            quota = getattr(self, name)
            if quota is not None and quota < 0:
                raise ValueError(f"{name} quota must be >= 0 or None")

    def quota(self, bucket: str) -> int | None:
        """Quota of ``bucket``; ``None`` for unlimited buckets and for traffic no bucket covers."""
        return getattr(self, bucket) if bucket in BUCKETS else None


@dataclass(frozen=True)
class LimitVerdict:
    """Outcome of counting one request.

    Attributes:
        allowed (`bool`): ``False`` means answer 429.
        headers (`list[tuple[str, str]]`): ``RateLimit``/``RateLimit-Policy`` (and ``Retry-After``
            when refused) to add to the answer.
    """

    allowed: bool
    headers: list[tuple[str, str]]


class FixedWindowLimiter:
    """Thread-safe request counter per bucket.

    Args:
        policy (`RateLimitPolicy`): quotas and window length.
        clock (`Callable[[], float]`): monotonic seconds; injectable for tests.
    """

    def __init__(self, policy: RateLimitPolicy, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[float, int]] = {}  # bucket -> (window start, count)

    def hit(self, bucket: str) -> LimitVerdict:
        """Count one request to ``bucket`` (or refuse it) and return the headers to send."""
        quota = self.policy.quota(bucket)
        if quota is None:
            return LimitVerdict(True, [])
        window = self.policy.window_s
        with self._lock:
            now = self._clock()
            start, count = self._windows.get(bucket, (now, 0))
            if now - start >= window:
                start, count = now, 0
            allowed = count < quota
            if allowed:
                count += 1
            self._windows[bucket] = (start, count)
        reset = max(1, math.ceil(start + window - now))
        headers = [
            ("RateLimit", f'"{bucket}";r={max(0, quota - count)};t={reset}'),
            ("RateLimit-Policy", f'"fixed window";"{bucket}";q={quota};w={window}'),
        ]
        if not allowed:
            headers.append(("Retry-After", str(reset)))
        return LimitVerdict(allowed, headers)

    def reset(self) -> None:
        """Forget every window (tests use it between phases)."""
        with self._lock:
            self._windows.clear()
