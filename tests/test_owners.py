"""Owner ids and the liveness check that lets a restarted daemon reclaim a dead process's leases at once."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

from monitor.owners import OwnerId, owner_is_dead, process_owner, process_started_at

HOST = socket.gethostname()


def test_owner_ids_parse_and_are_unique() -> None:
    owner = process_owner()
    parsed = OwnerId.parse(owner)
    assert parsed is not None
    assert (parsed.host, parsed.pid, str(parsed)) == (HOST, os.getpid(), owner)
    assert process_owner() != owner
    for bad in ("w", "ghost", "host:notapid:tag", "host:0:tag", ":12:tag", ""):
        assert OwnerId.parse(bad) is None


def test_this_process_and_its_own_owners() -> None:
    started = process_started_at(os.getpid())
    assert started is not None
    assert started <= time.time() + 1
    owner = process_owner()
    long_ago = datetime.now(UTC) - timedelta(days=365)
    assert not owner_is_dead(owner, held_since=long_ago)  # our own worker, whatever the clocks say
    # same pid, a tag this process never created: a previous process that had our pid (a container's PID 1)
    assert owner_is_dead(f"{HOST}:{os.getpid()}:zzzzzz", held_since=datetime.now(UTC))


def test_a_finished_process_is_dead_a_running_one_is_not() -> None:
    done = subprocess.run([sys.executable, "-c", "pass"], check=True)
    assert done.returncode == 0
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    claimed = datetime.now(UTC) - timedelta(seconds=5)
    assert process_started_at(finished.pid) is None
    assert owner_is_dead(f"{HOST}:{finished.pid}:abc123", held_since=claimed)
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.1)
        # it holds a lease it took after it started: alive
        assert not owner_is_dead(f"{HOST}:{running.pid}:abc123", held_since=datetime.now(UTC))
        # a lease taken an hour before this process started: the pid was reused, its holder is dead
        assert owner_is_dead(
            f"{HOST}:{running.pid}:abc123", held_since=datetime.now(UTC) - timedelta(hours=1)
        )
        # without a claim time only "no such process" counts
        assert not owner_is_dead(f"{HOST}:{running.pid}:abc123", held_since=None)
    finally:
        running.kill()
        running.wait()


def test_zombies_are_dead_and_other_hosts_are_never_judged() -> None:
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # exited but not reaped yet
        with open(f"/proc/{zombie.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.02)
    try:
        assert process_started_at(zombie.pid) is None
        assert owner_is_dead(f"{HOST}:{zombie.pid}:abc123", held_since=datetime.now(UTC))
    finally:
        zombie.wait()
    assert not owner_is_dead("another-host:999999:abc123", held_since=datetime.now(UTC))
    assert not owner_is_dead("w", held_since=datetime.now(UTC))
