"""Outages against real Prefect servers: the board's server goes away and comes back, and a
worker killed hard is started again with work queued for it.

No mocks: real `prefect server` processes, a real `gpuboard worker` and real flow runs;
only NVML is faked for the board.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.client.schemas.objects import StateType

from fakes.fake_nvml import FakeNvml
from gpuboard.core.batch import submit_batch
from gpuboard.core.board_source import BoardSource
from gpuboard.core.local_server import LocalServer, api_is_healthy
from gpuboard.core.nvml_source import NvmlSource
from gpuboard.core.prefect.client import async_client
from gpuboard.core.prefect.deploy import deploy_process_image
from gpuboard.core.prefect.gcl import set_gcl_limit
from gpuboard.core.prefect.poll_client import poll_client
from gpuboard.core.prefect.pool import ensure_work_pool, read_pool_workers
from gpuboard.core.project import find_project_dir
from gpuboard.tui.app import GpuBoardApp
from gpuboard.tui.widgets.banner import Banner
from gpuboard.tui.widgets.workers_table import WorkersTable
from support.pilot import until
from support.seeding import create_gcl, create_pool, free_port, heartbeat, unique

# -- the board's own server stops and starts again ------------------------------------------


def slots_cell(app: GpuBoardApp, worker: str) -> str:
    """The worker's `slots` cell as shown, e.g. `██░ 1/3`."""
    table = app.query_one(WorkersTable)
    cells = dict(
        zip(
            (str(column.key.value) for column in table.ordered_columns),
            (str(cell) for cell in table.get_row(worker)),
            strict=True,
        )
    )
    return cells["slots"].strip()


def slots_of(app: GpuBoardApp, worker: str) -> tuple[int | None, int | None]:
    """(active slots, limit) of `worker` in the board's current snapshot."""
    view = app.snapshot.worker(worker) if app.snapshot is not None else None
    return (None, None) if view is None else (view.active_slots, view.limit)


async def test_board_recovers_when_its_server_stops_and_starts_again(tmp_path: Path) -> None:
    # A server of its own: stopping the session's server would break every other test.
    home, port = tmp_path / "server", free_port()
    server = LocalServer(home=home, port=port)
    server.start()
    pool, worker = unique("outage"), "gpu-o"
    gcl = f"gpu:{worker}"
    try:
        async with poll_client(server.api_url) as client:
            await create_pool(client, pool)
            await heartbeat(client, pool, worker)
            await create_gcl(client, gcl, 3, active_slots=1)
        source = BoardSource(
            pool, server.api_url, nvml=NvmlSource(FakeNvml(init_error=12), host="board-host")
        )
        app = GpuBoardApp(source, pool=pool, api_url=server.api_url, refresh=0.3)
        async with app.run_test(size=(100, 30)) as pilot:
            banner = app.query_one(Banner)
            panel = app.query_one("#workers-panel")
            await until(pilot, lambda: slots_of(app, worker) == (1, 3), timeout=30)
            assert app.snapshot is not None and not app.snapshot.stale
            assert not banner.has_class("-visible")
            assert slots_cell(app, worker).endswith("1/3")

            # Stopped in a thread: the board keeps polling while the server goes.
            await asyncio.to_thread(server.stop)
            assert not api_is_healthy(server.api_url)
            await until(pilot, lambda: banner.has_class("-visible"), timeout=30)
            snapshot = app.snapshot
            assert snapshot is not None and snapshot.stale and not snapshot.connected
            assert "unreachable" in str(banner.render()).lower()
            assert banner.has_class("-unreachable") and panel.has_class("-stale")
            # The last data stays, on screen and in the snapshot.
            assert slots_of(app, worker) == (1, 3)
            assert slots_cell(app, worker).endswith("1/3")
            # Still stale after more refreshes against a dead port (not a one-off).
            await pilot.pause(1.5)
            assert app.snapshot is not None and app.snapshot.stale
            assert banner.has_class("-visible") and slots_of(app, worker) == (1, 3)

            # Same home (same database), same port: the board was never told anything.
            restarted = LocalServer(home=home, port=port)
            server = restarted
            starting = time.monotonic()
            await asyncio.to_thread(restarted.start)
            answering = time.monotonic()
            await until(pilot, lambda: not banner.has_class("-visible"), timeout=60)
            live = time.monotonic()
            snapshot = app.snapshot
            assert snapshot is not None and snapshot.connected and not snapshot.stale
            assert not panel.has_class("-stale")
            assert slots_of(app, worker) == (1, 3)  # the database survived the restart

            # Data is current: a change made on the restarted server reaches the board.
            async with poll_client(restarted.api_url) as client:
                await heartbeat(client, pool, worker)
                await set_gcl_limit(client, gcl, 5)
            changed = time.monotonic()
            await until(pilot, lambda: slots_of(app, worker) == (1, 5), timeout=30)
            seen = time.monotonic()
            assert slots_cell(app, worker).endswith("1/5")
            assert app.snapshot is not None and not app.snapshot.stale
            assert not banner.has_class("-visible")
            # Recorded, never asserted beyond the generous timeouts above.
            print(
                f"\nserver restart took {answering - starting:.1f} s; board live again "
                f"{live - answering:.1f} s after the server answered; a limit change on the "
                f"restarted server shown {seen - changed:.1f} s after it was made"
            )
    finally:
        server.stop()


# -- a worker killed hard, started again with runs queued -----------------------------------


class Children:
    """Processes this test starts, each in its own session; all are killed at the end."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            process = subprocess.Popen(
                command,
                env=env,
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


@pytest.fixture
def children() -> Iterator[Children]:
    started = Children()
    try:
        yield started
    finally:
        started.stop_all()


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (Linux /proc)."""
    below: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            below.setdefault(ppid, []).append(int(stat.parent.name))
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(below.get(current, []))
    return found


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


async def run_states(api_url: str, run_ids: list[uuid.UUID]) -> dict[uuid.UUID, StateType]:
    async with async_client(api_url) as client:
        found = {}
        for run_id in run_ids:
            state = (await client.read_flow_run(run_id)).state
            if state is not None:
                found[run_id] = state.type
        return found


async def wait_for_final_states(
    api_url: str, run_ids: list[uuid.UUID], timeout: float
) -> dict[uuid.UUID, StateType]:
    deadline = time.monotonic() + timeout
    states: dict[uuid.UUID, StateType] = {}
    while time.monotonic() < deadline:
        states = await run_states(api_url, run_ids)
        if len(states) == len(run_ids) and all(
            s in (StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED)
            for s in states.values()
        ):
            return states
        await asyncio.sleep(1)
    raise AssertionError(f"runs not finished after {timeout:.0f}s: {states}")


async def wait_for_online(api_url: str, pool: str, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with async_client(api_url) as client:
            if any(w.online for w in await read_pool_workers(client, pool) if w.name == name):
                return
        await asyncio.sleep(1)
    raise AssertionError(f"worker {name} did not come online in {timeout:.0f}s")


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
async def test_a_killed_worker_restarted_picks_up_queued_work(
    prefect_server: LocalServer, children: Children, tmp_path: Path
) -> None:
    """`gpuboard worker` and its Prefect worker SIGKILLed after doing work; runs submitted
    while it is dead stay Scheduled; the worker started again at once under the same id
    (its dead self still counts online for a while) completes every one of them."""
    api_url = prefect_server.api_url
    suffix = uuid.uuid4().hex[:6]
    pool, worker = f"outage-{suffix}", f"outage-{suffix}"
    async with async_client(api_url) as client:
        await ensure_work_pool(client, pool)
    deploy_process_image(find_project_dir(), api_url, pool=pool)
    env = {**os.environ, "PREFECT_API_URL": api_url, "GPUBOARD_RESULTS_DIR": str(tmp_path)}
    # The way `gpuboard up` starts its workers.
    command = [sys.executable, "-m", "gpuboard", "worker", "--id", worker, "--pool", pool]
    command += ["--api-url", api_url, "--gpu-slots", "1", "--runs", "2"]
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    first = children.start(command, env, first_log)
    await wait_for_online(api_url, pool, worker, timeout=120)

    # The first life works: one run through the whole pipeline.
    before = await submit_batch([1], batch=f"before-{suffix}", api_url=api_url)
    assert len(before.created) == 1 and before.ok
    done = await wait_for_final_states(api_url, before.flow_run_ids, timeout=180)
    log = first_log.read_text(errors="replace")[-3000:]
    assert set(done.values()) == {StateType.COMPLETED}, f"{done}\n{log}"

    # SIGKILL, as the OOM killer would: `gpuboard worker`, its process group and the
    # Prefect worker (in a session of its own) with anything below it.
    tree = descendants(first.pid)
    assert len(tree) >= 2, f"no Prefect worker under gpuboard worker: {tree}"
    with contextlib.suppress(ProcessLookupError):
        os.killpg(first.pid, signal.SIGKILL)
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert first.wait(timeout=10) == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in tree):
        assert time.monotonic() < deadline, [p for p in tree if alive(p)]
        await asyncio.sleep(0.2)

    # Runs submitted while no worker lives: nothing may take them.
    queued_report = await submit_batch(range(2, 5), batch=f"queued-{suffix}", api_url=api_url)
    assert len(queued_report.created) == 3 and queued_report.ok
    queued = queued_report.flow_run_ids
    await asyncio.sleep(6)  # three polls' worth of a live worker (2 s each)
    at_restart = await run_states(api_url, queued)
    assert set(at_restart.values()) == {StateType.SCHEDULED}, at_restart

    restarted = time.monotonic()
    children.start(command, env, second_log)
    finished = await wait_for_final_states(api_url, queued, timeout=300)
    elapsed = time.monotonic() - restarted
    log = second_log.read_text(errors="replace")[-3000:]
    assert set(finished.values()) == {StateType.COMPLETED}, f"{finished}\n{log}"
    for image_id in (2, 3, 4):
        assert (tmp_path / f"{image_id}.json").exists()
    print(
        f"\n{len(queued)} runs queued while the worker was dead completed "
        f"{elapsed:.1f} s after its restart"
    )
