"""GGUF parsing from range reads, checked against gguf-py's writer, reader and dequantiser."""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from monitor.errors import FormatError, UnsupportedFormat
from monitor.formats.fuzz import MemorySource
from monitor.formats.gguf import KEEP_ARRAY_MAX, PREFETCH_BYTES, GGUFArraySummary, GGUFFile, open_gguf
from monitor.formats.gguf_quants import quantize
from monitor.remote.source import LocalFileSet

T = GGMLQuantizationType


def _write(
    path: Path,
    tensors: dict[str, tuple[np.ndarray, T | None]],
    *,
    tokens: list[str] | None = None,
    extra: dict[str, object] | None = None,
) -> Path:
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(1)
    w.add_uint32("test.big_number", 123456)
    w.add_string("test.text", "héllo")
    w.add_array("test.small_floats", [0.5, 1.5])
    for key, value in (extra or {}).items():
        if isinstance(value, list):
            w.add_array(key, value)
        else:
            w.add_string(key, str(value))
    if tokens is not None:
        w.add_token_list(tokens)
        w.add_token_scores([0.0] * len(tokens))
    for name, (arr, raw) in tensors.items():
        if raw is None:
            w.add_tensor(name, arr)
        else:
            w.add_tensor(name, arr, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _open(path: Path) -> tuple[GGUFFile, LocalFileSet]:
    fs = LocalFileSet(path)
    return open_gguf(fs.open(path.name)), fs


RNG = np.random.default_rng(0)
WRITABLE = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K]


@pytest.mark.parametrize("qtype", WRITABLE, ids=lambda t: t.name)
def test_rows_match_gguf_reader_for_written_types(tmp_path, qtype):
    x = RNG.standard_normal((8, 512)).astype(np.float32)
    if qtype == T.F32:
        tensors = {"w": (x, None)}
    elif qtype == T.F16:
        tensors = {"w": (x.astype(np.float16), None)}
    else:
        tensors = {"w": (quantize(x, qtype), qtype)}
    path = _write(tmp_path / "m.gguf", tensors)
    f, _ = _open(path)
    reader = gguf.GGUFReader(path)
    t = reader.tensors[0]
    full = gguf.quants.dequantize(t.data, t.tensor_type).reshape(8, 512)
    assert f.tensors["w"].dtype == qtype.name
    assert f.tensors["w"].shape == (8, 512)
    assert f.tensors["w"].offset == t.data_offset
    assert f.tensors["w"].nbytes == t.n_bytes
    np.testing.assert_array_equal(f.read_rows("w", [7, 0, 3]), full[[7, 0, 3]])
    np.testing.assert_array_equal(f.read("w"), full)


DEQUANT_ONLY = [
    T.Q2_K,
    T.Q3_K,
    T.IQ2_XXS,
    T.IQ2_XS,
    T.IQ2_S,
    T.IQ3_XXS,
    T.IQ3_S,
    T.IQ1_S,
    T.IQ1_M,
    T.IQ4_NL,
    T.IQ4_XS,
    T.TQ1_0,
    T.TQ2_0,
    T.MXFP4,
]


@pytest.mark.parametrize("qtype", DEQUANT_ONLY, ids=lambda t: t.name)
def test_dequantize_only_types_decode_like_gguf(tmp_path, qtype):
    block, size = GGML_QUANT_SIZES[qtype]
    rows, blocks_per_row = 4, 2
    raw = RNG.integers(0, 256, (rows, blocks_per_row * size), dtype=np.uint8)
    path = _write(tmp_path / "m.gguf", {"w": (raw, qtype)})
    f, _ = _open(path)
    with np.errstate(all="ignore"):  # random bytes make some f16 scales inf/NaN; both sides keep them
        expected = gguf.quants.dequantize(raw, qtype)
    assert f.tensors["w"].shape == (rows, blocks_per_row * block)
    np.testing.assert_array_equal(f.read_rows("w", [3, 1]), expected[[3, 1]])


@pytest.mark.parametrize("dtype", [np.float64, np.int8, np.int16, np.int32, np.int64])
def test_element_types(tmp_path, dtype):
    arr = (RNG.standard_normal((3, 32)) * 100).astype(dtype)
    f, _ = _open(_write(tmp_path / "m.gguf", {"w": (arr, None)}))
    np.testing.assert_array_equal(f.read_rows("w", [2]), arr[[2]].astype(np.float32))


def test_shapes_are_numpy_order_and_3d_rows_are_contiguous(tmp_path):
    arr = RNG.standard_normal((3, 4, 32)).astype(np.float32)
    f, _ = _open(_write(tmp_path / "m.gguf", {"experts": (arr, None), "norm": (arr[0, 0].copy(), None)}))
    assert f.tensors["experts"].shape == (3, 4, 32)
    np.testing.assert_array_equal(f.read_rows("experts", [2]), arr[[2]])
    np.testing.assert_array_equal(f.read_rows("norm", [5, 1]), arr[0, 0, [5, 1]])


def test_metadata_keeps_small_values_and_summarises_large_arrays(tmp_path):
    tokens = [f"tok{i}" for i in range(KEEP_ARRAY_MAX + 10)]
    f, _ = _open(_write(tmp_path / "m.gguf", {"w": (np.ones((1, 32), np.float32), None)}, tokens=tokens))
    assert f.version == 3
    assert f.architecture == "llama"
    assert f.metadata["test.big_number"] == 123456
    assert f.metadata["test.text"] == "héllo"
    assert f.metadata["test.small_floats"] == [0.5, 1.5]
    assert f.tokens == tokens
    assert f.metadata["tokenizer.ggml.scores"] == GGUFArraySummary("FLOAT32", len(tokens))


def test_large_header_grows_the_prefix_and_reads_it_once(tmp_path):
    tokens = [f"token-{i:07d}-" + "x" * 40 for i in range(60_000)]  # ~3.4 MB of strings
    path = _write(
        tmp_path / "m.gguf", {"w": (np.arange(64, dtype=np.float32).reshape(2, 32), None)}, tokens=tokens
    )
    f, fs = _open(path)
    assert f.header_bytes > PREFETCH_BYTES
    assert fs.stats.requests == 2  # 2 MiB, then the prefix doubled to 4 MiB
    assert fs.stats.bytes_read == min(2 * PREFETCH_BYTES, path.stat().st_size)
    assert len(f.tokens) == 60_000
    assert f.tokens[-1] == tokens[-1]
    np.testing.assert_array_equal(f.read_rows("w", [1]), [np.arange(32, 64, dtype=np.float32)])
    with pytest.raises(FormatError, match="larger than the 2097152-byte limit"):
        open_gguf(fs.open(path.name), max_header=PREFETCH_BYTES)


def test_real_smollm_file_matches_gguf_reader(smollm_gguf):
    f, fs = _open(smollm_gguf)
    assert fs.stats.bytes_read == PREFETCH_BYTES
    assert fs.stats.requests == 1
    assert f.architecture == "llama"
    assert f.file_type == "Q4_1"
    assert f.arch_value("block_count") == 30
    assert len(f.tokens) == 49152
    assert f.tokens[1] == "<|im_start|>"
    assert f.metadata["tokenizer.ggml.merges"] == GGUFArraySummary("STRING", 48900)
    reader = gguf.GGUFReader(smollm_gguf)
    assert [t.name for t in reader.tensors] == list(f.tensors)
    for t in reader.tensors:
        info = f.tensors[t.name]
        assert (info.dtype, info.shape, info.offset, info.nbytes) == (
            t.tensor_type.name,
            tuple(int(d) for d in reversed(t.shape)),
            t.data_offset,
            t.n_bytes,
        )
    for name in ("token_embd.weight", "blk.7.ffn_down.weight", "blk.29.attn_k.weight", "output_norm.weight"):
        t = next(t for t in reader.tensors if t.name == name)
        full = gguf.quants.dequantize(t.data, t.tensor_type).reshape(f.tensors[name].shape)
        rows = [0, 5, full.shape[0] - 1]
        before = fs.stats.bytes_read
        np.testing.assert_array_equal(f.read_rows(name, rows), full[rows])
        row_bytes = f.layout(name).row_bytes
        assert fs.stats.bytes_read - before == 3 * row_bytes


def test_sharded_gguf_from_the_real_writer(tmp_path):
    w = gguf.GGUFWriter(tmp_path / "m.gguf", "llama", split_max_tensors=1)
    w.add_block_count(1)
    for i in range(3):
        w.add_tensor(f"t{i}", np.full((2, 32), i, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    shards = sorted(p.name for p in tmp_path.glob("*.gguf"))
    assert shards == [f"m-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    for i, name in enumerate(shards):
        f, _ = _open(tmp_path / name)
        assert list(f.tensors) == [f"t{i}"]
        assert f.read(f"t{i}").max() == i


# -- hand-built hostile files ---------------------------------------------------------------------


def _s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def _gguf(
    kvs: list[bytes] = (),
    infos: list[bytes] = (),
    data: bytes = b"",
    *,
    version: int = 3,
    n_tensors: int | None = None,
    n_kv: int | None = None,
    align: int = 32,
) -> bytes:
    head = b"GGUF" + struct.pack(
        "<IQQ", version, len(infos) if n_tensors is None else n_tensors, len(kvs) if n_kv is None else n_kv
    )
    body = head + b"".join(kvs) + b"".join(infos)
    pad = (-len(body)) % align
    return body + b"\0" * pad + data


def _kv_u32(key: str, value: int) -> bytes:
    return _s(key) + struct.pack("<II", 4, value)


def _info(name: str, ne: tuple[int, ...], ttype: int = 0, offset: int = 0) -> bytes:
    return (
        _s(name)
        + struct.pack("<I", len(ne))
        + b"".join(struct.pack("<Q", d) for d in ne)
        + struct.pack("<IQ", ttype, offset)
    )


GOOD = _gguf([_kv_u32("general.alignment", 32)], [_info("w", (32, 2))], b"\0" * 256)

HOSTILE = [
    ("bad magic", b"GGML" + GOOD[4:], FormatError, "not a GGUF file"),
    ("unknown version", _gguf(version=9), FormatError, "unknown GGUF version"),
    ("too many kvs", _gguf(n_kv=1 << 40), FormatError, "key/values exceed"),
    ("too many tensors", _gguf(n_tensors=1 << 40), FormatError, "tensors exceed"),
    ("kv count beyond data", _gguf(n_kv=5), FormatError, "runs past the end"),
    (
        "huge string",
        _gguf([_s("k")[:-1] + b"k" + struct.pack("<I", 8) + struct.pack("<Q", 1 << 62)]),
        FormatError,
        "exceeds the limit",
    ),
    ("huge array", _gguf([_s("k") + struct.pack("<IIQ", 9, 4, 1 << 40)]), FormatError, "array of"),
    (
        "impossible string array",
        _gguf([_s("k") + struct.pack("<IIQ", 9, 8, 1 << 20)]),
        FormatError,
        "cannot fit",
    ),
    ("unknown value type", _gguf([_s("k") + struct.pack("<I", 77)]), FormatError, "unknown value type"),
    (
        "unknown element type",
        _gguf([_s("k") + struct.pack("<IIQ", 9, 77, 1)]),
        FormatError,
        "unknown array element type",
    ),
    (
        "nested arrays too deep",
        _gguf(
            [
                _s("k")
                + struct.pack("<IIQ", 9, 9, 1)
                + struct.pack("<IQ", 9, 1)
                + struct.pack("<IQ", 9, 1)
                + struct.pack("<IQ", 4, 1)
                + b"\0" * 4
            ]
        ),
        FormatError,
        "nested deeper",
    ),
    ("duplicate key", _gguf([_kv_u32("a", 1), _kv_u32("a", 2)]), FormatError, "duplicate key"),
    ("key not utf-8", _gguf([_s(b"\xff\xfe") + struct.pack("<II", 4, 1)]), FormatError, "not valid UTF-8"),
    ("too many dims", _gguf(infos=[_info("w", (32, 1, 1, 1, 1))]), FormatError, "dimensions exceed"),
    (
        "unknown ggml type",
        _gguf(infos=[_info("w", (32,), ttype=5)], data=b"\0" * 64),
        FormatError,
        "unknown GGML type",
    ),
    (
        "row not whole blocks",
        _gguf(infos=[_info("w", (33,), ttype=8)], data=b"\0" * 64),
        FormatError,
        "not a multiple",
    ),
    (
        "misaligned offset",
        _gguf(infos=[_info("w", (4,), offset=4)], data=b"\0" * 64),
        FormatError,
        "not aligned",
    ),
    ("data past the end", _gguf(infos=[_info("w", (32, 100))], data=b"\0" * 64), FormatError, "outside the"),
    (
        "overlapping tensors",
        _gguf(infos=[_info("a", (32,)), _info("b", (32,), offset=64)], data=b"\0" * 256),
        FormatError,
        "overlap",
    ),
    (
        "duplicate tensor",
        _gguf(infos=[_info("a", (8,)), _info("a", (8,), offset=32)], data=b"\0" * 64),
        FormatError,
        "duplicate tensor",
    ),
    (
        "alignment not a power of two",
        _gguf([_kv_u32("general.alignment", 48)], align=48),
        FormatError,
        "power of two",
    ),
    (
        "shape product overflow",
        _gguf(infos=[_info("w", (1 << 32, 1 << 32, 1 << 32))]),
        FormatError,
        "overflows",
    ),
    ("version 1", _gguf(version=1), UnsupportedFormat, "GGUF v1"),
    ("big-endian", b"GGUF" + struct.pack(">IQQ", 3, 0, 0), UnsupportedFormat, "big-endian"),
]


@pytest.mark.parametrize(("label", "data", "error", "message"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_files_are_format_errors(label, data, error, message):
    with pytest.raises(error, match=message):
        open_gguf(MemorySource(data, path="evil.gguf"))


def test_hand_built_good_file_parses():
    f = open_gguf(MemorySource(GOOD, path="good.gguf"))
    assert f.tensors["w"].shape == (2, 32)
    assert f.read("w").shape == (2, 32)


def test_zero_length_rows_of_a_block_type():
    # found by fuzzing: ne0 = 0 is a whole number of blocks, and decoding nothing must not fail
    f = open_gguf(MemorySource(_gguf(infos=[_info("w", (0, 2), ttype=12)], data=b"\0" * 32), path="z.gguf"))
    assert f.tensors["w"].shape == (2, 0)
    assert f.read_rows("w", [1]).shape == (1, 0)


def test_every_truncation_of_a_real_header_is_a_format_error(tmp_path):
    path = _write(tmp_path / "m.gguf", {"w": (np.ones((2, 32), np.float32), None)}, tokens=["a", "bb", "ccc"])
    f, _ = _open(path)
    data = path.read_bytes()
    for cut in range(0, f.data_offset + f.tensors["w"].nbytes, 7):
        with pytest.raises(FormatError):
            open_gguf(MemorySource(data[:cut], path="cut.gguf"))
