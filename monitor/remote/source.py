"""Random access to weight files, local or remote, behind one small interface.

Every fingerprint reads through a `ByteSource` (one file) obtained from a `FileSet` (one model: a
folder, a single file, or a hub repo pinned to one commit). Local files and hub files look the same
to the format parsers, so the parsers are tested on local files and trusted on remote ones.

Spans are half-open byte intervals ``(start, end)``. Every source of one `FileSet` shares a
`ReadStats` (bytes and requests, what the alert reports) and a `ByteBudget` (what the operator
allows per repo), so a repo's cost is counted once whatever the number of files.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from monitor.errors import BudgetExceeded, FormatError, NotFound

if TYPE_CHECKING:  # the generator lives with the local hub, which imports this module
    from monitor.localhub.virtual import VirtualFile, VirtualFileSource

__all__ = [
    "LFS_THRESHOLD",
    "VIRTUAL_SPEC_SUFFIX",
    "WEIGHT_SUFFIXES",
    "ByteBudget",
    "ByteSource",
    "FileEntry",
    "FileSet",
    "LocalFileSet",
    "LocalFileSource",
    "ReadStats",
    "Span",
]

Span = tuple[int, int]
"""A half-open byte interval ``(start, end)`` within one file."""

_HASH_CHUNK = 8 * 1024 * 1024
LFS_THRESHOLD = 10 * 1024 * 1024
"""Files at least this big, and weight files, are LFS files on a hub (listed with SHA-256); smaller ones
are plain git blobs (listed with their git blob id). `LocalFileSet` describes local files the same way."""
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx")
VIRTUAL_SPEC_SUFFIX = ".virtual.json"
"""``X.virtual.json`` is the spec of a virtual file ``X`` (see `monitor.localhub.virtual`)."""


@dataclass
class ReadStats:
    """Bytes and requests spent on one model; thread-safe.

    Attributes:
        bytes_read (`int`): payload bytes received (what a hub would bill as egress).
        requests (`int`): HTTP requests sent (local reads count one per coalesced span).
        by_file (`dict[str, int]`): bytes per repo-relative path, for the evidence record.
    """

    bytes_read: int = 0
    requests: int = 0
    by_file: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, path: str, nbytes: int, requests: int = 1) -> None:
        with self._lock:
            self.bytes_read += nbytes
            self.requests += requests
            self.by_file[path] = self.by_file.get(path, 0) + nbytes

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return {"bytes_read": self.bytes_read, "requests": self.requests, "by_file": dict(self.by_file)}


class ByteBudget:
    """A hard cap on the bytes one model may cost; shared by all of its files.

    `reserve` is called *before* a read is sent, so exceeding the budget never costs the bytes.
    ``limit=None`` means unlimited (used for registering protected models from local disk).
    """

    def __init__(self, limit: int | None) -> None:
        if limit is not None and limit < 0:
            raise ValueError("budget must be >= 0 or None")
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def reserve(self, nbytes: int, *, what: str = "read") -> None:
        """Account for ``nbytes`` about to be read, or raise `BudgetExceeded` and account nothing."""
        with self._lock:
            if self.limit is not None and self.used + nbytes > self.limit:
                raise BudgetExceeded(
                    f"{what}: reading {nbytes} more bytes would exceed the per-repo budget of "
                    f"{self.limit} bytes ({self.used} already used)",
                    budget=self.limit,
                    requested=self.used + nbytes,
                )
            self.used += nbytes

    @property
    def remaining(self) -> int | None:
        with self._lock:
            return None if self.limit is None else self.limit - self.used


@runtime_checkable
class ByteSource(Protocol):
    """One file, pinned to one version, readable by byte ranges."""

    path: str
    size: int

    def read(self, start: int, end: int) -> bytes:
        """Return bytes ``[start, end)``; raise `FormatError` if the span lies outside the file."""
        ...

    def read_many(self, spans: Sequence[Span]) -> list[bytes]:
        """Return the bytes of each span, in order; implementations coalesce and parallelise."""
        ...


@dataclass(frozen=True)
class FileEntry:
    """One file of a model as listed by its source, before any byte of it is read.

    Attributes:
        path (`str`): repo-relative path with forward slashes.
        size (`int`): size in bytes.
        sha256 (`str | None`): full-file SHA-256 (hub LFS ``oid``); ``None`` when unknown.
        blob_id (`str | None`): git blob SHA-1 (hub ``blobId``/``oid``); ``None`` when unknown.
    """

    path: str
    size: int
    sha256: str | None = None
    blob_id: str | None = None


@runtime_checkable
class FileSet(Protocol):
    """The files of one model version: a local folder or file, or a hub repo at one commit.

    Attributes:
        ref (`str`): human-readable identity, e.g. ``acme/guard-7b@<40-hex>`` or a local path.
        commit (`str | None`): the pinned commit for hub repos.
        files (`dict[str, FileEntry]`): every file, by repo-relative path.
        stats (`ReadStats`): shared counters for every source opened from this set.
        budget (`ByteBudget`): shared byte budget.
    """

    ref: str
    commit: str | None
    files: dict[str, FileEntry]
    stats: ReadStats
    budget: ByteBudget

    def open(self, path: str) -> ByteSource:
        """Open one file for ranged reads; raise `NotFound` if it is not in `files`."""
        ...


def check_span(path: str, size: int, start: int, end: int) -> None:
    """Reject spans outside ``[0, size]``: a header pointing past the file is a format error."""
    if start < 0 or end < start or end > size:
        raise FormatError(f"{path}: byte span [{start}, {end}) lies outside the file of {size} bytes")


class LocalFileSource:
    """A local file read through `mmap`; counts bytes like a remote source would.

    Each call to `read` counts as one request and `read_many` counts one request per span, so local
    runs report the same request numbers a remote run would before coalescing.
    """

    def __init__(self, fs_path: Path, *, path: str, stats: ReadStats, budget: ByteBudget) -> None:
        self.path = path
        self._fs_path = fs_path
        self._stats = stats
        self._budget = budget
        try:
            self._fh = open(fs_path, "rb")  # noqa: SIM115 - closed in close()/__del__
        except FileNotFoundError as exc:
            raise NotFound(f"{fs_path}: no such file") from exc
        self.size = os.fstat(self._fh.fileno()).st_size
        self._map: mmap.mmap | None = (
            mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ) if self.size else None
        )

    def read(self, start: int, end: int) -> bytes:
        check_span(self.path, self.size, start, end)
        self._budget.reserve(end - start, what=self.path)
        data = self._map[start:end] if self._map is not None else b""
        self._stats.add(self.path, len(data))
        return data

    def read_many(self, spans: Sequence[Span]) -> list[bytes]:
        return [self.read(s, e) for s, e in spans]

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        self._fh.close()

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter shutdown
        with contextlib.suppress(Exception):
            self.close()


def sha256_of_file(fs_path: Path) -> str:
    """Full-file SHA-256, streamed; what a hub lists as the LFS ``oid``."""
    h = hashlib.sha256()
    with open(fs_path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def git_blob_sha1(data: bytes) -> str:
    """Git's blob id for small (non-LFS) files: ``sha1("blob <size>\\0" + data)``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


class LocalFileSet:
    """A model on local disk: one weight file, or a folder (single or sharded checkpoint).

    SHA-256 digests are computed lazily by `sha256` (registering a protected model needs them;
    comparing two local models does not).

    Virtual files: ``X.virtual.json`` is listed as file ``X`` (its generated size, and the spec's
    SHA-256 as its digest, exactly as `monitor.localhub` lists it) and read through the same generator
    the local hub serves, so a 7B or 70B virtual model can be registered or compared from a few KB of
    disk. As on the hub, a real file ``X`` wins over its spec. A spec the generator rejects raises
    `FormatError` naming it.
    """

    def __init__(self, root: str | os.PathLike[str], *, budget: int | None = None) -> None:
        root_path = Path(root).expanduser()
        if not root_path.exists():
            raise NotFound(f"{root_path}: no such file or directory")
        self.root = root_path.resolve()
        self.ref = str(self.root)
        self.commit: str | None = None
        self.stats = ReadStats()
        self.budget = ByteBudget(budget)
        self.files: dict[str, FileEntry] = {}
        self._virtual: dict[str, VirtualFile] = {}
        specs: dict[str, Path] = {}
        if self.root.is_file():
            self._base = self.root.parent
            name = self.root.name
            if name.endswith(VIRTUAL_SPEC_SUFFIX) and len(name) > len(VIRTUAL_SPEC_SUFFIX):
                specs[name.removesuffix(VIRTUAL_SPEC_SUFFIX)] = self.root
            else:
                self.files[name] = FileEntry(name, self.root.stat().st_size)
        else:
            self._base = self.root
            for p in sorted(self.root.rglob("*")):
                rel = p.relative_to(self.root).as_posix()
                if not p.is_file() or any(part.startswith(".") for part in rel.split("/")):
                    continue
                if rel.endswith(VIRTUAL_SPEC_SUFFIX):
                    served = rel.removesuffix(VIRTUAL_SPEC_SUFFIX)
                    if served and not served.rsplit("/", 1)[-1].startswith("."):
                        specs[served] = p
                    continue
                size = p.stat().st_size
                small = size < LFS_THRESHOLD and not rel.endswith(WEIGHT_SUFFIXES)
                # Small files get their git blob id, as a hub lists them (tokenizer identity for free).
                self.files[rel] = FileEntry(
                    rel, size, blob_id=git_blob_sha1(p.read_bytes()) if small else None
                )
        if specs:
            from monitor.localhub.virtual import open_virtual

            for served, spec_path in specs.items():
                if served in self.files:
                    continue  # a real file of that name wins, as on the hub
                vf = open_virtual(spec_path)  # FormatError names the spec
                self._virtual[served] = vf
                self.files[served] = FileEntry(served, vf.size, sha256=vf.sha256)
            self.files = dict(sorted(self.files.items()))
        self._sources: dict[str, LocalFileSource | VirtualFileSource] = {}
        self._lock = threading.Lock()

    def open(self, path: str) -> LocalFileSource | VirtualFileSource:
        if path not in self.files:
            raise NotFound(f"{self.ref}: no file {path!r}")
        with self._lock:
            src = self._sources.get(path)
            if src is None:
                vf = self._virtual.get(path)
                if vf is not None:
                    from monitor.localhub.virtual import VirtualFileSource

                    src = VirtualFileSource(vf, path=path, stats=self.stats, budget=self.budget)
                else:
                    src = LocalFileSource(self._base / path, path=path, stats=self.stats, budget=self.budget)
                self._sources[path] = src
            return src

    def sha256(self, path: str) -> str:
        """SHA-256 of one file (computed on demand; not counted as bytes read).

        For a virtual file this is its spec's digest, the identity the local hub lists for it.
        """
        if path not in self.files:
            raise NotFound(f"{self.ref}: no file {path!r}")
        entry = self.files[path]
        if entry.sha256 is None:
            digest = sha256_of_file(self._base / path)
            self.files[path] = FileEntry(entry.path, entry.size, digest, entry.blob_id)
            return digest
        return entry.sha256

    def close(self) -> None:
        with self._lock:
            for src in self._sources.values():
                src.close()
            self._sources.clear()
