"""Drain with real `gpuboard worker` processes: two workers of one pool, one drained
while it runs a run. Its run completes there, a queued run goes to the other worker, the
drain holds across a restart of the drained worker, the reasons say why runs wait (a
worker at its flow-run limit, no worker online), and undrain makes it take runs again."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from prefect.client.schemas.objects import StateType

from gpuboard.core.drain import drain_worker, undrain_worker
from gpuboard.core.local_server import LocalServer
from gpuboard.core.prefect.client import async_client
from gpuboard.core.prefect.pool import ensure_work_pool
from gpuboard.core.status import read_snapshot
from gpuboard.core.why_run import why_run
from support.stack import Children, wait_for_final_states, wait_for_online

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

FLOWS = Path(__file__).resolve().parents[1] / "support" / "flows"
WORKER_LABEL = "prefect.worker.name"


def start_worker(
    children: Children, api_url: str, pool: str, worker: str, tmp_path: Path
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PREFECT_API_URL": api_url, "GPUBOARD_RESULTS_DIR": str(tmp_path)}
    command = [sys.executable, "-m", "gpuboard", "worker", "--id", worker, "--pool", pool]
    command += ["--api-url", api_url, "--gpu-slots", "1", "--runs", "1"]
    command += ["--inference-threads", "1"]
    return children.start(command, env, tmp_path / f"{worker}.log")


def stop(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=60)


async def sleepy_deployment(api_url: str, pool: str) -> uuid.UUID:
    async with async_client(api_url) as client:
        flow_id = await client.create_flow_from_name("sleepy")
        return await client.create_deployment(
            flow_id=flow_id,
            name=f"sleepy-{uuid.uuid4().hex[:6]}",
            work_pool_name=pool,
            entrypoint="sleepy.py:sleepy",
            path=str(FLOWS),
        )


async def run(api_url: str, deployment: uuid.UUID, seconds: float) -> uuid.UUID:
    async with async_client(api_url) as client:
        created = await client.create_flow_run_from_deployment(
            deployment, parameters={"seconds": seconds}
        )
    return created.id


async def running_on(api_url: str, run_id: uuid.UUID, timeout: float = 120) -> str:
    """Wait until the run is Running; the worker that took it."""
    deadline = time.monotonic() + timeout
    while True:
        async with async_client(api_url) as client:
            flow_run = await client.read_flow_run(run_id)
        if flow_run.state_type == StateType.RUNNING:
            return str((flow_run.labels or {})[WORKER_LABEL])
        assert time.monotonic() < deadline, f"{run_id} never ran: {flow_run.state_name}"
        await asyncio.sleep(0.5)


async def worker_of(api_url: str, run_id: uuid.UUID) -> str:
    async with async_client(api_url) as client:
        flow_run = await client.read_flow_run(run_id)
    return str((flow_run.labels or {}).get(WORKER_LABEL))


async def drain_state(api_url: str, pool: str, worker: str) -> str | None:
    snapshot = await read_snapshot(pool, api_url)
    view = snapshot.worker(worker)
    assert view is not None, snapshot.workers
    return view.drain_state


async def becomes_drained(api_url: str, pool: str, worker: str, timeout: float = 60) -> None:
    """DRAINED once its runs have ended and its runners said they are idle (published
    on change, read from the server's events: seconds after the run's end)."""
    deadline = time.monotonic() + timeout
    while (state := await drain_state(api_url, pool, worker)) != "DRAINED":
        assert state == "DRAINING" and time.monotonic() < deadline, state
        await asyncio.sleep(1)


async def test_drain_moves_queued_work_and_lets_the_running_run_finish(
    prefect_server: LocalServer, children: Children, tmp_path: Path
) -> None:
    api_url = prefect_server.api_url
    tag = uuid.uuid4().hex[:6]
    pool, one, two = f"drain-{tag}", f"one-{tag}", f"two-{tag}"
    async with async_client(api_url) as client:
        await ensure_work_pool(client, pool)
    processes = {w: start_worker(children, api_url, pool, w, tmp_path) for w in (one, two)}
    await wait_for_online(api_url, pool, {one, two}, timeout=180)
    deployment = await sleepy_deployment(api_url, pool)

    # A long run on one worker; drain that worker while it runs.
    long_run = await run(api_url, deployment, 25)
    drained = await running_on(api_url, long_run)
    other = two if drained == one else one
    outcome = await drain_worker(drained, pool=pool, api_url=api_url)
    assert outcome.changed and outcome.runs == 1 and f"go to {other}" in outcome.message
    assert await drain_state(api_url, pool, drained) == "DRAINING"

    # A queued run goes to the other worker; the drained worker's run completes there.
    short_run = await run(api_url, deployment, 1)
    states = await wait_for_final_states(api_url, [short_run, long_run], timeout=180)
    assert set(states.values()) == {StateType.COMPLETED}
    assert await worker_of(api_url, short_run) == other
    assert await worker_of(api_url, long_run) == drained
    await becomes_drained(api_url, pool, drained)

    # The drain holds across a restart of the drained worker.
    stop(processes[drained])
    processes[drained] = start_worker(children, api_url, pool, drained, tmp_path)
    await wait_for_online(api_url, pool, {drained, other}, timeout=180)
    busy_run = await run(api_url, deployment, 30)
    assert await running_on(api_url, busy_run) == other
    waiting_run = await run(api_url, deployment, 1)
    # The other worker is full (--runs 1) and the drained one takes none: the reason says so.
    answer = await why_run(str(waiting_run), api_url=api_url)
    assert answer.reason is not None and answer.reason.code == "worker_at_run_limit", answer
    await becomes_drained(api_url, pool, drained)

    # Undrained, it takes the waiting run while the other worker is still busy.
    await undrain_worker(drained, pool=pool, api_url=api_url)
    assert await running_on(api_url, waiting_run) == drained
    states = await wait_for_final_states(api_url, [waiting_run, busy_run], timeout=180)
    assert set(states.values()) == {StateType.COMPLETED}

    # With every worker stopped, a queued run waits for lack of a worker online.
    for process in processes.values():
        stop(process)
    lonely_run = await run(api_url, deployment, 1)
    answer = await why_run(str(lonely_run), api_url=api_url)
    assert answer.reason is not None and answer.reason.code == "no_worker_online", answer
