"""Write a virtual Llama-shaped checkpoint (7B, 70B, or any shape) into a repo folder.

The result looks exactly like a ``transformers`` ``save_pretrained`` of a ``LlamaForCausalLM``: a real
``config.json``, a real ``model.safetensors.index.json`` and ``model-0000i-of-0000N.safetensors`` shards
(as ``.virtual.json`` specs the local hub serves as full-size files). Shards are cut the way
``transformers`` cuts them: tensors in order, a new shard when the next tensor would exceed
``max_shard_bytes``; a checkpoint that fits in one shard is a single ``model.safetensors`` without index.

Every shard carries the same seed (or derivation), so a tensor's values do not depend on the sharding.
Next to the weights go a real ``tokenizer.json`` and ``tokenizer_config.json`` over a generated
Llama-2-like vocabulary (`monitor.localhub.virtual_vocab.llama_vocab`: ``<unk> <s> </s>``, 256 byte
tokens, BPE pieces with ``▁`` word markers, single characters last). The GGUF kind
(`monitor.localhub.virtual_gguf`) stores the same token strings in its header, so vocabularies match
across formats exactly as real repos do.

Example::

    from monitor.localhub.virtual_llama import LLAMA_7B, write_virtual_llama
    write_virtual_llama(root / "acme" / "llama-7b", LLAMA_7B, seed=7)
    write_virtual_llama(root / "thief" / "llama-7b-ft", LLAMA_7B,
                        derivation={"base_seed": 7, "noise_seed": 99, "rel_noise": 0.05})
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from monitor.errors import FormatError
from monitor.localhub.virtual import VIRTUAL_SUFFIX, ValueSource
from monitor.localhub.virtual_safetensors import (
    DTYPE_SIZES,
    VirtualSafetensors,
    from_dtype_bytes,
    to_dtype_bytes,
)
from monitor.localhub.virtual_vocab import MIN_VOCAB, SPECIAL_TOKENS, llama_vocab, tokenizer_json

__all__ = [
    "DEFAULT_MAX_SHARD_BYTES",
    "LLAMA_7B",
    "LLAMA_70B",
    "LlamaShape",
    "LlamaWeights",
    "llama_config",
    "llama_tensor_specs",
    "tokenizer_config_json",
    "write_json",
    "write_tokenizer",
    "write_virtual_llama",
]

DEFAULT_MAX_SHARD_BYTES = 5_000_000_000
"""``transformers``' default ``max_shard_size="5GB"`` (decimal)."""

_TORCH_DTYPE = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}


@dataclass(frozen=True)
class LlamaShape:
    """The dimensions that fix every tensor shape of a Llama checkpoint.

    Attributes:
        d_model (`int`): hidden size.
        n_layers (`int`): decoder layers.
        d_ff (`int`): MLP intermediate size.
        n_heads (`int`), n_kv_heads (`int`): attention and key/value heads (GQA when fewer KV heads).
        vocab (`int`): vocabulary size.
        tie_embeddings (`bool`): no separate ``lm_head.weight`` when true.
        max_position_embeddings (`int`), rope_theta (`float`), rms_norm_eps (`float`): config only.
    """

    d_model: int
    n_layers: int
    d_ff: int
    n_heads: int
    n_kv_heads: int
    vocab: int
    tie_embeddings: bool = False
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layers", "d_ff", "n_heads", "n_kv_heads", "vocab"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.d_model % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError("d_model must be divisible by n_heads, and n_heads by n_kv_heads")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_spec(self) -> dict[str, Any]:
        """The shape as a JSON object (the ``"model"`` of GGUF and GPTQ virtual specs)."""
        return asdict(self)

    @classmethod
    def from_spec(cls, raw: Any) -> LlamaShape:
        """Inverse of `to_spec`, validated.

        Raises:
            `FormatError`: not an object, unknown or missing keys, wrong types or impossible sizes.
        """
        if not isinstance(raw, Mapping):
            raise FormatError("'model' must be an object of Llama dimensions")
        known = {f.name: f for f in fields(cls)}
        unknown = set(raw) - set(known)
        if unknown:
            raise FormatError(f"unknown keys in 'model': {sorted(unknown)}")
        values: dict[str, Any] = {}
        for name, value in raw.items():
            kind = known[name].type
            if kind in ("int", int):
                if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 1 << 31:
                    raise FormatError(f"model.{name} must be a positive integer, got {value!r}")
            elif kind in ("bool", bool):
                if not isinstance(value, bool):
                    raise FormatError(f"model.{name} must be true or false, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise FormatError(f"model.{name} must be a finite number, got {value!r}")
            values[name] = value
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise FormatError(f"invalid 'model': {exc}") from None


LLAMA_7B = LlamaShape(d_model=4096, n_layers=32, d_ff=11008, n_heads=32, n_kv_heads=32, vocab=32000)
LLAMA_70B = LlamaShape(d_model=8192, n_layers=80, d_ff=28672, n_heads=64, n_kv_heads=8, vocab=32000)


def llama_tensor_specs(
    shape: LlamaShape, *, dtype: str = "BF16", init_std: float = 0.02, norm_std: float = 0.1
) -> list[dict[str, Any]]:
    """Tensor entries (Hugging Face names, ``nn.Linear`` ``(out, in)`` shapes) in save order.

    Linear and embedding weights are ``N(0, init_std)``; RMSNorm weights ``N(1, norm_std)`` so that
    norms carry information as trained ones do.
    """
    if dtype not in DTYPE_SIZES:
        raise ValueError(f"dtype must be one of {sorted(DTYPE_SIZES)}")
    d, hd = shape.d_model, shape.head_dim
    linear = {"std": init_std}
    norm = {"mean": 1.0, "std": norm_std}

    def entry(name: str, dims: list[int], init: dict[str, float]) -> dict[str, Any]:
        return {"name": name, "dtype": dtype, "shape": dims, "init": dict(init)}

    specs = [entry("model.embed_tokens.weight", [shape.vocab, d], linear)]
    for i in range(shape.n_layers):
        p = f"model.layers.{i}."
        specs += [
            entry(p + "input_layernorm.weight", [d], norm),
            entry(p + "self_attn.q_proj.weight", [shape.n_heads * hd, d], linear),
            entry(p + "self_attn.k_proj.weight", [shape.n_kv_heads * hd, d], linear),
            entry(p + "self_attn.v_proj.weight", [shape.n_kv_heads * hd, d], linear),
            entry(p + "self_attn.o_proj.weight", [d, shape.n_heads * hd], linear),
            entry(p + "post_attention_layernorm.weight", [d], norm),
            entry(p + "mlp.gate_proj.weight", [shape.d_ff, d], linear),
            entry(p + "mlp.up_proj.weight", [shape.d_ff, d], linear),
            entry(p + "mlp.down_proj.weight", [d, shape.d_ff], linear),
        ]
    specs.append(entry("model.norm.weight", [d], norm))
    if not shape.tie_embeddings:
        specs.append(entry("lm_head.weight", [shape.vocab, d], linear))
    return specs


@dataclass(frozen=True)
class LlamaWeights:
    """The float weights of a virtual Llama as a non-safetensors spec describes them.

    Shared by the kinds that store a *conversion* of the virtual checkpoint (GGUF, GPTQ): the spec keys
    ``model`` (`LlamaShape.to_spec`), ``seed``/``derivation`` (`ValueSource`), ``source_dtype`` (the
    dtype of the checkpoint that was converted, whose rounding the values carry; default BF16) and
    ``init`` (``{std, norm_std}``, as `llama_tensor_specs`). Tensor ``t`` holds the values the
    safetensors kind generates for ``t`` with the same seed or derivation.

    Attributes:
        shape (`LlamaShape`), values (`ValueSource`), source_dtype (`str`), init_std (`float`),
        norm_std (`float`): as read from the spec.
    """

    shape: LlamaShape
    values: ValueSource
    source_dtype: str = "BF16"
    init_std: float = 0.02
    norm_std: float = 0.1

    SPEC_KEYS: ClassVar[frozenset[str]] = frozenset({"model", "seed", "derivation", "source_dtype", "init"})

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> LlamaWeights:
        """Read the keys in `SPEC_KEYS`.

        Raises:
            `FormatError`: any of them is missing or malformed.
        """
        source_dtype = spec.get("source_dtype", "BF16")
        if source_dtype not in DTYPE_SIZES:
            raise FormatError(f"source_dtype must be one of {sorted(DTYPE_SIZES)}, got {source_dtype!r}")
        init = spec.get("init", {})
        if not isinstance(init, dict) or set(init) - {"std", "norm_std"}:
            raise FormatError("'init' must be {std, norm_std}")
        stds = {k: init.get(k, d) for k, d in (("std", 0.02), ("norm_std", 0.1))}
        for k, v in stds.items():
            if isinstance(v, bool) or not isinstance(v, int | float) or not (math.isfinite(v) and v >= 0):
                raise FormatError(f"init.{k} must be a finite number >= 0, got {v!r}")
        return cls(
            LlamaShape.from_spec(spec.get("model")),
            ValueSource.from_spec(spec),
            source_dtype,
            float(stds["std"]),
            float(stds["norm_std"]),
        )

    @classmethod
    def create(
        cls,
        shape: LlamaShape,
        *,
        seed: int | None = 0,
        derivation: Mapping[str, Any] | None = None,
        source_dtype: str = "BF16",
        init_std: float = 0.02,
        norm_std: float = 0.1,
    ) -> LlamaWeights:
        """The weights `write_virtual_llama` writes with the same arguments (for the converting kinds'
        ``write_*`` functions).

        Raises:
            `ValueError`: neither a seed nor a derivation, or a malformed derivation.
        """
        if seed is None and derivation is None:
            raise ValueError("give a seed or a derivation")
        try:
            values = ValueSource.from_spec(
                {"seed": seed} if derivation is None else {"derivation": derivation}
            )
        except FormatError as exc:
            raise ValueError(str(exc)) from None
        return cls(shape, values, source_dtype, init_std, norm_std)

    def to_spec(self) -> dict[str, Any]:
        """The spec keys (inverse of `from_spec`)."""
        return {
            "model": self.shape.to_spec(),
            **self.values.to_spec(),
            "source_dtype": self.source_dtype,
            "init": {"std": self.init_std, "norm_std": self.norm_std},
        }

    def tensor_specs(self) -> list[dict[str, Any]]:
        """`llama_tensor_specs` of this model (names, shapes, init, in save order)."""
        return llama_tensor_specs(
            self.shape, dtype=self.source_dtype, init_std=self.init_std, norm_std=self.norm_std
        )

    def stored(self, values: np.ndarray) -> np.ndarray:
        """float64 weights rounded as the ``source_dtype`` checkpoint stores them, as float32."""
        if self.source_dtype == "F32":
            return values.astype(np.float32)
        data = to_dtype_bytes(values, self.source_dtype)
        return from_dtype_bytes(data, self.source_dtype).reshape(values.shape)


def _special(content: str) -> dict[str, Any]:
    return {
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": True,
    }


def tokenizer_config_json(shape: LlamaShape) -> dict[str, Any]:
    """``tokenizer_config.json`` of a Llama-2 repo (special tokens, BOS added, no EOS)."""
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "clean_up_tokenization_spaces": False,
        "legacy": False,
        "model_max_length": shape.max_position_embeddings,
        "tokenizer_class": "LlamaTokenizer",
        "added_tokens_decoder": {str(i): _special(t) for i, t in enumerate(SPECIAL_TOKENS)},
    }


def write_tokenizer(
    repo_dir: str | os.PathLike[str], shape: LlamaShape, *, vocab_seed: int = 0
) -> list[Path]:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` for ``shape.vocab`` tokens into ``repo_dir``.

    Every repo written with the same vocabulary size and seed gets byte-identical files (the same git
    blob id), as re-uploads, fine-tunes and GPTQ quantisations of one model carry one tokenizer.
    """
    out_dir = Path(repo_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = llama_vocab(shape.vocab, seed=vocab_seed)
    paths = [out_dir / "tokenizer.json", out_dir / "tokenizer_config.json"]
    write_json(paths[0], tokenizer_json(vocab))
    write_json(paths[1], tokenizer_config_json(shape))
    return paths


def llama_config(shape: LlamaShape, dtype: str) -> dict[str, Any]:
    """``config.json`` of a ``LlamaForCausalLM`` of this shape, as ``transformers`` writes it."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": shape.d_model,
        "intermediate_size": shape.d_ff,
        "num_hidden_layers": shape.n_layers,
        "num_attention_heads": shape.n_heads,
        "num_key_value_heads": shape.n_kv_heads,
        "head_dim": shape.head_dim,
        "vocab_size": shape.vocab,
        "max_position_embeddings": shape.max_position_embeddings,
        "rms_norm_eps": shape.rms_norm_eps,
        "rope_theta": shape.rope_theta,
        "hidden_act": "silu",
        "tie_word_embeddings": shape.tie_embeddings,
        "torch_dtype": _TORCH_DTYPE[dtype],
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented UTF-8 JSON, atomically (a hub never sees half a file)."""
    tmp = path.with_name(f".{path.name}.tmp")  # dot-files are invisible to a hub serving the folder
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_virtual_llama(
    repo_dir: str | os.PathLike[str],
    shape: LlamaShape,
    *,
    seed: int | None = 0,
    derivation: dict[str, Any] | None = None,
    dtype: str = "BF16",
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    init_std: float = 0.02,
    norm_std: float = 0.1,
    tokenizer: bool = True,
    vocab_seed: int = 0,
) -> list[Path]:
    """Write config, index, virtual shards and tokenizer of a Llama checkpoint into ``repo_dir``.

    Args:
        repo_dir: the repo folder (``DIR/org/name``); created if missing.
        shape (`LlamaShape`): dimensions, e.g. `LLAMA_7B`.
        seed (`int | None`): value seed; ignored for values when ``derivation`` is given.
        derivation (`dict | None`): ``{"base_seed", "noise_seed", "rel_noise"}`` for a derivative.
        dtype (`str`): ``BF16``, ``F16`` or ``F32``.
        max_shard_bytes (`int`): shard size limit (tensor bytes), as ``max_shard_size``.
        tokenizer (`bool`): also write ``tokenizer.json``/``tokenizer_config.json`` (`write_tokenizer`;
            vocabularies below 64 tokens get none).
        vocab_seed (`int`): seed of the generated vocabulary (`llama_vocab`).

    Returns:
        Paths of the files written (specs first, then ``config.json``, the index if any, the tokenizer).
    """
    if max_shard_bytes < 1:
        raise ValueError("max_shard_bytes must be >= 1")
    if seed is None and derivation is None:
        raise ValueError("give a seed or a derivation")
    out_dir = Path(repo_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = llama_tensor_specs(shape, dtype=dtype, init_std=init_std, norm_std=norm_std)
    shards: list[list[dict[str, Any]]] = [[]]
    shard_bytes = 0
    for t in tensors:
        nbytes = math.prod(t["shape"]) * DTYPE_SIZES[dtype]
        if shards[-1] and shard_bytes + nbytes > max_shard_bytes:
            shards.append([])
            shard_bytes = 0
        shards[-1].append(t)
        shard_bytes += nbytes
    n = len(shards)
    names = (
        ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    )
    written: list[Path] = []
    weight_map: dict[str, str] = {}
    total_size = 0
    for name, members in zip(names, shards, strict=True):
        spec: dict[str, Any] = {"kind": "safetensors", "metadata": {"format": "pt"}, "tensors": members}
        if seed is not None:
            spec["seed"] = seed
        if derivation is not None:
            spec["derivation"] = dict(derivation)
        VirtualSafetensors(spec)  # validate before anything is written
        path = out_dir / (name + VIRTUAL_SUFFIX)
        write_json(path, spec)
        written.append(path)
        for t in members:
            weight_map[t["name"]] = name
            total_size += math.prod(t["shape"]) * DTYPE_SIZES[dtype]
    config_path = out_dir / "config.json"
    write_json(config_path, llama_config(shape, dtype))
    written.append(config_path)
    if n > 1:
        index_path = out_dir / "model.safetensors.index.json"
        write_json(index_path, {"metadata": {"total_size": total_size}, "weight_map": weight_map})
        written.append(index_path)
    if tokenizer and shape.vocab >= MIN_VOCAB:
        written += write_tokenizer(out_dir, shape, vocab_seed=vocab_seed)
    return written
