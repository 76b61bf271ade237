"""One request limiter per hub, with the Hub's own buckets and a sliding window shared across processes.

The Hugging Face Hub counts requests per client in 5-minute fixed windows, separately for the
*API* bucket (``/api/…``) and the *Resolvers* bucket (``/resolve/…``) (hub-api.md §7). A daemon
that runs for months must stay under its configured share of those limits on its own, not find
out from 429s, so every request we send — including the retries huggingface_hub makes inside
its paginated listings — first takes a slot from `HubRateLimiter.acquire`.

The limiter is conservative by construction:

* each bucket allows at most ``limit`` requests in *any* span of ``window_s`` (a sliding window: we do
  not know where the hub's fixed windows start, and a fixed window of ours could let two ceilings'
  worth through in one of the hub's), counting each request for `ARRIVAL_MARGIN_S` longer to cover
  the time between taking the slot and the hub receiving the request; the window is never shorter
  than the configured one, whatever the hub says;
* with a `monitor.hubs.ratestate.RateStateFile` (the daemon's default, next to the database) the
  window holds every process's requests on this host, so restarts, crashes and ``hubsentry scan``
  beside the daemon stay inside the one ceiling;
* what the hub says (``RateLimit: "api";r=R;t=T``, ``RateLimit-Policy: …;q=Q;w=W``, 429 with
  ``Retry-After``) can only make it stricter: a lower limit, a longer window, no request until
  the hub's reset once it says ``r=0`` (or once our own requests used up its ``R``), a pause
  after a 429 — this covers requests we cannot see (other processes on the same IP or token);
* waiting is bounded by the caller's ``max_wait_s`` and interrupted by a `threading.Event`, so
  a stopping daemon is never stuck behind a rate-limit window.

Defaults (hub-api.md §7): anonymous 500 API / 3,000 resolver requests per 300 s; with a token
1,000 / 5,000.
"""

from __future__ import annotations

import bisect
import email.utils
import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import httpx2
from huggingface_hub.utils import parse_ratelimit_headers

from monitor.errors import RateLimited
from monitor.hubs.ratestate import RateStateFile
from monitor.validate import origin_of

__all__ = [
    "ANONYMOUS_LIMITS",
    "ARRIVAL_MARGIN_S",
    "BUCKETS",
    "DEFAULT_429_WAIT_S",
    "DEFAULT_WINDOW_S",
    "MAX_HUB_WAIT_S",
    "TOKEN_LIMITS",
    "BucketPolicy",
    "BucketState",
    "Clock",
    "HubRateLimiter",
    "SystemClock",
    "bucket_for_url",
    "retry_after_from_headers",
]

logger = logging.getLogger(__name__)

BUCKETS = ("api", "resolvers")
"""The buckets we limit: ``api`` for ``/api/…``, ``resolvers`` for ``/resolve/…``."""

DEFAULT_WINDOW_S = 300.0
"""The Hub's fixed rate-limit window (5 minutes)."""

ANONYMOUS_LIMITS = {"api": 500, "resolvers": 3000}
"""Requests per window without a token (per IP)."""

TOKEN_LIMITS = {"api": 1000, "resolvers": 5000}
"""Requests per window with a free-user token."""

ARRIVAL_MARGIN_S = 1.0
"""A request counts against the ceiling for ``window + ARRIVAL_MARGIN_S`` seconds: the hub counts it when it
arrives, a moment after we took its slot, and a request held up in connecting must not let the next one
into the same hub window."""

DEFAULT_429_WAIT_S = 10.0
"""How long a bucket stays closed after a 429 that carried no hint of when to retry."""

MAX_HUB_WAIT_S = 24 * 3600.0
"""Cap on any wait a hub can impose through headers, so a hostile value cannot wedge a bucket."""


class Clock(Protocol):
    """Time source of the limiter; tests inject a fake one that advances on `sleep`."""

    def monotonic(self) -> float:
        """Seconds on a monotonic scale."""
        ...

    def sleep(self, seconds: float, stop: threading.Event | None) -> bool:
        """Wait ``seconds`` or until ``stop`` is set; return True if ``stop`` is set."""
        ...


class SystemClock:
    """`time.monotonic` plus an interruptible wait on the stop event."""

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float, stop: threading.Event | None) -> bool:
        if stop is not None:
            return stop.wait(max(0.0, seconds))
        time.sleep(max(0.0, seconds))
        return False


@dataclass(frozen=True)
class BucketPolicy:
    """Our own ceiling for one bucket.

    Attributes:
        limit (`int`): requests allowed per window (>= 1).
        window_s (`float`): window length in seconds (> 0).
    """

    limit: int
    window_s: float = DEFAULT_WINDOW_S

    def __post_init__(self) -> None:
        if not isinstance(self.limit, int) or self.limit < 1:
            raise ValueError(f"rate limit must be an integer >= 1, got {self.limit!r}")
        if not (self.window_s > 0 and math.isfinite(self.window_s)):
            raise ValueError(f"rate-limit window must be a positive number of seconds, got {self.window_s!r}")


@dataclass(frozen=True)
class BucketState:
    """A read-only view of one bucket, for metrics, `status` output and tests.

    Attributes:
        limit (`int`), window_s (`float`): the effective policy (configured, tightened by the hub).
        used (`int`): requests counted in our window (this process's, and the other processes' when
            the history is shared).
        resets_in_s (`float | None`): seconds until the oldest counted request leaves the window (None:
            nothing counted).
        hub_remaining (`int | None`): requests the hub last said we have left (None: unknown or
            its window has reset since).
        blocked_for_s (`float`): seconds the hub asked us to stay away (429 or ``r=0``).
        granted (`int`): slots handed out since start.
        refused (`int`): acquisitions that raised `RateLimited`.
        hub_429s (`int`): 429 answers observed.
        waited_s (`float`): total time callers spent waiting for a slot.
    """

    limit: int
    window_s: float
    used: int
    resets_in_s: float | None
    hub_remaining: int | None
    blocked_for_s: float
    granted: int
    refused: int
    hub_429s: int
    waited_s: float


class _Bucket:
    """Mutable per-bucket state; only touched under the limiter's lock.

    Two independent views are kept. *Our window* counts requests against our ceiling over the last
    ``window_s + ARRIVAL_MARGIN_S`` seconds (sliding) and is never shortened by anything the hub says,
    which is what guarantees the configured budget in every span of that length — so also in the hub's
    own fixed windows, wherever they start. It holds our requests and, with a shared state file, every
    other process's (`monitor.hubs.ratestate`), as ``(time, count)`` slots sorted by time. *The hub's view*
    (remaining count and reset time from ``RateLimit``, blocks from 429/``r=0``) can only add waits: it
    covers requests we cannot see (other hosts on the same IP or token) and hub limits lower than ours.
    """

    def __init__(self, policy: BucketPolicy) -> None:
        self.policy = policy
        self.hub_limit: int | None = None
        self.hub_window_s: float | None = None
        self.slots: list[tuple[float, int]] = []
        self.used = 0
        self.unsynced: list[float] = []
        self.block_left: int | None = None
        """Requests left in the block claimed from the shared history (None: not sharing, or the file could
        not be used at the last exchange: this process limits itself alone)."""
        self.hub_remaining: int | None = None
        self.hub_reset = 0.0
        self.blocked_until = 0.0
        self.granted = 0
        self.refused = 0
        self.hub_429s = 0
        self.waited_s = 0.0

    @property
    def limit(self) -> int:
        if self.hub_limit is None:
            return self.policy.limit
        return max(1, min(self.policy.limit, self.hub_limit))

    @property
    def window_s(self) -> float:
        return max(self.policy.window_s, self.hub_window_s or 0.0)

    @property
    def counts_for_s(self) -> float:
        """How long one request counts against the ceiling."""
        return self.window_s + ARRIVAL_MARGIN_S

    @property
    def block_size(self) -> int:
        """Requests claimed at once from a shared history (1 % of the ceiling, 1 to 10)."""
        return max(1, min(10, self.limit // 100))

    def refresh(self, now: float) -> None:
        horizon = now - self.counts_for_s
        expired = 0
        while expired < len(self.slots) and self.slots[expired][0] <= horizon:
            self.used -= self.slots[expired][1]
            expired += 1
        if expired:
            del self.slots[:expired]
        if self.hub_remaining is not None and now >= self.hub_reset:
            self.hub_remaining = None

    def wait_needed(self, now: float) -> float:
        """Seconds until a request may be sent (0: now)."""
        wait = max(0.0, self.blocked_until - now)
        if self.used >= self.limit:
            excess = self.used - self.limit + 1  # requests that must leave the window first
            for moment, count in self.slots:
                excess -= count
                if excess <= 0:
                    wait = max(wait, moment + self.counts_for_s - now)
                    break
        if self.hub_remaining is not None and self.hub_remaining <= 0:
            wait = max(wait, self.hub_reset - now)
        return wait

    def take(self, now: float) -> None:
        bisect.insort(self.slots, (now, 1))
        self.used += 1
        self.unsynced.append(now)
        if self.block_left is not None:
            self.block_left -= 1
        self.granted += 1
        if self.hub_remaining is not None:
            self.hub_remaining -= 1

    def replace_history(self, slots: list[tuple[float, int]], block: int, now: float) -> None:
        """Adopt the shared history (it holds our written requests too) and the block just claimed."""
        self.slots = sorted(slots)
        self.used = sum(count for _, count in self.slots)
        self.unsynced = []
        self.block_left = block
        self.refresh(now)


class HubRateLimiter:
    """A thread-safe sliding-window limiter with one bucket per Hub rate-limit class.

    Args:
        policies (`Mapping[str, BucketPolicy]`): our ceiling per bucket; buckets not named here
            are not limited (requests outside ``/api/`` and ``/resolve/``).
        name (`str`): the hub's configured name, used in messages.
        clock (`Clock`, *optional*): time source; `SystemClock` by default.
        state (`RateStateFile`, *optional*): share the request history with the other processes
            using that file: requests are sent out of small blocks claimed from it (see
            `monitor.hubs.ratestate`), so all of them together stay under the ceiling; `close` gives the
            unused rest back. None: this process counts only its own requests.

    Example:
        ```python
        limiter = HubRateLimiter.default(authenticated=True)
        limiter.acquire("api", max_wait_s=30, stop=stop_event)   # may block, or raise RateLimited
        response = client.get(url)
        limiter.observe("api", response.headers, status=response.status_code)
        ```
    """

    def __init__(
        self,
        policies: Mapping[str, BucketPolicy],
        *,
        name: str = "hub",
        clock: Clock | None = None,
        state: RateStateFile | None = None,
    ) -> None:
        self.name = name
        self._clock: Clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._buckets = {bucket: _Bucket(policy) for bucket, policy in policies.items()}
        self._state = state
        self._exchanged_at: float | None = None  # monotonic time of the last exchange (None: never)

    @classmethod
    def default(
        cls,
        *,
        authenticated: bool,
        api: int | None = None,
        resolvers: int | None = None,
        window_s: float = DEFAULT_WINDOW_S,
        name: str = "hub",
        clock: Clock | None = None,
        state: RateStateFile | None = None,
    ) -> HubRateLimiter:
        """The documented Hub limits for anonymous or token clients, with optional overrides.

        Args:
            authenticated (`bool`): whether requests carry a token (raises the Hub's limits).
            api, resolvers (`int`, *optional*): our own ceilings per window (config
                ``api_requests_per_window`` / ``resolver_requests_per_window``).
            window_s (`float`): window length; the Hub uses 300 s.
            state (`RateStateFile`, *optional*): the shared request history (config ``rate_state_file``).
        """
        base = TOKEN_LIMITS if authenticated else ANONYMOUS_LIMITS
        return cls(
            {
                "api": BucketPolicy(api if api is not None else base["api"], window_s),
                "resolvers": BucketPolicy(
                    resolvers if resolvers is not None else base["resolvers"], window_s
                ),
            },
            name=name,
            clock=clock,
            state=state,
        )

    @property
    def buckets(self) -> tuple[str, ...]:
        """Names of the limited buckets."""
        return tuple(self._buckets)

    def acquire(self, bucket: str, *, max_wait_s: float, stop: threading.Event | None = None) -> float:
        """Take one request slot from ``bucket``, waiting at most ``max_wait_s`` for it.

        Args:
            bucket (`str`): ``"api"`` or ``"resolvers"``; an unknown bucket is not limited.
            max_wait_s (`float`): the longest this call may block; 0 means "only if free now".
            stop (`threading.Event`, *optional*): set by the daemon on shutdown; aborts the wait.

        Returns:
            `float`: seconds spent waiting.

        Raises:
            `RateLimited`: the next free slot is further away than ``max_wait_s`` allows, or
                ``stop`` was set while waiting; ``retry_after_s`` says when the bucket reopens.
        """
        state = self._buckets.get(bucket)
        if state is None:
            return 0.0
        start = self._clock.monotonic()
        deadline = start + max(0.0, max_wait_s)
        while True:
            with self._lock:
                now = self._clock.monotonic()
                if stop is not None and stop.is_set():
                    state.refused += 1
                    raise RateLimited(f"{self.name}: stopping; no '{bucket}' request sent", retry_after_s=0.0)
                if self._state is not None and self._exchange_due(state, now):
                    self._exchange(now)
                state.refresh(now)
                wait = state.wait_needed(now)
                if wait <= 0 and state.block_left == 0:  # the shared ceiling is reached
                    wait = 0.05  # (wait_needed says when; this only guards against a zero wait)
                if wait <= 0:
                    state.take(now)
                    waited = now - start
                    state.waited_s += waited
                    return waited
                if now + wait > deadline + 1e-9:
                    state.refused += 1
                    raise RateLimited(
                        f"{self.name}: '{bucket}' bucket is closed for {wait:.1f} s more (budget "
                        f"{state.limit} per {state.window_s:g} s, {state.used} used"
                        f"{' by all processes' if self._state is not None else ''}); this call may only "
                        f"wait {max_wait_s:g} s",
                        retry_after_s=wait,
                    )
            if self._clock.sleep(wait, stop):
                with self._lock:
                    state.refused += 1
                raise RateLimited(
                    f"{self.name}: stopped while waiting for a '{bucket}' request slot",
                    retry_after_s=max(0.0, wait - (self._clock.monotonic() - now)),
                )

    def observe(self, bucket: str | None, headers: Mapping[str, str], *, status: int) -> float | None:
        """Learn from one hub response; return the wait a 429 imposes (``None`` if not a 429).

        Reads ``RateLimit`` / ``RateLimit-Policy`` (IETF draft-09, as the Hub sends them on every
        answer) and, for 429, ``Retry-After``. The bucket named in the ``RateLimit`` header wins
        over ``bucket`` when we know it. Everything learned only tightens the limiter.
        """
        info = parse_ratelimit_headers(headers)
        if info is not None and info.resource_type in self._buckets:
            bucket = info.resource_type
        state = self._buckets.get(bucket) if bucket is not None else None
        wait = retry_after_from_headers(headers) if status == 429 else None
        if status == 429 and wait is None:
            wait = DEFAULT_429_WAIT_S
        if state is None:
            return wait
        with self._lock:
            now = self._clock.monotonic()
            state.refresh(now)
            if info is not None:
                if info.limit is not None and info.limit >= 1:
                    state.hub_limit = (
                        info.limit if state.hub_limit is None else min(state.hub_limit, info.limit)
                    )
                if info.window_seconds is not None and info.window_seconds > 0:
                    state.hub_window_s = min(float(info.window_seconds), MAX_HUB_WAIT_S)
                reset = now + min(float(info.reset_in_seconds), MAX_HUB_WAIT_S)
                state.hub_remaining, state.hub_reset = info.remaining, reset
                if info.remaining <= 0:
                    state.blocked_until = max(state.blocked_until, reset)
            if status == 429:
                assert wait is not None
                state.hub_429s += 1
                state.blocked_until = max(state.blocked_until, now + max(wait, 1.0))
                logger.warning(
                    "%s: hub answered 429 on the '%s' bucket; pausing it for %.1f s", self.name, bucket, wait
                )
        return wait

    def _exchange_due(self, bucket: _Bucket, now: float) -> bool:
        """A new block is needed: none yet, this one is used up, or it lapsed (its interval passed)."""
        assert self._state is not None
        if self._exchanged_at is None or now - self._exchanged_at >= self._state.sync_interval_s:
            return True
        return bucket.block_left is not None and bucket.block_left <= 0

    def _exchange(self, now: float, *, leaving: bool = False) -> None:
        """Write our requests, claim new blocks, adopt the shared history (under ``self._lock``). If the
        file cannot be used, every bucket limits this process alone until the next exchange."""
        assert self._state is not None
        offset = self._state.wall() - now  # monotonic -> wall clock
        result = self._state.exchange(
            windows={name: b.counts_for_s for name, b in self._buckets.items()},
            limits={name: b.limit for name, b in self._buckets.items()},
            new={name: [t + offset for t in b.unsynced] for name, b in self._buckets.items()},
            want={name: b.block_size for name, b in self._buckets.items()},
            leaving=leaving,
        )
        self._exchanged_at = now
        for name, bucket in self._buckets.items():
            if result is None:
                bucket.block_left = None
            else:
                history = [(t - offset, count) for t, count in result.history.get(name, [])]
                bucket.replace_history(history, result.blocks.get(name, 0), now)

    def close(self) -> None:
        """Write this process's requests to the shared history and give its unused block back (clean stop;
        idempotent, a no-op without a state file). The limiter keeps working afterwards."""
        if self._state is None:
            return
        with self._lock:
            if self._exchanged_at is not None:
                self._exchange(self._clock.monotonic(), leaving=True)
                self._exchanged_at = None

    def state(self, bucket: str) -> BucketState:
        """A snapshot of one bucket (raises `KeyError` for an unknown bucket)."""
        state = self._buckets[bucket]
        with self._lock:
            now = self._clock.monotonic()
            state.refresh(now)
            return BucketState(
                limit=state.limit,
                window_s=state.window_s,
                used=state.used,
                resets_in_s=state.slots[0][0] + state.counts_for_s - now if state.slots else None,
                hub_remaining=state.hub_remaining,
                blocked_for_s=max(0.0, state.blocked_until - now),
                granted=state.granted,
                refused=state.refused,
                hub_429s=state.hub_429s,
                waited_s=state.waited_s,
            )

    def __repr__(self) -> str:
        policies = ", ".join(f"{b}={s.policy.limit}/{s.policy.window_s:g}s" for b, s in self._buckets.items())
        return f"HubRateLimiter({self.name!r}, {policies})"


def retry_after_from_headers(headers: Mapping[str, str], *, now: datetime | None = None) -> float | None:
    """Seconds a 429/503 answer asks us to wait, or ``None`` if it gives no hint.

    Same precedence as huggingface_hub's own backoff: the ``RateLimit`` reset when it says
    ``r=0``, else ``Retry-After`` (delta-seconds, or an HTTP date, which the client ignores but
    proxies send). Negative or unparseable values are ignored; the result is capped at
    `MAX_HUB_WAIT_S`.
    """
    info = parse_ratelimit_headers(headers)
    if info is not None and info.remaining == 0:
        return min(float(info.reset_in_seconds), MAX_HUB_WAIT_S)
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_HUB_WAIT_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    delta = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(0.0, delta), MAX_HUB_WAIT_S)


def bucket_for_url(url: str | httpx2.URL, endpoint: str) -> str | None:
    """The Hub bucket a request to ``url`` counts against, or ``None`` if it is not limited.

    Only requests to the hub's own origin count: ``{endpoint}/api/…`` is ``api``, any
    ``…/resolve/…`` URL is ``resolvers``; storage/CDN hosts and other origins are not the Hub's
    rate-limited surface. ``endpoint`` may carry a path prefix (a mirror mounted under a path).
    """
    target = url if isinstance(url, httpx2.URL) else httpx2.URL(url)
    base = httpx2.URL(endpoint)
    if origin_of(target) != origin_of(base):
        return None
    prefix = base.path.rstrip("/")
    path = target.path
    if not path.startswith(prefix + "/"):
        return None
    rest = path[len(prefix) :]
    if rest.startswith("/api/"):
        return "api"
    if "/resolve/" in rest:
        return "resolvers"
    return None
