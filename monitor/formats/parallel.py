"""Run one blocking call per file at the same time: a model's reads cost one round trip, not one per file.

A read of a sharded checkpoint touches several files (the sampled layers of a 70B model sit in four or
five shards), and each file's `ByteSource.read_many` is one round of HTTP requests. Issued one after the
other, the latencies add up; issued together, the slowest one decides. The HTTP layer already bounds what
is in flight per host (``per_host_concurrency``), so these threads only wait. They are not the HTTP
client's worker pool: a `read_many` running here may itself wait on that pool, which would deadlock if
the waiting threads were the pool's own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["MAX_CONCURRENT_FILES", "map_concurrently"]

MAX_CONCURRENT_FILES = 8
"""Most files read at the same time by one call (the HTTP layer's per-host limit still applies)."""

T = TypeVar("T")
R = TypeVar("R")


def map_concurrently(
    fn: Callable[[T], R], items: Sequence[T], *, max_workers: int = MAX_CONCURRENT_FILES
) -> list[R]:
    """``[fn(item) for item in items]``, with the calls running concurrently; results in order.

    Every call runs to its end (a half-finished read must not be abandoned while it holds budget or
    a connection); then the failure of the earliest failed item, by position, is raised.

    Args:
        fn (`Callable`): the blocking call (a file's `read_many`, a header parse).
        items (`Sequence`): one item per call; zero or one item runs in the calling thread.
        max_workers (`int`): most calls in flight at once.
    """
    if len(items) <= 1 or max_workers <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(
        max_workers=min(max_workers, len(items)), thread_name_prefix="hubsentry-files"
    ) as pool:
        futures = [pool.submit(fn, item) for item in items]
    # leaving the `with` waited for every call
    for future in futures:
        error = future.exception()
        if error is not None:
            raise error
    return [future.result() for future in futures]
