"""Sharded checkpoints: ``*.safetensors.index.json`` and ``pytorch_model.bin.index.json``.

An index is ``{"metadata": {...}, "weight_map": {tensor name: shard file}}``. huggingface_hub
trusts it (issue #4725: a ``weight_map`` entry missing from its shard goes unnoticed); we check
that every shard it names is in the repo, that every mapped tensor is in the shard it is mapped
to, and that no tensor appears in two shards, so a lying index is a `FormatError` and not a
silently missing layer.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field

from monitor.errors import FormatError
from monitor.formats.jsonstrict import loads_strict
from monitor.formats.rows import RowFile
from monitor.remote.source import FileSet

__all__ = ["MAX_INDEX_BYTES", "ShardIndex", "check_shards", "read_shard_index"]

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


def check_shards(index: ShardIndex, files: Mapping[str, RowFile]) -> None:
    """Check the parsed shards against the index.

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
    for name, shard in index.weight_map.items():
        holder = files.get(shard)
        if holder is None or (name not in holder.tensors and name not in holder.unsupported):
            raise FormatError(
                f"{index.path}: weight_map puts {name[:100]!r} in {shard}, which does not contain it"
            )
