"""safetensors parsing and decoding against files written by the real `safetensors` writers."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from safetensors.torch import save_file as save_torch

from monitor.errors import FormatError, UnsupportedFormat
from monitor.formats.dtypes import F8_E4M3_TABLE, F8_E5M2_TABLE, F8_E8M0_TABLE, codec_for
from monitor.formats.fuzz import MemorySource
from monitor.formats.safetensors import MAX_HEADER_BYTES, PREFETCH_BYTES, SafetensorsFile, open_safetensors
from monitor.remote.source import LocalFileSet


def _open(path: Path) -> tuple[SafetensorsFile, LocalFileSet]:
    fs = LocalFileSet(path)
    return open_safetensors(fs.open(path.name)), fs


def _raw_file(header: dict | bytes, data: bytes = b"", *, declared: int | None = None) -> bytes:
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(body) if declared is None else declared
    return struct.pack("<Q", n) + body + data


NUMPY_DTYPES = [
    np.float64,
    np.float32,
    np.float16,
    np.int64,
    np.int32,
    np.int16,
    np.int8,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.bool_,
]


@pytest.mark.parametrize("dtype", NUMPY_DTYPES, ids=lambda d: np.dtype(d).name)
def test_numpy_dtypes_round_trip(tmp_path, dtype):
    rng = np.random.default_rng(0)
    arr = (rng.standard_normal((7, 5)) * 50).astype(dtype)
    save_file({"t": arr, "v": arr[0].copy()}, tmp_path / "m.safetensors")
    f, _ = _open(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(f.read_rows("t", [6, 0, 3, 3]), arr[[6, 0, 3, 3]].astype(np.float32))
    np.testing.assert_array_equal(f.read("t"), arr.astype(np.float32))
    np.testing.assert_array_equal(f.read_rows("v", range(1, 4)), arr[0, 1:4].astype(np.float32))
    np.testing.assert_array_equal(f.read("t", native=True), arr)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2])
def test_torch_only_dtypes_round_trip(tmp_path, dtype):
    ref = (torch.randn(6, 16, generator=torch.Generator().manual_seed(1)) * 3).to(dtype)
    save_torch({"w": ref}, tmp_path / "m.safetensors")
    f, _ = _open(tmp_path / "m.safetensors")
    expected = ref.float().numpy()
    np.testing.assert_array_equal(f.read_rows("w", [5, 1]), expected[[5, 1]])
    np.testing.assert_array_equal(f.read("w"), expected)


@pytest.mark.parametrize(
    ("table", "dtype"), [(F8_E4M3_TABLE, torch.float8_e4m3fn), (F8_E5M2_TABLE, torch.float8_e5m2)]
)
def test_fp8_tables_match_torch_for_all_256_codes(table, dtype):
    codes = torch.arange(256, dtype=torch.uint8)
    expected = codes.view(dtype).float().numpy()
    np.testing.assert_array_equal(np.isnan(table), np.isnan(expected))
    finite = ~np.isnan(expected)
    np.testing.assert_array_equal(table[finite], expected[finite])


def test_e8m0_is_a_power_of_two_scale():
    assert F8_E8M0_TABLE[127] == 1.0
    assert F8_E8M0_TABLE[130] == 8.0
    assert np.isnan(F8_E8M0_TABLE[255])
    assert codec_for("F8_E8M0").to_float32(bytes([126, 128])).tolist() == [0.5, 2.0]


def test_header_costs_one_read_and_rows_cost_only_their_bytes(tmp_path):
    arr = np.arange(200 * 64, dtype=np.float32).reshape(200, 64)
    save_file({"w": arr}, tmp_path / "m.safetensors")
    f, fs = _open(tmp_path / "m.safetensors")
    size = (tmp_path / "m.safetensors").stat().st_size
    assert fs.stats.bytes_read == min(PREFETCH_BYTES, size)
    assert fs.stats.requests == 1
    before = fs.stats.bytes_read
    np.testing.assert_array_equal(f.read_rows("w", [7, 8, 9, 150]), arr[[7, 8, 9, 150]])
    assert fs.stats.bytes_read - before == 4 * 64 * 4
    assert fs.stats.requests == 1 + 2  # rows 7-9 are one span, row 150 another


def test_long_header_takes_exactly_a_second_read(tmp_path):
    tensors = {
        f"layer.{i:05d}.a_rather_long_parameter_name.weight": np.full((1,), i, np.float32)
        for i in range(2000)
    }
    save_file(tensors, tmp_path / "m.safetensors", metadata={"note": "x" * 1000})
    f, fs = _open(tmp_path / "m.safetensors")
    assert f.header_bytes > PREFETCH_BYTES
    assert fs.stats.requests == 2
    assert fs.stats.bytes_read == 8 + f.header_bytes
    assert f.metadata == {"note": "x" * 1000}
    assert f.read("layer.01234.a_rather_long_parameter_name.weight").tolist() == [1234.0]


def test_real_minilm_header_matches_the_reference_loader(minilm_dir):
    f, _ = _open(minilm_dir / "model.safetensors")
    ref = load_file(minilm_dir / "model.safetensors")
    assert set(f.tensors) == set(ref)
    for name, arr in ref.items():
        assert f.tensors[name].shape == arr.shape
    name = "encoder.layer.5.attention.self.query.weight"
    np.testing.assert_array_equal(f.read_rows(name, [0, 383, 100]), ref[name][[0, 383, 100]])


def _entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


HOSTILE = [
    (
        "duplicate key",
        b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": '
        b'{"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}',
        b"\0" * 8,
        "duplicate JSON key",
    ),
    (
        "NaN constant",
        b'{"a": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 4]}}',
        b"\0" * 4,
        "invalid JSON",
    ),
    ("not an object", b"[1, 2, 3]", b"", "not a safetensors file"),
    ("bad utf-8", b'{"\xff": 1}', b"", "not valid UTF-8"),
    ("deep nesting", b'{"a": ' + b"[" * 100 + b"]" * 100 + b"}", b"", "nested deeper"),
    (
        "huge integer",
        b'{"a": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 4]}}',
        b"",
        "invalid JSON",
    ),
    ("unknown dtype", {"a": _entry(dtype="F13")}, b"\0" * 8, "unknown dtype"),
    ("bool in shape", {"a": _entry(shape=(True,), offsets=(0, 4))}, b"\0" * 4, "must be an integer"),
    ("float offset", {"a": _entry(offsets=(0, 8.0))}, b"\0" * 8, "must be an integer"),
    ("negative dim", {"a": _entry(shape=(-2,))}, b"\0" * 8, "negative dimension"),
    ("too many dims", {"a": _entry(shape=(1,) * 17, offsets=(0, 4))}, b"\0" * 4, "dimensions exceed"),
    (
        "shape overflow",
        {"a": _entry(shape=(1 << 40, 1 << 40), offsets=(0, 8))},
        b"\0" * 8,
        "shape product exceeds",
    ),
    ("offsets past the data", {"a": _entry(offsets=(0, 16))}, b"\0" * 8, "outside the data section"),
    ("offsets reversed", {"a": _entry(offsets=(8, 0))}, b"\0" * 8, "outside the data section"),
    ("offsets not matching shape", {"a": _entry(shape=(3,))}, b"\0" * 8, "needs 12 bytes"),
    ("overlap", {"a": _entry(offsets=(0, 8)), "b": _entry(offsets=(4, 12))}, b"\0" * 12, "overlap"),
    ("metadata not strings", {"__metadata__": {"k": 1}, "a": _entry()}, b"\0" * 8, "__metadata__"),
    ("entry not an object", {"a": [1, 2]}, b"", "entry must be an object"),
    ("missing data_offsets", {"a": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, "data_offsets"),
    ("name too long", {"n" * 2000: _entry()}, b"\0" * 8, "name longer"),
]


@pytest.mark.parametrize(("label", "header", "data", "message"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_headers_are_format_errors(label, header, data, message):
    with pytest.raises(FormatError, match=message):
        open_safetensors(MemorySource(_raw_file(header, data), path="evil.safetensors"))


def test_declared_header_length_limits():
    with pytest.raises(FormatError, match="exceeds the limit"):
        open_safetensors(MemorySource(_raw_file(b"{}", declared=MAX_HEADER_BYTES + 1)))
    with pytest.raises(FormatError, match="runs past the end"):
        open_safetensors(MemorySource(_raw_file(b"{}", declared=10_000)))
    with pytest.raises(FormatError, match="too short"):
        open_safetensors(MemorySource(b"\x01\x00"))


def test_known_unsupported_dtype_is_unsupported_format():
    with pytest.raises(UnsupportedFormat, match="F4"):
        open_safetensors(MemorySource(_raw_file({"a": _entry(dtype="F4", shape=(1,), offsets=(0, 0))})))


def test_truncated_real_file_fails_cleanly(tmp_path):
    save_file({"w": np.ones((64, 64), np.float32)}, tmp_path / "m.safetensors")
    data = (tmp_path / "m.safetensors").read_bytes()
    for cut in (4, 20, len(data) // 2, len(data) - 1):
        with pytest.raises(FormatError):
            open_safetensors(MemorySource(data[:cut], path="cut.safetensors"))


def test_error_names_the_file_and_tensor():
    src = MemorySource(
        _raw_file({"model.layers.0.x": _entry(shape=(3,))}, b"\0" * 8), path="shard-3.safetensors"
    )
    with pytest.raises(FormatError, match=r"shard-3\.safetensors: tensor 'model\.layers\.0\.x'"):
        open_safetensors(src)


def test_zero_size_and_scalar_tensors(tmp_path):
    save_file(
        {
            "empty": np.zeros((0, 4), np.float32),
            "scalar": np.array(2.5, np.float32),
            "w": np.ones((2, 2), np.float16),
        },
        tmp_path / "m.safetensors",
    )
    f, _ = _open(tmp_path / "m.safetensors")
    assert f.read("empty").shape == (0, 4)
    assert f.read("scalar").tolist() == 2.5
    assert f.read_rows("w", []).shape == (0, 2)


def test_out_of_range_rows_are_caller_errors(tmp_path):
    save_file({"w": np.ones((2, 2), np.float32)}, tmp_path / "m.safetensors")
    f, _ = _open(tmp_path / "m.safetensors")
    with pytest.raises(IndexError):
        f.read_rows("w", [2])
    with pytest.raises(TypeError):
        f.read_rows("w", [0.5])
    with pytest.raises(KeyError):
        f.read_rows("nope", [0])
