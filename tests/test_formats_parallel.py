"""`map_concurrently`: one blocking call per file, all in flight together, results and errors in order."""

from __future__ import annotations

import threading
import time

import pytest

from monitor.errors import FormatError, TransientHubError
from monitor.formats.parallel import map_concurrently


def test_results_in_order_and_calls_really_overlap():
    barrier = threading.Barrier(4, timeout=5)  # only passes if all four calls wait at the same time

    def call(i: int) -> int:
        barrier.wait()
        return i * i

    assert map_concurrently(call, [3, 1, 2, 0]) == [9, 1, 4, 0]


def test_zero_or_one_item_runs_in_the_calling_thread():
    seen: list[str] = []
    assert map_concurrently(lambda i: seen.append(threading.current_thread().name) or i, [7]) == [7]
    assert seen == [threading.current_thread().name]
    assert map_concurrently(lambda i: i, []) == []


def test_every_call_finishes_then_the_earliest_failure_is_raised():
    finished: list[int] = []

    def call(i: int) -> int:
        if i == 1:
            time.sleep(0.05)
            raise FormatError("file 1 is malformed")
        if i == 2:
            raise TransientHubError("file 2 timed out")
        time.sleep(0.1)
        finished.append(i)
        return i

    with pytest.raises(FormatError, match="file 1"):
        map_concurrently(call, [0, 1, 2, 3])
    assert sorted(finished) == [0, 3]  # nothing abandoned mid-read


def test_max_workers_bounds_what_is_in_flight():
    lock = threading.Lock()
    state = {"now": 0, "peak": 0}

    def call(i: int) -> int:
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.02)
        with lock:
            state["now"] -= 1
        return i

    assert map_concurrently(call, list(range(10)), max_workers=3) == list(range(10))
    assert state["peak"] <= 3
