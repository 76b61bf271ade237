"""Finding what to scan: walk each hub's listings newest-first and enqueue every new (repo, commit).

Two passes per hub and cycle: ``sort="created"`` (new repos) and ``sort="modified"`` (new commits, and
repos made public late, which keep an old ``createdAt``). Each pass has a durable cursor
(`monitor.store.cursors`) and walks until it reaches an item older than ``high_water - overlap``; the
overlap re-checks a window below the cursor because listings are not perfectly ordered by visibility
(an index can show a repo a few minutes after its timestamp). Each listed (repo, commit) is enqueued
with ``INSERT OR IGNORE``, so re-walking the overlap, or a whole pass after a crash, enqueues nothing twice.

The cursor only moves in the same transaction as the last enqueue of the pass, never before, so a
crash or a listing error can re-send (harmlessly) but never skip. Specifically:

* A listing error (5xx, 429, timeout) keeps what was enqueued so far, records ``last_error`` and
  leaves the cursor where it was: the next cycle walks the same range again.
* An item whose commit must be resolved (listing without ``sha``) and whose resolution fails is
  skipped for now, and the high water stops just below it, so the next cycle retries it; a repo that
  is gone (404) is skipped for good.
* ``max_repos_per_cycle`` bounds the *new* repos one pass enqueues (plus commit look-ups). When it
  stops a pass early, the range it covered is kept as a resume band ``(resume_after, resume_top]``
  above the unchanged high water: the next cycle skips that band and continues below it, so nothing
  in between is skipped.
* The high water never moves past our own clock: a repo listed with a timestamp in the future must not
  blind the scanner to everything before it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlite_utils import Database

from monitor.config import HubConfig
from monitor.errors import HubError, NotFound, RateLimited, StoreError
from monitor.hubs.base import HubSource, RepoEvent, SortKey
from monitor.store import NewItem, Store, enqueue, get_cursor, record_cursor_error, save_cursor, utc_now

__all__ = ["SORTS", "PassReport", "ScanPolicy", "event_time", "poll_hub", "poll_pass"]

log = logging.getLogger(__name__)

SORTS: tuple[SortKey, ...] = ("created", "modified")
ENQUEUE_BATCH = 200
_TICK = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class ScanPolicy:
    """How one hub is walked (from its ``[[hubs]]`` entry).

    Attributes:
        overlap_s (`float`): re-check window below the cursor.
        max_repos_per_cycle (`int`): new repos enqueued (plus commit look-ups) per pass at most.
        initial_lookback_s (`float`): how far back a pass with no cursor yet starts.
    """

    overlap_s: float
    max_repos_per_cycle: int
    initial_lookback_s: float

    @classmethod
    def from_config(cls, hub: HubConfig) -> ScanPolicy:
        return cls(
            overlap_s=hub.overlap_s,
            max_repos_per_cycle=hub.max_repos_per_cycle,
            initial_lookback_s=hub.initial_lookback_s,
        )


@dataclass(slots=True)
class PassReport:
    """What one listing pass did (logged, returned to the daemon for metrics and ``scan``'s exit code).

    Attributes:
        seen (`int`): listing items looked at (above the stop point).
        enqueued (`int`): new work items. known (`int`): already queued. skipped (`int`): inside the
            resume band.
        resolved (`int`): commits looked up because the listing had none. gone (`int`): repos deleted
            before they could be looked up.
        item_errors (`list[str]`): look-ups that failed (retried next cycle).
        complete (`bool`): the walk reached the cursor (or the end of the listing).
        error (`str | None`): the listing failed; the cursor was not moved.
    """

    hub: str
    sort: SortKey
    seen: int = 0
    enqueued: int = 0
    known: int = 0
    skipped: int = 0
    resolved: int = 0
    gone: int = 0
    item_errors: list[str] = field(default_factory=list)
    complete: bool = False
    stopped: bool = False
    error: str | None = None
    high_water: datetime | None = None

    @property
    def ok(self) -> bool:
        """No listing error and no failed look-up."""
        return self.error is None and not self.item_errors


def event_time(event: RepoEvent, sort: SortKey) -> datetime | None:
    """The listing's sort key for ``event`` as aware UTC (``None`` when the listing omitted it)."""
    moment = event.created_at if sort == "created" else event.last_modified
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class _Pass:
    """State of one walk; flushes enqueues in batches and saves the cursor with the last one."""

    def __init__(
        self, store: Store, hub: HubSource, sort: SortKey, policy: ScanPolicy, now: datetime
    ) -> None:
        self.store, self.hub, self.sort, self.policy, self.now = store, hub, sort, policy, now
        self.report = PassReport(hub=hub.name, sort=sort)
        with store.read() as db:
            cursor = get_cursor(db, hub.name, sort)
        self.had_high_water = cursor is not None and cursor.high_water is not None
        self.high_water = (
            cursor.high_water
            if cursor is not None and cursor.high_water is not None
            else now - timedelta(seconds=policy.initial_lookback_s)
        )
        self.stop_below = self.high_water - timedelta(seconds=policy.overlap_s)
        # the stored resume band, and the part of it that is skipped (its top overlap is re-checked)
        self.band: tuple[datetime, datetime] | None = None
        self.skip: tuple[datetime, datetime] | None = None
        if cursor is not None and cursor.resume_after is not None and cursor.resume_top is not None:
            self.band = (cursor.resume_after, cursor.resume_top)
            self.skip = (cursor.resume_after, cursor.resume_top - timedelta(seconds=policy.overlap_s))
        self.budget = policy.max_repos_per_cycle
        self.batch: list[NewItem] = []
        self.batch_charged: list[bool] = []
        self.top: datetime | None = None  # newest time looked at
        self.low: datetime | None = None  # oldest time fully handled (enqueued, known or gone)
        self.blocked: datetime | None = None  # newest time whose look-up failed

    def in_band(self, moment: datetime | None) -> bool:
        return self.skip is not None and moment is not None and self.skip[0] < moment <= self.skip[1]

    def flush(self, finish: Callable[[Database], None] | None = None) -> None:
        """Enqueue the batch (and run ``finish`` in the same transaction); update counts and budget."""
        batch, charged = self.batch, self.batch_charged
        self.batch, self.batch_charged = [], []

        def write(db: Database) -> list[bool]:
            inserted = enqueue(db, batch, now=self.now) if batch else []
            if finish is not None:
                finish(db)
            return inserted

        inserted = self.store.write(write)
        for was_new, was_charged in zip(inserted, charged, strict=True):
            if was_new:
                self.report.enqueued += 1
            else:
                self.report.known += 1
            if was_new or was_charged:
                self.budget -= 1


def poll_pass(
    store: Store,
    hub: HubSource,
    *,
    sort: SortKey,
    policy: ScanPolicy,
    now: datetime | None = None,
    stop: threading.Event | None = None,
) -> PassReport:
    """Walk one listing of ``hub`` down to its cursor and enqueue what is new.

    Never raises for hub errors (they are recorded on the cursor and in the report); raises
    `StoreError` only if the database cannot be written, with the cursor unchanged.
    """
    now = now or utc_now()
    state = _Pass(store, hub, sort, policy, now)
    report = state.report
    try:
        for event in hub.list_changes(sort=sort):
            if stop is not None and stop.is_set():
                report.stopped = True
                break
            moment = event_time(event, sort)
            if moment is not None and moment < state.stop_below:
                report.complete = True
                break
            report.seen += 1
            if moment is not None and (state.top is None or moment > state.top):
                state.top = moment
            if state.in_band(moment):
                report.skipped += 1
                continue
            commit, resolved = event.commit, False
            if commit is None:
                try:
                    commit = hub.snapshot(event.repo_id).commit
                    resolved = True
                    report.resolved += 1
                except NotFound:
                    report.gone += 1
                    log.info("%s: %s is gone before its commit could be resolved", hub.name, event.repo_id)
                    if moment is not None:
                        state.low = moment
                    state.budget -= 1
                    continue
                except RateLimited:
                    raise  # every further look-up would fail too: end the pass as a listing error
                except HubError as exc:
                    report.item_errors.append(f"{event.repo_id}: {type(exc).__name__}: {exc}")
                    log.warning(
                        "%s: resolving the head commit of %s failed (%s: %s); retried next cycle",
                        hub.name,
                        event.repo_id,
                        type(exc).__name__,
                        exc,
                        extra={"hub": hub.name, "repo_id": event.repo_id},
                    )
                    if moment is not None and (state.blocked is None or moment > state.blocked):
                        state.blocked = moment
                    state.budget -= 1
                    continue
            state.batch.append(NewItem(hub.name, event.repo_id, commit, listed_by=sort))
            # an item without a listing time cannot be placed against the cursor: charge it to the budget
            state.batch_charged.append(resolved or moment is None)
            if moment is not None:
                state.low = moment
            if len(state.batch) >= min(ENQUEUE_BATCH, max(state.budget, 1)):
                state.flush()
            if state.budget <= 0:
                break
        else:
            report.complete = True
    except StoreError:
        raise
    except Exception as exc:  # any listing failure: keep what was enqueued, record it, leave the cursor
        report.error = f"{type(exc).__name__}: {exc}"
        message = f"listing {sort} failed: {report.error}"
        log.log(
            # the request budget (ours, or the hub's 429) binding is expected and bounded, not an error
            logging.WARNING if isinstance(exc, RateLimited) else logging.ERROR,
            "%s: %s; the cursor stays, the next cycle walks this range again",
            hub.name,
            message,
            exc_info=None if isinstance(exc, HubError) else exc,
            extra={"hub": hub.name, "sort": sort},
        )
        state.flush(lambda db: record_cursor_error(db, hub=hub.name, sort=sort, error=message, now=now))
        report.high_water = state.high_water if state.had_high_water else None
        return report
    _finish(state)
    return report


def _finish(state: _Pass) -> None:
    """Flush the last batch and move the cursor in the same transaction."""
    report, now = state.report, state.now
    top = min(state.top, now) if state.top is not None else None
    resume_after: datetime | None = None
    resume_top: datetime | None = None
    high_water = state.high_water
    if report.complete:
        if top is not None and top > high_water:
            high_water = top
        if state.blocked is not None:
            high_water = max(state.high_water, min(high_water, state.blocked - _TICK))
    elif state.low is not None and top is not None:
        # interrupted: remember the covered band (low, top]; a failed look-up inside it cuts it
        low = state.low if state.blocked is None else max(state.low, state.blocked)
        if low < top:
            resume_after, resume_top = low, top
    elif state.band is not None:
        resume_after, resume_top = state.band  # nothing handled this time: keep the band we had
    report.high_water = high_water
    errors = "; ".join(report.item_errors)

    def finish(db: Database) -> None:
        save_cursor(
            db,
            hub=report.hub,
            sort=report.sort,
            high_water=high_water,
            resume_after=resume_after,
            resume_top=resume_top,
            now=now,
        )
        if errors:
            record_cursor_error(db, hub=report.hub, sort=report.sort, error=errors, now=now)

    state.flush(finish)
    log.info(
        "%s: %s pass %s: %d seen, %d new, %d known, %d in resume band, %d resolved, %d gone, %d failed",
        report.hub,
        report.sort,
        "complete" if report.complete else ("stopped" if report.stopped else "cut at max_repos_per_cycle"),
        report.seen,
        report.enqueued,
        report.known,
        report.skipped,
        report.resolved,
        report.gone,
        len(report.item_errors),
        extra={"hub": report.hub, "sort": report.sort},
    )


def poll_hub(
    store: Store,
    hub: HubSource,
    *,
    policy: ScanPolicy,
    now: datetime | None = None,
    stop: threading.Event | None = None,
) -> list[PassReport]:
    """Both passes (``created`` then ``modified``) for one hub; stops early if ``stop`` is set."""
    reports = []
    for sort in SORTS:
        if stop is not None and stop.is_set():
            break
        reports.append(poll_pass(store, hub, sort=sort, policy=policy, now=now, stop=stop))
    return reports
