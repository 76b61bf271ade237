"""Which stored tensors make one logical weight, decided from the names alone, and building it on demand.

A quantised ``nn.Linear`` ``P`` is stored as several tensors (``P.qweight``, ``P.qzeros``, ``P.scales``,
``P.g_idx`` for GPTQ/AWQ; ``P.weight`` + ``P.SCB`` for bitsandbytes int8; ``P.weight`` +
``P.weight.absmax``/``.quant_map``/``.quant_state.bitsandbytes__<type>``... for bitsandbytes 4-bit),
and everything else is one stored tensor read as it is. `plan_groups` works from names only, which is
all a shard index gives, so `monitor.formats.canonical.ModelView` knows a sharded checkpoint's weights
without reading a shard; `build_group` then reads what it needs from the headers of the shards holding
the group's parts (`monitor.formats.quantized` has the layouts), and `read_quant_states` the small JSON
states of bitsandbytes 4-bit layers, all of them in one fetch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from monitor.errors import FormatError, UnsupportedFormat
from monitor.formats.jsonstrict import loads_strict
from monitor.formats.logical import DenseTensor, LogicalTensor
from monitor.formats.quantconfig import QuantConfig
from monitor.formats.quantized import AWQLinear, Bnb4bitLinear, BnbInt8Linear, GPTQLinear
from monitor.formats.rows import Need, RowFile, fetch

__all__ = [
    "GROUP_KINDS",
    "MAX_QUANT_STATE_BYTES",
    "Holder",
    "TensorGroup",
    "build_group",
    "plan_groups",
    "read_quant_states",
]

MAX_QUANT_STATE_BYTES = 4096
"""Largest bitsandbytes quant-state JSON accepted."""
GROUP_KINDS = ("dense", "packed", "bnb-int8", "bnb-4bit")
"""``dense``: one stored tensor; ``packed``: GPTQ or AWQ (told apart by shapes and config);
``bnb-int8`` and ``bnb-4bit``: bitsandbytes."""
_PACKED_PARTS = ("qweight", "qzeros", "scales", "g_idx")
_BNB4_PARTS = ("absmax", "quant_map", "nested_absmax", "nested_quant_map")
_BNB4_STATE = ".weight.quant_state.bitsandbytes__"

Holder = Callable[[str], RowFile]
"""Stored tensor name -> the parsed file holding it (parsing it on first use)."""


@dataclass(frozen=True)
class TensorGroup:
    """The stored tensors of one logical weight.

    Attributes:
        name (`str`): the logical (unquantised checkpoint) name, e.g. ``model.layers.0.mlp.up_proj.weight``.
        kind (`str`): one of `GROUP_KINDS`.
        parts (`dict[str, str]`): role -> stored name (``tensor`` for dense; ``qweight``, ``scales``...
            for packed; ``weight``, ``SCB`` for int8; ``weight``, ``absmax``, ``quant_map``,
            ``quant_state``... for 4-bit).
    """

    name: str
    kind: str
    parts: dict[str, str]

    @property
    def stored(self) -> tuple[str, ...]:
        """The stored tensor names, in role order."""
        return tuple(self.parts.values())


def plan_groups(names: Iterable[str], *, quantised: bool = True) -> dict[str, TensorGroup]:
    """Group stored tensor names into logical weights; no byte is read.

    Args:
        names (`Iterable[str]`): every stored tensor name of the model (a shard index's ``weight_map``
            keys, or the parsed headers' names).
        quantised (`bool`): recognise GPTQ/AWQ/bitsandbytes groups (safetensors); ``False`` makes every
            name its own dense weight (GGUF, PyTorch).

    Returns:
        Groups by logical name: quantised groups first (sorted by name), then the dense tensors in the
        order given.

    Raises:
        `FormatError`: a bitsandbytes 4-bit layer without its weight, absmax or quant map.
    """
    ordered = list(names)
    if not quantised:
        return {n: TensorGroup(n, "dense", {"tensor": n}) for n in ordered}
    present = set(ordered)
    groups: dict[str, TensorGroup] = {}
    used: set[str] = set()
    for name in sorted(present):
        if name.endswith(".qweight"):
            prefix = name.removesuffix(".qweight")
            parts = {k: f"{prefix}.{k}" for k in _PACKED_PARTS if f"{prefix}.{k}" in present}
            used.update(f"{prefix}.{k}" for k in _PACKED_PARTS)
            groups[f"{prefix}.weight"] = TensorGroup(f"{prefix}.weight", "packed", parts)
        elif name.endswith(".SCB"):
            prefix = name.removesuffix(".SCB")
            weight = f"{prefix}.weight"
            used.update({name, weight, f"{prefix}.weight_format"})
            parts = {"weight": weight} if weight in present else {}
            groups[weight] = TensorGroup(weight, "bnb-int8", {**parts, "SCB": name})
    for prefix in sorted({n.split(_BNB4_STATE)[0] for n in present if _BNB4_STATE in n}):
        weight = f"{prefix}.weight"
        state = next(n for n in sorted(present) if n.startswith(prefix + _BNB4_STATE))
        parts = {"weight": weight} if weight in present else {}
        parts |= {k: f"{weight}.{k}" for k in _BNB4_PARTS if f"{weight}.{k}" in present}
        missing = [k for k in ("weight", "absmax", "quant_map") if k not in parts]
        if missing:
            raise FormatError(f"{prefix}: bitsandbytes 4-bit layer without {', '.join(missing)}")
        used.update(n for n in present if n == weight or n.startswith(f"{weight}."))
        groups[weight] = TensorGroup(weight, "bnb-4bit", {**parts, "quant_state": state})
    for name in ordered:
        if name not in used and name not in groups:
            groups[name] = TensorGroup(name, "dense", {"tensor": name})
    return groups


def read_quant_states(groups: Sequence[TensorGroup], holder: Holder) -> dict[str, dict[str, Any]]:
    """The quant-state JSON of each bitsandbytes 4-bit group, read together (one `read_many` per file).

    Returns:
        State by logical name (other kinds are skipped).

    Raises:
        `FormatError`: a state that is not a small uint8 tensor holding a JSON object.
    """
    needs: list[Need] = []
    wanted = [g for g in groups if g.kind == "bnb-4bit"]
    for group in wanted:
        name = group.parts["quant_state"]
        f = holder(name)
        info = f.info(name)
        if info.dtype != "U8" or info.nbytes > MAX_QUANT_STATE_BYTES or len(info.shape) != 1:
            raise FormatError(f"{f.path}: {name} is not a small uint8 JSON quant state")
        needs.append(Need(f, name, np.arange(info.shape[0]), True))
    states: dict[str, dict[str, Any]] = {}
    for group, need, arr in zip(wanted, needs, fetch(needs), strict=True):
        doc = loads_strict(arr.tobytes(), what=f"{need.file.path}: {need.tensor}")
        if not isinstance(doc, dict):
            raise FormatError(f"{need.file.path}: {need.tensor} is not a JSON object")
        states[group.name] = doc
    return states


def build_group(
    group: TensorGroup,
    holder: Holder,
    *,
    config: QuantConfig | None = None,
    state: Mapping[str, Any] | None = None,
) -> LogicalTensor:
    """The logical tensor of a group, from the headers of the files holding its parts.

    Args:
        group (`TensorGroup`): what to build.
        holder (`Holder`): the parsed file of each stored name (parses shards on first use).
        config (`QuantConfig | None`): quantisation settings from the model's documents, if any.
        state (`Mapping | None`): the quant state of a bitsandbytes 4-bit group (`read_quant_states`).

    Raises:
        `UnsupportedFormat`: a well-formed layer we do not read (AWQ GEMV, 3-bit GPTQ, a missing part).
        `FormatError`: inconsistent parts.
    """
    parts = {role: (holder(stored), stored) for role, stored in group.parts.items() if role != "quant_state"}
    if group.kind == "dense":
        file, name = parts["tensor"]
        return DenseTensor(file, name)
    if group.kind == "packed":
        return _gptq_or_awq(group.name.removesuffix(".weight"), parts, config)
    if group.kind == "bnb-int8":
        return _bnb_int8(group, parts)
    if group.kind == "bnb-4bit":
        if state is None:
            raise ValueError(f"{group.name}: a bitsandbytes 4-bit group needs its quant state")
        return Bnb4bitLinear(group.name, parts, state)
    raise ValueError(f"unknown group kind {group.kind!r}")


def _shape(part: tuple[RowFile, str]) -> tuple[int, ...]:
    return part[0].info(part[1]).shape


def _bnb_int8(group: TensorGroup, parts: Mapping[str, tuple[RowFile, str]]) -> LogicalTensor:
    scb_file, scb = parts["SCB"]
    weight = group.name
    if "weight" not in parts:
        raise FormatError(f"{scb_file.path}: {scb} without an int8 2-D {weight}")
    wfile = parts["weight"][0]
    if wfile.info(weight).dtype != "I8" or len(wfile.info(weight).shape) != 2:
        raise FormatError(f"{scb_file.path}: {scb} without an int8 2-D {weight}")
    if scb_file.info(scb).shape != (wfile.info(weight).shape[0],):
        raise FormatError(f"{scb_file.path}: {scb} does not have one scale per row of {weight}")
    return BnbInt8Linear(weight, (wfile, weight), (scb_file, scb))


def _gptq_or_awq(
    prefix: str, parts: Mapping[str, tuple[RowFile, str]], config: QuantConfig | None
) -> LogicalTensor:
    qf, _ = parts["qweight"]
    where = f"{qf.path}: {prefix}"
    for key in ("qweight", "scales", "qzeros"):
        if key not in parts:
            raise UnsupportedFormat(f"{where}: quantised layer without {key}")
        if len(_shape(parts[key])) != 2:
            raise FormatError(f"{where}.{key} must be 2-D")
    for key in ("qweight", "qzeros", "g_idx"):
        if key in parts and parts[key][0].info(parts[key][1]).dtype not in ("I32", "U32"):
            raise FormatError(f"{where}.{key} must be int32")
    q_rows, q_cols = _shape(parts["qweight"])
    groups, out = _shape(parts["scales"])
    z_rows, z_cols = _shape(parts["qzeros"])
    if z_rows != groups:
        raise FormatError(f"{where}: qzeros has {z_rows} groups, scales {groups}")
    method = config.method if config and config.method in ("gptq", "awq") else None
    if method is None:
        method = "gptq" if q_cols == out else "awq" if q_cols * 8 == out else None
    if method == "awq":
        if config is not None and config.version not in (None, "gemm"):
            raise UnsupportedFormat(f"{where}: AWQ '{config.version}' layout is not read (GEMM only)")
        if q_cols * 8 != out or z_cols * 8 != out:
            raise FormatError(f"{where}: AWQ shapes qweight {q_cols}x8 / qzeros {z_cols}x8 != {out} outputs")
        return AWQLinear(f"{prefix}.weight", parts, group_size=config.group_size if config else None)
    if method != "gptq" or q_cols != out:
        raise FormatError(
            f"{where}: qweight {q_rows}x{q_cols} matches neither GPTQ nor AWQ for {out} outputs"
        )
    if z_cols == 0 or (32 * z_cols) % out:
        raise FormatError(f"{where}: qzeros width {z_cols} does not fit {out} outputs")
    bits = 32 * z_cols // out
    if config is not None and config.bits is not None and config.bits != bits:
        raise FormatError(f"{where}: {config.source} says {config.bits} bits, qzeros hold {bits}")
    if bits not in (2, 4, 8):
        raise UnsupportedFormat(f"{where}: {bits}-bit GPTQ is not read (2, 4 and 8 bits are)")
    fmt = (config.checkpoint_format if config else None) or "gptq"
    if fmt not in ("gptq", "gptq_v2"):
        raise UnsupportedFormat(f"{where}: GPTQ checkpoint format {fmt!r} is not read")
    if "g_idx" in parts and _shape(parts["g_idx"]) != (q_rows * 32 // bits,):
        raise FormatError(f"{where}: g_idx shape {_shape(parts['g_idx'])} != ({q_rows * 32 // bits},)")
    return GPTQLinear(
        f"{prefix}.weight",
        parts,
        bits=bits,
        group_size=config.group_size if config else None,
        zero_offset=1 if fmt == "gptq" else 0,
        trivial_g_idx=bool(config is not None and config.desc_act is False),
    )
