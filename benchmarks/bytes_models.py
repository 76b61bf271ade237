"""What the bytes benchmark scans: per shape, a protected model on disk and the suspects on the local hub.

* **bert**: the real all-MiniLM-L6-v2 (`monitor.synth.assets`) and three real files derived from it here,
  written once under the cache: its int8 round trip saved as BF16 safetensors, a GGUF Q4_K_M of that as
  ``convert_hf_to_gguf.py`` + ``llama-quantize`` lay out a BERT (WordPiece tokens rewritten with ``▁``,
  llama.cpp's Q5_0/Q8_0 fallbacks for 384-wide rows, position and token-type embeddings left unquantised),
  and a GPTQ 4-bit g128 checkpoint of it (`monitor.localhub.virtual_gptq.gptq_tensors`).
* **Llama shapes**: virtual checkpoints (`monitor.localhub.virtual_*`; a few KB of specs, rewritten on every
  run): the protected base, a fine-tuned derivative (base + 5 % noise) as BF16 shards, the same derivative
  as GGUF Q4_K_M and as GPTQ 4-bit g128, and an independent model (other seed) as the control.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from monitor.localhub.virtual_gguf import write_virtual_gguf
from monitor.localhub.virtual_gptq import quantize_config_json, write_virtual_gptq
from monitor.localhub.virtual_llama import LLAMA_7B, LLAMA_70B, LlamaShape, write_virtual_llama

__all__ = ["SHAPES", "TINY", "Case", "Suspect", "prepare"]

BASE_SEED, NOISE_SEED, INDEPENDENT_SEED, REL_NOISE = 7, 99, 8, 0.05
TINY = LlamaShape(d_model=256, n_layers=4, d_ff=768, n_heads=4, n_kv_heads=2, vocab=2048)
SHAPES: dict[str, LlamaShape | None] = {"bert": None, "tiny": TINY, "7b": LLAMA_7B, "70b": LLAMA_70B}
"""Benchmark shapes; ``bert`` is the real all-MiniLM-L6-v2 (22.7M parameters), ``tiny`` is for tests."""
_BERT_SPECIALS = (("unk", "[UNK]"), ("sep", "[SEP]"), ("pad", "[PAD]"), ("cls", "[CLS]"), ("mask", "[MASK]"))
_BERT_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)


@dataclass(frozen=True)
class Suspect:
    """One upload: ``repo_id`` on the bench hub, what it is, and whether it derives from the base."""

    repo_id: str
    label: str
    derived: bool


@dataclass(frozen=True)
class Case:
    """One shape: the protected model's folder and the suspects published for it."""

    shape: str
    protected_dir: Path
    suspects: tuple[Suspect, ...]


def _llama_case(name: str, shape: LlamaShape, cache: Path) -> Case:
    """Virtual base, derivative (BF16 shards, GGUF Q4_K_M, GPTQ) and an independent control."""
    derivation = {"base_seed": BASE_SEED, "noise_seed": NOISE_SEED, "rel_noise": REL_NOISE}
    protected = cache / "protected" / f"llama-{name}"
    hub = cache / "hub" / "bench"
    for d in (protected, *(hub / f"llama-{name}{s}" for s in ("-ft", "-ft-GGUF", "-ft-GPTQ", "-indep"))):
        shutil.rmtree(d, ignore_errors=True)  # specs are a few KB: rewrite them, never trust stale ones
    write_virtual_llama(protected, shape, seed=BASE_SEED)
    write_virtual_llama(hub / f"llama-{name}-ft", shape, seed=None, derivation=derivation)
    write_virtual_gguf(
        hub / f"llama-{name}-ft-GGUF", shape, seed=None, derivation=derivation, stem=f"llama-{name}-ft"
    )
    write_virtual_gptq(hub / f"llama-{name}-ft-GPTQ", shape, seed=None, derivation=derivation)
    write_virtual_llama(hub / f"llama-{name}-indep", shape, seed=INDEPENDENT_SEED)
    return Case(
        name,
        protected,
        (
            Suspect(f"bench/llama-{name}-ft", "fine-tune, BF16 safetensors", True),
            Suspect(f"bench/llama-{name}-ft-GGUF", "fine-tune, GGUF Q4_K_M", True),
            Suspect(f"bench/llama-{name}-ft-GPTQ", "fine-tune, GPTQ 4-bit g128", True),
            Suspect(f"bench/llama-{name}-indep", "independent (other seed), BF16", False),
        ),
    )


def _bert_case(cache: Path) -> Case:
    """Real all-MiniLM-L6-v2 and three real derivatives of it, written once."""
    from monitor.synth.assets import asset_path

    minilm = asset_path("minilm")
    hub = cache / "hub" / "bench"
    derived = _bert_int8_state(minilm)
    builders: dict[str, Callable[[Path], None]] = {
        "minilm-int8": lambda d: _write_bert_bf16(d, derived, minilm),
        "minilm-int8-GGUF": lambda d: _write_bert_gguf(d / "minilm-int8.Q4_K_M.gguf", derived, minilm),
        "minilm-int8-GPTQ": lambda d: _write_bert_gptq(d, derived, minilm),
    }
    for repo, build in builders.items():
        folder = hub / repo
        if not (folder / ".complete").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            build(folder)
            (folder / ".complete").write_text("")  # dot-files are invisible to the hub
    return Case(
        "bert",
        minilm,
        (
            Suspect("bench/minilm-int8", "int8 round trip, BF16 safetensors", True),
            Suspect("bench/minilm-int8-GGUF", "int8 round trip, GGUF Q4_K_M", True),
            Suspect("bench/minilm-int8-GPTQ", "int8 round trip, GPTQ 4-bit g128", True),
        ),
    )


def _bert_int8_state(minilm: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    from monitor.synth.transforms import quantize_int8_rows

    state = load_file(minilm / "model.safetensors")
    floats = {k: v.astype(np.float32) for k, v in state.items() if v.dtype.kind == "f"}
    out = dict(quantize_int8_rows(floats))
    out.update({k: v for k, v in state.items() if v.dtype.kind != "f"})
    return out


def _copy_bert_files(minilm: Path, folder: Path, *, config: dict[str, Any] | None = None) -> None:
    for name in _BERT_FILES:
        shutil.copyfile(minilm / name, folder / name)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def _write_bert_bf16(folder: Path, state: dict[str, np.ndarray], minilm: Path) -> None:
    import torch
    from safetensors.torch import save_file

    tensors = {
        k: torch.from_numpy(np.ascontiguousarray(v)).to(
            torch.bfloat16 if v.dtype.kind == "f" else torch.int64
        )
        for k, v in state.items()
    }
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((minilm / "config.json").read_text())
    _copy_bert_files(minilm, folder, config={**config, "torch_dtype": "bfloat16"})


def _write_bert_gptq(folder: Path, state: dict[str, np.ndarray], minilm: Path) -> None:
    from safetensors.numpy import save_file

    from monitor.localhub.virtual_gptq import gptq_tensors

    linear = re.compile(r"encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|"
                        r"intermediate\.dense|output\.dense)\.weight")  # fmt: skip
    tensors: dict[str, np.ndarray] = {}
    for name, value in state.items():
        if linear.fullmatch(name):
            tensors.update(gptq_tensors(name.removesuffix(".weight"), value, bits=4, group_size=128))
        elif value.dtype.kind == "f":
            tensors[name] = value.astype(np.float16)
        else:
            tensors[name] = value
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    qconfig = quantize_config_json(bits=4, group_size=128)
    config = json.loads((minilm / "config.json").read_text())
    _copy_bert_files(
        minilm, folder, config={**config, "torch_dtype": "float16", "quantization_config": qconfig}
    )
    (folder / "quantize_config.json").write_text(json.dumps(qconfig, indent=2) + "\n")


def _write_bert_gguf(path: Path, state: dict[str, np.ndarray], minilm: Path) -> None:
    """What ``convert_hf_to_gguf.py`` + ``llama-quantize Q4_K_M`` make of a BERT encoder."""
    import gguf

    from monitor.formats.gguf_quants import quantize
    from monitor.localhub.virtual_gguf import llama_cpp_type

    config = json.loads((minilm / "config.json").read_text())
    n_layers = int(config["num_hidden_layers"])
    w = gguf.GGUFWriter(str(path), "bert")
    w.add_name("all-MiniLM-L6-v2 int8")
    w.add_block_count(n_layers)
    w.add_context_length(int(config["max_position_embeddings"]))
    w.add_embedding_length(int(config["hidden_size"]))
    w.add_feed_forward_length(int(config["intermediate_size"]))
    w.add_head_count(int(config["num_attention_heads"]))
    w.add_layer_norm_eps(float(config["layer_norm_eps"]))
    w.add_causal_attention(False)
    w.add_pooling_type(gguf.PoolingType.MEAN)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    vocab = (minilm / "vocab.txt").read_text(encoding="utf-8").splitlines()
    # llama.cpp rewrites WordPiece to "phantom space" tokens: "##x" -> "x", "word" -> "▁word"
    tokens = [
        t if (t.startswith("[") and t.endswith("]")) else t[2:] if t.startswith("##") else "\u2581" + t
        for t in vocab
    ]
    w.add_tokenizer_model("bert")
    w.add_token_list(tokens)
    w.add_token_types([3 if (t.startswith("[") and t.endswith("]")) else 1 for t in vocab])
    for key, token in _BERT_SPECIALS:  # CLS is written as BOS, as llama.cpp's converter does
        getattr(w, f"add_{'bos' if key == 'cls' else key}_token_id")(vocab.index(token))
    names = {
        "embeddings.word_embeddings": "token_embd",
        "embeddings.position_embeddings": "position_embd",
        "embeddings.token_type_embeddings": "token_types",
        "embeddings.LayerNorm": "token_embd_norm",
    }
    per_layer = {
        "attention.self.query": "attn_q",
        "attention.self.key": "attn_k",
        "attention.self.value": "attn_v",
        "attention.output.dense": "attn_output",
        "attention.output.LayerNorm": "attn_output_norm",
        "intermediate.dense": "ffn_up",
        "output.dense": "ffn_down",
        "output.LayerNorm": "layer_output_norm",
    }
    for name, value in state.items():
        module, param = name.rsplit(".", 1)
        m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)", module)
        target = f"blk.{m[1]}.{per_layer[m[2]]}" if m and m[2] in per_layer else names.get(module)
        if target is None or value.dtype.kind != "f":
            continue  # position_ids, pooler: not converted
        out = f"{target}.{param}"
        arr = np.ascontiguousarray(value, dtype=np.float32)
        if arr.ndim == 1:
            w.add_tensor(out, arr)
        elif target in ("position_embd", "token_types"):  # llama-quantize leaves these alone
            w.add_tensor(out, arr.astype(np.float16))
        else:
            qt = llama_cpp_type("Q4_K_M", out, arr.shape, n_layers=n_layers, has_output=False)
            w.add_tensor(out, quantize(arr, qt), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def prepare(shape: str, cache: Path) -> Case:
    """Write (or reuse) the protected model and the suspects of one shape under ``cache``."""
    spec = SHAPES[shape]
    return _bert_case(cache) if spec is None else _llama_case(shape, spec, cache)
