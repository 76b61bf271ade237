"""The request history shared by every process on a host (`RateStateFile`) and the limiter using it.

Fake clocks for the exact figures (a second "process" is a second limiter on the same file), and real
processes — some killed without closing — on the real clock for the end-to-end guarantee.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from monitor.errors import RateLimited
from monitor.hubs.ratelimit import BucketPolicy, HubRateLimiter
from monitor.hubs.ratestate import RateStateFile


class FakeClock:
    """Monotonic time that only moves when someone sleeps (or the test advances it)."""

    def __init__(self) -> None:
        self.t = 1_000.0

    def monotonic(self) -> float:
        return self.t

    def sleep(self, seconds: float, stop: threading.Event | None) -> bool:
        if stop is not None and stop.is_set():
            return True
        self.t += seconds
        return False

    def advance(self, seconds: float) -> None:
        self.t += seconds


WALL0 = 1_800_000_000.0  # the fake clock's t = 1000.0 is this wall-clock second


def shared(path, clock: FakeClock, *, api: int = 5, window: float = 300.0) -> HubRateLimiter:
    """A limiter of one "process" sharing its history through ``path``, on the test's fake clock."""
    state = RateStateFile(path, wall=lambda: WALL0 + clock.t - 1_000.0)
    return HubRateLimiter({"api": BucketPolicy(api, window)}, name="hf", clock=clock, state=state)


def test_the_ceiling_holds_across_a_clean_restart(tmp_path):
    clock = FakeClock()
    first = shared(tmp_path / "rate.json", clock)
    for _ in range(3):
        first.acquire("api", max_wait_s=0)
    first.close()
    clock.advance(10)
    second = shared(tmp_path / "rate.json", clock)  # a new process, 10 s later, same window
    for _ in range(2):
        second.acquire("api", max_wait_s=0)
    with pytest.raises(RateLimited, match=r"5 used by all processes") as info:
        second.acquire("api", max_wait_s=0)
    # the first requests count until the end of their second + window + margin
    assert 301 - 10 <= info.value.retry_after_s <= 302 - 10
    clock.advance(info.value.retry_after_s)
    assert second.acquire("api", max_wait_s=0) == 0.0
    assert second.state("api").used == 3  # the first process's three have left the window


def test_a_killed_process_costs_its_block_for_one_window(tmp_path):
    """A process killed with requests it had not written yet: they came out of a block it claimed, which the
    others count in full, at the moment it lapses, until the window has passed."""
    clock = FakeClock()
    killed = shared(tmp_path / "rate.json", clock, api=1000)
    for _ in range(5):  # out of its first block of 10: nothing written when the process dies
        killed.acquire("api", max_wait_s=0)
    assert killed.state("api").used == 5
    # kill -9: no close()
    clock.advance(1)
    survivor = shared(tmp_path / "rate.json", clock, api=1000)
    granted = 0
    refusal = None
    while refusal is None:
        try:
            survivor.acquire("api", max_wait_s=0)
            granted += 1
        except RateLimited as exc:
            refusal = exc
    assert "1000 used by all processes" in str(refusal)
    assert granted == 1000 - 10  # the dead process's block stands in for the 5 it sent
    clock.advance(303)
    survivor.acquire("api", max_wait_s=0)  # everything has left the window
    doc = json.loads((tmp_path / "rate.json").read_text())
    assert killed._state is not None
    assert killed._state.owner not in doc["holders"]  # the dead process's entry is gone once it is moot


def test_processes_running_at_once_share_one_ceiling(tmp_path):
    clock = FakeClock()
    a = shared(tmp_path / "rate.json", clock, api=1000)
    b = shared(tmp_path / "rate.json", clock, api=1000)
    granted = {"a": 0, "b": 0}
    for _ in range(2000):
        for name, lim in (("a", a), ("b", b)):
            try:
                lim.acquire("api", max_wait_s=0)
                granted[name] += 1
            except RateLimited:
                pass
        clock.advance(0.01)
    assert granted["a"] > 300
    assert granted["b"] > 300
    assert granted["a"] + granted["b"] == 1000  # however they interleave


def test_a_corrupt_or_unwritable_state_file_is_reported_and_the_limiter_goes_on(tmp_path, caplog):
    path = tmp_path / "rate.json"
    path.write_text("{not json")
    clock = FakeClock()
    lim = shared(path, clock, api=2)
    lim.acquire("api", max_wait_s=0)
    assert "is not valid JSON" in caplog.text
    assert json.loads(path.read_text())["version"] == 1  # replaced by a good one
    blocked = tmp_path / "ro"
    blocked.mkdir()
    blocked.chmod(0o500)
    try:
        lonely = shared(blocked / "sub" / "rate.json", clock, api=2)
        lonely.acquire("api", max_wait_s=0)
        lonely.acquire("api", max_wait_s=0)
        with pytest.raises(RateLimited):  # still limits this process on its own
            lonely.acquire("api", max_wait_s=0)
    finally:
        blocked.chmod(0o700)
    assert "cannot share the request history" in caplog.text


_PROCESS = """
import os, sys
from monitor.errors import RateLimited
from monitor.hubs.ratelimit import BucketPolicy, HubRateLimiter
from monitor.hubs.ratestate import RateStateFile
path, limit, wanted, ending = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
lim = HubRateLimiter({"api": BucketPolicy(limit, 300.0)}, state=RateStateFile(path))
granted = 0
try:
    for _ in range(wanted):
        lim.acquire("api", max_wait_s=0)
        granted += 1
except RateLimited:
    pass
print(granted, flush=True)
if ending == "kill":
    os._exit(0)  # like kill -9: the last block's requests are not written, the block stays claimed
lim.close()
"""


@pytest.mark.parametrize("limit", [40, 1000])
def test_real_processes_restarted_and_killed_stay_inside_one_ceiling(tmp_path, limit):
    """Real processes one after another on the real clock, each wanting 3/8 of the ceiling, some dying
    without closing: together they get the ceiling and not one request more (at most a block less per
    death). Before, every new process got the whole ceiling again: 6 × 3/8 of it."""
    path = tmp_path / "rate.json"
    got = []
    for ending in ("close", "kill", "close", "kill", "close", "close"):
        done = subprocess.run(
            [sys.executable, "-c", _PROCESS, str(path), str(limit), str(limit * 3 // 8), ending],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        got.append(int(done.stdout))
    block = max(1, min(10, limit // 100))
    assert got[:2] == [limit * 3 // 8] * 2
    assert limit - 2 * block <= sum(got) <= limit
    assert got[3:] == [0, 0, 0]


def test_the_file_keeps_per_second_counts_and_blocks_and_drops_what_left_the_window(tmp_path):
    now = [1_800_000_000.25]
    state = RateStateFile(tmp_path / "rate.json", owner="host:1:a", wall=lambda: now[0])
    other = RateStateFile(tmp_path / "rate.json", owner="host:2:b", wall=lambda: now[0])
    first = state.exchange(windows={"api": 301.0}, limits={"api": 5}, new={}, want={"api": 2})
    assert first is not None
    assert (first.blocks, first.history) == ({"api": 2}, {"api": []})
    # the other process sees our block, counted as used when it lapses (claimed + 2 s)
    seen = other.exchange(windows={"api": 301.0}, limits={"api": 5}, new={}, want={"api": 2})
    assert seen is not None
    assert seen.blocks == {"api": 2}
    assert seen.history == {"api": [(1_800_000_002.25, 2)]}
    # we used one request of our block at t0: written at the end of its second; only 1 left for a block
    now[0] += 1
    again = state.exchange(
        windows={"api": 301.0}, limits={"api": 5}, new={"api": [1_800_000_000.5]}, want={"api": 2}
    )
    assert again is not None
    assert again.blocks == {"api": 2}  # 5 - 1 written - 2 of the other's block = 2
    assert again.history == {"api": [(1_800_000_001.0, 1), (1_800_000_002.25, 2)]}
    doc = json.loads((tmp_path / "rate.json").read_text())
    assert doc["buckets"] == {"api": {"1800000000": 1}}
    assert set(doc["holders"]) == {"host:1:a", "host:2:b"}
    # a window later everything has left it: the counts and the lapsed blocks are gone
    now[0] += 305
    assert state.exchange(windows={"api": 301.0}, limits={"api": 5}, new={}, want={"api": 2}, leaving=True)
    doc = json.loads((tmp_path / "rate.json").read_text())
    assert doc["buckets"] == {"api": {}}
    assert doc["holders"] == {}


def test_hostile_or_broken_entries_are_ignored(tmp_path):
    path = tmp_path / "rate.json"
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "buckets": {"api": {"abc": 3, "1800000000": -4, "1800000001": True, "1800000002": 2}, "x": 7},
                "holders": {
                    "ok": {"claimed_at": 1_800_000_000.0, "interval": 2.0, "block": {"api": 3, "r": "x"}},
                    "nan": {"claimed_at": float("nan"), "interval": 2.0, "block": {}},
                    "zero": {"claimed_at": 1_800_000_000.0, "interval": 0, "block": {"api": 1}},
                    "list": [1, 2],
                },
            }
        )
    )
    state = RateStateFile(path, owner="me:1:a", wall=lambda: 1_800_000_001.0)
    result = state.exchange(windows={"api": 301.0}, limits={"api": 10}, new={}, want={"api": 10})
    assert result is not None
    assert result.history == {"api": [(1_800_000_002.0, 3), (1_800_000_003.0, 2)]}
    assert result.blocks == {"api": 5}
    state = RateStateFile(path, owner="me:1:a", wall=lambda: 1_800_000_001.0)
    path.write_text('{"version": 99}')
    assert state.exchange(windows={"api": 301.0}, limits={"api": 10}, new={}, want={"api": 1}) is not None
