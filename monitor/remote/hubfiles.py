"""`HubFileSet`: the files of one hub repo at one commit, as a `FileSet`.

The set is built from a `RepoSnapshot` (no request is made until a file is read). Every file
opened from it shares one `ReadStats` and one `ByteBudget`, so a repo's cost is counted and capped
once whatever the number of shards, and each file's source is kept for the life of the set, so
its cached storage URL and observed ETag survive between reads.
"""

from __future__ import annotations

import threading

from monitor.errors import NotFound
from monitor.hubs.base import RepoSnapshot
from monitor.remote.http import HttpRangeSource
from monitor.remote.source import ByteBudget, FileEntry, ReadStats
from monitor.remote.transport import HubHttpClient

__all__ = ["HubFileSet"]


class HubFileSet:
    """A hub repo pinned to ``snapshot.commit``, readable file by file.

    Args:
        snapshot (`RepoSnapshot`): the pinned repo and its file list.
        client (`HubHttpClient`): the hub's shared client.
        budget (`int | None`): bytes this set may read in total (``None``: unlimited).

    Attributes:
        ref (`str`): ``org/name@<commit>``.
        commit (`str`): the pinned commit.
        files (`dict[str, FileEntry]`): the snapshot's files.
        stats (`ReadStats`), budget (`ByteBudget`): shared by every file of the set.
    """

    def __init__(self, snapshot: RepoSnapshot, client: HubHttpClient, *, budget: int | None) -> None:
        self.snapshot = snapshot
        self.ref = f"{snapshot.repo_id}@{snapshot.commit}"
        self.commit: str | None = snapshot.commit
        self.files: dict[str, FileEntry] = dict(snapshot.files)
        self.stats = ReadStats()
        self.budget = ByteBudget(budget)
        self._client = client
        self._sources: dict[str, HttpRangeSource] = {}
        self._lock = threading.Lock()

    def open(self, path: str) -> HttpRangeSource:
        """The ranged-read source of ``path`` (the same object on every call).

        Raises:
            `NotFound`: ``path`` is not in the snapshot.
        """
        entry = self.files.get(path)
        if entry is None:
            raise NotFound(f"{self.ref}: no file {path!r} in this snapshot")
        with self._lock:
            source = self._sources.get(path)
            if source is None:
                source = HttpRangeSource(
                    self._client,
                    repo_id=self.snapshot.repo_id,
                    commit=self.snapshot.commit,
                    entry=entry,
                    stats=self.stats,
                    budget=self.budget,
                )
                self._sources[path] = source
            return source

    def close(self) -> None:
        """Forget the per-file state; the shared client stays open (it belongs to the hub source)."""
        with self._lock:
            self._sources.clear()

    def __repr__(self) -> str:
        return f"HubFileSet({self.ref!r}, files={len(self.files)})"
