"""Server-side summaries: GGUF and safetensors headers (real and hostile), model cards, config subsets."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest

from monitor.errors import FormatError
from monitor.localhub.summaries import (
    card_data_from_readme,
    config_summary,
    gguf_summary,
    read_safetensors_header,
    safetensors_parameters,
)


def _reader(data: bytes) -> Callable[[int, int], bytes]:
    return lambda start, end: data[start:end]


def test_gguf_summary_matches_gguf_reader(smollm_gguf: Path) -> None:
    reader = gguf.GGUFReader(smollm_gguf)
    data = smollm_gguf.read_bytes()
    summary = gguf_summary(_reader(data), len(data))
    assert summary["total"] == sum(int(t.n_elements) for t in reader.tensors) == 134_515_008
    assert summary["architecture"] == reader.fields["general.architecture"].contents() == "llama"
    assert summary["context_length"] == reader.fields["llama.context_length"].contents() == 8192
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    assert summary["bos_token"] == tokens[reader.fields["tokenizer.ggml.bos_token_id"].contents()]
    assert summary["chat_template"] == reader.fields["tokenizer.chat_template"].contents()


def test_gguf_summary_of_a_written_file(tmp_path: Path) -> None:
    path = tmp_path / "t.gguf"
    writer = gguf.GGUFWriter(path, "qwen2")
    writer.add_context_length(1234)
    writer.add_array("some.numbers", [1, 2, 3])
    writer.add_tensor("a", np.zeros((3, 4), dtype=np.float32))
    writer.add_tensor("b", np.zeros((5,), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    data = path.read_bytes()
    assert gguf_summary(_reader(data), len(data)) == {
        "total": 17,
        "architecture": "qwen2",
        "context_length": 1234,
    }


def _gguf_header(*, version: int = 3, n_tensors: int = 0, kv: bytes = b"", n_kv: int = 0) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv) + kv


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"GGML" + b"\0" * 40, "bad magic"),
        (_gguf_header(version=1), "version 1"),
        (_gguf_header(n_tensors=1 << 40), "tensor count"),
        (_gguf_header(n_kv=1, kv=struct.pack("<Q", 1 << 40)), "string length"),
        (_gguf_header(n_kv=1, kv=struct.pack("<Q", 3) + b"abc" + struct.pack("<I", 99)), "value type 99"),
        (
            _gguf_header(n_kv=1, kv=struct.pack("<Q", 3) + b"abc" + struct.pack("<IIQ", 9, 4, 1 << 20)),
            "past the end",
        ),
        (_gguf_header(n_kv=2), "past the end"),
    ],
)
def test_gguf_hostile_headers(data: bytes, match: str) -> None:
    with pytest.raises(FormatError, match=match):
        gguf_summary(_reader(data), len(data))


def test_gguf_truncated_real_file(smollm_gguf: Path) -> None:
    data = smollm_gguf.read_bytes()[:200_000]
    with pytest.raises(FormatError, match="past the end"):
        gguf_summary(_reader(data), len(data))


def _safetensors(header: object, data: bytes = b"", *, length: int | None = None) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def test_safetensors_header_real(minilm_dir: Path) -> None:
    data = (minilm_dir / "model.safetensors").read_bytes()
    header = read_safetensors_header(_reader(data), len(data))
    assert safetensors_parameters(header) == {"F32": 22_713_216, "I64": 512}
    assert header["__metadata__"] == {"format": "pt"}
    assert sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__") == 22_713_728


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\x01\x00", "no header length"),
        (struct.pack("<Q", 1 << 40), "exceeds"),
        (struct.pack("<Q", 100) + b"{}", "runs past the end"),
        (_safetensors("[1, 2]"), "not a JSON object"),
        (struct.pack("<Q", 4) + b"{nope", "not valid JSON"),
        (_safetensors({"a": {"shape": [1]}}), "no dtype"),
        (_safetensors({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}), "invalid shape"),
        (
            _safetensors({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4),
            "data_offsets",
        ),
        (
            _safetensors({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\0" * 4),
            "data_offsets",
        ),
        (_safetensors({"__metadata__": [1]}), "__metadata__"),
    ],
)
def test_safetensors_hostile_headers(data: bytes, match: str) -> None:
    with pytest.raises(FormatError, match=match):
        read_safetensors_header(_reader(data), len(data))


def test_card_data_from_readme() -> None:
    text = "---\nbase_model: acme/x\ntags: [a, b]\ndate: 2024-01-02\nlicense: mit\n---\n# Title\n"
    assert card_data_from_readme(text) == {
        "base_model": "acme/x",
        "tags": ["a", "b"],
        "date": "2024-01-02",
        "license": "mit",
    }
    assert card_data_from_readme("# no front matter") is None
    assert card_data_from_readme("---\nunterminated: true\n") is None
    assert card_data_from_readme("---\n---\nbody") == {}
    with pytest.raises(FormatError, match="YAML"):
        card_data_from_readme("---\na: [unclosed\n---\n")
    with pytest.raises(FormatError, match="mapping"):
        card_data_from_readme("---\n- a list\n---\n")


def test_config_summary_is_the_hub_subset() -> None:
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 4096,
        "quantization_config": {"bits": 4},
    }
    assert config_summary(config, {"eos_token": "</s>", "model_max_length": 1}) == {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "quantization_config": {"bits": 4},
        "tokenizer_config": {"eos_token": "</s>"},
    }
    assert config_summary(["not", "a", "dict"]) == {}
