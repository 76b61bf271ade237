"""Bounded retries with exponential backoff and full jitter, for single hub calls.

A hub call that failed transiently (5xx, reset, timeout, short body) is retried a few times
inside the call; anything longer is the work queue's job (it retries the whole item later). Full
jitter (``uniform(0, min(cap, base * 2**n))``) spreads the retries of many workers that failed
together, which is what a hub outage produces.
"""

from __future__ import annotations

import math
import random
import threading
import time
from dataclasses import dataclass, field

__all__ = ["DEFAULT_RETRY", "RetryPolicy", "sleep_unless_stopped"]


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently one call retries transient failures.

    Attributes:
        max_attempts (`int`): attempts per call, the first included (>= 1).
        base_delay_s (`float`): backoff scale before the first retry.
        max_delay_s (`float`): cap on one backoff pause.
        max_wait_s (`float`): the longest one call may block on the rate limiter or on a
            hub's ``Retry-After`` before giving up with `RateLimited`.
    """

    max_attempts: int = 4
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0
    max_wait_s: float = 60.0
    _rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(f"max_attempts must be an integer >= 1, got {self.max_attempts!r}")
        for name in ("base_delay_s", "max_delay_s", "max_wait_s"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")

    def delay(self, retry: int) -> float:
        """The pause before retry number ``retry`` (1 = first retry): full jitter, capped."""
        ceiling = min(self.max_delay_s, self.base_delay_s * (2 ** max(0, retry - 1)))
        return self._rng.uniform(0.0, ceiling)

    def pause(self, retry: int, stop: threading.Event | None) -> bool:
        """Sleep before retry number ``retry``; return True if ``stop`` was set meanwhile."""
        return sleep_unless_stopped(self.delay(retry), stop)


def sleep_unless_stopped(seconds: float, stop: threading.Event | None) -> bool:
    """Sleep ``seconds`` (0: do not sleep); return True if ``stop`` is set, before or during."""
    if stop is not None:
        return stop.wait(seconds) if seconds > 0 else stop.is_set()
    if seconds > 0:
        time.sleep(seconds)
    return False


DEFAULT_RETRY = RetryPolicy()
"""4 attempts, pauses of at most 0.5, 1, 2 s (full jitter), at most 60 s on rate limits."""
