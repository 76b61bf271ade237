"""Property tests: arbitrary and mutated bytes never raise anything but FormatError."""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path

import gguf
import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save

from monitor.errors import FormatError
from monitor.formats.canonical import ModelView
from monitor.formats.fuzz import PARSERS, MemorySource, exercise
from monitor.formats.gguf_quants import quantize
from monitor.formats.jsonstrict import loads_strict
from monitor.formats.pickleops import interpret
from monitor.formats.vocab import vocab_from_tokenizer_json
from monitor.remote.source import ByteBudget, FileEntry, ReadStats

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _gguf_seed() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.gguf"
        w = gguf.GGUFWriter(path, "llama")
        w.add_block_count(1)
        w.add_head_count(2)
        w.add_token_list(["a", "bc", "d"])
        w.add_tensor("blk.0.attn_q.weight", np.ones((4, 32), np.float32))
        w.add_tensor(
            "blk.0.ffn_up.weight",
            quantize(np.linspace(-1, 1, 512, dtype=np.float32).reshape(2, 256), "Q4_K"),
            raw_dtype=gguf.GGMLQuantizationType.Q4_K,
        )
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return path.read_bytes()


def _torch_seed() -> bytes:
    buf = io.BytesIO()
    torch.save(
        {"state_dict": {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(2, dtype=torch.bfloat16)}}, buf
    )
    return buf.getvalue()


SEEDS = {
    "safetensors": save(
        {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "i": np.ones(3, np.int8)},
        metadata={"format": "pt"},
    ),
    "gguf": _gguf_seed(),
    "torch": _torch_seed(),
}


def test_seeds_parse():
    for fmt, data in SEEDS.items():
        assert exercise(data, fmt) is not None, fmt


@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes(data):
    for fmt in PARSERS:
        exercise(data, fmt)


@st.composite
def mutated(draw):
    fmt = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[fmt])
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete", "int"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        elif kind == "int" and len(data) >= pos + 8:  # plant an extreme length/offset/count
            data[pos : pos + 8] = draw(
                st.sampled_from([0, 1, 2**31 - 1, 2**32 - 1, 2**63 - 1, 2**64 - 1])
            ).to_bytes(8, "little")
    return fmt, bytes(data)


@FUZZ
@given(mutated())
def test_mutated_real_files(case):
    fmt, data = case
    exercise(data, fmt)


@FUZZ
@given(st.one_of(st.binary(max_size=512), st.text(max_size=512).map(str.encode)))
def test_json_and_tokenizer_decoders(data):
    for fn in (lambda d: loads_strict(d, what="x"), vocab_from_tokenizer_json):
        with contextlib.suppress(FormatError):
            fn(data)


@FUZZ
@given(st.binary(max_size=1024))
def test_pickle_interpreter(data):
    with contextlib.suppress(FormatError):
        interpret(b"\x80\x02" + data, path="x")


class MemoryFileSet:
    """A `FileSet` over in-memory files, for fuzzing ModelView end to end."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.ref = "memory"
        self.commit = None
        self.stats = ReadStats()
        self.budget = ByteBudget(None)
        self._data = files
        self.files = {p: FileEntry(p, len(d)) for p, d in files.items()}

    def open(self, path: str) -> MemorySource:
        return MemorySource(self._data[path], path=path)


@FUZZ
@given(st.binary(max_size=300), st.binary(max_size=300), mutated())
def test_model_view_on_hostile_side_files(config, tokenizer, case):
    fmt, weights = case
    name = {"safetensors": "model.safetensors", "gguf": "m.gguf", "torch": "pytorch_model.bin"}[fmt]
    for files in (
        {name: weights},
        {name: SEEDS[fmt], "config.json": config, "tokenizer.json": tokenizer},
        {
            name: SEEDS[fmt],
            "config.json": json.dumps(
                {"model_type": "llama", "num_attention_heads": 2, "hidden_size": -4}
            ).encode(),
        },
    ):
        try:
            view = ModelView.open(MemoryFileSet(files))
            view.vocab()
            for key in view.tensors:
                view.read(key)
        except FormatError:
            pass
