"""The repo model of the local hub: a folder ``DIR/org/name/...`` is a model repo at one commit.

* Names are validated as huggingface_hub validates repo ids; folders with other names are skipped
  (and reported in `RepoIndex.problems`).
* Dot-files and dot-folders inside a repo are invisible, except the optional sidecar ``.hub.json``
  (visibility, gating, dates, counters, tags, cardData; see `Sidecar`). ``<file>.virtual.json`` is
  served as ``<file>`` (see `monitor.localhub.virtual`).
* Each file gets its size and git blob id; LFS-like files (weights by suffix, or any file of 10 MiB and
  more) also get the full-file SHA-256 and an LFS pointer, whose git blob id is what the Hub lists as
  ``blobId``/``oid`` for LFS files. Digests are cached by ``(path, size, mtime_ns)`` in memory and in
  ``DIR/.localhub/state.json``.
* The commit is a SHA-1 over the sorted ``(path, size, digest)`` list: any change of content is a new
  commit, an untouched repo keeps its commit across restarts. Only the current commit exists; older
  commits answer ``RevisionNotFound``, like a force-push whose history was garbage-collected.
* ``createdAt`` is fixed when the hub first sees a repo (its oldest file mtime, capped at now) and
  persisted; ``lastModified`` is when the current commit was first seen (for a repo seen for the first
  time: its newest file mtime). The sidecar may override both.
* Symlinks are followed only to regular files inside ``DIR``; anything else is refused.

The folder may change while the hub serves it: `RepoIndex.scan` (every listing) and `RepoIndex.repo`
(every per-repo request) re-stat the files and only re-hash those whose size or mtime changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from monitor.errors import FormatError
from monitor.localhub.sidecar import MAX_SIDECAR_BYTES, SIDECAR_NAME, Sidecar, parse_sidecar
from monitor.localhub.state import STATE_DIRNAME, FileDigest, HubState, RepoTimeline
from monitor.localhub.virtual import VIRTUAL_SUFFIX, VirtualFile, open_virtual
from monitor.remote.source import git_blob_sha1, sha256_of_file

__all__ = [
    "LFS_SUFFIXES",
    "LFS_THRESHOLD",
    "BrokenRepoError",
    "Repo",
    "RepoFile",
    "RepoIndex",
    "StaleFileError",
    "is_lfs",
    "lfs_pointer",
    "valid_repo_path",
]

log = logging.getLogger(__name__)

LFS_SUFFIXES = frozenset(
    {".safetensors", ".gguf", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx"}
)
LFS_THRESHOLD = 10 * 1024 * 1024
MAX_PATH_CHARS = 1024
_MAX_DEPTH = 32
_COMMIT_DOMAIN = b"hubsentry-localhub-commit-v1\n"


def is_lfs(path: str, size: int) -> bool:
    """Whether the Hub would store this file in LFS/Xet (weights by suffix, or large files)."""
    return os.path.splitext(path)[1].lower() in LFS_SUFFIXES or size >= LFS_THRESHOLD


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file git stores instead of the content."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def valid_repo_path(path: str) -> bool:
    """A repo-relative path the hub can serve: no traversal, absolute path, backslash or control char."""
    if not path or len(path) > MAX_PATH_CHARS or path.startswith("/") or "\\" in path:
        return False
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        return False
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes from the file system (surrogate escapes)
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


class BrokenRepoError(Exception):
    """The repo folder exists but cannot be served as it is (e.g. an invalid ``.hub.json``)."""


class StaleFileError(Exception):
    """A file changed between the last scan and the read; rescan and try again."""


@dataclass(frozen=True)
class RepoFile:
    """One served file of a repo at its current commit.

    Attributes:
        path (`str`): repo-relative, forward slashes.
        size (`int`): bytes.
        blob_id (`str`): git blob SHA-1 (of the LFS pointer for LFS files).
        sha256 (`str | None`): full-file SHA-256 for LFS files (spec hash for virtual files).
        mtime_ns (`int`): modification time of the file (of the spec for virtual files).
        fs_path (`Path | None`): the real file (symlinks resolved); ``None`` for virtual files.
        identity (`tuple[int, int]`): ``(st_dev, st_ino)`` seen at scan time, checked on open.
        virtual (`VirtualFile | None`): the generator of a virtual file.
    """

    path: str
    size: int
    blob_id: str
    sha256: str | None
    mtime_ns: int
    fs_path: Path | None = None
    identity: tuple[int, int] = (0, 0)
    virtual: VirtualFile | None = field(default=None, compare=False)

    @property
    def is_lfs(self) -> bool:
        return self.sha256 is not None

    @property
    def pointer_size(self) -> int | None:
        return len(lfs_pointer(self.sha256, self.size)) if self.sha256 else None

    @property
    def etag(self) -> str:
        """What ``/resolve`` sends as ETag: the SHA-256 for LFS files, the blob id otherwise."""
        return self.sha256 or self.blob_id

    @contextlib.contextmanager
    def opened(self) -> Iterator[Callable[[int, int], bytes]]:
        """A ``read(start, end)`` over the content, checked to be the scanned file.

        Raises:
            `StaleFileError`: the file was replaced, resized or touched since the scan.
        """
        if self.virtual is not None:
            yield self.virtual.read
            return
        assert self.fs_path is not None
        try:
            fd = os.open(self.fs_path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as exc:
            raise StaleFileError(f"{self.path}: {exc.strerror}") from exc
        try:
            st = os.fstat(fd)
            if (st.st_size, st.st_mtime_ns, (st.st_dev, st.st_ino)) != (
                self.size,
                self.mtime_ns,
                self.identity,
            ):
                raise StaleFileError(f"{self.path} changed since it was scanned")

            def read(start: int, end: int) -> bytes:
                return os.pread(fd, end - start, start)

            yield read
        finally:
            os.close(fd)


@dataclass(frozen=True)
class Repo:
    """A repo at its current commit.

    Attributes:
        repo_id (`str`): ``org/name``.
        commit (`str`): 40-hex commit id.
        files (`dict[str, RepoFile]`): by path, sorted.
        created_at_ms (`int`), last_modified_ms (`int`): epoch ms after sidecar overrides.
        sidecar (`Sidecar`): hub-side facts.
        fs_dir (`Path`): the folder.
    """

    repo_id: str
    commit: str
    files: Mapping[str, RepoFile]
    created_at_ms: int
    last_modified_ms: int
    sidecar: Sidecar
    fs_dir: Path

    @property
    def org(self) -> str:
        return self.repo_id.split("/", 1)[0]

    @property
    def name(self) -> str:
        return self.repo_id.split("/", 1)[1]

    @property
    def used_storage(self) -> int:
        return sum(f.size for f in self.files.values())

    def directories(self) -> list[str]:
        """Every folder path that holds a served file, sorted."""
        dirs = {"/".join(p.split("/")[:i]) for p in self.files for i in range(1, p.count("/") + 1)}
        return sorted(dirs)


class RepoIndex:
    """Scans a folder of repos and keeps the current `Repo` of each; thread-safe.

    Args:
        root (`Path`): the served folder ``DIR``.
        clock (`Callable[[], float]`): wall clock (epoch seconds), injectable for tests.
    """

    def __init__(self, root: Path, *, clock: Callable[[], float] = time.time) -> None:
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: not a directory")
        self.root = root.resolve()
        self.state = HubState(self.root / STATE_DIRNAME)
        self._clock = clock
        self._lock = threading.RLock()
        self._repos: dict[str, Repo] = {}
        self._broken: dict[str, str] = {}
        self._problems: dict[str, dict[str, str]] = {}
        self._blobs: dict[str, set[str]] = {}  # sha256 -> repo ids holding it
        self._repo_blobs: dict[str, set[str]] = {}  # repo id -> sha256s it holds
        self._virtual: dict[Path, tuple[int, int, VirtualFile | str]] = {}

    # -- public ------------------------------------------------------------------------------------

    def scan(self) -> list[Repo]:
        """Re-scan the whole folder; return every servable repo (private ones included)."""
        with self._lock:
            found: set[str] = set()
            root_problems: dict[str, str] = {}
            for org_entry in self._subdirs(self.root, root_problems):
                for repo_entry in self._subdirs(Path(org_entry.path), root_problems):
                    repo_id = f"{org_entry.name}/{repo_entry.name}"
                    try:
                        validate_repo_id(repo_id)
                    except HFValidationError as exc:
                        root_problems[repo_id] = f"not served: invalid repo id ({exc})"
                        continue
                    found.add(repo_id)
                    self._scan_repo(repo_id)
            for gone in set(self._repos) | set(self._broken) | set(self.state.known_repos()):
                if gone not in found:
                    self._drop(gone)
            self._problems[""] = root_problems
            self.state.save()
            return [self._repos[r] for r in sorted(self._repos)]

    def repo(self, repo_id: str) -> Repo | None:
        """Re-scan one repo and return it; ``None`` if it does not exist.

        Raises:
            `BrokenRepoError`: the folder exists but cannot be served (the message says why).
        """
        try:
            validate_repo_id(repo_id)
        except HFValidationError:
            return None
        if repo_id.count("/") != 1:
            return None
        with self._lock:
            repo = self._scan_repo(repo_id)
            self.state.save()
            if repo is None and repo_id in self._broken:
                raise BrokenRepoError(self._broken[repo_id])
            return repo

    def blob(self, sha256: str) -> RepoFile | None:
        """A current file with this SHA-256 (content addressing for the CDN), re-checked on disk."""
        with self._lock:
            holders = sorted(self._blobs.get(sha256, ()))
            for repo_id in holders:
                repo = self.repo(repo_id)
                for f in repo.files.values() if repo is not None else ():
                    if f.sha256 == sha256:
                        return f
        return None

    def problems(self) -> dict[str, str]:
        """Everything the hub refused to serve, keyed by repo id or path, with the reason."""
        with self._lock:
            out: dict[str, str] = {}
            for group in self._problems.values():
                out.update(group)
            return out

    # -- scanning ----------------------------------------------------------------------------------

    def _subdirs(self, parent: Path, problems: dict[str, str]) -> list[os.DirEntry[str]]:
        try:
            entries = sorted(os.scandir(parent), key=lambda e: e.name)
        except OSError as exc:
            problems[str(parent)] = f"cannot list: {exc.strerror}"
            return []
        out = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_symlink():
                problems[os.path.relpath(entry.path, self.root)] = "not served: symlinked folders are refused"
                continue
            if entry.is_dir(follow_symlinks=False):
                out.append(entry)
        return out

    def _drop(self, repo_id: str) -> None:
        self._repos.pop(repo_id, None)
        self._broken.pop(repo_id, None)
        self._problems.pop(repo_id, None)
        self._set_blobs(repo_id, {})
        self.state.forget(repo_id)

    def _scan_repo(self, repo_id: str) -> Repo | None:
        repo_dir = self.root / repo_id
        org_dir = self.root / repo_id.split("/", 1)[0]
        if org_dir.is_symlink() or repo_dir.is_symlink() or not repo_dir.is_dir():
            self._drop(repo_id)
            return None
        problems: dict[str, str] = {}
        self._problems[repo_id] = problems
        try:
            sidecar = self._read_sidecar(repo_dir)
        except FormatError as exc:
            self._broken[repo_id] = f"{repo_id}: {exc}"
            problems[repo_id] = str(exc)
            self._repos.pop(repo_id, None)
            self._set_blobs(repo_id, {})
            return None
        self._broken.pop(repo_id, None)
        real: dict[str, tuple[Path, os.stat_result]] = {}
        specs: dict[str, tuple[Path, os.stat_result]] = {}
        self._walk(repo_id, repo_dir, "", real, specs, problems, depth=0)
        files: dict[str, RepoFile] = {}
        digests: dict[str, FileDigest] = {}
        for path, (fs_path, st) in real.items():
            try:
                rf, digest = self._real_file(repo_id, path, fs_path, st)
            except OSError as exc:
                problems[f"{repo_id}/{path}"] = f"not served: cannot read ({exc.strerror})"
                continue
            files[path] = rf
            digests[path] = digest
        for path, (fs_path, st) in specs.items():
            if path in files:
                problems[f"{repo_id}/{path}{VIRTUAL_SUFFIX}"] = "ignored: a real file of that name exists"
                continue
            vf = self._virtual_file(fs_path, st)
            if isinstance(vf, str):
                problems[f"{repo_id}/{path}{VIRTUAL_SUFFIX}"] = f"not served: {vf}"
                continue
            blob = git_blob_sha1(lfs_pointer(vf.sha256, vf.size))
            files[path] = RepoFile(
                path, vf.size, blob, vf.sha256, st.st_mtime_ns, None, (st.st_dev, st.st_ino), vf
            )
        files = dict(sorted(files.items()))
        self.state.set_digests(repo_id, digests)
        commit = self._commit(files)
        timeline = self._timeline(repo_id, repo_dir, files, commit)
        created = sidecar.created_at_ms if sidecar.created_at_ms is not None else timeline.created_at_ms
        modified = (
            sidecar.last_modified_ms if sidecar.last_modified_ms is not None else timeline.last_modified_ms
        )
        repo = Repo(repo_id, commit, files, created, max(created, modified), sidecar, repo_dir)
        self._repos[repo_id] = repo
        self._set_blobs(repo_id, {p: f for p, f in files.items() if f.sha256})
        return repo

    def _read_sidecar(self, repo_dir: Path) -> Sidecar:
        path = repo_dir / SIDECAR_NAME
        try:
            if path.is_symlink():
                raise FormatError(f"{SIDECAR_NAME} must not be a symlink")
            with open(path, "rb") as fh:
                raw = fh.read(MAX_SIDECAR_BYTES + 1)
        except FileNotFoundError:
            return Sidecar()
        except OSError as exc:
            raise FormatError(f"cannot read {SIDECAR_NAME}: {exc.strerror}") from exc
        if len(raw) > MAX_SIDECAR_BYTES:
            raise FormatError(f"{SIDECAR_NAME} is larger than {MAX_SIDECAR_BYTES} bytes")
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise FormatError(f"{SIDECAR_NAME} is not valid JSON: {exc}") from exc
        return parse_sidecar(data)

    def _walk(
        self,
        repo_id: str,
        directory: Path,
        prefix: str,
        real: dict[str, tuple[Path, os.stat_result]],
        specs: dict[str, tuple[Path, os.stat_result]],
        problems: dict[str, str],
        *,
        depth: int,
    ) -> None:
        if depth > _MAX_DEPTH:
            problems[f"{repo_id}/{prefix}"] = f"not served: deeper than {_MAX_DEPTH} folders"
            return
        try:
            entries = list(os.scandir(directory))
        except OSError as exc:
            problems[f"{repo_id}/{prefix}"] = f"cannot list: {exc.strerror}"
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            rel = f"{prefix}{entry.name}"
            where = f"{repo_id}/{rel}"
            if not valid_repo_path(rel):
                problems[where] = "not served: invalid file name"
                continue
            try:
                if entry.is_symlink():
                    target = Path(os.path.realpath(entry.path))
                    if not target.is_relative_to(self.root):
                        problems[where] = "not served: symlink points outside the served folder"
                        continue
                    st = os.stat(target)
                    if not stat.S_ISREG(st.st_mode):
                        problems[where] = "not served: symlinks may only point to regular files"
                        continue
                    fs_path = target
                elif entry.is_dir(follow_symlinks=False):
                    self._walk(repo_id, Path(entry.path), rel + "/", real, specs, problems, depth=depth + 1)
                    continue
                elif entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    fs_path = Path(entry.path)
                else:
                    continue  # sockets, fifos, devices
            except OSError as exc:
                problems[where] = f"not served: {exc.strerror}"
                continue
            if rel.endswith(VIRTUAL_SUFFIX):
                served = rel[: -len(VIRTUAL_SUFFIX)]
                if served and not served.rsplit("/", 1)[-1].startswith("."):
                    specs[served] = (fs_path, st)
                continue
            real[rel] = (fs_path, st)

    def _real_file(
        self, repo_id: str, path: str, fs_path: Path, st: os.stat_result
    ) -> tuple[RepoFile, FileDigest]:
        digest = self.state.digest(repo_id, path, size=st.st_size, mtime_ns=st.st_mtime_ns)
        if digest is None or (digest.sha256 is None and is_lfs(path, st.st_size)):
            if is_lfs(path, st.st_size):
                sha = sha256_of_file(fs_path)
                digest = FileDigest(
                    st.st_size, st.st_mtime_ns, sha, git_blob_sha1(lfs_pointer(sha, st.st_size))
                )
            else:
                with open(fs_path, "rb") as fh:
                    data = fh.read(st.st_size)
                digest = FileDigest(st.st_size, st.st_mtime_ns, None, git_blob_sha1(data))
        rf = RepoFile(
            path, st.st_size, digest.blob_id, digest.sha256, st.st_mtime_ns, fs_path, (st.st_dev, st.st_ino)
        )
        return rf, digest

    def _virtual_file(self, spec_path: Path, st: os.stat_result) -> VirtualFile | str:
        cached = self._virtual.get(spec_path)
        if cached is not None and cached[:2] == (st.st_size, st.st_mtime_ns):
            return cached[2]
        result: VirtualFile | str
        try:
            result = open_virtual(spec_path)
        except (FormatError, OSError) as exc:
            result = str(exc).replace(str(spec_path) + ": ", "")
        self._virtual[spec_path] = (st.st_size, st.st_mtime_ns, result)
        return result

    @staticmethod
    def _commit(files: Mapping[str, RepoFile]) -> str:
        h = hashlib.sha1(_COMMIT_DOMAIN, usedforsecurity=False)
        for f in files.values():
            h.update(f"{f.path}\0{f.size}\0{f.sha256 or f.blob_id}\n".encode())
        return h.hexdigest()

    def _timeline(
        self, repo_id: str, repo_dir: Path, files: Mapping[str, RepoFile], commit: str
    ) -> RepoTimeline:
        now_ms = int(self._clock() * 1000)
        known = self.state.timeline(repo_id)
        if known is None:
            mtimes = [f.mtime_ns // 1_000_000 for f in files.values()]
            if not mtimes:
                with contextlib.suppress(OSError):
                    mtimes = [repo_dir.stat().st_mtime_ns // 1_000_000]
            created = min([*mtimes, now_ms])
            modified = max(created, min(max(mtimes, default=now_ms), now_ms))
            timeline = RepoTimeline(created, modified, commit)
        elif known.commit != commit:
            timeline = RepoTimeline(known.created_at_ms, max(now_ms, known.created_at_ms), commit)
        else:
            return known
        self.state.set_timeline(repo_id, timeline)
        return timeline

    def _set_blobs(self, repo_id: str, lfs_files: Mapping[str, RepoFile]) -> None:
        new = {f.sha256 for f in lfs_files.values() if f.sha256}
        old = self._repo_blobs.pop(repo_id, set())
        for sha in old - new:
            holders = self._blobs.get(sha)
            if holders is not None:
                holders.discard(repo_id)
                if not holders:
                    del self._blobs[sha]
        for sha in new:
            self._blobs.setdefault(sha, set()).add(repo_id)
        if new:
            self._repo_blobs[repo_id] = new
