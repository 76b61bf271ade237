"""An in-memory `FileSet`, so `ModelView` can be fuzzed end to end without files or a hub."""

from __future__ import annotations

from collections.abc import Mapping

from monitor.errors import NotFound
from monitor.formats.fuzz import MemorySource
from monitor.remote.source import ByteBudget, FileEntry, ReadStats

__all__ = ["MemoryFileSet"]


class MemoryFileSet:
    """The files of one model held in memory, with a byte budget like a hub repo's.

    Args:
        files (`Mapping[str, bytes]`): repo-relative path -> content.
        budget (`int | None`): the per-repo byte budget (``None``: unlimited).
    """

    def __init__(self, files: Mapping[str, bytes], *, budget: int | None = None) -> None:
        self.ref = "memory"
        self.commit: str | None = None
        self.stats = ReadStats()
        self.budget = ByteBudget(budget)
        self._data = dict(files)
        self.files = {path: FileEntry(path, len(data)) for path, data in self._data.items()}

    def open(self, path: str) -> MemorySource:
        """A source over one file; `NotFound` when the set has no such file (as a hub snapshot)."""
        if path not in self._data:
            raise NotFound(f"{self.ref}: no file {path!r}")
        return MemorySource(self._data[path], path=path)
