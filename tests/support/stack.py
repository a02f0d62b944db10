"""Real `gpuboard worker` processes for end-to-end tests, and waiting on what the server
then holds."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

from prefect.client.schemas.objects import StateType

from gpuboard.core.prefect.client import async_client
from gpuboard.core.prefect.pool import read_pool_workers


class Children:
    """Processes a test starts, each in its own process group; all are killed at the end."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(
        self, command: list[str], env: dict[str, str], log: Path, cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            process = subprocess.Popen(
                command,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


async def wait_for_online(api_url: str, pool: str, names: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with async_client(api_url) as client:
            online = {w.name for w in await read_pool_workers(client, pool) if w.online}
        if names <= online:
            return
        await asyncio.sleep(1)
    raise AssertionError(f"workers {sorted(names - online)} did not come online")


async def wait_for_final_states(
    api_url: str, run_ids: list[uuid.UUID], timeout: float
) -> dict[uuid.UUID, StateType]:
    deadline = time.monotonic() + timeout
    states: dict[uuid.UUID, StateType] = {}
    while time.monotonic() < deadline:
        final = 0
        async with async_client(api_url) as client:
            for run_id in run_ids:
                state = (await client.read_flow_run(run_id)).state
                if state is not None:
                    states[run_id] = state.type
                    final += state.is_final()
        if final == len(run_ids):
            return states
        await asyncio.sleep(2)
    raise AssertionError(f"runs not finished after {timeout:.0f}s: {states}")


def processes_with_env(key: str, value: str) -> set[int]:
    """Pids of this user's processes whose environment has key=value (Linux /proc): what a
    test's stack left behind, whatever process group each put itself in."""
    needle = f"{key}={value}".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.add(int(entry.name))
    return found


def wait_for_line(log: Path, text: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait until `text` appears in `process`'s output file `log` (gpuboard up's status)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        if process.poll() is not None:
            break
        time.sleep(0.5)
    content = log.read_text(errors="replace") if log.exists() else ""
    raise AssertionError(f"no {text!r} in the output of gpuboard up:\n{content[-4000:]}")
