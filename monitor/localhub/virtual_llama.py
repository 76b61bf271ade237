"""Write a virtual Llama-shaped checkpoint (7B, 70B, or any shape) into a repo folder.

The result looks exactly like a ``transformers`` ``save_pretrained`` of a ``LlamaForCausalLM``: a real
``config.json``, a real ``model.safetensors.index.json`` and ``model-0000i-of-0000N.safetensors`` shards
(as ``.virtual.json`` specs the local hub serves as full-size files). Shards are cut the way
``transformers`` cuts them: tensors in order, a new shard when the next tensor would exceed
``max_shard_bytes``; a checkpoint that fits in one shard is a single ``model.safetensors`` without index.

Every shard carries the same seed (or derivation), so a tensor's values do not depend on the sharding.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitor.localhub.virtual import VIRTUAL_SUFFIX
from monitor.localhub.virtual_safetensors import DTYPE_SIZES, VirtualSafetensors

__all__ = ["LLAMA_7B", "LLAMA_70B", "LlamaShape", "llama_tensor_specs", "write_virtual_llama"]

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


def _llama_config(shape: LlamaShape, dtype: str) -> dict[str, Any]:
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


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")  # dot-files are invisible to a hub serving the folder
    tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
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
) -> list[Path]:
    """Write config, index and virtual shards of a Llama checkpoint into ``repo_dir``.

    Args:
        repo_dir: the repo folder (``DIR/org/name``); created if missing.
        shape (`LlamaShape`): dimensions, e.g. `LLAMA_7B`.
        seed (`int | None`): value seed; ignored for values when ``derivation`` is given.
        derivation (`dict | None`): ``{"base_seed", "noise_seed", "rel_noise"}`` for a derivative.
        dtype (`str`): ``BF16``, ``F16`` or ``F32``.
        max_shard_bytes (`int`): shard size limit (tensor bytes), as ``max_shard_size``.

    Returns:
        Paths of the files written (specs first, then ``config.json`` and the index if any).
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
        _write_json(path, spec)
        written.append(path)
        for t in members:
            weight_map[t["name"]] = name
            total_size += math.prod(t["shape"]) * DTYPE_SIZES[dtype]
    config_path = out_dir / "config.json"
    _write_json(config_path, _llama_config(shape, dtype))
    written.append(config_path)
    if n > 1:
        index_path = out_dir / "model.safetensors.index.json"
        _write_json(index_path, {"metadata": {"total_size": total_size}, "weight_map": weight_map})
        written.append(index_path)
    return written
