"""PyTorch zip checkpoints written by torch.save, read without unpickling."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from monitor.errors import FormatError, UnsupportedFormat
from monitor.formats.fuzz import MemorySource
from monitor.formats.torchzip import TorchZipFile, open_torch
from monitor.remote.source import LocalFileSet

DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
]


def _save(obj: object, path: Path, **kwargs: object) -> Path:
    torch.save(obj, path, **kwargs)
    return path


def _open(path: Path) -> tuple[TorchZipFile, LocalFileSet]:
    fs = LocalFileSet(path)
    return open_torch(fs.open(path.name)), fs


def _members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _rezip(members: dict[str, bytes], *, deflate: frozenset[str] = frozenset()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(
                name, data, compress_type=zipfile.ZIP_DEFLATED if name in deflate else zipfile.ZIP_STORED
            )
    return buf.getvalue()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_dtype_round_trips(tmp_path, dtype):
    ref = (torch.randn(5, 7, generator=torch.Generator().manual_seed(0)) * 20).to(dtype)
    f, _ = _open(_save({"w": ref}, tmp_path / "m.bin"))
    assert f.tensors["w"].shape == (5, 7)
    np.testing.assert_array_equal(f.read_rows("w", [4, 0]), ref.float().numpy()[[4, 0]])
    np.testing.assert_array_equal(f.read("w"), ref.float().numpy())


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "model_state_dict", "module"])
def test_wrapped_state_dicts_are_unwrapped(tmp_path, wrapper):
    sd = {"layer.weight": torch.ones(2, 3), "layer.bias": torch.zeros(2)}
    obj = {wrapper: sd, "epoch": 3, "optimizer": {"state": {0: {"exp_avg": torch.ones(2)}}}}
    f, _ = _open(_save(obj, tmp_path / "m.pt"))
    assert sorted(f.tensors) == ["layer.bias", "layer.weight"]


def test_nested_dicts_flatten_to_dotted_names(tmp_path):
    f, _ = _open(
        _save({"enc": {"w": torch.ones(2)}, "heads": [torch.zeros(1), torch.ones(1)]}, tmp_path / "m.pt")
    )
    assert sorted(f.tensors) == ["enc.w", "heads.0", "heads.1"]


def test_views_offsets_sharing_and_non_contiguous(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    sd = {
        "base": base,
        "row2": base[2],
        "tail": base[1:],
        "tied": base,
        "t": base.t(),
        "p": torch.nn.Parameter(torch.full((3,), 2.0)),
    }
    for protocol in (2, 4):
        f, _ = _open(_save(sd, tmp_path / f"m{protocol}.pt", pickle_protocol=protocol))
        np.testing.assert_array_equal(f.read("row2"), base[2].numpy())
        np.testing.assert_array_equal(f.read_rows("tail", [2]), base[3:4].numpy())
        assert f.tensors["tied"].offset == f.tensors["base"].offset
        assert f.read("p").tolist() == [2.0, 2.0, 2.0]
        assert "t" not in f.tensors
        assert "non-contiguous" in f.unsupported["t"]
        with pytest.raises(UnsupportedFormat, match="non-contiguous"):
            f.read("t")


def test_open_reads_headers_and_rows_read_only_their_bytes(tmp_path):
    w = torch.randn(256, 128)
    path = _save({"w": w, "b": torch.zeros(128)}, tmp_path / "m.bin")
    f, fs = _open(path)
    # 8 KiB tail (end records + directory), 3 local headers (<= 190 B each), data.pkl, byteorder
    assert fs.stats.bytes_read < 8192 + 3 * 190 + 1024 + 16
    before = fs.stats.snapshot()
    np.testing.assert_array_equal(f.read_rows("w", [10, 11, 200]), w.numpy()[[10, 11, 200]])
    assert fs.stats.bytes_read - before["bytes_read"] == 3 * 128 * 4
    assert fs.stats.requests - before["requests"] == 2


def test_legacy_checkpoints_are_refused(tmp_path):
    path = _save({"w": torch.ones(2)}, tmp_path / "old.bin", _use_new_zipfile_serialization=False)
    with pytest.raises(
        UnsupportedFormat, match=r"^legacy \(pre-1\.6\) PyTorch pickle checkpoint is not read: "
    ):
        _open(path)
    (tmp_path / "bare.pkl").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(UnsupportedFormat, match="a bare pickle"):
        _open(tmp_path / "bare.pkl")
    (tmp_path / "junk.bin").write_bytes(b"\x00junk" * 100)
    with pytest.raises(FormatError, match="not a ZIP archive"):
        _open(tmp_path / "junk.bin")


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    members = _members((_save({"w": torch.ones(2)}, tmp_path / "ok.bin")).read_bytes())
    pkl = next(n for n in members if n.endswith("/data.pkl"))
    members[pkl] = pickle.dumps({"w": 1, "boom": _Payload(marker)}, protocol=2)
    (tmp_path / "evil.bin").write_bytes(_rezip(members))
    with pytest.raises(UnsupportedFormat, match=r"(posix|os)\.system"):
        _open(tmp_path / "evil.bin")
    assert not marker.exists()


def test_deflated_pickle_is_read_and_deflated_storage_is_unsupported(tmp_path):
    members = _members(
        _save({"a": torch.ones(3), "b": torch.full((3,), 4.0)}, tmp_path / "m.bin").read_bytes()
    )
    pkl = next(n for n in members if n.endswith("/data.pkl"))
    archive = pkl.split("/")[0]
    f = open_torch(MemorySource(_rezip(members, deflate=frozenset({pkl, f"{archive}/data/1"})), path="d.bin"))
    assert f.read("a").tolist() == [1.0, 1.0, 1.0]
    assert "compressed" in f.unsupported["b"]


def test_inconsistent_archives(tmp_path):
    data = _save({"w": torch.ones(4)}, tmp_path / "m.bin").read_bytes()
    members = _members(data)
    pkl = next(n for n in members if n.endswith("/data.pkl"))
    archive = pkl.split("/")[0]
    no_storage = {k: v for k, v in members.items() if k != f"{archive}/data/0"}
    with pytest.raises(FormatError, match="missing storage"):
        open_torch(MemorySource(_rezip(no_storage), path="x.bin"))
    no_pickle = {k: v for k, v in members.items() if k != pkl}
    with pytest.raises(FormatError, match="not a PyTorch checkpoint"):
        open_torch(MemorySource(_rezip(no_pickle), path="x.bin"))
    short_storage = {**members, f"{archive}/data/0": b"\0" * 8}
    with pytest.raises(FormatError, match="runs past"):
        open_torch(MemorySource(_rezip(short_storage), path="x.bin"))
    big_endian = {**members, f"{archive}/byteorder": b"big"}
    with pytest.raises(UnsupportedFormat, match="byte order"):
        open_torch(MemorySource(_rezip(big_endian), path="x.bin"))
    truncated_pickle = {**members, pkl: members[pkl][:-5]}
    with pytest.raises(FormatError, match="truncated"):
        open_torch(MemorySource(_rezip(truncated_pickle), path="x.bin"))
    no_tensors = {**members, pkl: pickle.dumps({"epoch": 1}, protocol=2)}
    with pytest.raises(FormatError, match="no tensors"):
        open_torch(MemorySource(_rezip(no_tensors), path="x.bin"))


def test_every_truncation_is_a_format_error(tmp_path):
    data = _save({"w": torch.ones(3, 3)}, tmp_path / "m.bin").read_bytes()
    for cut in range(0, len(data), max(1, len(data) // 60)):
        with pytest.raises(FormatError):
            open_torch(MemorySource(data[:cut], path="cut.bin"))
