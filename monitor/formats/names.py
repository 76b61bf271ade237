"""Map file tensor names to canonical keys, with the splits, transposes and row orders that entails.

A `KeyMapping` says how one canonical tensor is read from one logical tensor: directly, through a
row index (a slice of a fused ``qkv``, GPT-NeoX's per-head interleave, llama.cpp's RoPE row order)
and/or transposed (GPT-2 ``Conv1D`` stores ``[in, out]``). Index maps rather than copies keep partial
reads partial: reading canonical rows ``r`` of ``attn.q`` reads exactly stored rows ``index[r]``.

llama.cpp's ``convert_hf_to_gguf.py`` permutes the rows of Q and K for architectures whose RoPE
pairs adjacent values (``LlamaModel.undo_permute``; also Granite and Baichuan): the rows of each
head, viewed as ``(2, head_dim/2)``, are stored as ``(head_dim/2, 2)``. `gguf_rope_rows` inverts
that as a row-index map, using ``head_count_kv`` for K. Qwen2, Phi-3, GPT-2, GPT-NeoX and BERT
GGUFs are not permuted.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np

__all__ = [
    "GGUF_FAMILIES",
    "HF_FAMILIES",
    "ROPE_PERMUTED_GGUF_ARCHS",
    "ArchParams",
    "KeyMapping",
    "gguf_rope_rows",
    "hf_keys",
    "map_gguf_names",
    "map_hf_names",
]

ROPE_PERMUTED_GGUF_ARCHS = frozenset({"llama", "granite", "granitemoe", "baichuan", "deci"})
"""GGUF architectures whose Q/K rows llama.cpp's converter permutes."""

HF_FAMILIES: dict[str, str] = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "smollm3": "llama",
    "gemma": "llama",
    "gemma2": "llama",
    "granite": "llama",
    "baichuan": "llama",
    "internlm2": "llama",
    "phi3": "phi3",
    "bert": "bert",
    "roberta": "bert",
    "xlm-roberta": "bert",
    "gpt2": "gpt2",
    "gpt_neox": "gpt_neox",
}
"""``config.json`` ``model_type`` -> naming family."""

GGUF_FAMILIES: dict[str, str] = {
    "llama": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "granite": "llama",
    "baichuan": "llama",
    "gemma": "llama",
    "gemma2": "llama",
    "smollm3": "llama",
    "deci": "llama",
    "phi3": "phi3",
    "bert": "bert",
    "nomic-bert": "bert",
    "gpt2": "gpt2",
    "gptneox": "gpt_neox",
}
"""GGUF ``general.architecture`` -> naming family."""


@dataclass(frozen=True)
class ArchParams:
    """What splitting fused tensors needs.

    Attributes:
        family (`str`): naming family (``llama``, ``phi3``, ``bert``, ``gpt2``, ``gpt_neox``...).
        n_heads (`int | None`), n_kv_heads (`int | None`), head_dim (`int | None`): attention.
        d_ff (`int | None`): MLP width (for fused gate/up).
        gguf_arch (`str | None`): ``general.architecture`` of a GGUF file.
    """

    family: str
    n_heads: int | None = None
    n_kv_heads: int | None = None
    head_dim: int | None = None
    d_ff: int | None = None
    gguf_arch: str | None = None


@dataclass(frozen=True)
class KeyMapping:
    """How canonical tensor ``key`` is read from logical tensor ``source``.

    Attributes:
        key (`str`): canonical key.
        source (`str`): logical tensor name.
        transposed (`bool`): canonical = stored ``[:, index].T`` (GPT-2 Conv1D).
        index (`np.ndarray | None`): canonical unit -> stored row (stored column if transposed);
            ``None`` = identity.
    """

    key: str
    source: str
    transposed: bool = False
    index: np.ndarray | None = field(default=None, compare=False)


def gguf_rope_rows(n_rows: int, n_head: int) -> np.ndarray:
    """The GGUF row holding each HF row of a RoPE-permuted Q or K (``n_head`` = KV heads for K).

    HF row ``h·hd + j·hd/2 + i`` (``j`` ∈ {0, 1}) is stored at GGUF row ``h·hd + 2i + j``.
    """
    hd = n_rows // n_head
    r = np.arange(n_rows, dtype=np.int64)
    h, rem = np.divmod(r, hd)
    j, i = np.divmod(rem, hd // 2)
    return h * hd + 2 * i + j


_Handler = Callable[[re.Match[str], str, tuple[int, ...], ArchParams], list[KeyMapping] | str]


def _suffix(param: str) -> str:
    return "" if param in ("weight", "gamma") else ".bias"


@dataclass(frozen=True)
class _Rule:
    """A name pattern, how a match maps to keys given the shape, and (for Hugging Face names) which
    keys it gives from the name alone: a matched name that maps at all maps to exactly those."""

    pattern: re.Pattern[str]
    handler: _Handler
    keys: Callable[[re.Match[str]], tuple[str, ...]] | None = None


def _template_key(template: str) -> Callable[[re.Match[str]], tuple[str, ...]]:
    def keys(m: re.Match[str]) -> tuple[str, ...]:
        return (template.format(*m.groups()[:-1]) + _suffix(m.groups()[-1]),)

    return keys


def _plain(pattern: str, template: str) -> _Rule:
    keys = _template_key(template)

    def handler(m: re.Match[str], name: str, shape: tuple[int, ...], arch: ArchParams) -> list[KeyMapping]:
        return [KeyMapping(key, name) for key in keys(m)]

    return _Rule(re.compile(pattern), handler, keys)


def _conv1d(pattern: str, template: str) -> _Rule:
    keys = _template_key(template)

    def handler(m: re.Match[str], name: str, shape: tuple[int, ...], arch: ArchParams) -> list[KeyMapping]:
        transposed = m.groups()[-1] == "weight" and len(shape) == 2
        return [KeyMapping(key, name, transposed=transposed) for key in keys(m)]

    return _Rule(re.compile(pattern), handler, keys)


def _ranges(sizes: list[int]) -> list[np.ndarray]:
    bounds = np.cumsum([0, *sizes])
    return [np.arange(a, b, dtype=np.int64) for a, b in pairwise(bounds)]


def _qkv_sizes(units: int, arch: ArchParams, d_in: int | None) -> list[int] | str:
    """Row counts of q, k, v in a ``[q; k; v]`` fused tensor of ``units`` rows."""
    if arch.n_heads and (arch.head_dim or d_in):
        hd = arch.head_dim or (d_in // arch.n_heads if d_in else 0)
        kv = arch.n_kv_heads or arch.n_heads
        if hd and (arch.n_heads + 2 * kv) * hd == units:
            return [arch.n_heads * hd, kv * hd, kv * hd]
    if d_in and units > d_in and (units - d_in) % 2 == 0 and arch.n_heads is None:
        return [d_in, (units - d_in) // 2, (units - d_in) // 2]
    if units % 3 == 0 and (arch.n_kv_heads in (None, arch.n_heads)):
        return [units // 3] * 3
    return f"cannot split fused qkv of {units} rows with the known head counts"


def _layer_keys(parts: tuple[str, ...]) -> Callable[[re.Match[str]], tuple[str, ...]]:
    def keys(m: re.Match[str]) -> tuple[str, ...]:
        return tuple(f"layers.{m.group(1)}.{k}{_suffix(m.groups()[-1])}" for k in parts)

    return keys


def _fused(
    pattern: str,
    parts: tuple[str, ...],
    sizes_of: Callable[[int, ArchParams, int | None], list[int] | str],
    *,
    conv1d: bool = False,
) -> _Rule:
    keys = _layer_keys(parts)

    def handler(
        m: re.Match[str], name: str, shape: tuple[int, ...], arch: ArchParams
    ) -> list[KeyMapping] | str:
        transposed = conv1d and m.groups()[-1] == "weight" and len(shape) == 2
        units = shape[1] if transposed else shape[0]
        d_in = shape[0] if transposed else (shape[1] if len(shape) == 2 else None)
        sizes = sizes_of(units, arch, d_in)
        if isinstance(sizes, str):
            return sizes
        return [
            KeyMapping(key, name, transposed, idx) for key, idx in zip(keys(m), _ranges(sizes), strict=True)
        ]

    return _Rule(re.compile(pattern), handler, keys)


def _halves(units: int, arch: ArchParams, d_in: int | None) -> list[int] | str:
    return [units // 2, units // 2] if units % 2 == 0 else f"odd fused gate/up of {units} rows"


_QKV_KEYS = _layer_keys(("attn.q", "attn.k", "attn.v"))


def _neox_qkv(
    m: re.Match[str], name: str, shape: tuple[int, ...], arch: ArchParams
) -> list[KeyMapping] | str:
    if not arch.n_heads or shape[0] % (3 * arch.n_heads):
        return "GPT-NeoX query_key_value needs num_attention_heads to be split"
    hd = shape[0] // (3 * arch.n_heads)
    heads = np.arange(arch.n_heads, dtype=np.int64)[:, None] * 3 * hd
    within = np.arange(hd, dtype=np.int64)[None, :]
    return [
        KeyMapping(key, name, False, (heads + j * hd + within).ravel()) for j, key in enumerate(_QKV_KEYS(m))
    ]


_P = r"(weight|bias)"
_PN = r"(weight|bias|gamma|beta)"
_HF_RULES: list[_Rule] = [
    _plain(rf"(?:embed_tokens|embeddings\.word_embeddings|wte|embed_in|word_embeddings)\.{_P}", "embed"),
    _plain(rf"(?:embeddings\.position_embeddings|wpe)\.{_P}", "pos_embed"),
    _plain(rf"embeddings\.token_type_embeddings\.{_P}", "type_embed"),
    _plain(rf"embeddings\.LayerNorm\.{_PN}", "embed_norm"),
    _plain(rf"(?:norm|ln_f|final_layer_norm)\.{_P}", "final_norm"),
    _plain(rf"(?:lm_head|embed_out)\.{_P}", "lm_head"),
    # Llama family (Mistral, Qwen2, SmolLM, Baichuan, Phi-3) and GPT-NeoX norms
    _plain(rf"layers\.(\d+)\.input_layernorm\.{_P}", "layers.{}.attn_norm"),
    _plain(rf"layers\.(\d+)\.post_attention_layernorm\.{_P}", "layers.{}.mlp_norm"),
    _plain(rf"layers\.(\d+)\.self_attn\.([qkvo])_proj\.{_P}", "layers.{}.attn.{}"),
    _fused(rf"layers\.(\d+)\.self_attn\.qkv_proj\.{_P}", ("attn.q", "attn.k", "attn.v"), _qkv_sizes),
    _fused(
        rf"layers\.(\d+)\.self_attn\.W_pack\.{_P}",
        ("attn.q", "attn.k", "attn.v"),
        lambda u, a, d: [u // 3] * 3 if u % 3 == 0 else "bad W_pack",
    ),
    _plain(rf"layers\.(\d+)\.mlp\.(gate|up|down)_proj\.{_P}", "layers.{}.mlp.{}"),
    _fused(rf"layers\.(\d+)\.mlp\.gate_up_proj\.{_P}", ("mlp.gate", "mlp.up"), _halves),
    # GPT-NeoX
    _Rule(re.compile(rf"layers\.(\d+)\.attention\.query_key_value\.{_P}"), _neox_qkv, _QKV_KEYS),
    _plain(rf"layers\.(\d+)\.attention\.dense\.{_P}", "layers.{}.attn.o"),
    _plain(rf"layers\.(\d+)\.mlp\.dense_h_to_4h\.{_P}", "layers.{}.mlp.up"),
    _plain(rf"layers\.(\d+)\.mlp\.dense_4h_to_h\.{_P}", "layers.{}.mlp.down"),
    # BERT
    _plain(rf"encoder\.layer\.(\d+)\.attention\.self\.query\.{_P}", "layers.{}.attn.q"),
    _plain(rf"encoder\.layer\.(\d+)\.attention\.self\.key\.{_P}", "layers.{}.attn.k"),
    _plain(rf"encoder\.layer\.(\d+)\.attention\.self\.value\.{_P}", "layers.{}.attn.v"),
    _plain(rf"encoder\.layer\.(\d+)\.attention\.output\.dense\.{_P}", "layers.{}.attn.o"),
    _plain(rf"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.{_PN}", "layers.{}.mlp_norm"),
    _plain(rf"encoder\.layer\.(\d+)\.intermediate\.dense\.{_P}", "layers.{}.mlp.up"),
    _plain(rf"encoder\.layer\.(\d+)\.output\.dense\.{_P}", "layers.{}.mlp.down"),
    _plain(rf"encoder\.layer\.(\d+)\.output\.LayerNorm\.{_PN}", "layers.{}.out_norm"),
    # GPT-2 (Conv1D: [in, out])
    _plain(rf"h\.(\d+)\.ln_1\.{_P}", "layers.{}.attn_norm"),
    _plain(rf"h\.(\d+)\.ln_2\.{_P}", "layers.{}.mlp_norm"),
    _fused(rf"h\.(\d+)\.attn\.c_attn\.{_P}", ("attn.q", "attn.k", "attn.v"), _qkv_sizes, conv1d=True),
    _conv1d(rf"h\.(\d+)\.attn\.c_proj\.{_P}", "layers.{}.attn.o"),
    _conv1d(rf"h\.(\d+)\.mlp\.c_fc\.{_P}", "layers.{}.mlp.up"),
    _conv1d(rf"h\.(\d+)\.mlp\.c_proj\.{_P}", "layers.{}.mlp.down"),
]
_HF_PREFIXES = ("model.", "transformer.", "bert.", "roberta.", "gpt_neox.")


def _gguf_qk(kind: str) -> _Handler:
    def handler(
        m: re.Match[str], name: str, shape: tuple[int, ...], arch: ArchParams
    ) -> list[KeyMapping] | str:
        layer, param = m.group(1), m.group(2)
        key = f"layers.{layer}.attn.{kind}{_suffix(param)}"
        if arch.gguf_arch not in ROPE_PERMUTED_GGUF_ARCHS:
            return [KeyMapping(key, name)]
        heads = arch.n_heads if kind == "q" else (arch.n_kv_heads or arch.n_heads)
        if not heads or shape[0] % heads or (shape[0] // heads) % 2:
            return f"cannot undo the RoPE row permutation of {shape[0]} rows with {heads} heads"
        return [KeyMapping(key, name, False, gguf_rope_rows(shape[0], heads))]

    return handler


def _gguf_ffn_up(
    m: re.Match[str], name: str, shape: tuple[int, ...], arch: ArchParams
) -> list[KeyMapping] | str:
    layer, param = m.group(1), m.group(2)
    if arch.gguf_arch == "phi3" and arch.d_ff and shape[0] == 2 * arch.d_ff:
        return [
            KeyMapping(f"layers.{layer}.mlp.{k}{_suffix(param)}", name, False, idx)
            for k, idx in zip(("gate", "up"), _ranges([arch.d_ff, arch.d_ff]), strict=True)
        ]
    return [KeyMapping(f"layers.{layer}.mlp.up{_suffix(param)}", name)]


_GGUF_RULES: list[_Rule] = [
    _plain(rf"token_embd\.{_P}", "embed"),
    _plain(rf"position_embd\.{_P}", "pos_embed"),
    _plain(rf"token_types\.{_P}", "type_embed"),
    _plain(rf"token_embd_norm\.{_P}", "embed_norm"),
    _plain(rf"output_norm\.{_P}", "final_norm"),
    _plain(rf"output\.{_P}", "lm_head"),
    _plain(rf"blk\.(\d+)\.attn_norm\.{_P}", "layers.{}.attn_norm"),
    _plain(rf"blk\.(\d+)\.ffn_norm\.{_P}", "layers.{}.mlp_norm"),
    _plain(rf"blk\.(\d+)\.attn_output_norm\.{_P}", "layers.{}.mlp_norm"),
    _plain(rf"blk\.(\d+)\.layer_output_norm\.{_P}", "layers.{}.out_norm"),
    _Rule(re.compile(rf"blk\.(\d+)\.attn_q\.{_P}"), _gguf_qk("q")),
    _Rule(re.compile(rf"blk\.(\d+)\.attn_k\.{_P}"), _gguf_qk("k")),
    _plain(rf"blk\.(\d+)\.attn_v\.{_P}", "layers.{}.attn.v"),
    _plain(rf"blk\.(\d+)\.attn_output\.{_P}", "layers.{}.attn.o"),
    _fused(rf"blk\.(\d+)\.attn_qkv\.{_P}", ("attn.q", "attn.k", "attn.v"), _qkv_sizes),
    _Rule(re.compile(rf"blk\.(\d+)\.ffn_up\.{_P}"), _gguf_ffn_up),
    _plain(rf"blk\.(\d+)\.ffn_gate\.{_P}", "layers.{}.mlp.gate"),
    _plain(rf"blk\.(\d+)\.ffn_down\.{_P}", "layers.{}.mlp.down"),
]


def _strip_hf(name: str) -> str:
    while name.startswith("module."):
        name = name[len("module.") :]
    for prefix in _HF_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def _match(rules: list[_Rule], short: str) -> tuple[_Rule, re.Match[str]] | None:
    for rule in rules:
        m = rule.pattern.fullmatch(short)
        if m is not None:
            return rule, m
    return None


def _claim(seen: dict[str, str], name: str, keys: Iterable[str]) -> str | None:
    """Take ``keys`` for ``name`` unless one already comes from an earlier name (then: the reason)."""
    keys = list(keys)
    for key in keys:
        if key in seen:
            return f"canonical key {key} already comes from {seen[key]}"
    for key in keys:
        seen[key] = name
    return None


def _apply(
    rules: list[_Rule],
    shapes: Mapping[str, tuple[int, ...]],
    arch: ArchParams,
    normalise: Callable[[str], str],
) -> tuple[list[KeyMapping], dict[str, str]]:
    mappings: list[KeyMapping] = []
    unmapped: dict[str, str] = {}
    seen: dict[str, str] = {}
    for name, shape in shapes.items():
        found = _match(rules, normalise(name))
        if found is None:
            unmapped[name] = "no canonical key"
            continue
        rule, m = found
        result = rule.handler(m, name, shape, arch)
        if isinstance(result, str):
            unmapped[name] = result
        elif (taken := _claim(seen, name, (km.key for km in result))) is not None:
            unmapped[name] = taken
        else:
            mappings.extend(result)
    return mappings, unmapped


def map_hf_names(
    shapes: Mapping[str, tuple[int, ...]], arch: ArchParams
) -> tuple[list[KeyMapping], dict[str, str]]:
    """Canonical mappings of Hugging Face-style names; the rest with the reason they are unmapped."""
    return _apply(_HF_RULES, shapes, arch, _strip_hf)


def hf_keys(names: Iterable[str]) -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
    """The canonical keys of Hugging Face-style names, from the names alone (no shape, no byte read).

    What a sharded checkpoint's index is enough for: a name that maps at all maps to exactly these
    keys under `map_hf_names`, which later only adds the shape-dependent parts (split indices,
    transposes) or finds that a fused tensor cannot be split. Names claiming a key an earlier name
    already has are unmapped, as in `map_hf_names`.

    Returns:
        ``(keys by name, unmapped names -> reason)``.
    """
    out: dict[str, tuple[str, ...]] = {}
    unmapped: dict[str, str] = {}
    seen: dict[str, str] = {}
    for name in names:
        found = _match(_HF_RULES, _strip_hf(name))
        if found is None:
            unmapped[name] = "no canonical key"
            continue
        rule, m = found
        assert rule.keys is not None  # every Hugging Face rule knows its keys from the name
        keys = rule.keys(m)
        if (taken := _claim(seen, name, keys)) is not None:
            unmapped[name] = taken
        else:
            out[name] = keys
    return out, unmapped


def map_gguf_names(
    shapes: Mapping[str, tuple[int, ...]], arch: ArchParams
) -> tuple[list[KeyMapping], dict[str, str]]:
    """Canonical mappings of llama.cpp GGUF names (RoPE rows undone where the converter permuted)."""
    return _apply(_GGUF_RULES, shapes, arch, lambda n: n)
