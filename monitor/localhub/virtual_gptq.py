"""The ``gptq`` kind of virtual file: a GPTQ checkpoint of a (derived) virtual Llama, generated on the fly.

The layout AutoGPTQ/GPTQModel save and ``transformers`` loads (`monitor.formats.quantized` reads it):
for every linear layer ``P`` of the decoder (``q/k/v/o_proj``, ``gate/up/down_proj``)

* ``P.qweight`` int32 ``[in·bits/32, out]``: input ``i`` of output ``o`` in row ``i // (32/bits)`` at
  bit ``bits·(i mod 32/bits)``;
* ``P.qzeros`` int32 ``[groups, out·bits/32]`` packed along outputs, holding ``zero − 1`` (the v1
  ``gptq`` checkpoint format);
* ``P.scales`` float16 ``[groups, out]`` and ``P.g_idx`` int32 ``[in]`` (``i // group_size``: no
  act-order);

while embeddings, norms and ``lm_head`` stay float16. Tensors are stored in the order the
``safetensors`` library writes them (by dtype, then name), so a materialised file is byte-identical to
``safetensors.numpy.save_file`` of its own tensors.

Values: the weights are the safetensors kind's for the same seed or derivation (rounded to
``source_dtype``, BF16 by default), quantised by round-to-nearest per group of ``group_size`` inputs
with AutoGPTQ's scale and zero rules (symmetric: ``scale = 2·max|w| / maxq``, ``zero = (maxq+1)/2``;
asymmetric: ``scale = (max − min) / maxq``, ``zero = round(−min / scale)``). GPTQ's error-compensating
updates are not simulated: dequantised values are within half a step of the float weights, which is
what matters for bytes read and for the verdict. A packed row depends only on the groups it covers,
so any byte range is computed from a few groups.

Spec (``model.safetensors.virtual.json`` in a GPTQ repo)::

    {"kind": "gptq", "model": {...LlamaShape.to_spec()...}, "seed": 7,     # or "derivation"
     "bits": 4, "group_size": 128, "sym": true, "source_dtype": "BF16",
     "init": {"std": 0.02, "norm_std": 0.1},
     "tensors": ["model.embed_tokens.weight", ...]}   # optional: the weights this shard holds
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from monitor.errors import FormatError
from monitor.localhub.virtual import VIRTUAL_SUFFIX
from monitor.localhub.virtual_conversion import LlamaConversion
from monitor.localhub.virtual_llama import (
    LlamaShape,
    LlamaWeights,
    llama_config,
    llama_tensor_specs,
    write_json,
    write_tokenizer,
)

__all__ = [
    "GPTQTensor",
    "VirtualGPTQ",
    "gptq_quantize",
    "gptq_tensors",
    "quantize_config_json",
    "write_virtual_gptq",
]

_DTYPE_RANK = {"F16": 7, "BF16": 8, "I32": 9, "F32": 11}
"""Positions in safetensors' ``Dtype`` enum; files hold tensors by descending dtype, then name."""
_ITEMSIZE = {"F16": 2, "BF16": 2, "I32": 4, "F32": 4}
_QUANTIZED = frozenset(
    {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj"}
    | {"mlp.up_proj", "mlp.down_proj"}
)
"""The linear layers AutoGPTQ quantises in a Llama (``lm_head`` stays float16)."""
_ROW_BATCH_ELEMS = 1 << 21
"""Weight values generated per batch (bounds memory for reads of any size)."""


def gptq_quantize(
    w: np.ndarray, *, bits: int = 4, group_size: int = 128, sym: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Round-to-nearest GPTQ quantisation of whole groups: ``w`` ``(out, n·group_size)`` float32.

    Returns:
        ``(q, scales, zeros)``: ``q`` uint32 ``(out, n·group_size)`` in ``[0, 2^bits − 1]``, ``scales``
        float16 ``(n, out)`` (the stored values; ``q`` was computed with them) and ``zeros`` uint32
        ``(n, out)``, so that ``w ≈ scales[g, o]·(q[o, i] − zeros[g, o])`` with ``g = i // group_size``.
    """
    maxq = (1 << bits) - 1
    out, n_in = w.shape
    if n_in % group_size:
        raise ValueError(f"{n_in} inputs are not whole groups of {group_size}")
    x = np.asarray(w, dtype=np.float32).reshape(out, n_in // group_size, group_size)
    xmin = np.minimum(x.min(axis=-1), 0.0)
    xmax = np.maximum(x.max(axis=-1), 0.0)
    if sym:
        xmax = np.maximum(np.abs(xmin), xmax)
        xmin = np.where(xmin < 0, -xmax, xmin)
    both_zero = (xmin == 0) & (xmax == 0)
    xmin = np.where(both_zero, -1.0, xmin)
    xmax = np.where(both_zero, 1.0, xmax)
    scale = ((xmax - xmin) / maxq).astype(np.float16)
    scale32 = scale.astype(np.float32)
    zero = np.full(scale.shape, (maxq + 1) // 2, dtype=np.float32) if sym else np.rint(-xmin / scale32)
    q = np.clip(np.rint(x / scale32[..., None]) + zero[..., None], 0, maxq).astype(np.uint32)
    return q.reshape(out, n_in), np.ascontiguousarray(scale.T), np.ascontiguousarray(zero.T.astype(np.uint32))


def _pack(values: np.ndarray, bits: int, axis: int) -> np.ndarray:
    """Pack uint32 values of ``bits`` bits, ``32/bits`` consecutive ones along ``axis`` per int32."""
    per = 32 // bits
    v = np.moveaxis(values, axis, -1)
    v = v.reshape(*v.shape[:-1], v.shape[-1] // per, per)
    shifts = (np.arange(per, dtype=np.uint32) * bits).astype(np.uint32)
    packed = np.bitwise_or.reduce(v << shifts, axis=-1).astype(np.uint32)
    # C order: safetensors.numpy (0.8) serialises a transposed view in memory order, silently
    return np.ascontiguousarray(np.moveaxis(packed, -1, axis)).view(np.int32)


def _stored_zeros(zeros: np.ndarray, bits: int) -> np.ndarray:
    """v1 ``qzeros`` hold ``zero − 1``, masked to the field as AutoGPTQ's packer does (a zero of 0 wraps)."""
    return ((zeros.astype(np.int64) - 1) & ((1 << bits) - 1)).astype(np.uint32)


def gptq_tensors(
    prefix: str, weight: np.ndarray, *, bits: int = 4, group_size: int = 128, sym: bool = True
) -> dict[str, np.ndarray]:
    """The stored tensors of one GPTQ linear layer ``prefix`` (v1 format, no act-order) from its float
    ``weight`` ``(out, in)``: ``{prefix}.qweight``, ``.qzeros``, ``.scales`` (float16) and ``.g_idx``.

    What the virtual kind generates row by row, for real weights (small models written as files).
    """
    n_in = weight.shape[1]
    gs = n_in if group_size == -1 else group_size
    q, scales, zeros = gptq_quantize(weight, bits=bits, group_size=gs, sym=sym)
    return {
        f"{prefix}.qweight": _pack(q.T, bits, axis=0),
        f"{prefix}.qzeros": _pack(_stored_zeros(zeros, bits), bits, axis=1),
        f"{prefix}.scales": scales,
        f"{prefix}.g_idx": (np.arange(n_in) // gs).astype(np.int32),
    }


@dataclass(frozen=True)
class GPTQTensor:
    """One stored tensor of a virtual GPTQ file.

    Attributes:
        name (`str`): stored name (``P.qweight``...). weight (`str`): the float weight it comes from.
        part (`str`): ``qweight``, ``qzeros``, ``scales``, ``g_idx`` or ``dense``.
        dtype (`str`), shape (`tuple[int, ...]`): as in the header.
        mean (`float`), std (`float`): the weight's value distribution.
        weight_shape (`tuple[int, ...]`): ``(out, in)`` of the float weight (its shape for dense ones).
        offset (`int`), nbytes (`int`), row_bytes (`int`): absolute layout.
    """

    name: str
    weight: str
    part: str
    dtype: str
    shape: tuple[int, ...]
    mean: float
    std: float
    weight_shape: tuple[int, ...]
    offset: int
    nbytes: int
    row_bytes: int

    @property
    def n_rows(self) -> int:
        return self.shape[0] if len(self.shape) == 2 else 1


class VirtualGPTQ(LlamaConversion[GPTQTensor]):
    """A GPTQ safetensors checkpoint (or one shard of it) of a virtual Llama (see the module docstring)."""

    kind = "gptq"
    EXTRA_KEYS = frozenset({"bits", "group_size", "sym", "tensors"})

    def __init__(self, spec: Mapping[str, Any]) -> None:
        super().__init__(spec)
        self.bits = spec.get("bits", 4)
        if self.bits not in (2, 4, 8) or isinstance(self.bits, bool):
            raise FormatError(f"bits must be 2, 4 or 8, got {self.bits!r}")
        self.pack = 32 // self.bits
        group_size = spec.get("group_size", 128)
        if (
            isinstance(group_size, bool)
            or not isinstance(group_size, int)
            or not (group_size == -1 or group_size > 0)
        ):
            raise FormatError(f"group_size must be a positive integer or -1, got {group_size!r}")
        self.group_size = group_size
        self.sym = spec.get("sym", True)
        if not isinstance(self.sym, bool):
            raise FormatError("sym must be true or false")
        entries = self.weights.tensor_specs()
        wanted = spec.get("tensors")
        if wanted is not None:
            known = {e["name"] for e in entries}
            if not isinstance(wanted, list) or not wanted or not all(isinstance(n, str) for n in wanted):
                raise FormatError("'tensors' must be a non-empty list of weight names")
            missing = sorted(set(wanted) - known)
            if missing:
                raise FormatError(f"'tensors' names weights this model does not have: {missing[:5]}")
            entries = [e for e in entries if e["name"] in set(wanted)]
        self._layout(entries)

    # -- layout -----------------------------------------------------------------------------------

    def _groups(self, n_in: int, where: str) -> int:
        gs = n_in if self.group_size == -1 else self.group_size
        if n_in % gs:
            raise FormatError(f"{where}: {n_in} inputs are not whole groups of {gs}")
        return n_in // gs

    def _parts(self, e: dict[str, Any]) -> list[tuple[str, str, str, tuple[int, ...]]]:
        name, shape = e["name"], tuple(e["shape"])
        module = ".".join(name.split(".")[3:-1]) if name.startswith("model.layers.") else ""
        if module not in _QUANTIZED:
            return [(name, "dense", "F16", shape)]
        out, n_in = shape
        if n_in % self.pack or out % self.pack:
            raise FormatError(f"{name}: shape {shape} cannot be packed {self.pack} values per int32")
        groups = self._groups(n_in, name)
        prefix = name.removesuffix(".weight")
        return [
            (f"{prefix}.qweight", "qweight", "I32", (n_in // self.pack, out)),
            (f"{prefix}.qzeros", "qzeros", "I32", (groups, out // self.pack)),
            (f"{prefix}.scales", "scales", "F16", (groups, out)),
            (f"{prefix}.g_idx", "g_idx", "I32", (n_in,)),
        ]

    def _layout(self, entries: list[dict[str, Any]]) -> None:
        stored = []
        for e in entries:
            init = e["init"]
            for name, part, dtype, shape in self._parts(e):
                stored.append(
                    (name, e["name"], part, dtype, shape, init.get("mean", 0.0), init["std"], e["shape"])
                )
        stored.sort(key=lambda s: (-_DTYPE_RANK[s[3]], s[0]))  # safetensors' serialisation order
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        pos = 0
        rel: list[tuple[int, int]] = []
        for name, _, _, dtype, shape, *_ in stored:
            nbytes = math.prod(shape) * _ITEMSIZE[dtype]
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + nbytes]}
            rel.append((pos, nbytes))
            pos += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)
        prefix = struct.pack("<Q", len(raw)) + raw
        base = len(prefix)
        tensors: list[GPTQTensor] = []
        for (name, weight, part, dtype, shape, mean, std, wshape), (off, nbytes) in zip(
            stored, rel, strict=True
        ):
            row = math.prod(shape[1:]) * _ITEMSIZE[dtype] if len(shape) == 2 else nbytes
            tensors.append(
                GPTQTensor(
                    name,
                    weight,
                    part,
                    dtype,
                    tuple(shape),
                    float(mean),
                    float(std),
                    tuple(wshape),
                    base + off,
                    nbytes,
                    row,
                )
            )
        self.header_size = base
        self._set_layout(prefix, tensors, base + pos)

    # -- values -----------------------------------------------------------------------------------

    def weight_columns(self, weight: str, start: int, stop: int) -> np.ndarray:
        """Float weights (``source_dtype`` values) of inputs ``[start, stop)``: ``(out, stop − start)``."""
        t = next((t for t in self.tensors if t.weight == weight), None)
        if t is None or len(t.weight_shape) != 2:
            raise FormatError(f"no 2-D weight {weight!r} in this virtual GPTQ file")
        out, n_in = t.weight_shape
        if not 0 <= start <= stop <= n_in:
            raise FormatError(f"{weight}: input range [{start}, {stop}) outside 0..{n_in}")
        index = (
            np.arange(out, dtype=np.int64)[:, None] * n_in + np.arange(start, stop, dtype=np.int64)[None, :]
        )
        return self.weights.stored(t.mean + t.std * self.weights.values.normals_at(weight, index))

    def _quantized_groups(self, t: GPTQTensor, g0: int, g1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        gs = t.weight_shape[1] // self._groups(t.weight_shape[1], t.weight)
        w = self.weight_columns(t.weight, g0 * gs, g1 * gs)
        return gptq_quantize(w, bits=self.bits, group_size=gs, sym=self.sym)

    def _rows(self, t: GPTQTensor, r0: int, r1: int) -> bytes:
        """Stored bytes of rows ``[r0, r1)`` of one tensor (1-D tensors: one row)."""
        if t.part == "dense":
            n = math.prod(t.shape[1:]) if len(t.shape) == 2 else math.prod(t.shape)
            values = t.mean + t.std * self.weights.values.normals(t.weight, r0 * n, r1 * n)
            return self.weights.stored(values).astype("<f2").tobytes()
        n_in = t.weight_shape[1]
        gs = n_in // self._groups(n_in, t.weight)
        if t.part == "g_idx":
            return (np.arange(n_in, dtype=np.int64) // gs).astype("<i4").tobytes()
        if t.part == "qzeros" and self.sym:
            stored = (1 << (self.bits - 1)) - 1  # zero = (maxq + 1) / 2, stored minus one
            row = _pack(np.full((1, t.weight_shape[0]), stored, dtype=np.uint32), self.bits, axis=1)
            return np.repeat(row, r1 - r0, axis=0).astype("<i4").tobytes()
        if t.part in ("scales", "qzeros"):
            _, scales, zeros = self._quantized_groups(t, r0, r1)
            if t.part == "scales":
                return scales.astype("<f2").tobytes()
            return _pack(_stored_zeros(zeros, self.bits), self.bits, axis=1).astype("<i4").tobytes()
        i0, i1 = r0 * self.pack, r1 * self.pack  # qweight: packed rows cover inputs [i0, i1)
        g0, g1 = i0 // gs, -(-i1 // gs)
        q, _, _ = self._quantized_groups(t, g0, g1)
        cols = q[:, i0 - g0 * gs : i1 - g0 * gs]  # (out, i1 - i0)
        return _pack(cols.T, self.bits, axis=0).astype("<i4").tobytes()

    def _step(self, t: GPTQTensor) -> int:
        """Rows generated per batch; batches start at multiples of it (whole groups for ``qweight``)."""
        if t.part == "dense":
            per_row = math.prod(t.shape[1:]) if len(t.shape) == 2 else math.prod(t.shape)
            return max(1, _ROW_BATCH_ELEMS // per_row)
        if t.part == "g_idx":
            return 1
        out, n_in = t.weight_shape
        gs = n_in // self._groups(n_in, t.weight)
        groups = max(1, _ROW_BATCH_ELEMS // (out * gs))
        return groups * gs // self.pack if t.part == "qweight" else groups


def quantize_config_json(*, bits: int = 4, group_size: int = 128, sym: bool = True) -> dict[str, Any]:
    """``quantize_config.json`` as AutoGPTQ writes it (also ``config.json``'s ``quantization_config``)."""
    return {
        "bits": bits,
        "group_size": group_size,
        "damp_percent": 0.01,
        "desc_act": False,
        "static_groups": False,
        "sym": sym,
        "true_sequential": True,
        "model_name_or_path": None,
        "model_file_base_name": "model",
        "quant_method": "gptq",
        "checkpoint_format": "gptq",
    }


def write_virtual_gptq(
    repo_dir: str | os.PathLike[str],
    shape: LlamaShape,
    *,
    seed: int | None = 0,
    derivation: dict[str, Any] | None = None,
    bits: int = 4,
    group_size: int = 128,
    sym: bool = True,
    max_shard_bytes: int | None = None,
    source_dtype: str = "BF16",
    vocab_seed: int = 0,
    init_std: float = 0.02,
    norm_std: float = 0.1,
) -> list[Path]:
    """Write a GPTQ repo of a virtual Llama: weight spec(s), ``config.json`` with
    ``quantization_config``, ``quantize_config.json`` and the tokenizer (`write_tokenizer`).

    Args:
        repo_dir: the repo folder; created if missing.
        shape (`LlamaShape`): dimensions.
        seed (`int | None`), derivation (`dict | None`): as `write_virtual_llama` (same weights).
        bits (`int`), group_size (`int`), sym (`bool`): quantisation settings.
        max_shard_bytes (`int | None`): ``None`` writes one ``model.safetensors`` (AutoGPTQ; TheBloke's
            70B GPTQ is a single 35 GB file); otherwise shards of at most this many bytes with an index.

    Returns:
        Paths of the files written.
    """
    weights = LlamaWeights.create(
        shape,
        seed=seed,
        derivation=derivation,
        source_dtype=source_dtype,
        init_std=init_std,
        norm_std=norm_std,
    )
    base: dict[str, Any] = {
        "kind": "gptq",
        **weights.to_spec(),
        "bits": bits,
        "group_size": group_size,
        "sym": sym,
    }
    whole = VirtualGPTQ(base)  # validates the combination
    out_dir = Path(repo_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards: list[list[str]] = [[]]
    if max_shard_bytes is not None:
        if max_shard_bytes < 1:
            raise ValueError("max_shard_bytes must be >= 1")
        size = 0
        per_weight: dict[str, int] = {}
        for t in whole.tensors:
            per_weight[t.weight] = per_weight.get(t.weight, 0) + t.nbytes
        for e in llama_tensor_specs(shape):
            nbytes = per_weight[e["name"]]
            if shards[-1] and size + nbytes > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append(e["name"])
            size += nbytes
    written: list[Path] = []
    if len(shards) == 1:
        path = out_dir / f"model.safetensors{VIRTUAL_SUFFIX}"
        write_json(path, base)
        written.append(path)
    else:
        n = len(shards)
        weight_map: dict[str, str] = {}
        for i, members in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            spec = {**base, "tensors": members}
            shard = VirtualGPTQ(spec)
            weight_map.update(dict.fromkeys((t.name for t in shard.tensors), fname))
            path = out_dir / (fname + VIRTUAL_SUFFIX)
            write_json(path, spec)
            written.append(path)
        index = {"metadata": {"total_size": sum(t.nbytes for t in whole.tensors)}, "weight_map": weight_map}
        written.append(out_dir / "model.safetensors.index.json")
        write_json(written[-1], index)
    qconfig = quantize_config_json(bits=bits, group_size=group_size, sym=sym)
    config = {**llama_config(shape, "F16"), "quantization_config": qconfig}
    written += [out_dir / "config.json", out_dir / "quantize_config.json"]
    write_json(written[-2], config)
    write_json(written[-1], qconfig)
    if shape.vocab >= 64:
        written += write_tokenizer(out_dir, shape, vocab_seed=vocab_seed)
    return written
