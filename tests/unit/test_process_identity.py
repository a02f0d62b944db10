"""ProcessIdentity tells a live process from a dead one, a reused PID and another machine."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time

import pytest

from gpuboard.core.process_identity import ProcessIdentity, is_running, this_process

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def identity_of(pid: int) -> ProcessIdentity:
    here = this_process()
    with open(f"/proc/{pid}/stat") as stat:
        ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
    return dataclasses.replace(here, pid=pid, start_ticks=ticks)


@linux_only
def test_this_process_is_running() -> None:
    assert is_running(this_process()) is True


@linux_only
def test_a_killed_process_is_not_running_even_before_it_is_reaped() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        identity = identity_of(child.pid)
        assert is_running(identity) is True
        child.kill()
        # Not reaped yet: a zombie holds no GPU memory and runs no code.
        assert _wait_until_not_running(identity)
    finally:
        child.kill()
        child.wait()
    assert is_running(identity) is False


@linux_only
def test_a_reused_pid_is_not_the_same_process() -> None:
    reused = dataclasses.replace(this_process(), start_ticks=(this_process().start_ticks or 0) + 1)
    assert is_running(reused) is False


def test_another_host_or_namespace_cannot_be_judged() -> None:
    here = this_process()
    assert is_running(dataclasses.replace(here, host=here.host + "-elsewhere")) is None
    assert is_running(dataclasses.replace(here, pid_namespace="pid:[1]")) is None
    assert is_running(dataclasses.replace(here, pid_namespace="")) is None
    assert is_running(dataclasses.replace(here, start_ticks=None)) is None


def _wait_until_not_running(identity: ProcessIdentity) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if is_running(identity) is False:
            return True
        time.sleep(0.02)
    return False
