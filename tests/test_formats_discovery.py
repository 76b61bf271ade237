"""Choosing weight files from a repo listing (0 bytes read)."""

from __future__ import annotations

import pytest

from monitor.errors import FormatError, UnsupportedFormat
from monitor.formats.discovery import GGUF_PREFERENCE, gguf_quant_label, select_weights
from monitor.remote.source import FileEntry


def _files(*paths: str) -> dict[str, FileEntry]:
    return {p: FileEntry(p, 1) for p in paths}


CASES = [
    (
        "sentence-transformers layout",
        [
            "model.safetensors",
            "1_Pooling/config.json",
            "onnx/model.safetensors",
            "pytorch_model.bin",
            "config.json",
        ],
        "safetensors",
        ("model.safetensors",),
        None,
    ),
    (
        "sharded with index",
        [
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
        ],
        "safetensors",
        (),
        "model.safetensors.index.json",
    ),
    (
        "shards without index",
        ["model-00002-of-00002.safetensors", "model-00001-of-00002.safetensors"],
        "safetensors",
        ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"),
        None,
    ),
    (
        "adapter ignored",
        ["adapter_model.safetensors", "model.safetensors"],
        "safetensors",
        ("model.safetensors",),
        None,
    ),
    (
        "adapter only is not a model",
        ["adapter_model.safetensors", "pytorch_model.bin"],
        "torch",
        ("pytorch_model.bin",),
        None,
    ),
    (
        "consolidated only when alone",
        ["consolidated.safetensors", "model-00001-of-00001.safetensors"],
        "safetensors",
        ("model-00001-of-00001.safetensors",),
        None,
    ),
    (
        "mistral original",
        ["consolidated.safetensors", "params.json"],
        "safetensors",
        ("consolidated.safetensors",),
        None,
    ),
    (
        "gguf preference",
        ["m.Q4_K_M.gguf", "m.Q8_0.gguf", "m.F16.gguf", "m.Q2_K.gguf"],
        "gguf",
        ("m.Q8_0.gguf",),
        None,
    ),
    (
        "gguf in folders, mmproj skipped",
        ["Q4_K_M/m-Q4_K_M.gguf", "mmproj-m-f16.gguf", "m-IQ2_XS.gguf"],
        "gguf",
        ("Q4_K_M/m-Q4_K_M.gguf",),
        None,
    ),
    (
        "gguf shard series",
        ["q8/m-Q8_0-00001-of-00002.gguf", "q8/m-Q8_0-00002-of-00002.gguf", "m-Q4_0.gguf"],
        "gguf",
        ("q8/m-Q8_0-00001-of-00002.gguf", "q8/m-Q8_0-00002-of-00002.gguf"),
        None,
    ),
    ("gguf unlabeled last", ["model.gguf", "model-q5_k_m.gguf"], "gguf", ("model-q5_k_m.gguf",), None),
    (
        "torch index",
        ["pytorch_model.bin.index.json", "pytorch_model-00001-of-00001.bin"],
        "torch",
        (),
        "pytorch_model.bin.index.json",
    ),
    (
        "single pt",
        ["weights.pt", "optimizer.pt", "training_args.bin", "rng_state_0.pth"],
        "torch",
        ("weights.pt",),
        None,
    ),
]


@pytest.mark.parametrize(("label", "paths", "fmt", "files", "index"), CASES, ids=[c[0] for c in CASES])
def test_selection(label, paths, fmt, files, index):
    sel = select_weights(_files(*paths))
    assert (sel.format, sel.files, sel.index) == (fmt, files, index)


def test_explicit_choice_and_errors():
    files = _files("m.Q4_K_M.gguf", "m.Q8_0.gguf", "model.safetensors", "x.bin", "y.bin")
    assert select_weights(files, weights="m.Q4_K_M.gguf").files == ("m.Q4_K_M.gguf",)
    with pytest.raises(FormatError, match="not in the repo"):
        select_weights(files, weights="nope.gguf")
    with pytest.raises(FormatError, match="mix formats"):
        select_weights(files, weights=["m.Q8_0.gguf", "model.safetensors"])
    with pytest.raises(UnsupportedFormat, match="not a weight file"):
        select_weights(_files("README.md"), weights="README.md")
    with pytest.raises(FormatError, match="several PyTorch checkpoints"):
        select_weights(_files("x.bin", "y.bin"))
    with pytest.raises(UnsupportedFormat, match="no weight files"):
        select_weights(_files("README.md", "config.json", "sub/model.safetensors"))
    with pytest.raises(FormatError, match="without a complete series"):
        select_weights(_files("m-00001-of-00003.gguf", "m-00003-of-00003.gguf"))


def test_quant_labels():
    assert gguf_quant_label("Llama-3.2-1B-Instruct-Q4_K_M.gguf") == "Q4_K_M"
    assert gguf_quant_label("qwen2.5-7b-instruct-q5_k_m-00001-of-00002.gguf") == "Q5_K_M"
    assert gguf_quant_label("phi-3-mini.BF16.gguf") == "BF16"
    assert gguf_quant_label("model-IQ3_XXS.gguf") == "IQ3_XXS"
    assert gguf_quant_label("model.gguf") is None
    assert GGUF_PREFERENCE[0] == "Q8_0"
    assert GGUF_PREFERENCE[-1] == "F32"
