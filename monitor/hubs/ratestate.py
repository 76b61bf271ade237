"""The request history of one hub, shared through a small file by every process and every restart.

`monitor.hubs.ratelimit.HubRateLimiter` counts requests in a sliding window. Kept in memory only, that
count starts from zero in each new process, so a daemon restarted k times within a window (systemd after a
crash, a ``kill -9``, ``hubsentry scan`` run beside the daemon) could send (k + 1) times its ceiling in it.
With a `RateStateFile` the limiter exchanges its history with the other processes instead:

* **What is stored.** Per bucket, request counts per wall-clock second over the last window, and per
  process (`monitor.owners.process_owner`) the *block* of requests it claimed at its last exchange. A few
  kilobytes at the Hub's limits.
* **Blocks.** A process sends requests only out of a block it claimed under the file lock, and a block is
  only granted when everything written plus every other process's block still fits the ceiling: so all
  processes together never exceed it, however they interleave. A block holds at most 10 requests (1 % of
  the ceiling) and lapses `DEFAULT_SYNC_INTERVAL_S` after it was claimed; the next request then exchanges
  again (writes what was used, gives back the rest, claims a new block).
* **Cheap.** So a process writes at most once per block — every 10 requests at full speed, once per
  request when idle-ish — and when it closes; never one write per request at the Hub's rates. A write is
  a read-merge-replace under an exclusive ``flock`` on ``<file>.lock`` (other processes hold it for a
  millisecond) and an atomic ``os.replace``, so a ``kill -9`` at any moment leaves the old or the new file.
* **Conservative about what it cannot know.** Requests are counted at the *end* of their second, and
  another process's block as fully used at the moment it lapses, until the window after that has passed.
  That needs no liveness check: a process killed with a block costs that block for one window, no more;
  a process that closes cleanly writes everything and gives its block back.

Limits: the file is per host (``flock`` and the rename are only atomic on one machine; Dask workers on other
hosts keep their own history) and follows the wall clock, so a clock stepped forward by more than a window
forgets the history once. A missing, unreadable or corrupt file is reported in the log and replaced; the
limiter then behaves as if it were the only process.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitor.owners import process_owner

__all__ = ["DEFAULT_SYNC_INTERVAL_S", "FILE_VERSION", "LOCK_TIMEOUT_S", "Exchange", "RateStateFile"]

logger = logging.getLogger(__name__)

FILE_VERSION = 1
DEFAULT_SYNC_INTERVAL_S = 2.0
"""A claimed block lapses this long after its exchange: the process's next request exchanges again."""
LOCK_TIMEOUT_S = 5.0
"""Longest wait for the file lock; after it the exchange is skipped (logged) and retried at the next one."""
_WARN_EVERY_S = 300.0


@dataclass(frozen=True, slots=True)
class Exchange:
    """The result of one exchange.

    Attributes:
        history (`dict[str, list[tuple[float, int]]]`): per bucket, ``(wall time, count)`` pairs sorted by
            time: every process's written requests (each at the end of its second) and the other
            processes' blocks (at the moment they lapse). Our own block is not in it.
        blocks (`dict[str, int]`): per bucket, how many requests we may send until the next exchange
            (0: the ceiling is reached until something leaves the window).
        at (`float`): wall-clock time of the exchange (the blocks lapse ``sync_interval_s`` after it).
    """

    history: dict[str, list[tuple[float, int]]]
    blocks: dict[str, int]
    at: float


class RateStateFile:
    """Exchanges one hub's request history with the other processes that use ``path`` (not thread-safe:
    the limiter calls it under its own lock).

    Args:
        path (`Path`): the state file (created on first use, with ``<path>.lock`` beside it).
        owner (`str | None`): this process's id in the file (default: a new `process_owner`).
        sync_interval_s (`float`): see `DEFAULT_SYNC_INTERVAL_S`; stored with each block, so every
            process knows until when another one may use its block.
        wall (`Callable[[], float]`): wall-clock seconds (tests inject one).
    """

    def __init__(
        self,
        path: Path | str,
        *,
        owner: str | None = None,
        sync_interval_s: float = DEFAULT_SYNC_INTERVAL_S,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if not sync_interval_s > 0:
            raise ValueError(f"sync_interval_s must be > 0, got {sync_interval_s!r}")
        self.path = Path(path)
        self.owner = owner or process_owner()
        self.sync_interval_s = sync_interval_s
        self.wall = wall
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._last_warning = -math.inf

    def __repr__(self) -> str:
        return f"RateStateFile({str(self.path)!r}, owner={self.owner!r})"

    def exchange(
        self,
        *,
        windows: Mapping[str, float],
        limits: Mapping[str, int],
        new: Mapping[str, Sequence[float]],
        want: Mapping[str, int],
        leaving: bool = False,
    ) -> Exchange | None:
        """Write our new requests, give back our block, claim a new one (unless ``leaving``).

        Args:
            windows (`Mapping[str, float]`): per bucket, how long a request counts (window plus margin);
                older history is dropped from the file.
            limits (`Mapping[str, int]`): per bucket, the ceiling a new block must fit under.
            new (`Mapping[str, Sequence[float]]`): per bucket, wall-clock times of the requests we sent
                since the last successful exchange (out of the block claimed then).
            want (`Mapping[str, int]`): per bucket, the block size to claim (granted less near the ceiling).
            leaving (`bool`): this process stops using the hub (clean shutdown): claim nothing.

        Returns:
            `Exchange`, or None when the file could not be used (logged; the caller limits itself alone
            and tries again at its next exchange).
        """
        now = self.wall()
        try:
            with self._locked():
                doc = self._read()
                blocks = self._merge(
                    doc, now=now, windows=windows, limits=limits, new=new, want=want, leaving=leaving
                )
                self._write(doc, now=now)
        except (OSError, TimeoutError) as exc:
            self._warn(
                "cannot share the request history through %s (%s); limiting this process on its own until "
                "it can",
                self.path,
                exc,
            )
            return None
        return Exchange(self._history(doc, windows=windows), blocks, now)

    # ------------------------------------------------------------------------------------------ file

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            deadline = time.monotonic() + LOCK_TIMEOUT_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"{self._lock_path} stayed locked for {LOCK_TIMEOUT_S:g} s"
                        ) from None
                    time.sleep(0.005)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _read(self) -> dict[str, Any]:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return _empty()
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            self._warn("%s is not valid JSON (%s); starting a new request history", self.path, exc)
            return _empty()
        if not isinstance(doc, dict) or doc.get("version") != FILE_VERSION:
            self._warn("%s has an unknown format; starting a new request history", self.path)
            return _empty()
        buckets, holders = doc.get("buckets"), doc.get("holders")
        return {
            "version": FILE_VERSION,
            "buckets": _clean_buckets(buckets),
            "holders": _clean_holders(holders),
        }

    def _write(self, doc: dict[str, Any], *, now: float) -> None:
        doc["updated_at"] = now
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(doc, separators=(",", ":"), sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    # ------------------------------------------------------------------------------------------ content

    def _merge(
        self,
        doc: dict[str, Any],
        *,
        now: float,
        windows: Mapping[str, float],
        limits: Mapping[str, int],
        new: Mapping[str, Sequence[float]],
        want: Mapping[str, int],
        leaving: bool,
    ) -> dict[str, int]:
        longest = max(windows.values(), default=0.0)
        holders: dict[str, Any] = doc["holders"]
        holders.pop(self.owner, None)  # our old block: what we used of it is in ``new``
        for owner in [o for o, h in holders.items() if h["claimed_at"] + h["interval"] + longest <= now]:
            del holders[owner]  # whatever it may have sent has left every window
        blocks: dict[str, int] = {}
        for bucket, window in windows.items():
            counts: dict[str, int] = doc["buckets"].setdefault(bucket, {})
            for moment in new.get(bucket, ()):
                second = str(math.floor(moment))
                counts[second] = counts.get(second, 0) + 1
            for second in [s for s in counts if int(s) + 1 + window <= now]:
                del counts[second]
            used = sum(counts.values()) + sum(h["block"].get(bucket, 0) for h in holders.values())
            blocks[bucket] = 0 if leaving else max(0, min(want.get(bucket, 0), limits[bucket] - used))
        if not leaving:
            holders[self.owner] = {
                "claimed_at": now,
                "interval": self.sync_interval_s,
                "block": {b: n for b, n in blocks.items() if n > 0},
            }
        return blocks

    def _history(
        self, doc: dict[str, Any], *, windows: Mapping[str, float]
    ) -> dict[str, list[tuple[float, int]]]:
        history: dict[str, list[tuple[float, int]]] = {}
        for bucket in windows:
            pairs = [(int(s) + 1.0, n) for s, n in doc["buckets"].get(bucket, {}).items()]
            for owner, holder in doc["holders"].items():
                count = holder["block"].get(bucket, 0)
                if owner != self.owner and count > 0:
                    pairs.append((holder["claimed_at"] + holder["interval"], count))
            history[bucket] = sorted(pairs)
        return history

    def _warn(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last_warning >= _WARN_EVERY_S:
            self._last_warning = now
            logger.warning(message, *args)


def _empty() -> dict[str, Any]:
    return {"version": FILE_VERSION, "buckets": {}, "holders": {}}


def _clean_buckets(raw: object) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    if not isinstance(raw, dict):
        return out
    for bucket, counts in raw.items():
        if not isinstance(bucket, str) or not isinstance(counts, dict):
            continue
        out[bucket] = {
            s: n
            for s, n in counts.items()
            if isinstance(s, str) and s.isdigit() and isinstance(n, int) and not isinstance(n, bool) and n > 0
        }
    return out


def _clean_holders(raw: object) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not isinstance(raw, dict):
        return out
    for owner, holder in raw.items():
        if not isinstance(owner, str) or not isinstance(holder, dict):
            continue
        claimed, interval, block = holder.get("claimed_at"), holder.get("interval"), holder.get("block")
        if not (
            isinstance(claimed, int | float)
            and isinstance(interval, int | float)
            and _number(claimed)
            and _number(interval)
            and interval > 0
            and isinstance(block, dict)
        ):
            continue
        out[owner] = {
            "claimed_at": float(claimed),
            "interval": float(interval),
            "block": {
                b: n
                for b, n in block.items()
                if isinstance(b, str) and isinstance(n, int) and not isinstance(n, bool) and n > 0
            },
        }
    return out


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
