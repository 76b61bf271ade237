"""A model's weight files, and shard indexes (``*.safetensors.index.json``, ``pytorch_model.bin.index.json``).

An index is ``{"metadata": {...}, "weight_map": {tensor name: shard file}}``. huggingface_hub
trusts it (issue #4725: a ``weight_map`` entry missing from its shard goes unnoticed); we check
that every shard it names is in the repo (when the index is read), and, when a shard is parsed,
that every tensor mapped to it is in it and that it holds no tensor mapped to another shard, so a
lying index is a `FormatError` and not a silently missing layer.

`WeightFiles` is the set of files `monitor.formats.canonical.ModelView` reads: with an index, a
shard's header is read only when one of its tensors is first needed (lazy shard headers).
"""

from __future__ import annotations

import posixpath
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from monitor.errors import FormatError
from monitor.formats.jsonstrict import loads_strict
from monitor.formats.parallel import map_concurrently
from monitor.formats.rows import RowFile
from monitor.remote.source import ByteSource, FileSet

__all__ = ["MAX_INDEX_BYTES", "ShardIndex", "WeightFiles", "check_shard", "check_shards", "read_shard_index"]

MAX_INDEX_BYTES = 64 * 1024 * 1024
"""Largest index file read (a 405B model's index is ~200 KB)."""


@dataclass(frozen=True)
class ShardIndex:
    """A parsed shard index.

    Attributes:
        path (`str`): repo-relative path of the index file.
        weight_map (`dict[str, str]`): tensor name -> repo-relative shard path.
        shards (`list[str]`): distinct shards, in order of first mention.
        metadata (`dict[str, object]`): the index's ``metadata`` object.
    """

    path: str
    weight_map: dict[str, str]
    shards: list[str]
    metadata: dict[str, object] = field(default_factory=dict)

    @cached_property
    def _by_shard(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {shard: [] for shard in self.shards}
        for name, shard in self.weight_map.items():
            out[shard].append(name)
        return out

    def members(self, shard: str) -> list[str]:
        """The tensor names the index puts in ``shard``."""
        return self._by_shard.get(shard, [])


def _resolve(index_path: str, shard: str) -> str | None:
    if not shard or shard.startswith("/") or "\\" in shard or "\x00" in shard:
        return None
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(index_path), shard))
    if joined.startswith("../") or joined == ".." or joined.startswith("/"):
        return None
    return joined


def read_shard_index(fileset: FileSet, path: str) -> ShardIndex:
    """Read and validate an index file through the fileset (bytes are counted).

    Raises:
        `FormatError`: malformed JSON, bad ``weight_map``, unsafe shard names, or shards that are
            not in the repo.
    """
    entry = fileset.files.get(path)
    if entry is None:
        raise FormatError(f"{fileset.ref}: no index file {path!r}")
    if entry.size > MAX_INDEX_BYTES:
        raise FormatError(f"{path}: index of {entry.size} bytes exceeds the limit of {MAX_INDEX_BYTES}")
    src = fileset.open(path)
    doc = loads_strict(src.read(0, src.size), what=path)
    if not isinstance(doc, dict) or not isinstance(doc.get("weight_map"), dict):
        raise FormatError(f"{path}: index has no 'weight_map' object")
    metadata = doc.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise FormatError(f"{path}: index 'metadata' must be an object")
    weight_map: dict[str, str] = {}
    shards: list[str] = []
    for name, shard in doc["weight_map"].items():
        if not isinstance(shard, str):
            raise FormatError(f"{path}: weight_map[{name[:100]!r}] must be a file name")
        resolved = _resolve(path, shard)
        if resolved is None:
            raise FormatError(f"{path}: weight_map[{name[:100]!r}] names an unsafe path {shard[:200]!r}")
        if resolved not in fileset.files:
            raise FormatError(f"{path}: shard {resolved!r} (for {name[:100]!r}) is not in the repo")
        weight_map[name] = resolved
        if resolved not in shards:
            shards.append(resolved)
    if not weight_map:
        raise FormatError(f"{path}: empty weight_map")
    return ShardIndex(path, weight_map, shards, dict(metadata))


def check_shard(index: ShardIndex, path: str, file: RowFile) -> dict[str, str]:
    """Check one parsed shard against the index (what can be checked without parsing the others).

    Args:
        index (`ShardIndex`): the index.
        path (`str`): the shard's repo-relative path.
        file (`RowFile`): the parsed shard.

    Returns:
        The shard's tensors the index does not list (name -> ``path``): ignored, as the index is what
        names a sharded checkpoint's tensors, but worth reporting.

    Raises:
        `FormatError`: a tensor the index puts in another shard (a tensor in two shards, or a lying
            index), or a tensor the index puts in this shard that it does not contain.
    """
    unlisted: dict[str, str] = {}
    for name in [*file.tensors, *file.unsupported]:
        mapped = index.weight_map.get(name)
        if mapped is None:
            unlisted[name] = path
        elif mapped != path:
            raise FormatError(
                f"{index.path}: tensor {name[:100]!r} is in both {path} and, by the index, {mapped}"
            )
    for name in index.members(path):
        if name not in file.tensors and name not in file.unsupported:
            raise FormatError(
                f"{index.path}: weight_map puts {name[:100]!r} in {path}, which does not contain it"
            )
    return unlisted


def check_shards(index: ShardIndex, files: Mapping[str, RowFile]) -> None:
    """Check every parsed shard against the index (`check_shard`), and that no tensor is in two shards.

    Args:
        index (`ShardIndex`): the index.
        files (`Mapping[str, RowFile]`): parsed shard by repo-relative path.

    Raises:
        `FormatError`: a mapped tensor missing from its shard, or a tensor in two shards.
    """
    seen: dict[str, str] = {}
    for shard, wf in files.items():
        for name in [*wf.tensors, *wf.unsupported]:
            if name in seen:
                raise FormatError(f"{index.path}: tensor {name!r} is in both {seen[name]} and {shard}")
            seen[name] = shard
    for shard in index.shards:
        if shard not in files:
            raise FormatError(f"{index.path}: shard {shard} was not parsed")
        check_shard(index, shard, files[shard])


class WeightFiles:
    """The weight files of one model: which file holds each stored tensor, each file parsed at most once.

    A single file or a shard series without an index is parsed when opened: its headers are the only
    list of its tensors. An indexed checkpoint is not: the index names every tensor and its shard, so a
    shard's header is read (and checked against the index, `check_shard`) only when `file` is first
    asked for it, which is when one of its tensors is first needed. A 70B model in 29 shards, sampled in
    four layers, costs the headers of the five or six shards holding those layers and the embedding.

    Thread-safe: shards may be parsed concurrently (`files`); each is parsed once, and a shard that
    failed to parse raises the same error again without being read again.

    Attributes:
        paths (`tuple[str, ...]`): the weight files, in order (an index's shards in order of mention).
        index (`ShardIndex | None`): the index, when there is one.
        names (`dict[str, str]`): stored tensor name -> the file holding it (for an index, its
            ``weight_map``), in file order.
        unlisted (`dict[str, str]`): tensors found in a parsed shard that the index does not list
            (name -> shard); they are not part of the model.
    """

    def __init__(
        self,
        fileset: FileSet,
        opener: Callable[[ByteSource], RowFile],
        *,
        paths: Sequence[str] = (),
        index: ShardIndex | None = None,
    ) -> None:
        self._fileset = fileset
        self._opener = opener
        self.index = index
        self.paths: tuple[str, ...] = tuple(index.shards) if index is not None else tuple(paths)
        if not self.paths:
            raise ValueError("no weight files")
        self.unlisted: dict[str, str] = {}
        self._parsed: dict[str, RowFile] = {}
        self._failed: dict[str, FormatError] = {}
        self._locks = {path: threading.Lock() for path in self.paths}
        if index is not None:
            self.names: dict[str, str] = dict(index.weight_map)
            return
        self.names = {}
        for path, wf in zip(self.paths, self.files(self.paths), strict=True):
            for name in [*wf.tensors, *wf.unsupported]:
                if name in self.names:
                    raise FormatError(f"{fileset.ref}: tensor {name!r} appears in more than one weight file")
                self.names[name] = path

    @property
    def parsed(self) -> tuple[str, ...]:
        """The files whose headers have been read so far, in `paths` order."""
        return tuple(p for p in self.paths if p in self._parsed)

    def file(self, path: str) -> RowFile:
        """The parsed file ``path``, reading its header the first time.

        Raises:
            `KeyError`: ``path`` is not one of `paths`.
            `FormatError`: the header is malformed, or the shard contradicts the index.
        """
        parsed = self._parsed.get(path)
        if parsed is not None:
            return parsed
        with self._locks[path]:
            parsed = self._parsed.get(path)
            if parsed is not None:
                return parsed
            failed = self._failed.get(path)
            if failed is not None:
                raise failed
            try:
                wf = self._opener(self._fileset.open(path))
                if self.index is not None:
                    self.unlisted.update(check_shard(self.index, path, wf))
            except FormatError as exc:
                self._failed[path] = exc
                raise
            self._parsed[path] = wf
            return wf

    def files(self, paths: Iterable[str]) -> list[RowFile]:
        """Several parsed files, those not parsed yet read concurrently (one round trip for all)."""
        wanted = list(dict.fromkeys(paths))
        map_concurrently(self.file, [p for p in wanted if p not in self._parsed])
        return [self.file(p) for p in wanted]

    def holder(self, name: str) -> RowFile:
        """The parsed file holding stored tensor ``name`` (`KeyError` if no file holds it)."""
        return self.file(self.names[name])
