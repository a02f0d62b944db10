"""Names one OS process so that another process can later tell, exactly, whether it still runs.

A PID alone is not enough: PIDs are reused, and the same number means another process in
another PID namespace (a container) or on another machine. So an identity also carries the
host, the PID namespace and the process's start time; a check answers "running", "not
running" or "cannot tell from here", never a guess.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")


@dataclass(frozen=True)
class ProcessIdentity:
    """One process: where it runs, its PID, and what tells it from a later one with that PID."""

    host: str
    pid: int
    pid_namespace: str  # e.g. "pid:[4026531836]"; "" where the OS does not say (no /proc)
    start_ticks: int | None  # start time in clock ticks since boot; None where unknown


def this_process() -> ProcessIdentity:
    """The identity of the calling process."""
    pid = os.getpid()
    return ProcessIdentity(
        host=socket.gethostname(),
        pid=pid,
        pid_namespace=_pid_namespace(),
        start_ticks=_start_ticks(pid),
    )


def is_running(identity: ProcessIdentity) -> bool | None:
    """True or False when this process can see `identity`'s process; None when it cannot.

    It can only where it shares the host and the PID namespace and /proc is readable
    (Linux). A zombie (killed, not yet reaped by its parent) counts as not running: it
    holds no memory and runs no code.
    """
    here = this_process()
    if (
        not identity.pid_namespace
        or identity.start_ticks is None
        or here.start_ticks is None
        or identity.host != here.host
        or identity.pid_namespace != here.pid_namespace
    ):
        return None
    stat = _stat_fields(identity.pid)
    if stat is None:
        return False
    state, start_ticks = stat
    # Another start time means the PID was reused by a later process.
    return start_ticks == identity.start_ticks and state not in ("Z", "X")


def started_at(pid: int) -> float | None:
    """When process `pid` of this machine started (epoch seconds, to about 1 s: /proc's boot
    time is whole seconds); None when there is no such live process (or no /proc)."""
    stat = _stat_fields(pid)
    boot = _boot_time()
    if stat is None or boot is None or stat[0] in ("Z", "X"):
        return None
    return boot + stat[1] / os.sysconf("SC_CLK_TCK")


def _boot_time() -> float | None:
    try:
        for line in (_PROC / "stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def pid_namespace() -> str:
    """This process's PID namespace, e.g. "pid:[4026531836]"; "" where the OS does not say."""
    return _pid_namespace()


def _pid_namespace() -> str:
    try:
        return os.readlink(_PROC / "self" / "ns" / "pid")
    except OSError:
        return ""


def _start_ticks(pid: int) -> int | None:
    stat = _stat_fields(pid)
    return None if stat is None else stat[1]


def _stat_fields(pid: int) -> tuple[str, int] | None:
    """(state, start time in ticks) of `pid` from /proc/<pid>/stat; None when it is gone."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ')': split after
    # the last ')'. What follows starts at field 3 (state); starttime is field 22.
    rest = text[text.rfind(")") + 2 :].split()
    try:
        return rest[0], int(rest[19])
    except (IndexError, ValueError):
        return None
