"""Process identities that can be checked after a crash: who holds a lease, or a share of the request budget.

A lease owner (and a rate-limit state entry) is ``host:pid:tag`` — the host name, the process id and a random
tag per worker instance. After a ``kill -9`` the owner's leases stay in the database until they expire (up to
``queue.lease``, 5 minutes by default). A restarted daemon on the same host can do better: if no process with
that pid is running any more, or the process that has that pid now started *after* the lease was taken (the
pid was reused — in a container the daemon is PID 1 at every start), the owner is certainly dead and its
leases can be reclaimed at once.

`owner_is_dead` only answers True when it is sure: another host, an unparseable owner, a process it cannot
inspect or a start time too close to call all count as alive, so the worst case is the old behaviour
(waiting for the lease), never two live workers on one item. Process start times come from ``/proc`` (Linux);
elsewhere only "no such process" counts as dead.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

__all__ = ["START_TIME_TOLERANCE_S", "OwnerId", "owner_is_dead", "process_owner", "process_started_at"]

START_TIME_TOLERANCE_S = 2.0
"""A process that started less than this after the lease was taken is assumed to be its holder: boot time in
``/proc/stat`` has one-second resolution, and a wrong "dead" would let two workers run one item."""

_PROC = Path("/proc")
_CREATED_HERE: set[str] = set()
"""Tags of the owners this process created: an owner with our pid and another tag is a previous process that
had the same pid (a container's PID 1 after a restart), whatever the clocks say."""


@dataclass(frozen=True, slots=True)
class OwnerId:
    """A parsed ``host:pid:tag`` owner."""

    host: str
    pid: int
    tag: str

    @classmethod
    def parse(cls, owner: str) -> OwnerId | None:
        """The parts of ``owner``, or None when it is not ``host:pid:tag`` (e.g. a test's ``"w"``)."""
        parts = owner.rsplit(":", 2)
        if len(parts) != 3 or not parts[0] or not parts[1].isdigit() or int(parts[1]) <= 0:
            return None
        return cls(parts[0], int(parts[1]), parts[2])

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}:{self.tag}"


def process_owner() -> str:
    """A new owner id for this process: ``host:pid:random`` (unique per worker, shown by ``queue list``)."""
    tag = uuid.uuid4().hex[:6]
    _CREATED_HERE.add(tag)
    return str(OwnerId(socket.gethostname(), os.getpid(), tag))


def process_started_at(pid: int) -> float | None:
    """Epoch seconds when process ``pid`` started, from ``/proc``; None if it does not exist or is a zombie.

    Raises:
        `OSError`: ``/proc`` is not available or not readable (not Linux): the caller cannot tell.
    """
    if not (_PROC / "self" / "stat").is_file():
        raise OSError(f"{_PROC} is not a Linux procfs; process start times are unknown")
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # "pid (comm) state ..." — comm may contain spaces and parentheses: split after the last ")"
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # killed but not reaped yet: it runs nothing any more
        return None
    ticks = int(fields[19])  # field 22 of the whole line: start time in clock ticks since boot
    boot = next(
        int(line.split()[1])
        for line in (_PROC / "stat").read_text().splitlines()
        if line.startswith("btime ")
    )
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def owner_is_dead(owner: str, *, held_since: datetime | None, host: str | None = None) -> bool:
    """True only if the process behind ``owner`` certainly no longer runs (see the module docstring).

    An owner with this process's pid is alive exactly when this process created it (`process_owner`).

    Args:
        owner (`str`): a ``host:pid:tag`` owner id.
        held_since (`datetime | None`): when the owner took what it holds (the lease's claim time); a
            process with the same pid that started after it is another process. None: pid check only.
        host (`str | None`): this host's name (default `socket.gethostname`); other hosts are never judged.
    """
    parsed = OwnerId.parse(owner)
    if parsed is None or parsed.host != (host or socket.gethostname()):
        return False
    if parsed.pid == os.getpid():
        return parsed.tag not in _CREATED_HERE
    try:
        started = process_started_at(parsed.pid)
    except (OSError, ValueError, IndexError, StopIteration):  # no usable /proc: fall back to "does it exist"
        return not _pid_exists(parsed.pid)
    if started is None:
        return True
    if held_since is None:
        return False
    return started > held_since.timestamp() + START_TIME_TOLERANCE_S


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True
