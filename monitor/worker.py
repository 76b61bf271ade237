"""Processing the queue: claim due items, scan them on the executor, record outcomes, classify errors.

The worker is the coordinator: it claims items (with a lease), submits ``processor(item)`` to a
`concurrent.futures.Executor` (threads or Dask, it does not care), and records each result through the
store's single writer. It keeps at most ``max_in_flight`` items out, renews their leases while they
run, and abandons a scan that exceeds ``item_timeout_s`` (the item is retried; a thread cannot be
killed, so the stale result is ignored when it arrives).

Errors are classified by class, never by message (`monitor.failures.classify`: retried with backoff,
retried without counting the attempt, or done with a note).

A failure is logged with the repo, the commit, the attempt and the reason, and the drain goes on with
the other items.

Crash recovery: every drain first reclaims the leases of owners on this host whose process is gone
(`monitor.owners.owner_is_dead`), so a daemon restarted after a ``kill -9`` rescans the interrupted items at
once instead of waiting up to ``queue.lease`` for their leases to expire. `Worker.next_due` tells the
scheduler when the next item becomes claimable, so a retry due in a second runs in a second.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, CancelledError, Executor, Future, wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from monitor.errors import HubError, StoreError
from monitor.failures import Disposition, RetryPolicy, classify
from monitor.findings import ScanOutcome
from monitor.hubs.base import HubSource
from monitor.owners import owner_is_dead, process_owner
from monitor.store import (
    LeaseLostError,
    NewItem,
    Store,
    WorkItem,
    claim_due,
    enqueue,
    fail,
    next_due_by_hub,
    reclaim_orphaned,
    record_outcome,
    release,
    renew_leases,
    utc_now,
)

__all__ = ["Disposition", "DrainReport", "Processor", "RetryPolicy", "Worker", "classify"]

log = logging.getLogger(__name__)

Processor = Callable[[WorkItem], ScanOutcome]
"""Scans one work item (the pipeline: `monitor.pipeline.process` bound to its context)."""

DEFAULT_MAX_IN_FLIGHT = 8
STOP_GRACE_S = 20.0
RECLAIM_S = 2.0
"""While scans run, look for newly due items at most this often (after a claim came back short)."""
_POLL_S = 0.5


@dataclass(slots=True)
class DrainReport:
    """What one drain did (for logs, metrics and ``hubsentry scan``'s exit code).

    Attributes:
        claimed (`int`), done (`int`): items taken and finished (including "done with a note").
        noted (`int`): done with a note (gone, gated, unreadable, over budget, commit moved).
        retried (`int`): failed and scheduled again. dead (`int`): out of attempts.
        released (`int`): given back unstarted at a stop. lost (`int`): lease lost to another worker.
        timed_out (`int`): abandoned after ``item_timeout_s``. new_alerts (`list[str]`): alert keys created.
    """

    claimed: int = 0
    done: int = 0
    noted: int = 0
    retried: int = 0
    dead: int = 0
    released: int = 0
    lost: int = 0
    timed_out: int = 0
    new_alerts: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every claimed item finished (notes allowed); nothing failed, died or timed out."""
        return not (self.retried or self.dead or self.timed_out or self.lost)


@dataclass(slots=True)
class _Running:
    item: WorkItem
    started: float


def default_owner() -> str:
    """Lease owner id: ``host:pid:random`` (unique per worker instance, readable in ``queue list``; its
    format is what `monitor.owners.owner_is_dead` checks after a crash)."""
    return process_owner()


class Worker:
    """Drains due work items through an executor; the only place outcomes are recorded.

    Args:
        store (`Store`): the database (its writer thread records everything).
        processor (`Processor`): scans one item; runs on the executor (must be picklable for Dask:
            see `monitor.executor.LazyProcessor`).
        executor (`Executor`): where scans run.
        retry (`RetryPolicy`): attempts and backoff.
        sinks (`Sequence[str]`): outbox sinks for new alerts.
        min_verdict (`str`): ``derived`` or ``inconclusive``.
        lease_s (`float`), item_timeout_s (`float`): see ``[queue]``.
        max_in_flight (`int`): items submitted at once (about the executor's parallelism).
        hubs (`Mapping[str, HubSource]`): used to find a repo's new head after `CommitMoved` and the
            commit URL of "done with a note" outcomes.
        on_scan (`Callable[[ScanOutcome], None] | None`): called with every recorded scan outcome
            (the daemon feeds metrics from it); its errors are logged, never raised.
        clock (`Callable[[], datetime]`), rng (`random.Random`): injectable for tests.
    """

    def __init__(
        self,
        store: Store,
        processor: Processor,
        executor: Executor,
        *,
        retry: RetryPolicy,
        sinks: Sequence[str],
        min_verdict: str = "derived",
        lease_s: float = 300.0,
        item_timeout_s: float = 1800.0,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        hubs: Mapping[str, HubSource] | None = None,
        on_scan: Callable[[ScanOutcome], None] | None = None,
        owner: str | None = None,
        clock: Callable[[], datetime] = utc_now,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.processor = processor
        self.executor = executor
        self.retry = retry
        self.sinks = tuple(sinks)
        self.min_verdict = min_verdict
        self.lease_s = lease_s
        self.item_timeout_s = item_timeout_s
        self.max_in_flight = max(1, max_in_flight)
        self.hubs = dict(hubs or {})
        self.on_scan = on_scan
        self.owner = owner or default_owner()
        self.clock = clock
        self.rng = rng or random.Random()
        self._paused: dict[str, float] = {}  # hub -> monotonic time until which it is paused

    # ------------------------------------------------------------------------------------ main loop

    def drain(self, *, stop: threading.Event | None = None, max_items: int | None = None) -> DrainReport:
        """Process due items until none is due (or ``stop`` is set, or ``max_items`` were claimed).

        On ``stop``: claims nothing more, gives unstarted items back, waits up to `STOP_GRACE_S` for
        running scans, then gives those back too (their lease is released; results arriving later
        are ignored). Returns a `DrainReport`.
        """
        report = DrainReport()
        if stop is None or not stop.is_set():
            self.reclaim_orphans()
        running: dict[Future[ScanOutcome], _Running] = {}
        last_renew = time.monotonic()
        stopping_since: float | None = None
        last_claim_short_at: float | None = None  # when a claim last found fewer due items than asked
        while True:
            if stop is not None and stop.is_set() and stopping_since is None:
                stopping_since = time.monotonic()
                self._release_unstarted(running, report)
            recheck = last_claim_short_at is None or time.monotonic() - last_claim_short_at >= RECLAIM_S
            if stopping_since is None and (not running or recheck):
                asked, got = self._fill(running, report, max_items)
                if got < asked:
                    last_claim_short_at = time.monotonic()
            if not running:
                break  # a claim just found nothing due (or we are stopping, or max_items is reached)
            finished, _ = wait(list(running), timeout=_POLL_S, return_when=FIRST_COMPLETED)
            for future in finished:
                entry = running.pop(future, None)
                if entry is not None:
                    self._handle(future, entry.item, report)
            self._expire(running, report)
            if time.monotonic() - last_renew >= self.lease_s / 3:
                self._renew(running, report)
                last_renew = time.monotonic()
            if stopping_since is not None and time.monotonic() - stopping_since > STOP_GRACE_S:
                self._give_back(list(running.values()), report, why="still running at shutdown")
                running.clear()
        if report.claimed:
            log.info(
                "drain: %d claimed, %d done (%d with a note), %d retried, %d dead, %d released, "
                "%d timed out, %d new alert(s)",
                report.claimed,
                report.done,
                report.noted,
                report.retried,
                report.dead,
                report.released,
                report.timed_out,
                len(report.new_alerts),
            )
        return report

    def reclaim_orphans(self) -> int:
        """Make the items held by dead processes on this host claimable now; returns how many.

        A lease owner is only judged dead when that is certain (`monitor.owners.owner_is_dead`); anything
        else keeps waiting for its lease, as before. Never raises: a store error is logged and retried at
        the next drain.
        """
        now = self.clock()
        try:
            reclaimed = self.store.write(
                lambda db: reclaim_orphaned(
                    db, is_dead=lambda owner, since: owner_is_dead(owner, held_since=since), now=now
                )
            )
        except StoreError as exc:
            log.error("reclaiming the leases of dead processes failed: %s", exc)
            return 0
        for owner, ids in reclaimed.items():
            log.warning(
                "%d item(s) were held by %s, which is no longer running (killed?): scanning them again now "
                "instead of after their lease (ids %s)",
                len(ids),
                owner,
                ", ".join(map(str, ids[:20])) + (" ..." if len(ids) > 20 else ""),
            )
        return sum(len(ids) for ids in reclaimed.values())

    def next_due(self) -> datetime | None:
        """When the next item becomes claimable by this worker (None: nothing is waiting).

        The earliest retry time or lease expiry per hub, but not before the end of a pause this worker
        keeps for a rate-limited hub, so a scheduler that follows it never spins on items it may not claim.

        Raises:
            `StoreError`: the database could not be read.
        """
        with self.store.read() as db:
            due_by_hub = next_due_by_hub(db)
        if not due_by_hub:
            return None
        now, now_mono = self.clock(), time.monotonic()
        dues = []
        for hub, due in due_by_hub.items():
            paused_until = self._paused.get(hub, 0.0)
            if paused_until > now_mono:
                due = max(due, now + timedelta(seconds=paused_until - now_mono))
            dues.append(due)
        return min(dues)

    def _fill(
        self, running: dict[Future[ScanOutcome], _Running], report: DrainReport, max_items: int | None
    ) -> tuple[int, int]:
        """Claim and submit due items up to the in-flight limit; returns (asked, claimed)."""
        free = self.max_in_flight - len(running)
        if max_items is not None:
            free = min(free, max_items - report.claimed)
        if free <= 0:
            return 0, 0
        now_mono = time.monotonic()
        paused = tuple(hub for hub, until in self._paused.items() if until > now_mono)
        now = self.clock()
        try:
            items = self.store.write(
                lambda db: claim_due(
                    db,
                    owner=self.owner,
                    limit=free,
                    lease_s=self.lease_s,
                    max_attempts=self.retry.max_attempts,
                    now=now,
                    exclude_hubs=paused,
                )
            )
        except StoreError as exc:  # keep collecting what is running; the next drain claims again
            log.error("claiming work items failed: %s", exc)
            return free, 0
        report.claimed += len(items)
        for index, item in enumerate(items):
            if item.attempts > 1:
                log.info(
                    "retrying %s (attempt %d/%d)",
                    item.ref,
                    item.attempts,
                    self.retry.max_attempts,
                    extra=_ctx(item),
                )
            try:
                future = self.executor.submit(self.processor, item)
            except (
                Exception
            ) as exc:  # executor closed, or the processor cannot be serialised: nothing is lost
                log.error("cannot submit %s to the executor: %s", item.ref, exc, extra=_ctx(item))
                self._give_back(
                    [_Running(rest, now_mono) for rest in items[index:]], report, why="submit failed"
                )
                return free, 0
            running[future] = _Running(item, time.monotonic())
        return free, len(items)

    # ------------------------------------------------------------------------------------ outcomes

    def _handle(self, future: Future[ScanOutcome], item: WorkItem, report: DrainReport) -> None:
        try:
            outcome = future.result()
        except CancelledError:
            self._give_back([_Running(item, 0.0)], report, why="cancelled")
            return
        except BaseException as exc:  # the processor's failure, whatever it is, is classified
            self._failed(item, exc, report)
            return
        if self._record(item, outcome, report) and self.on_scan is not None:
            try:
                self.on_scan(outcome)
            except Exception:  # an observer must never break the queue
                log.exception("on_scan observer failed for %s", item.ref)

    def _record(
        self, item: WorkItem, outcome: ScanOutcome, report: DrainReport, *, note: str | None = None
    ) -> bool:
        now = self.clock()
        try:
            recorded = self.store.write(
                lambda db: record_outcome(
                    db,
                    item,
                    outcome,
                    sinks=self.sinks,
                    min_verdict=self.min_verdict,
                    owner=self.owner,
                    now=now,
                    note=note,
                )
            )
        except LeaseLostError:
            report.lost += 1
            log.warning(
                "%s: lease lost before the outcome was recorded; its new owner records it",
                item.ref,
                extra=_ctx(item),
            )
            return False
        except ValueError as exc:  # the processor returned an outcome for another commit: a bug, retried
            self._failed(item, exc, report)
            return False
        except StoreError as exc:
            # the item keeps its lease; when the lease expires it is claimed again (nothing is lost)
            report.retried += 1
            log.error(
                "%s: recording the outcome failed: %s; the item will be scanned again",
                item.ref,
                exc,
                extra=_ctx(item),
            )
            return False
        report.done += 1
        report.new_alerts.extend(recorded.new_alerts)
        for key in recorded.new_alerts:
            log.warning(
                "new alert %s: %s looks derived from a protected model",
                key[:12],
                item.ref,
                extra={**_ctx(item), "alert_key": key},
            )
        return True

    def _failed(self, item: WorkItem, exc: BaseException, report: DrainReport) -> None:
        disposition = classify(exc)
        if disposition.action == "done":
            log.warning("%s: done without a verdict: %s", item.ref, disposition.note, extra=_ctx(item))
            outcome = ScanOutcome(
                hub=item.hub,
                repo_id=item.repo_id,
                commit=item.commit_sha,
                url=self._commit_url(item),
                notes=(disposition.note,),
            )
            if self._record(item, outcome, report, note=disposition.note):
                report.noted += 1
                if disposition.enqueue_head:
                    self._enqueue_head(item)
            return
        if disposition.pause_hub_s > 0:
            self._paused[item.hub] = time.monotonic() + disposition.pause_hub_s
        attempts = item.attempts - 1 if disposition.refund else item.attempts
        wait_s = max(disposition.wait_s, self.retry.delay(max(attempts, 1), self.rng))
        now = self.clock()
        try:
            state = self.store.write(
                lambda db: fail(
                    db,
                    item.id,
                    owner=self.owner,
                    error=disposition.note,
                    retry_at=now + timedelta(seconds=wait_s),
                    max_attempts=self.retry.max_attempts,
                    now=now,
                    refund_attempt=disposition.refund,
                )
            )
        except LeaseLostError:
            report.lost += 1
            log.warning("%s: lease lost while recording a failure", item.ref, extra=_ctx(item))
            return
        except StoreError as store_exc:
            report.retried += 1
            log.error("%s: recording the failure failed: %s", item.ref, store_exc, extra=_ctx(item))
            return
        if state == "dead":
            report.dead += 1
            log.error(
                "%s: giving up after %d attempts: %s (hubsentry queue requeue %d)",
                item.ref,
                attempts,
                disposition.note,
                item.id,
                extra=_ctx(item),
            )
        else:
            report.retried += 1
            expected = isinstance(exc, HubError | StoreError)
            log.log(
                logging.WARNING if expected else logging.ERROR,
                "%s: attempt %d/%d failed%s: %s; retry in %.0fs",
                item.ref,
                item.attempts,
                self.retry.max_attempts,
                " (not counted)" if disposition.refund else "",
                disposition.note,
                wait_s,
                exc_info=None if expected else exc,
                extra=_ctx(item),
            )

    def _commit_url(self, item: WorkItem) -> str:
        hub = self.hubs.get(item.hub)
        if hub is None:
            return ""
        try:
            return hub.commit_url(item.repo_id, item.commit_sha)
        except ValueError:  # an id the hub client refuses: the note still stands
            return ""

    def _enqueue_head(self, item: WorkItem) -> None:
        hub = self.hubs.get(item.hub)
        if hub is None:
            log.info("%s: no hub client to find the new head; the modified pass will list it", item.ref)
            return
        try:
            head = hub.snapshot(item.repo_id).commit
        except HubError as exc:
            log.warning(
                "%s: finding the new head failed (%s); the modified pass will list it",
                item.ref,
                exc,
                extra=_ctx(item),
            )
            return
        if head == item.commit_sha:
            return
        now = self.clock()
        try:
            new = self.store.write(
                lambda db: enqueue(db, [NewItem(item.hub, item.repo_id, head, "commit-moved")], now=now)
            )
        except StoreError as exc:
            log.error(
                "%s: enqueueing the new head failed (%s); the modified pass will list it", item.ref, exc
            )
            return
        if new[0]:
            log.info("%s: new head %s enqueued", item.ref, head[:12], extra=_ctx(item))

    # ------------------------------------------------------------------------------------ leases

    def _renew(self, running: dict[Future[ScanOutcome], _Running], report: DrainReport) -> None:
        ids = [entry.item.id for entry in running.values()]
        if not ids:
            return
        now = self.clock()
        try:
            lost = set(
                self.store.write(
                    lambda db: renew_leases(db, ids, owner=self.owner, lease_s=self.lease_s, now=now)
                )
            )
        except StoreError as exc:
            log.error("renewing leases failed: %s", exc)
            return
        for future, entry in list(running.items()):
            if entry.item.id in lost:
                running.pop(future)
                report.lost += 1
                log.warning(
                    "%s: lease lost while scanning; abandoning this attempt",
                    entry.item.ref,
                    extra=_ctx(entry.item),
                )

    def _expire(self, running: dict[Future[ScanOutcome], _Running], report: DrainReport) -> None:
        now_mono = time.monotonic()
        for future, entry in list(running.items()):
            if now_mono - entry.started <= self.item_timeout_s:
                continue
            running.pop(future)
            future.cancel()
            report.timed_out += 1  # also counted as retried (or dead) by _failed
            self._failed(
                entry.item,
                TimeoutError(f"scan did not finish within {self.item_timeout_s:.0f}s (queue.item_timeout)"),
                report,
            )

    def _release_unstarted(self, running: dict[Future[ScanOutcome], _Running], report: DrainReport) -> None:
        unstarted = [(future, entry) for future, entry in running.items() if future.cancel()]
        for future, _ in unstarted:
            running.pop(future)
        self._give_back([entry for _, entry in unstarted], report, why="stopping")

    def _give_back(self, entries: list[_Running], report: DrainReport, *, why: str) -> None:
        if not entries:
            return
        ids = [entry.item.id for entry in entries]
        now = self.clock()
        try:
            released = self.store.write(lambda db: release(db, ids, owner=self.owner, now=now))
        except StoreError as exc:
            log.error("giving %d item(s) back failed (%s); their leases expire instead", len(ids), exc)
            return
        report.released += released
        log.info("%d item(s) given back to the queue (%s)", released, why)


def _ctx(item: WorkItem) -> dict[str, object]:
    return {
        "hub": item.hub,
        "repo_id": item.repo_id,
        "commit": item.commit_sha,
        "item_id": item.id,
        "attempt": item.attempts,
    }
