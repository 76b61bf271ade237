"""The canonical tensors of a model: which ones exist, known from names, and what each is, known on use.

`ModelView` (`monitor.formats.canonical`) asks this catalog for canonical tensors. How much it reads up
front depends on where the tensor names come from:

* **Files without an index** (one safetensors, GGUF or PyTorch file, or a shard series): the headers
  are the only list of names, so they are all parsed at open anyway, and every logical tensor is built
  and mapped at once (`map_hf_names`/`map_gguf_names` over all shapes) — nothing is left for later.
* **An indexed checkpoint** (``*.safetensors.index.json``, ``pytorch_model.bin.index.json``): the index
  names every stored tensor, which is enough to group them (`plan_groups`) and to know every canonical
  key (`hf_keys`), so ``key in tensors`` costs nothing. A canonical tensor's shape, dtype and layout
  come from the header of the shard holding it, parsed the first time the tensor is needed
  (`WeightFiles.file`); `resolve` parses the shards of several tensors concurrently.

A tensor that turns out unreadable when resolved (an AWQ GEMV layer, a fused ``qkv`` that cannot be
split with the known head counts) is dropped from the keys, recorded in ``unsupported``/``unmapped``,
and asking for it raises `UnsupportedFormat` with the reason. A shard that contradicts the index raises
`FormatError` when first used, every time it is used.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

from monitor.errors import UnsupportedFormat
from monitor.formats.base import CanonicalTensor
from monitor.formats.grouping import TensorGroup, build_group, read_quant_states
from monitor.formats.logical import LogicalTensor
from monitor.formats.names import ArchParams, KeyMapping, hf_keys, map_gguf_names, map_hf_names
from monitor.formats.quantconfig import QuantConfig
from monitor.formats.shards import WeightFiles

__all__ = ["CanonEntry", "LazyMapping", "TensorCatalog", "natural_key"]

V = TypeVar("V")


def natural_key(key: str) -> list[object]:
    """Sort key putting ``layers.2`` before ``layers.10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


@dataclass(frozen=True)
class CanonEntry:
    """A canonical tensor and how to read it.

    Attributes:
        info (`CanonicalTensor`): what callers see.
        base (`LogicalTensor`): the logical tensor it is read from.
        mapping (`KeyMapping`): the row index and transpose from ``base`` to canonical.
    """

    info: CanonicalTensor
    base: LogicalTensor
    mapping: KeyMapping


def _entry(m: KeyMapping, base: LogicalTensor) -> CanonEntry:
    bshape = base.shape
    if m.transposed:
        units = len(m.index) if m.index is not None else bshape[1]
        shape: tuple[int, ...] = (units, bshape[0])
        axis_len = bshape[1]
        rows_c, cols_c = base.cols_contiguous, base.rows_contiguous
    else:
        units = len(m.index) if m.index is not None else (bshape[0] if bshape else 1)
        shape = (units, *bshape[1:])
        axis_len = bshape[0] if bshape else 1
        rows_c, cols_c = base.rows_contiguous, base.cols_contiguous
    info = CanonicalTensor(
        key=m.key,
        shape=shape,
        dtype=base.dtype,
        sources=base.sources,
        files=base.files,
        rows_contiguous=rows_c,
        cols_contiguous=cols_c,
        nbytes=base.nbytes * units // axis_len if axis_len else base.nbytes,
    )
    return CanonEntry(info, base, m)


class TensorCatalog:
    """Canonical keys -> `CanonEntry`, resolved from the weight files when first needed.

    Args:
        files (`WeightFiles`): the model's weight files (lazy when they have an index).
        groups (`dict[str, TensorGroup]`): the logical weights (`plan_groups` of ``files.names``).
        params (`ArchParams`): what splitting fused tensors needs.
        gguf (`bool`): map llama.cpp names (always from all files: GGUF has no index).
        quant_config (`QuantConfig | None`): quantisation settings from the model's documents.

    Attributes:
        lazy (`bool`): whether tensors are resolved on first use (an index) or were all resolved here.
        unmapped (`dict[str, str]`), unsupported (`dict[str, str]`): logical tensors without a canonical
            key, and logical tensors present but unreadable, with the reason. When ``lazy``, they list
            what the names tell and what has been resolved so far.
    """

    def __init__(
        self,
        files: WeightFiles,
        groups: dict[str, TensorGroup],
        *,
        params: ArchParams,
        gguf: bool,
        quant_config: QuantConfig | None,
    ) -> None:
        self.files = files
        self.groups = groups
        self.params = params
        self.quant_config = quant_config
        self.lazy = files.index is not None
        self.unmapped: dict[str, str] = {}
        self.unsupported: dict[str, str] = {}
        self._logical: dict[str, LogicalTensor] = {}
        self._entries: dict[str, CanonEntry] = {}
        self._lock = threading.RLock()
        if self.lazy:
            keys, self.unmapped = hf_keys(groups)
            self._keys_of: dict[str, tuple[str, ...]] = keys
        else:
            self._build(list(groups), map_each=False)
            shapes = {name: t.shape for name, t in self._logical.items()}
            mappings, self.unmapped = (map_gguf_names if gguf else map_hf_names)(shapes, params)
            for m in mappings:
                self._entries[m.key] = _entry(m, self._logical[m.source])
            self._keys_of = {}
            for m in mappings:
                self._keys_of[m.source] = (*self._keys_of.get(m.source, ()), m.key)
        self._source = {key: name for name, keys in self._keys_of.items() for key in keys}
        self._order = sorted(self._source, key=natural_key)

    # -- what exists (no I/O) ---------------------------------------------------------------------

    def keys(self) -> list[str]:
        """Canonical keys, in layer order."""
        with self._lock:
            return list(self._order)

    def __contains__(self, key: object) -> bool:
        return key in self._source

    def logical_names(self) -> list[str]:
        """Logical tensors not known to be unreadable."""
        with self._lock:
            return [n for n in self.groups if n not in self.unsupported]

    def is_resolved(self, name: str) -> bool:
        """Whether logical tensor ``name`` has been built (its headers read)."""
        return name in self._logical

    # -- what they are (may read headers) -----------------------------------------------------------

    def entry(self, key: str) -> CanonEntry:
        """The canonical tensor ``key``, resolving it first if needed.

        Raises:
            `KeyError`: no such canonical key.
            `UnsupportedFormat`: the tensor exists but cannot be read (the reason says why).
            `FormatError`: a shard holding it is malformed or contradicts the index.
        """
        found = self._entries.get(key)
        if found is not None:
            return found
        name = self._source.get(key)
        if name is None:
            raise KeyError(key)
        self.resolve([name])
        found = self._entries.get(key)
        if found is None:
            why = self.unsupported.get(name) or self.unmapped.get(name) or "no such key after all"
            raise UnsupportedFormat(f"canonical tensor {key!r} from {name!r} cannot be read: {why}")
        return found

    def logical(self, name: str) -> LogicalTensor:
        """Logical tensor ``name`` (`KeyError` if none; `UnsupportedFormat` if unreadable)."""
        if name not in self.groups:
            raise KeyError(name)
        self.resolve([name])
        built = self._logical.get(name)
        if built is None:
            raise UnsupportedFormat(f"{name}: {self.unsupported.get(name, 'not readable')}")
        return built

    def resolve(self, names: Iterable[str]) -> None:
        """Build logical tensors ``names`` and their canonical entries, parsing the shards they need
        concurrently (one round trip) and reading bitsandbytes quant states in one fetch.

        Raises:
            `FormatError`: a shard is malformed or contradicts the index, or a group is inconsistent.
        """
        with self._lock:
            todo = [n for n in dict.fromkeys(names) if n not in self._logical and n not in self.unsupported]
            if not todo:
                return
            self._build(todo, map_each=True)

    def files_of(self, key: str) -> tuple[str, ...]:
        """The weight files holding canonical ``key``'s stored tensors, from names alone (no header read)."""
        name = self._source.get(key)
        if name is None:
            return ()
        names = self.files.names
        return tuple(dict.fromkeys(names[s] for s in self.groups[name].stored if s in names))

    def resolve_keys(self, keys: Iterable[str]) -> None:
        """`resolve` the logical tensors behind canonical ``keys`` (unknown keys are ignored)."""
        self.resolve(self._source[k] for k in keys if k in self._source)

    # -- internals ----------------------------------------------------------------------------------

    def _build(self, names: list[str], *, map_each: bool) -> None:
        """Build logical tensors (and, lazily, map each as soon as it is built, so a later failure
        leaves nothing half done)."""
        files = self.files
        groups = [self.groups[n] for n in names]
        files.files(files.names[s] for g in groups for s in g.stored)
        states = read_quant_states(groups, files.holder)
        for group in groups:
            try:
                self._logical[group.name] = build_group(
                    group, files.holder, config=self.quant_config, state=states.get(group.name)
                )
            except UnsupportedFormat as exc:
                self.unsupported[group.name] = str(exc)
            if map_each:
                self._map(group.name)

    def _map(self, name: str) -> None:
        """Map one freshly built logical tensor to its keys (lazy mode), or drop its keys."""
        base = self._logical.get(name)
        keys = self._keys_of.get(name, ())
        if base is not None and keys:
            mappings, unmapped = map_hf_names({name: base.shape}, self.params)
            if unmapped:
                self.unmapped[name] = unmapped[name]
            for m in mappings:
                if m.key in keys:
                    self._entries[m.key] = _entry(m, base)
        missing = [k for k in keys if k not in self._entries]
        if missing:
            for key in missing:
                self._source.pop(key, None)
            self._order = [k for k in self._order if k in self._source]


class LazyMapping(Mapping[str, V]):
    """A read-only mapping over a catalog: membership and keys cost nothing, a value resolves it.

    ``key in m`` and iteration never read a byte; ``m[key]`` may parse a shard header.
    """

    def __init__(
        self, keys: Callable[[], list[str]], contains: Callable[[str], bool], get: Callable[[str], V]
    ) -> None:
        self._keys = keys
        self._contains = contains
        self._get = get

    def __getitem__(self, key: str) -> V:
        if not self._contains(key):
            raise KeyError(key)
        return self._get(key)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._contains(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {len(self)} keys>"
