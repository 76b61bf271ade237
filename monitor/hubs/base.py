"""What a model hub looks like to the scanner: listings, snapshots, and files to read.

A `HubSource` hides one hub's API (Hugging Face first). The scanner owns the durable cursors and
decides what is new; the source only answers "what changed, newest first" and "what is in this repo
at this commit". Everything a source returns is plain data, so work items can be stored and
replayed after a crash.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable

from monitor.remote.source import FileEntry, FileSet

__all__ = ["HubSource", "RepoEvent", "RepoSnapshot", "SortKey"]

SortKey = Literal["created", "modified"]


@dataclass(frozen=True)
class RepoEvent:
    """One repo seen in a listing.

    Attributes:
        hub (`str`): configured hub name.
        repo_id (`str`): ``org/name``.
        commit (`str | None`): head commit if the listing carried it (``sha``), else ``None``.
        created_at (`datetime | None`): UTC creation time as listed.
        last_modified (`datetime | None`): UTC time of the last commit as listed.
    """

    hub: str
    repo_id: str
    commit: str | None
    created_at: datetime | None
    last_modified: datetime | None


@dataclass(frozen=True)
class RepoSnapshot:
    """A repo pinned to one commit, with its file list; no file content has been read.

    Attributes:
        hub (`str`), repo_id (`str`), commit (`str`): identity; ``commit`` is 40 lowercase hex.
        files (`dict[str, FileEntry]`): every file with size and, for LFS files, SHA-256.
        created_at, last_modified (`datetime | None`): as the hub reports them.
        gated (`bool`), private (`bool`): access flags; gated repos are fingerprinted from metadata only.
        tags (`tuple[str, ...]`), base_models (`tuple[str, ...]`): declared lineage, kept as evidence.
        url (`str`): the human-facing page of this commit.
    """

    hub: str
    repo_id: str
    commit: str
    files: dict[str, FileEntry]
    created_at: datetime | None = None
    last_modified: datetime | None = None
    gated: bool = False
    private: bool = False
    tags: tuple[str, ...] = ()
    base_models: tuple[str, ...] = ()
    url: str = ""
    extra: dict[str, object] = field(default_factory=dict)


@runtime_checkable
class HubSource(Protocol):
    """One model hub.

    Attributes:
        name (`str`): the configured name, used in cursors, work items and alerts.
        endpoint (`str`): base URL.
    """

    name: str
    endpoint: str

    def list_changes(self, *, sort: SortKey, limit: int | None = None) -> Iterator[RepoEvent]:
        """Yield repos newest first by creation or last modification; the caller stops early."""
        ...

    def snapshot(self, repo_id: str, revision: str | None = None) -> RepoSnapshot:
        """Resolve ``revision`` (default: the main branch) to a commit and list its files."""
        ...

    def open_files(self, snapshot: RepoSnapshot, *, budget: int | None) -> FileSet:
        """A `FileSet` reading this snapshot's files by range requests pinned to its commit."""
        ...

    def commit_url(self, repo_id: str, commit: str) -> str:
        """Link to the exact commit for humans (alert evidence)."""
        ...
