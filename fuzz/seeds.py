"""Seed inputs for every fuzz target: small, valid files written by the real writers.

libFuzzer mutates what it is given; starting from files the real tools write (safetensors' own ``save``,
``gguf.GGUFWriter``, ``torch.save``, a ``tokenizers``-format document) lets a campaign reach the deep
branches (tensor tables, quantised blocks, storage references) in minutes instead of hours. Each function
returns ``{file name: bytes}`` and is deterministic.
"""

from __future__ import annotations

import io
import json
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np

__all__ = [
    "MODELVIEW_NAMES",
    "frame_model",
    "gguf_seeds",
    "modelview_seeds",
    "pickle_seeds",
    "safetensors_seeds",
    "tokenizer_seeds",
    "torch_archive",
    "torch_seeds",
    "unframe_model",
]

MODELVIEW_NAMES = ("model.safetensors", "model.gguf", "pytorch_model.bin")
"""Weight file name per format byte of a framed model (see `frame_model`)."""


def safetensors_seeds() -> dict[str, bytes]:
    from safetensors.numpy import save

    return {
        "f32.safetensors": save(
            {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(4, np.float32)},
            metadata={"format": "pt"},
        ),
        "mixed.safetensors": save(
            {
                "model.embed_tokens.weight": np.linspace(-1, 1, 64, dtype=np.float16).reshape(8, 8),
                "model.layers.0.mlp.up_proj.weight": np.ones((16, 8), np.float32),
                "scale": np.array(3, np.int8),
                "empty": np.zeros((0, 4), np.float32),
            }
        ),
    }


def gguf_seeds() -> dict[str, bytes]:
    import gguf

    from monitor.formats.gguf_quants import quantize

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "seed.gguf"
        writer = gguf.GGUFWriter(path, "llama")
        writer.add_block_count(1)
        writer.add_head_count(2)
        writer.add_embedding_length(32)
        writer.add_token_list(["<s>", "a", "bc", "d"])
        writer.add_tensor("token_embd.weight", np.ones((4, 32), np.float32))
        writer.add_tensor("blk.0.attn_q.weight", np.ones((32, 32), np.float16))
        writer.add_tensor(
            "blk.0.ffn_up.weight",
            quantize(np.linspace(-1, 1, 512, dtype=np.float32).reshape(2, 256), "Q4_K"),
            raw_dtype=gguf.GGMLQuantizationType.Q4_K,
        )
        writer.add_tensor(
            "blk.0.ffn_down.weight",
            quantize(np.linspace(-2, 2, 64, dtype=np.float32).reshape(2, 32), "Q8_0"),
            raw_dtype=gguf.GGMLQuantizationType.Q8_0,
        )
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return {"llama.gguf": path.read_bytes()}


def torch_seeds() -> dict[str, bytes]:
    import torch

    def saved(obj: object) -> bytes:
        buf = io.BytesIO()
        torch.save(obj, buf)
        return buf.getvalue()

    base = torch.arange(24.0).reshape(4, 6)
    return {
        "state_dict.bin": saved({"w": base, "b": torch.zeros(2, dtype=torch.bfloat16)}),
        "wrapped.bin": saved({"state_dict": {"layer.weight": base[1:], "layer.bias": base[0]}, "epoch": 3}),
        "shared.bin": saved({"a": base, "a_view": base.view(6, 4), "i8": torch.ones(5, dtype=torch.int8)}),
    }


def pickle_seeds() -> dict[str, bytes]:
    """The ``data.pkl`` members of the torch seeds (what `monitor.formats.pickleops` interprets)."""
    out = {}
    for name, blob in torch_seeds().items():
        with zipfile.ZipFile(io.BytesIO(blob)) as archive:
            member = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
            out[name.replace(".bin", ".pkl")] = archive.read(member)
    return out


def torch_archive(data_pkl: bytes, *, storages: int = 4, storage_bytes: int = 256) -> bytes:
    """A well-formed torch zip around ``data_pkl``, with ``storages`` stored members ``data/0..``.

    Lets the pickle fuzzer reach the checkpoint reader's storage handling: the zip layer is always valid.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/byteorder", "little")
        for key in range(storages):
            archive.writestr(f"archive/data/{key}", bytes(range(256)) * (storage_bytes // 256))
        archive.writestr("archive/version", "3\n")
    return buf.getvalue()


def tokenizer_seeds() -> dict[str, bytes]:
    words = ["[PAD]", "[UNK]", "the", "model", "weights", "##s", "Ġhub"]
    word_level = {
        "version": "1.0",
        "added_tokens": [{"id": 0, "content": "[PAD]", "special": True}],
        "model": {"type": "WordLevel", "vocab": {w: i for i, w in enumerate(words)}, "unk_token": "[UNK]"},
    }
    bpe = {
        "version": "1.0",
        "added_tokens": [{"id": 7, "content": "<|endoftext|>", "special": True}],
        "model": {
            "type": "BPE",
            "vocab": {w: i for i, w in enumerate(words)},
            "merges": ["t h", "th e"],
        },
    }
    unigram = {"model": {"type": "Unigram", "vocab": [[w, -float(i)] for i, w in enumerate(words)]}}
    return {
        "wordlevel.json": json.dumps(word_level).encode(),
        "bpe.json": json.dumps(bpe).encode(),
        "unigram.json": json.dumps(unigram).encode(),
        "vocab.txt": ("\n".join(words) + "\n").encode(),
    }


def frame_model(fmt: int, config: bytes, tokenizer: bytes, weights: bytes) -> bytes:
    """One fuzz input for a whole model: format byte, ``config.json``, ``tokenizer.json``, weight file.

    Layout: ``u8 format`` (index into `MODELVIEW_NAMES`), ``u16 len`` + config, ``u16 len`` + tokenizer,
    then the weight file to the end (little-endian lengths).
    """
    return (
        struct.pack("<BH", fmt, len(config))
        + config
        + struct.pack("<H", len(tokenizer))
        + tokenizer
        + weights
    )


def unframe_model(data: bytes) -> dict[str, bytes]:
    """The files of a framed input (`frame_model`); short inputs give fewer (possibly no) files."""
    files: dict[str, bytes] = {}
    if len(data) < 3:
        return files
    fmt, n_config = struct.unpack_from("<BH", data)
    pos = 3
    config, pos = data[pos : pos + n_config], pos + n_config
    if len(data) >= pos + 2:
        (n_tok,) = struct.unpack_from("<H", data, pos)
        pos += 2
        files["tokenizer.json"] = data[pos : pos + n_tok]
        pos += n_tok
    files["config.json"] = config
    files[MODELVIEW_NAMES[fmt % len(MODELVIEW_NAMES)]] = data[pos:]
    return files


def modelview_seeds() -> dict[str, bytes]:
    config = json.dumps(
        {"model_type": "llama", "hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 1}
    ).encode()
    tokenizer = tokenizer_seeds()["wordlevel.json"]
    weights = [
        safetensors_seeds()["mixed.safetensors"],
        gguf_seeds()["llama.gguf"],
        torch_seeds()["shared.bin"],
    ]
    return {f"model-{i}.bin": frame_model(i, config, tokenizer, blob) for i, blob in enumerate(weights)}
