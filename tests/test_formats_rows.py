"""Row spans, read plans and the one-read_many-per-file rule."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import save

from monitor.formats.fuzz import MemorySource
from monitor.formats.rows import Need, ReadPlan, as_index, execute, merge_spans, plan_bytes
from monitor.formats.safetensors import open_safetensors


class CountingSource(MemorySource):
    def __init__(self, data: bytes, **kwargs) -> None:
        super().__init__(data, **kwargs)
        self.batches: list[list[tuple[int, int]]] = []

    def read_many(self, spans):
        self.batches.append(list(spans))
        return super().read_many(spans)


ARR = np.arange(40 * 8, dtype=np.float32).reshape(40, 8)


@pytest.fixture
def file():
    src = CountingSource(save({"a": ARR, "b": ARR[:, :4].copy()}), path="m.safetensors")
    return open_safetensors(src), src


def test_merge_spans():
    assert merge_spans([(10, 20), (0, 5), (5, 8), (15, 30), (40, 41)]) == [(0, 8), (10, 30), (40, 41)]
    assert merge_spans([]) == []


def test_as_index():
    np.testing.assert_array_equal(as_index(range(2, 8, 3), 10, what="t"), [2, 5])
    assert as_index([], 3, what="t").dtype == np.int64
    with pytest.raises(IndexError):
        as_index([-1], 3, what="t")
    with pytest.raises(TypeError):
        as_index(np.array([1.0]), 3, what="t")


def test_unsorted_and_repeated_rows(file):
    f, _ = file
    rows = [9, 3, 9, 4, 0]
    np.testing.assert_array_equal(f.read_rows("a", rows), ARR[rows])
    assert f.spans("a", np.array(rows)) == [
        (f.tensors["a"].offset + 0, f.tensors["a"].offset + 32),
        (f.tensors["a"].offset + 96, f.tensors["a"].offset + 160),
        (f.tensors["a"].offset + 288, f.tensors["a"].offset + 320),
    ]


def test_one_read_many_per_plan_with_overlaps_merged(file):
    f, src = file
    plan = ReadPlan(
        [Need(f, "a", np.array([1, 2])), Need(f, "a", np.array([2, 3])), Need(f, "b", np.array([0]))],
        lambda arrays: np.concatenate([arrays[0], arrays[1], np.pad(arrays[2], ((0, 0), (0, 4)))]),
    )
    before = src.stats.bytes_read
    expected_bytes = plan_bytes(plan)
    out = execute(plan)
    assert len(src.batches) == 1
    assert src.stats.bytes_read - before == expected_bytes == 3 * 32 + 16
    np.testing.assert_array_equal(out[:4], ARR[[1, 2, 2, 3]])


def test_follow_up_plans_run_in_stages(file):
    f, src = file
    first = ReadPlan(
        [Need(f, "b", np.array([5]))],
        lambda arrays: ReadPlan(
            [Need(f, "a", arrays[0].astype(np.int64).reshape(-1) // 8)], lambda inner: inner[0]
        ),
        followup_bytes=4 * 32,
    )
    assert plan_bytes(first) == 16 + 128
    out = execute(first)
    assert len(src.batches) == 2
    np.testing.assert_array_equal(out, ARR[ARR[5, :4].astype(np.int64) // 8])
