"""Write synthetic checkpoints the way hub repos carry them: HF safetensors folders and llama.cpp GGUFs.

Used by the demo, the tests and the benchmarks to publish models on the local hub. The GGUF writer follows
llama.cpp's ``convert_hf_to_gguf.py`` conventions that HubSentry must undo when reading: tensor names
(``blk.N.ffn_up.weight``...), the RoPE row permutation of Q and K, the tokenizer stored in the metadata.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFWriter
from safetensors.torch import save_file

from monitor.formats.gguf_quants import quantize
from monitor.synth.models import BertConfig, LlamaConfig, config_json
from monitor.synth.text import WordVocab

__all__ = ["llama_cpp_permute", "save_gguf", "save_hf_repo"]

_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_GGUF_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def save_hf_repo(
    folder: Path,
    state: Mapping[str, np.ndarray],
    config: LlamaConfig | BertConfig,
    vocab: WordVocab,
    *,
    dtype: str = "float32",
    max_shard_bytes: int | None = None,
) -> Path:
    """A Hugging Face model folder: safetensors (sharded with an index when large), config, tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    tdtype = _TORCH_DTYPES[dtype]
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)).to(tdtype) for k, v in state.items()}
    if (
        max_shard_bytes is None
        or sum(t.numel() * t.element_size() for t in tensors.values()) <= max_shard_bytes
    ):
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    else:
        shards: list[dict[str, torch.Tensor]] = [{}]
        size = 0
        for name in sorted(tensors):
            t = tensors[name]
            nbytes = t.numel() * t.element_size()
            if shards[-1] and size + nbytes > max_shard_bytes:
                shards.append({})
                size = 0
            shards[-1][name] = t
            size += nbytes
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(folder / fname), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, fname))
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1)
        )
    (folder / "config.json").write_text(json.dumps({**config_json(config), "torch_dtype": dtype}, indent=1))
    (folder / "tokenizer.json").write_text(json.dumps(vocab.tokenizer_json()))
    return folder


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's Q/K row order for RoPE: each head's rows viewed as (2, head_dim/2) are transposed."""
    rows, cols = w.shape
    return w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def save_gguf(
    path: Path,
    state: Mapping[str, np.ndarray],
    config: LlamaConfig,
    vocab: WordVocab,
    *,
    qtype: str = "Q8_0",
    embed_qtype: str | None = None,
    name: str = "synthetic",
) -> Path:
    """A llama.cpp-style GGUF of a Llama-family state dict; norms stay F32, matrices use ``qtype``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    logging.getLogger("gguf").setLevel(logging.WARNING)  # its per-file INFO lines are noise to our users
    w = GGUFWriter(str(path), "llama")
    w.add_name(name)
    w.add_block_count(config.num_hidden_layers)
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_attention_heads)
    w.add_head_count_kv(config.num_key_value_heads)
    w.add_rope_freq_base(config.rope_theta)
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_vocab_size(len(vocab))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(list(vocab.tokens))
    for key, arr in state.items():
        if key == "model.embed_tokens.weight":
            out, qt = "token_embd.weight", embed_qtype or qtype
        elif key == "model.norm.weight":
            out, qt = "output_norm.weight", "F32"
        elif key == "lm_head.weight":
            out, qt = "output.weight", embed_qtype or qtype
        else:
            _, _, layer, *rest = key.split(".")
            module, param = ".".join(rest[:-1]), rest[-1]
            out = f"blk.{layer}.{_GGUF_NAMES[module]}.{param}"
            qt = "F32" if arr.ndim == 1 else qtype
            if module == "self_attn.q_proj":
                arr = llama_cpp_permute(arr, config.num_attention_heads)
            elif module == "self_attn.k_proj":
                arr = llama_cpp_permute(arr, config.num_key_value_heads)
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if qt == "F32":
            w.add_tensor(out, arr)
        else:
            w.add_tensor(out, quantize(arr, qt), raw_dtype=GGMLQuantizationType[qt])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
