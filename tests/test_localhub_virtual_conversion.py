"""`LlamaConversion`: spec checks and the byte walk the GGUF and GPTQ kinds share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from monitor.errors import FormatError
from monitor.localhub.virtual_conversion import LlamaConversion
from monitor.localhub.virtual_llama import LlamaShape

MODEL = LlamaShape(64, 1, 128, 4, 2, 100).to_spec()


@dataclass(frozen=True)
class _Tensor:
    name: str
    offset: int
    nbytes: int
    row_bytes: int


class _Rows(LlamaConversion[_Tensor]):
    """A made-up layout: a 10-byte header, two tensors of 3-byte rows with 5 padding bytes between them;
    row ``r`` of tensor ``k`` is the bytes ``(k, r, 7)``."""

    kind = ""  # not registered: a test double
    EXTRA_KEYS = frozenset({"extra"})

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        self.calls: list[tuple[str, int, int]] = []
        tensors = [_Tensor("a", 10, 4 * 3, 3), _Tensor("b", 27, 7 * 3, 3)]
        self._set_layout(b"H" * 10, tensors, 27 + 21 + 2)  # 2 bytes of padding at the end

    def _rows(self, t: _Tensor, r0: int, r1: int) -> bytes:
        self.calls.append((t.name, r0, r1))
        k = 0 if t.name == "a" else 1
        return b"".join(bytes([k, r, 7]) for r in range(r0, r1))

    def _step(self, t: _Tensor) -> int:
        return 2


def _expected() -> bytes:
    a = b"".join(bytes([0, r, 7]) for r in range(4))
    b = b"".join(bytes([1, r, 7]) for r in range(7))
    return b"H" * 10 + a + b"\0" * 5 + b + b"\0" * 2


def test_any_range_is_the_slice_of_the_whole_file():
    vf = _Rows({"kind": "x", "model": MODEL, "seed": 1})
    whole = _expected()
    assert vf.size == len(whole)
    assert vf.read(0, vf.size) == whole
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = int(rng.integers(0, vf.size + 1))
        b = int(rng.integers(a, vf.size + 1))
        assert vf.read(a, b) == whole[a:b], (a, b)
    with pytest.raises(FormatError, match="outside"):
        vf.read(0, vf.size + 1)


def test_rows_are_generated_in_batches_aligned_to_the_step():
    vf = _Rows({"kind": "x", "model": MODEL, "seed": 1})
    vf.read(27 + 3 + 1, 27 + 6 * 3 + 2)  # inside rows 1..6 of tensor b
    assert vf.calls == [("b", 1, 2), ("b", 2, 4), ("b", 4, 6), ("b", 6, 7)]
    assert vf.tensor_info("b").offset == 27
    with pytest.raises(FormatError, match="no tensor 'c'"):
        vf.tensor_info("c")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"kind": "x", "model": MODEL, "seed": 1, "bits": 4}, r"unknown keys in .* spec: \['bits'\]"),
        ({"kind": "x", "model": MODEL, "seed": 1, "version": 2}, "spec version 2"),
        ({"kind": "x", "model": MODEL}, "needs a 'seed' or a 'derivation'"),
        ({"kind": "x", "model": {**MODEL, "d_model": 0}, "seed": 1}, "model.d_model"),
    ],
)
def test_spec_errors(spec, message):
    with pytest.raises(FormatError, match=message):
        _Rows(spec)
    assert _Rows({"kind": "x", "model": MODEL, "seed": 1, "extra": True}).weights.shape.d_model == 64
