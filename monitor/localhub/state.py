"""What the local hub remembers across restarts, in ``DIR/.localhub/state.json``.

Two things must survive a restart: file digests (hashing a folder of multi-GB checkpoints again on every
start is not an option), and each repo's timeline (``createdAt`` and when its current commit was first
seen), which a hub poller treats as facts. Digests are keyed by ``(path, size, mtime_ns)``: a changed
file gets a new digest, an untouched one is never re-read.

The file is rewritten atomically (temp file + ``os.replace``). A corrupt state file is moved aside
(``state.json.corrupt-<time>``) rather than deleted, and an unwritable folder (read-only mount, full
disk) downgrades to in-memory state with a warning: serving never fails because of the state file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["STATE_DIRNAME", "FileDigest", "HubState", "RepoTimeline"]

log = logging.getLogger(__name__)

STATE_DIRNAME = ".localhub"
_STATE_FILE = "state.json"
_STATE_VERSION = 1


@dataclass(frozen=True)
class FileDigest:
    """Digests of one real file at one ``(size, mtime_ns)``.

    Attributes:
        size (`int`), mtime_ns (`int`): the stat identity the digests belong to.
        sha256 (`str | None`): full-file SHA-256 (LFS files only).
        blob_id (`str`): git blob SHA-1 of the content (small files) or of the LFS pointer (LFS files).
    """

    size: int
    mtime_ns: int
    sha256: str | None
    blob_id: str


@dataclass(frozen=True)
class RepoTimeline:
    """When a repo appeared and when its current commit appeared (epoch milliseconds)."""

    created_at_ms: int
    last_modified_ms: int
    commit: str


class HubState:
    """Load, query and persist the state of one served folder.

    Args:
        state_dir (`Path`): usually ``DIR/.localhub``; created on first save.
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / _STATE_FILE
        self._lock = threading.Lock()
        self._repos: dict[str, dict[str, Any]] = {}
        self._dirty = False
        self._last_error: str | None = None
        self._load()

    def _load(self) -> None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("localhub: cannot read %s (%s); starting with empty state", self.path, exc)
            return
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("version") != _STATE_VERSION:
                raise ValueError(f"unsupported state version {data.get('version')!r}")
            repos = data.get("repos")
            if not isinstance(repos, dict) or not all(isinstance(v, dict) for v in repos.values()):
                raise ValueError("'repos' must map repo ids to objects")
            self._repos = repos
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            aside = self.path.with_name(f"{_STATE_FILE}.corrupt-{int(time.time())}")
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            log.warning(
                "localhub: %s is unreadable (%s); moved it to %s and started afresh",
                self.path,
                exc,
                aside.name,
            )

    # -- digests -----------------------------------------------------------------------------------

    def digest(self, repo_id: str, path: str, *, size: int, mtime_ns: int) -> FileDigest | None:
        """The cached digests of a file if its size and mtime are unchanged."""
        with self._lock:
            entry = self._repos.get(repo_id, {}).get("files", {}).get(path)
        if not isinstance(entry, list) or len(entry) != 4:
            return None
        try:
            cached = FileDigest(int(entry[0]), int(entry[1]), entry[2], str(entry[3]))
        except (TypeError, ValueError):
            return None
        if cached.size != size or cached.mtime_ns != mtime_ns:
            return None
        return cached

    def set_digests(self, repo_id: str, digests: dict[str, FileDigest]) -> None:
        """Replace the digest cache of a repo by the digests of its current files."""
        files = {p: [d.size, d.mtime_ns, d.sha256, d.blob_id] for p, d in digests.items()}
        with self._lock:
            entry = self._repos.setdefault(repo_id, {})
            if entry.get("files") != files:
                entry["files"] = files
                self._dirty = True

    # -- timelines ---------------------------------------------------------------------------------

    def timeline(self, repo_id: str) -> RepoTimeline | None:
        with self._lock:
            entry = self._repos.get(repo_id)
        if not entry:
            return None
        try:
            return RepoTimeline(
                int(entry["created_at_ms"]), int(entry["last_modified_ms"]), str(entry["commit"])
            )
        except (KeyError, TypeError, ValueError):
            return None

    def set_timeline(self, repo_id: str, timeline: RepoTimeline) -> None:
        with self._lock:
            entry = self._repos.setdefault(repo_id, {})
            new = {
                "created_at_ms": timeline.created_at_ms,
                "last_modified_ms": timeline.last_modified_ms,
                "commit": timeline.commit,
            }
            if any(entry.get(k) != v for k, v in new.items()):
                entry.update(new)
                self._dirty = True

    def forget(self, repo_id: str) -> None:
        """Drop a repo whose folder is gone (a repo created again later is a new repo)."""
        with self._lock:
            if self._repos.pop(repo_id, None) is not None:
                self._dirty = True

    def known_repos(self) -> list[str]:
        with self._lock:
            return list(self._repos)

    # -- persistence -------------------------------------------------------------------------------

    def save(self) -> bool:
        """Write the state if it changed; return whether it is now on disk."""
        with self._lock:
            if not self._dirty:
                return True
            payload = json.dumps({"version": _STATE_VERSION, "repos": self._repos}, sort_keys=True)
            self._dirty = False
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.state_dir, prefix=".state-", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write(payload)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            with self._lock:
                self._dirty = True
            message = f"{type(exc).__name__}: {exc}"
            if message != self._last_error:
                log.warning("localhub: cannot write %s (%s); keeping state in memory", self.path, message)
                self._last_error = message
            return False
        self._last_error = None
        return True
