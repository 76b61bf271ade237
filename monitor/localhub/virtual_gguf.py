"""The ``gguf`` kind of virtual file: a llama.cpp GGUF of a (derived) virtual Llama, generated on the fly.

What ``convert_hf_to_gguf.py`` followed by ``llama-quantize`` would make of the virtual safetensors
checkpoint with the same seed or derivation (`monitor.localhub.virtual_llama.write_virtual_llama`):

* a GGUF v3 header with llama.cpp's key/values (``llama.*`` dimensions, ``general.file_type``) and a
  Llama-2-like tokenizer (`monitor.localhub.virtual_vocab.llama_vocab`: 32,000 tokens, scores and
  token types), so the header has a real model's size (about 0.9 MB for Llama-2 shapes);
* llama.cpp tensor names (``token_embd``, ``blk.N.attn_q``…``ffn_down``, ``output_norm``, ``output``),
  shapes in GGML order, 32-byte alignment;
* the Q and K rows permuted for RoPE as the converter does (`monitor.formats.names.gguf_rope_rows`);
* the quantisation mix of ``llama-quantize`` for the chosen file type: for ``Q4_K_M`` Q4_K everywhere,
  Q6_K for ``output`` and for ``attn_v``/``ffn_down`` of the "more bits" layers (the first and last
  eighth and every third layer between), ``attn_v`` at Q5_K in 70B-type models (80 layers, GQA), F32
  norms, and llama.cpp's fallbacks (Q5_0, Q5_1, Q8_0, then F16) for rows that are not whole blocks.

Values: the float rows are the safetensors kind's — ``mean + std·z`` from the spec's seed or
derivation (`monitor.localhub.virtual.ValueSource`), rounded to ``source_dtype`` (the checkpoint that
was converted, BF16 by default) — then quantised with `monitor.formats.gguf_quants.quantize`. Rows are
whole blocks, so the bytes of any range are computed from the rows it touches and nothing else.

Spec (``<name>.Q4_K_M.gguf.virtual.json``)::

    {"kind": "gguf", "model": {"d_model": 4096, "n_layers": 32, "d_ff": 11008, "n_heads": 32,
     "n_kv_heads": 32, "vocab": 32000},          # LlamaShape.to_spec()
     "seed": 7,                                   # or "derivation": {base_seed, noise_seed, rel_noise}
     "file_type": "Q4_K_M",                       # Q4_K_M, Q5_K_M, Q6_K, Q8_0, F16
     "name": "Llama 2 7B", "source_dtype": "BF16", "vocab_seed": 0,
     "init": {"std": 0.02, "norm_std": 0.1}}      # optional; as llama_tensor_specs
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from monitor.errors import FormatError
from monitor.formats.gguf_quants import quantize
from monitor.formats.names import gguf_rope_rows
from monitor.localhub.virtual import VIRTUAL_SUFFIX
from monitor.localhub.virtual_conversion import LlamaConversion
from monitor.localhub.virtual_llama import LlamaShape, LlamaWeights, write_json
from monitor.localhub.virtual_vocab import TOKEN_TYPES, llama_vocab

__all__ = [
    "ALIGNMENT",
    "FILE_TYPES",
    "GGUFTensor",
    "VirtualGGUF",
    "gguf_tensor_name",
    "llama_cpp_type",
    "write_virtual_gguf",
]

ALIGNMENT = 32
"""``general.alignment`` (GGUF's default; not written as a key)."""
FILE_TYPES: dict[str, GGMLQuantizationType] = {
    "Q4_K_M": GGMLQuantizationType.Q4_K,
    "Q5_K_M": GGMLQuantizationType.Q5_K,
    "Q6_K": GGMLQuantizationType.Q6_K,
    "Q8_0": GGMLQuantizationType.Q8_0,
    "F16": GGMLQuantizationType.F16,
}
"""Supported ``file_type`` names and their base tensor type."""
_FTYPE_IDS = {
    "Q4_K_M": LlamaFileType.MOSTLY_Q4_K_M,
    "Q5_K_M": LlamaFileType.MOSTLY_Q5_K_M,
    "Q6_K": LlamaFileType.MOSTLY_Q6_K,
    "Q8_0": LlamaFileType.MOSTLY_Q8_0,
    "F16": LlamaFileType.MOSTLY_F16,
}
_FALLBACK = {
    GGMLQuantizationType.Q4_K: GGMLQuantizationType.Q5_0,
    GGMLQuantizationType.Q5_K: GGMLQuantizationType.Q5_1,
    GGMLQuantizationType.Q6_K: GGMLQuantizationType.Q8_0,
}
"""llama.cpp's ``convert_incompatible_tensor`` choices for rows that are not whole super-blocks."""
_HF_TO_GGUF = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_ROW_BATCH_ELEMS = 1 << 20
"""Elements generated per batch of rows (bounds memory for reads of any size)."""
# GGUF value types
_U32, _I32, _F32, _BOOL, _STR, _ARR = 4, 5, 6, 7, 8, 9


def gguf_tensor_name(hf_name: str) -> str:
    """llama.cpp's name for a Hugging Face Llama tensor (``model.layers.3.mlp.up_proj.weight`` →
    ``blk.3.ffn_up.weight``)."""
    if hf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[hf_name]
    parts = hf_name.split(".")
    if len(parts) >= 5 and parts[:2] == ["model", "layers"] and parts[2].isdigit():
        module = ".".join(parts[3:-1])
        if module in _HF_TO_GGUF:
            return f"blk.{parts[2]}.{_HF_TO_GGUF[module]}.{parts[-1]}"
    raise FormatError(f"no llama.cpp name for tensor {hf_name!r}")


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of a virtual GGUF file.

    Attributes:
        name (`str`): GGUF name; hf_name (`str`): the safetensors tensor its values come from.
        qtype (`GGMLQuantizationType`): storage type.
        shape (`tuple[int, ...]`): numpy order (rows, cols), or ``(n,)``.
        mean (`float`), std (`float`): the value distribution (as the safetensors kind's).
        rope_heads (`int`): heads whose rows were RoPE-permuted (0: not permuted).
        offset (`int`): absolute offset of the first data byte; nbytes (`int`): data bytes.
        row_bytes (`int`): bytes of one row (the whole tensor for 1-D tensors).
    """

    name: str
    hf_name: str
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]
    mean: float
    std: float
    rope_heads: int
    offset: int
    nbytes: int
    row_bytes: int

    @property
    def n_rows(self) -> int:
        return self.shape[0] if len(self.shape) == 2 else 1

    @property
    def row_elems(self) -> int:
        return self.shape[-1]


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's choice of layers that get more bits in ``*_M`` mixes."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def _fits(qtype: GGMLQuantizationType, cols: int) -> bool:
    return cols % GGML_QUANT_SIZES[qtype][0] == 0


def llama_cpp_type(
    file_type: str,
    gguf_name: str,
    shape: Sequence[int],
    *,
    n_layers: int,
    has_output: bool = True,
    large_gqa: bool = False,
) -> GGMLQuantizationType:
    """The type ``llama-quantize`` gives one tensor (its ``llama_tensor_get_type``, non-MoE models).

    Args:
        file_type (`str`): one of `FILE_TYPES`.
        gguf_name (`str`), shape (`Sequence[int]`): the tensor (numpy order).
        n_layers (`int`): block count (for the "more bits" layers of ``*_M`` mixes).
        has_output (`bool`): the model has an ``output.weight``; without one (tied embeddings, BERT)
            ``token_embd`` is typed like the output.
        large_gqa (`bool`): llama.cpp's ``LLM_TYPE_70B`` (80 layers with grouped KV heads), whose
            ``attn_v`` gets Q5_K instead of Q4_K.

    Raises:
        `ValueError`: an unknown file type.
    """
    if file_type not in FILE_TYPES:
        raise ValueError(f"file_type must be one of {sorted(FILE_TYPES)}, got {file_type!r}")
    if len(shape) != 2:
        return GGMLQuantizationType.F32  # norms and biases stay F32
    Q4_K, Q5_K, Q6_K, Q8_0 = (GGMLQuantizationType[n] for n in ("Q4_K", "Q5_K", "Q6_K", "Q8_0"))
    base = FILE_TYPES[file_type]
    cols = shape[1]
    qtype = base
    layer = int(gguf_name.split(".")[1]) if gguf_name.startswith("blk.") else -1
    mixed = file_type in ("Q4_K_M", "Q5_K_M")
    more_bits = mixed and layer >= 0 and _use_more_bits(layer, n_layers)
    is_output = gguf_name == "output.weight" or (not has_output and gguf_name == "token_embd.weight")
    if file_type == "F16":
        pass
    elif is_output:
        qtype = Q8_0 if base == Q8_0 or not _fits(Q6_K, cols) else Q6_K
    elif ".attn_v." in gguf_name:
        if more_bits:
            qtype = Q6_K
        if large_gqa and qtype == Q4_K:
            qtype = Q5_K  # 8 heads share attn_v there: more bits cost almost nothing
    elif ".ffn_down." in gguf_name and more_bits:
        qtype = Q6_K
    if not _fits(qtype, cols):
        qtype = _FALLBACK.get(qtype, GGMLQuantizationType.F16)
        if not _fits(qtype, cols):
            qtype = GGMLQuantizationType.F16
    return qtype


# --------------------------------------------------------------------------------------------- header
def _string(value: str) -> bytes:
    data = value.encode("utf-8")
    return struct.pack("<Q", len(data)) + data


def _kv(key: str, vtype: int, value: Any) -> bytes:
    head = _string(key) + struct.pack("<I", vtype)
    if vtype == _STR:
        return head + _string(value)
    if vtype == _BOOL:
        return head + struct.pack("<?", bool(value))
    return head + struct.pack({_U32: "<I", _I32: "<i", _F32: "<f"}[vtype], value)


def _array(key: str, etype: int, values: Sequence[Any]) -> bytes:
    head = _string(key) + struct.pack("<IIQ", _ARR, etype, len(values))
    if etype == _STR:
        return head + b"".join(_string(v) for v in values)
    dtype = {_F32: "<f4", _I32: "<i4", _U32: "<u4"}[etype]
    return head + np.asarray(values, dtype=dtype).tobytes()


class VirtualGGUF(LlamaConversion[GGUFTensor]):
    """A llama.cpp GGUF of a virtual Llama (see the module docstring)."""

    kind = "gguf"
    EXTRA_KEYS = frozenset({"file_type", "name", "vocab_seed"})

    def __init__(self, spec: Mapping[str, Any]) -> None:
        super().__init__(spec)
        self.file_type = spec.get("file_type", "Q4_K_M")
        if self.file_type not in FILE_TYPES:
            raise FormatError(f"file_type must be one of {sorted(FILE_TYPES)}, got {self.file_type!r}")
        name = spec.get("name", "virtual-llama")
        if not isinstance(name, str) or not 0 < len(name) <= 256:
            raise FormatError("'name' must be a string of 1 to 256 characters")
        vocab_seed = spec.get("vocab_seed", 0)
        if isinstance(vocab_seed, bool) or not isinstance(vocab_seed, int):
            raise FormatError(f"vocab_seed must be an integer, got {vocab_seed!r}")
        try:
            self.vocab = llama_vocab(self.model.vocab, seed=vocab_seed)
        except ValueError as exc:
            raise FormatError(str(exc)) from None
        entries = self.weights.tensor_specs()
        self._name = name
        self._layout(entries)

    # -- layout -----------------------------------------------------------------------------------

    def _layout(self, entries: list[dict[str, Any]]) -> None:
        m = self.model
        planned: list[tuple[str, str, GGMLQuantizationType, tuple[int, ...], float, float, int]] = []
        for e in entries:
            gname = gguf_tensor_name(e["name"])
            shape = tuple(e["shape"])
            rope = m.n_heads if ".attn_q." in gname else m.n_kv_heads if ".attn_k." in gname else 0
            init = e["init"]
            qtype = llama_cpp_type(
                self.file_type,
                gname,
                shape,
                n_layers=m.n_layers,
                has_output=not m.tie_embeddings,
                large_gqa=m.n_layers == 80 and m.n_kv_heads != m.n_heads,
            )
            planned.append((gname, e["name"], qtype, shape, init.get("mean", 0.0), init["std"], rope))
        infos = b""
        rel = 0
        rel_offsets = []
        for gname, _, qtype, shape, *_ in planned:
            block, size = GGML_QUANT_SIZES[qtype]
            nbytes = math.prod(shape) // block * size
            ne = tuple(reversed(shape))
            infos += _string(gname) + struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, int(qtype), rel)
            rel_offsets.append((rel, nbytes))
            rel += -(-nbytes // ALIGNMENT) * ALIGNMENT
        kv = self._metadata()
        head = b"GGUF" + struct.pack("<IQQ", 3, len(planned), kv[0]) + kv[1] + infos
        self.header_bytes = len(head)
        self.data_offset = -(-len(head) // ALIGNMENT) * ALIGNMENT
        tensors: list[GGUFTensor] = []
        for (gname, hf, qtype, shape, mean, std, rope), (off, nbytes) in zip(
            planned, rel_offsets, strict=True
        ):
            block, size = GGML_QUANT_SIZES[qtype]
            row_bytes = shape[-1] // block * size
            tensors.append(
                GGUFTensor(
                    gname,
                    hf,
                    qtype,
                    shape,
                    float(mean),
                    float(std),
                    rope,
                    self.data_offset + off,
                    nbytes,
                    row_bytes,
                )
            )
        self._hf_rows: dict[str, np.ndarray] = {}
        self._set_layout(head + b"\0" * (self.data_offset - len(head)), tensors, self.data_offset + rel)

    def _metadata(self) -> tuple[int, bytes]:
        m, v = self.model, self.vocab
        items = [
            _kv("general.architecture", _STR, "llama"),
            _kv("general.type", _STR, "model"),
            _kv("general.name", _STR, self._name),
            _kv("llama.block_count", _U32, m.n_layers),
            _kv("llama.context_length", _U32, m.max_position_embeddings),
            _kv("llama.embedding_length", _U32, m.d_model),
            _kv("llama.feed_forward_length", _U32, m.d_ff),
            _kv("llama.attention.head_count", _U32, m.n_heads),
            _kv("llama.attention.head_count_kv", _U32, m.n_kv_heads),
            _kv("llama.rope.freq_base", _F32, m.rope_theta),
            _kv("llama.attention.layer_norm_rms_epsilon", _F32, m.rms_norm_eps),
            _kv("llama.rope.dimension_count", _U32, m.head_dim),
            _kv("llama.vocab_size", _U32, m.vocab),
            _kv("general.file_type", _U32, int(_FTYPE_IDS[self.file_type])),
            _kv("tokenizer.ggml.model", _STR, "llama"),
            _kv("tokenizer.ggml.pre", _STR, "default"),
            _array("tokenizer.ggml.tokens", _STR, v.tokens),
            _array("tokenizer.ggml.scores", _F32, v.scores),
            _array("tokenizer.ggml.token_type", _I32, v.types),
            _kv("tokenizer.ggml.bos_token_id", _U32, 1),
            _kv("tokenizer.ggml.eos_token_id", _U32, 2),
            _kv("tokenizer.ggml.unknown_token_id", _U32, 0),
            _kv("tokenizer.ggml.add_bos_token", _BOOL, True),
            _kv("tokenizer.ggml.add_eos_token", _BOOL, False),
            _kv("general.quantization_version", _U32, 2),
        ]
        assert TOKEN_TYPES["normal"] in v.types
        return len(items), b"".join(items)

    # -- values -----------------------------------------------------------------------------------

    def _hf_row_index(self, t: GGUFTensor) -> np.ndarray:
        """GGUF row -> Hugging Face row (the inverse of the converter's RoPE permutation)."""
        cached = self._hf_rows.get(t.name)
        if cached is None:
            cached = np.argsort(gguf_rope_rows(t.shape[0], t.rope_heads))
            self._hf_rows[t.name] = cached
        return cached

    def float_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """The float32 values of GGUF rows ``[start, stop)`` *before* quantisation: the source
        checkpoint's stored values (``source_dtype``), in GGUF row order. 1-D tensors have one row."""
        t = self.tensor_info(name)
        if not 0 <= start <= stop <= t.n_rows:
            raise FormatError(f"{name}: row range [{start}, {stop}) outside 0..{t.n_rows}")
        cols = t.row_elems
        hf_rows = self._hf_row_index(t)[start:stop] if t.rope_heads else np.arange(start, stop)
        out = np.empty((stop - start, cols), dtype=np.float64)
        if hf_rows.size:
            order = np.argsort(hf_rows, kind="stable")
            ordered = hf_rows[order]
            breaks = np.flatnonzero(np.diff(ordered) != 1) + 1
            pos = 0
            for run in np.split(ordered, breaks):
                lo, hi = int(run[0]), int(run[-1]) + 1
                block = self.weights.values.normals(t.hf_name, lo * cols, hi * cols).reshape(hi - lo, cols)
                out[order[pos : pos + run.size]] = block
                pos += run.size
        return self.weights.stored(t.mean + t.std * out)

    def _rows(self, t: GGUFTensor, r0: int, r1: int) -> bytes:
        rows = self.float_rows(t.name, r0, r1)
        if t.qtype == GGMLQuantizationType.F32:
            return rows.astype("<f4").tobytes()
        return np.ascontiguousarray(quantize(rows, t.qtype)).tobytes()

    def _step(self, t: GGUFTensor) -> int:
        return max(1, _ROW_BATCH_ELEMS // t.row_elems)


def write_virtual_gguf(
    repo_dir: str | os.PathLike[str],
    shape: LlamaShape,
    *,
    seed: int | None = 0,
    derivation: dict[str, Any] | None = None,
    file_type: str = "Q4_K_M",
    stem: str = "model",
    name: str | None = None,
    source_dtype: str = "BF16",
    vocab_seed: int = 0,
    init_std: float = 0.02,
    norm_std: float = 0.1,
) -> Path:
    """Write the spec of one GGUF (``<stem>.<file_type>.gguf``) into ``repo_dir``, as GGUF repos hold them.

    Args:
        repo_dir: the repo folder; created if missing.
        shape (`LlamaShape`): dimensions.
        seed (`int | None`), derivation (`dict | None`): as `write_virtual_llama` (the GGUF holds the
            same weights as the safetensors checkpoint written with the same arguments).
        file_type (`str`): one of `FILE_TYPES`.
        stem (`str`): file name stem; name (`str | None`): ``general.name`` (default: the stem).

    Returns:
        The path of the ``.gguf.virtual.json`` written.

    Raises:
        `ValueError`: neither seed nor derivation; `FormatError`: an invalid combination.
    """
    weights = LlamaWeights.create(
        shape,
        seed=seed,
        derivation=derivation,
        source_dtype=source_dtype,
        init_std=init_std,
        norm_std=norm_std,
    )
    spec: dict[str, Any] = {
        "kind": "gguf",
        **weights.to_spec(),
        "file_type": file_type,
        "name": name or stem,
        "vocab_seed": vocab_seed,
    }
    VirtualGGUF(spec)  # validate before anything is written
    out_dir = Path(repo_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{stem}.{file_type}.gguf{VIRTUAL_SUFFIX}"
    write_json(path, spec)
    return path
