"""The symbolic pickle interpreter: torch.save output is understood, hostile pickles never run."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import zipfile

import pytest
import torch

from monitor.errors import FormatError, UnsupportedFormat
from monitor.formats.pickleops import MAX_PICKLE_BYTES, StorageRef, Symbol, TensorRef, interpret


def _data_pkl(obj: object, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, **kwargs)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zf:
        name = next(n for n in zf.namelist() if n.endswith("/data.pkl"))
        return zf.read(name)


class _Payload:
    """Pickles to ``os.system(command)``: what a hostile checkpoint hides in data.pkl."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_state_dict_becomes_tensor_records(protocol):
    w = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    sd = {
        "w": w,
        "row": w[1],
        "h": torch.zeros(2, dtype=torch.float16),
        "p": torch.nn.Parameter(torch.ones(2)),
        "ids": torch.arange(3),
        "flag": torch.tensor([True]),
    }
    obj = interpret(
        _data_pkl({"state_dict": sd, "epoch": 7, "name": "x", "lr": 0.5}, pickle_protocol=protocol),
        path="t.pt",
    )
    assert obj["epoch"] == 7
    assert obj["name"] == "x"
    assert obj["lr"] == 0.5
    tensors = obj["state_dict"]
    assert isinstance(tensors["w"], TensorRef)
    assert tensors["w"].size == (3, 4)
    assert tensors["w"].stride == (4, 1)
    assert tensors["w"].offset == 0
    assert tensors["row"].storage == tensors["w"].storage
    assert tensors["row"].offset == 4
    assert tensors["w"].storage.dtype == "F32"
    assert tensors["h"].storage.dtype == "F16"
    assert tensors["ids"].storage.dtype == "I64"
    assert tensors["flag"].storage.dtype == "BOOL"
    assert tensors["p"].size == (2,)


def test_tensor_with_python_state_uses_rebuild_from_type_v2():
    t = torch.ones(2)
    t.note = "kept out"
    obj = interpret(_data_pkl({"t": t}, pickle_protocol=4), path="t.pt")
    assert isinstance(obj["t"], TensorRef)
    assert obj["t"].size == (2,)


def test_payload_is_live_but_interpret_refuses_it_without_running_it(tmp_path):
    marker_live, marker_ours = tmp_path / "ran-live", tmp_path / "ran-ours"
    for protocol in (2, 4):
        live = pickle.dumps({"w": 1, "evil": _Payload(f"touch {marker_live}")}, protocol=protocol)
        # Control: the same bytes really do run code when unpickled (in a child interpreter).
        subprocess.run(
            [sys.executable, "-c", "import pickle,sys; pickle.loads(sys.stdin.buffer.read())"],
            input=live,
            check=True,
        )
        assert marker_live.exists()
        marker_live.unlink()
        ours = pickle.dumps({"w": 1, "evil": _Payload(f"touch {marker_ours}")}, protocol=protocol)
        with pytest.raises(UnsupportedFormat, match=r"global (posix|os)\.system") as err:
            interpret(ours, path="evil.bin")
        assert "nothing was executed" in str(err.value)
        assert not marker_ours.exists()


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("builtins", "exec"),
        ("builtins", "eval"),
        ("subprocess", "Popen"),
        ("torch._utilsx", "_rebuild_tensor_v2"),
        ("torch", "load"),
        ("collections", "defaultdict"),
        ("__builtin__", "getattr"),
    ],
)
def test_globals_outside_the_allow_list_are_named(module, name):
    data = b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n)R."
    with pytest.raises(UnsupportedFormat, match=f"global {module}.{name}"):
        interpret(data, path="x.bin")
    stack_global = (
        b"\x80\x04\x8c"
        + bytes([len(module)])
        + module.encode()
        + b"\x8c"
        + bytes([len(name)])
        + name.encode()
        + b"\x93)R."
    )
    with pytest.raises(UnsupportedFormat, match=f"global {module}.{name}"):
        interpret(stack_global, path="x.bin")


def test_allow_listed_symbols_are_recorded_not_imported():
    obj = interpret(b"\x80\x02]q\x00(ctorch\nfloat16\nctorch\nFloatStorage\ne.", path="x")
    assert obj == [Symbol("torch", "float16", "dtype"), Symbol("torch", "FloatStorage", "storage")]


def test_ordered_dict_with_items_argument():
    obj = interpret(b"\x80\x02ccollections\nOrderedDict\n]](X\x01\x00\x00\x00aK\x01ea\x85R.", path="x")
    assert obj == {"a": 1}


HOSTILE = [
    ("empty", b"", "truncated"),
    ("stack underflow", b"\x80\x02R.", "underflow"),
    ("pop below mark", b"(0.", "underflow"),
    ("no mark", b"t.", "no MARK"),
    ("missing memo", b"h\x05.", "never written"),
    ("text-mode opcode", b"I1\n.", "not used by torch.save"),
    ("truncated string", b"X\xff\x00\x00\x00ab", "truncated"),
    ("huge long", b"\x8b\x00\x00\x01\x00" + b"\x01" * 10, "not a checkpoint value"),
    ("unhashable key", b"}]K\x01s.", "unhashable"),
    ("append to dict", b"}K\x01a.", "non-list"),
    ("reduce of a storage class", b"ctorch\nFloatStorage\n)R.", "not callable"),
    ("reduce of a non-symbol", b"K\x01)R.", "non-callable"),
    ("newobj of a rebuild function", b"ctorch._utils\n_rebuild_tensor_v2\n)\x81.", "NEWOBJ"),
    ("rebuild without storage", b"ctorch._utils\n_rebuild_tensor_v2\n(K\x00K\x00)K\x01tR.", "without"),
    ("bad persistent id", b"X\x03\x00\x00\x00abcQ.", "persistent id"),
    ("build on a list", b"]}b.", "BUILD on list"),
    ("unknown protocol", b"\x80\x09.", "unknown pickle protocol"),
    ("unterminated global", b"cos", "unterminated"),
]


@pytest.mark.parametrize(("label", "data", "message"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_malformed_pickles_are_format_errors(label, data, message):
    with pytest.raises(FormatError, match=message):
        interpret(data, path="x.bin")


def test_inconsistent_tensor_geometry():
    storage = b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQ"
    data = b"ctorch._utils\n_rebuild_tensor_v2\n(" + storage + b"K\x00K\x02K\x02\x86K\x01\x85\x89tR."
    with pytest.raises(FormatError, match="inconsistent tensor size"):
        interpret(data, path="x.bin")
    ok = b"ctorch._utils\n_rebuild_tensor_v2\n(" + storage + b"K\x00K\x02\x85K\x01\x85\x89tR."
    ref = interpret(ok, path="x.bin")
    assert ref == TensorRef(StorageRef("0", "F32", "FloatStorage", "cpu", 4), 0, (2,), (1,))


def test_size_limit():
    with pytest.raises(FormatError, match="exceeds the limit"):
        interpret(b"N" * (MAX_PICKLE_BYTES + 1), path="x.bin")
