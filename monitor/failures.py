"""How a failed scan is handled: classification by exception class, and the retry backoff.

Errors are classified by class, never by message (`classify`):

=============================================  =========================================================
``RateLimited``                                retry after ``max(backoff, retry_after)``; attempt not
                                               counted; the hub is paused for ``retry_after``
``TransientHubError``, other ``HubError``      retry with bounded exponential backoff and jitter
``StoreError``                                 retry; attempt not counted (not the item's fault)
``NotFound``                                   done, with a note: the repo or commit is gone
``CommitMoved``                                done, and the new head commit is enqueued
``GatedRepo``, ``FormatError``,                done, with a clear note (retrying cannot help; no retry
``BudgetExceeded``                             storm)
anything else                                  retry with backoff; after ``max_attempts``: ``dead``
=============================================  =========================================================

The worker (`monitor.worker`) applies the `Disposition` and logs it with the repo, the commit, the attempt
and the reason.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from monitor.config import QueueConfig
from monitor.errors import (
    BudgetExceeded,
    CommitMoved,
    FormatError,
    GatedRepo,
    HubError,
    NotFound,
    RateLimited,
    StoreError,
    TransientHubError,
)

__all__ = ["Disposition", "RetryPolicy", "classify"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded exponential backoff with jitter.

    The n-th failed attempt waits ``d/2 + uniform(0, d/2)`` with ``d = min(max, base * 2**(n-1))``:
    growing waits so a sick hub is not hammered, jitter so items failed together do not retry together.
    """

    max_attempts: int
    backoff_base_s: float
    backoff_max_s: float

    @classmethod
    def from_config(cls, queue: QueueConfig) -> RetryPolicy:
        return cls(queue.max_attempts, queue.backoff_base_s, queue.backoff_max_s)

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** max(0, min(attempt - 1, 40)))
        return ceiling / 2 + rng.uniform(0, ceiling / 2)


@dataclass(frozen=True, slots=True)
class Disposition:
    """What to do with an item whose scan raised.

    Attributes:
        action (`str`): ``retry`` (failed, or dead after max attempts) or ``done`` (with ``note``).
        note (`str`): the reason, stored in the item (``last_error``) and logged.
        refund (`bool`): do not count the attempt (not the item's fault).
        wait_s (`float`): minimum wait before the retry (a hub's Retry-After).
        pause_hub_s (`float`): stop claiming items of this hub for that long.
        enqueue_head (`bool`): look up the repo's new head commit and enqueue it.
    """

    action: Literal["retry", "done"]
    note: str
    refund: bool = False
    wait_s: float = 0.0
    pause_hub_s: float = 0.0
    enqueue_head: bool = False


def classify(exc: BaseException) -> Disposition:
    """Map a scan failure to a `Disposition` by exception class (see the module table)."""
    reason = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, RateLimited):
        return Disposition(
            "retry", reason, refund=True, wait_s=exc.retry_after_s, pause_hub_s=exc.retry_after_s
        )
    if isinstance(exc, TransientHubError):
        return Disposition("retry", reason)
    if isinstance(exc, StoreError):
        return Disposition("retry", reason, refund=True)
    if isinstance(exc, NotFound):
        return Disposition(
            "done", f"repo or commit no longer exists on the hub (deleted or rewritten): {exc}"
        )
    if isinstance(exc, CommitMoved):
        return Disposition(
            "done", f"the repo moved to a new commit while it was read: {exc}", enqueue_head=True
        )
    if isinstance(exc, GatedRepo):
        return Disposition("done", f"gated or private repo, weights not readable: {exc}")
    if isinstance(exc, FormatError):
        return Disposition("done", f"weights not readable ({type(exc).__name__}): {exc}")
    if isinstance(exc, BudgetExceeded):
        return Disposition("done", f"per-repo byte budget exceeded: {exc}")
    if isinstance(exc, HubError):
        return Disposition("retry", reason)
    return Disposition("retry", reason)
