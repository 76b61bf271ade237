"""Executors: threads and an in-process Dask cluster behave the same to the caller; LazyProcessor ships."""

from __future__ import annotations

import os
import pickle
import threading
from concurrent.futures import wait

import pytest

from monitor.config import ExecutorConfig
from monitor.errors import ConfigError
from monitor.executor import LazyProcessor, build_executor

BUILDS: list[tuple[str, int]] = []


def square_processor_factory(offset: int):
    """Module-level factory (importable by name, so Dask can ship a LazyProcessor of it)."""
    BUILDS.append(("square", offset))
    lock = threading.Lock()  # unpicklable state, like an HTTP client

    def process(item: int) -> tuple[int, int]:
        with lock:
            return item * item + offset, os.getpid()

    return process


def fail_on_three(item: int) -> int:
    if item == 3:
        raise ValueError(f"bad item {item}")
    return item


@pytest.fixture(params=["threads", "dask"])
def handle(request: pytest.FixtureRequest):
    with build_executor(ExecutorConfig(kind=request.param, workers=2)) as opened:
        yield opened


def test_results_and_errors_come_back_the_same_way(handle) -> None:
    futures = [handle.executor.submit(fail_on_three, i) for i in range(5)]
    wait(futures, timeout=30)
    results = []
    for future in futures:
        try:
            results.append(future.result())
        except ValueError as exc:
            results.append(str(exc))
    assert results == [0, 1, 2, "bad item 3", 4]
    assert handle.workers == 2


def test_lazy_processor_builds_once_per_process_and_pickles_without_its_state(handle) -> None:
    offset = {"threads": 10, "dask": 20}[handle.kind]  # the cache is per process: one key per case
    BUILDS.clear()
    processor = LazyProcessor(square_processor_factory, offset)
    clone = pickle.loads(pickle.dumps(processor))
    assert clone.args == (offset,)
    futures = [handle.executor.submit(processor, i) for i in range(6)]
    assert [f.result(timeout=30)[0] - offset for f in futures] == [0, 1, 4, 9, 16, 25]
    assert {f.result()[1] for f in futures} == {os.getpid()}  # in-process cluster: same process
    assert [("square", offset)] == BUILDS
    assert "square_processor_factory" in repr(processor)


def test_close_is_idempotent() -> None:
    handle = build_executor(ExecutorConfig(kind="threads", workers=1))
    handle.close()
    handle.close()
    with pytest.raises(RuntimeError):
        handle.executor.submit(int, 1)


def test_unreachable_dask_scheduler_is_a_config_error() -> None:
    config = ExecutorConfig(kind="dask", workers=1, dask_scheduler="tcp://127.0.0.1:1")
    with pytest.raises(ConfigError, match=r"cannot reach the Dask scheduler at tcp://127\.0\.0\.1:1"):
        build_executor(config, connect_timeout_s=0.5)


def _listening() -> set[tuple[str, int]]:
    sockets = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            for line in fh.read().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                if state == "0A":  # LISTEN
                    address, port = local.split(":")
                    sockets.add((address, int(port, 16)))
    return sockets


def test_in_process_dask_listens_on_loopback_only() -> None:
    loopback = {"0100007F", "00000000000000000000000001000000"}
    before = _listening()
    with build_executor(ExecutorConfig(kind="dask", workers=1)):
        opened = _listening() - before
    assert opened, "the Dask nodes should have opened their HTTP servers"
    assert {address for address, _ in opened} <= loopback, opened
