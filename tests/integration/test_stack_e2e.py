"""End to end: real Prefect server, real `gpuboard worker` processes, real OCR flow runs.

The acceptance test of the pipeline: 12 sample images on 2 workers whose GPU slots are
limited to 2 each. And `gpuboard up --headless`: it starts a stack, a second `up` reuses
it, and each stops exactly the processes it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.client.schemas.objects import StateType

from gpuboard.core.batch import submit_batch
from gpuboard.core.config import gcl_name
from gpuboard.core.images import sample_text
from gpuboard.core.local_server import LocalServer, api_is_healthy
from gpuboard.core.prefect.client import async_client
from gpuboard.core.prefect.deploy import deploy_process_image
from gpuboard.core.prefect.gcl import read_gcl
from gpuboard.core.prefect.pool import ensure_work_pool, read_pool_workers
from gpuboard.core.project import find_project_dir
from support.intervals import max_overlap
from support.stack import (
    Children,
    processes_with_env,
    wait_for_final_states,
    wait_for_line,
    wait_for_online,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

GPU_SLOTS = 2
IMAGES = 12


def test_max_overlap_counts_touching_intervals_as_apart() -> None:
    assert max_overlap([(0, 1), (1, 2), (2, 3)]) == 1
    assert max_overlap([(0, 3), (1, 2), (1.5, 4)]) == 3


async def test_twelve_sample_runs_on_two_workers_hold_each_gpu_limit(
    prefect_server: LocalServer, children: Children, tmp_path: Path
) -> None:
    api_url = prefect_server.api_url
    suffix = uuid.uuid4().hex[:6]
    # A pool and workers of its own: no other test's runs reach these workers.
    pool = f"e2e-{suffix}"
    workers = [f"e2e-{suffix}-{n}" for n in (1, 2)]
    results = tmp_path / "results"
    async with async_client(api_url) as client:
        await ensure_work_pool(client, pool)
    deploy_process_image(find_project_dir(), api_url, pool=pool)

    env = {**os.environ, "PREFECT_API_URL": api_url, "GPUBOARD_RESULTS_DIR": str(results)}
    for worker in workers:
        # --runs 4: more runs at once than GPU slots, so runs really wait for a slot.
        command = [sys.executable, "-m", "gpuboard", "worker", "--id", worker, "--pool", pool]
        command += ["--api-url", api_url, "--gpu-slots", str(GPU_SLOTS), "--runs", "4"]
        children.start(command, env, tmp_path / f"{worker}.log")
    await wait_for_online(api_url, pool, set(workers), timeout=120)
    async with async_client(api_url) as client:
        for worker in workers:  # `gpuboard worker` made them
            gcl = await read_gcl(client, gcl_name(worker))
            assert gcl is not None and gcl.limit == GPU_SLOTS

    started = time.monotonic()
    report = await submit_batch(range(1, IMAGES + 1), batch=f"e2e-{suffix}", api_url=api_url)
    assert len(report.created) == IMAGES and report.ok
    states = await wait_for_final_states(api_url, report.flow_run_ids, timeout=480)
    elapsed = time.monotonic() - started
    logs = "\n".join((tmp_path / f"{w}.log").read_text()[-3000:] for w in workers)
    assert set(states.values()) == {StateType.COMPLETED}, f"{states}\n{logs}"

    records = [json.loads((results / f"{i}.json").read_text()) for i in range(1, IMAGES + 1)]
    hosts: dict[str, set[tuple[int, float]]] = {w: set() for w in workers}
    for record in records:
        assert record["text"] == sample_text(record["image_id"])
        execution = record["execution"]
        # The GPU step went to the worker's inference host; the flow-run process never
        # imported the model stack.
        assert execution["mode"] == "inference-host", execution
        assert execution["flow_process"]["onnxruntime_imported"] is False
        assert execution["flow_process"]["rapidocr_imported"] is False
        assert record["timings"]["model_load_s"] == 0.0
        hosts[record["worker"]].add((execution["host_pid"], execution["host_started_at"]))
    # The model was loaded once per worker for the whole batch.
    assert all(len(loads) == 1 for loads in hosts.values()), hosts
    # Waiting for a slot is not failure: no ERROR line, no traceback in the workers' logs.
    for worker in workers:
        log = (tmp_path / f"{worker}.log").read_text(errors="replace")
        bad = [line for line in log.splitlines() if "ERROR" in line or "Traceback" in line]
        assert not bad, f"{worker}: {bad[:5]}"
    by_worker: dict[str, list[tuple[float, float]]] = {w: [] for w in workers}
    for record in records:
        timings = record["timings"]
        by_worker[record["worker"]].append(
            (timings["inference_started_at"], timings["inference_ended_at"])
        )
    for worker, intervals in by_worker.items():
        assert intervals, f"worker {worker} did no work"
        assert max_overlap(intervals) <= GPU_SLOTS, f"{worker} ran more than {GPU_SLOTS} at once"
    print(
        f"{IMAGES} runs on 2 workers in {elapsed:.1f}s; per worker: "
        + ", ".join(f"{w} {len(i)} (max {max_overlap(i)} at once)" for w, i in by_worker.items())
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def marker() -> Iterator[str]:
    """A value for GPUBOARD_TEST_STACK: every process an `up` starts inherits it. Whatever
    still carries it after the test is killed, whether the test passed or not."""
    value = uuid.uuid4().hex[:8]
    yield value
    for tag in (f"first-{value}", f"second-{value}"):
        for pid in processes_with_env("GPUBOARD_TEST_STACK", tag):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_up_headless_starts_reuses_and_stops_exactly_its_own(
    children: Children, marker: str, tmp_path: Path
) -> None:
    api_url = f"http://127.0.0.1:{_free_port()}/api"
    home = tmp_path / "home"
    command = [sys.executable, "-m", "gpuboard", "up", "--headless", "--refresh", "1"]
    command += ["--workers", "2"]
    env = {**os.environ, "PREFECT_API_URL": api_url, "GPUBOARD_HOME": str(home)}
    first_tag, second_tag = f"first-{marker}", f"second-{marker}"
    first_log, second_log = tmp_path / "up-1.log", tmp_path / "up-2.log"

    first = children.start(command, {**env, "GPUBOARD_TEST_STACK": first_tag}, first_log)
    wait_for_line(first_log, "workers 2/2 online", first, timeout=240)
    state = json.loads((home / "stacks" / f"up-{first.pid}.json").read_text())
    assert state["server_pid"] and sorted(state["workers"]) == ["gpu-1", "gpu-2"]
    # The server, 2 `gpuboard worker`s and their 2 Prefect workers; `up` itself aside.
    ours = processes_with_env("GPUBOARD_TEST_STACK", first_tag) - {first.pid}
    assert len(ours) >= 5, ours

    second = children.start(command, {**env, "GPUBOARD_TEST_STACK": second_tag}, second_log)
    wait_for_line(second_log, "workers 2/2 online", second, timeout=120)
    text = second_log.read_text()
    assert "Prefect server answers" in text and text.count("already online") == 2
    assert "started worker" not in text
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=60) == 0
    assert processes_with_env("GPUBOARD_TEST_STACK", second_tag) == set()
    # The second `up` stopped nothing of the first.
    assert api_is_healthy(api_url)
    assert ours <= processes_with_env("GPUBOARD_TEST_STACK", first_tag)

    first.send_signal(signal.SIGINT)  # Ctrl-C
    assert first.wait(timeout=90) == 0
    assert processes_with_env("GPUBOARD_TEST_STACK", first_tag) == set()
    assert not api_is_healthy(api_url)
    assert list((home / "stacks").iterdir()) == []


def _descendants(pid: int) -> list[int]:
    """`pid` and every process below it (Linux /proc), children before their parents die."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(children.get(current, []))
    return found


async def test_a_killed_worker_restarted_takes_up_its_queued_runs_again(
    prefect_server: LocalServer, children: Children, tmp_path: Path
) -> None:
    """The whole worker (gpuboard worker, Prefect worker, its flow runs) SIGKILLed as by a
    machine's OOM killer, with runs queued, Pending and Running; `gpuboard worker` started
    again under the same id. What was queued or left Pending completes; what was Running is
    flagged at once from this machine (its process is gone) for the operator to mark."""
    from gpuboard.core.reclaim import find_stale_runs

    api_url = prefect_server.api_url
    suffix = uuid.uuid4().hex[:6]
    pool, worker = f"restart-{suffix}", f"restart-{suffix}"
    async with async_client(api_url) as client:
        await ensure_work_pool(client, pool)
    deploy_process_image(find_project_dir(), api_url, pool=pool)
    env = {**os.environ, "PREFECT_API_URL": api_url, "GPUBOARD_RESULTS_DIR": str(tmp_path)}
    command = [sys.executable, "-m", "gpuboard", "worker", "--id", worker, "--pool", pool]
    command += ["--api-url", api_url, "--gpu-slots", "1", "--runs", "2"]
    # A process per run: a warm runner finishes a sample image in about a second, too
    # soon to be caught Running by this test (warm runners killed: test_warm_executor).
    command += ["--executor", "process"]
    first = children.start(command, env, tmp_path / "first.log")
    await wait_for_online(api_url, pool, {worker}, timeout=120)

    report = await submit_batch(range(1, 7), batch=f"restart-{suffix}", api_url=api_url)
    assert len(report.created) == 6

    async def states() -> dict[uuid.UUID, StateType]:
        async with async_client(api_url) as client:
            found = {}
            for run_id in report.flow_run_ids:
                state = (await client.read_flow_run(run_id)).state
                if state is not None:
                    found[run_id] = state.type
            return found

    # Killed once a run is Running (the others Pending or Scheduled), before any finished.
    deadline = time.monotonic() + 120
    while StateType.RUNNING not in set((await states()).values()):
        assert time.monotonic() < deadline, "the worker never took a run"
        await asyncio.sleep(0.2)
    for pid in _descendants(first.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    first.wait(timeout=10)
    at_kill = await states()
    running = {run for run, state in at_kill.items() if state == StateType.RUNNING}
    async with async_client(api_url) as client:
        # Restarted at once, as a supervisor would: the dead worker still counts online,
        # but its recorded process is seen dead, so its Pending runs go back at once.
        assert any(w.online for w in await read_pool_workers(client, pool) if w.name == worker)
        stale = await find_stale_runs(client, 3600, work_pool=pool, local_workers={worker})
    flagged = {run.flow_run.id for run in stale.stale if run.process_gone}
    assert running and flagged >= running, f"Running at the kill {running}, flagged {flagged}"

    restarted = time.monotonic()
    children.start(command, env, tmp_path / "second.log")
    queued = [run for run in report.flow_run_ids if run not in running]
    finished = await wait_for_final_states(api_url, queued, timeout=300)
    log = (tmp_path / "second.log").read_text(errors="replace")
    assert set(finished.values()) == {StateType.COMPLETED}, f"{finished}\n{log[-3000:]}"
    print(
        f"\nstates at the kill: {sorted(s.value for s in at_kill.values())}; "
        f"{len(queued)} queued/Pending runs completed {time.monotonic() - restarted:.0f} s "
        f"after the restart; {len(running)} Running flagged stale at once"
    )


def _host_pid(worker: str) -> int | None:
    """The pid of `worker`'s inference host, from /proc."""
    for entry in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            argv = entry.read_bytes().split(b"\0")
            if b"gpuboard.inference_host" in argv and worker.encode() in argv:
                return int(entry.parent.name)
    return None


async def test_a_killed_inference_host_is_restarted_and_every_run_completes(
    prefect_server: LocalServer, children: Children, tmp_path: Path
) -> None:
    """SIGKILL the worker's inference host in the middle of a batch: `gpuboard worker`
    releases the slots it held and starts it again; the GPU steps it was serving fail
    with HostLost and are retried; every run completes, none twice."""
    api_url = prefect_server.api_url
    suffix = uuid.uuid4().hex[:6]
    pool, worker = f"hostkill-{suffix}", f"hostkill-{suffix}"
    async with async_client(api_url) as client:
        await ensure_work_pool(client, pool)
    deploy_process_image(find_project_dir(), api_url, pool=pool)
    results = tmp_path / "results"
    env = {**os.environ, "PREFECT_API_URL": api_url, "GPUBOARD_RESULTS_DIR": str(results)}
    command = [sys.executable, "-m", "gpuboard", "worker", "--id", worker, "--pool", pool]
    command += ["--api-url", api_url, "--gpu-slots", "2", "--runs", "3"]
    log_path = tmp_path / "worker.log"
    children.start(command, env, log_path)
    await wait_for_online(api_url, pool, {worker}, timeout=120)
    report = await submit_batch(range(1, 9), batch=f"hostkill-{suffix}", api_url=api_url)

    async def active() -> int:
        async with async_client(api_url) as client:
            gcl = await read_gcl(client, gcl_name(worker))
        assert gcl is not None
        return gcl.active_slots

    deadline = time.monotonic() + 180
    while await active() == 0:  # killed while it holds a slot for a run
        assert time.monotonic() < deadline, "the host never took a slot"
        await asyncio.sleep(0.05)
    first = _host_pid(worker)
    assert first is not None
    os.kill(first, signal.SIGKILL)
    killed = time.monotonic()
    states = await wait_for_final_states(api_url, report.flow_run_ids, timeout=400)
    log = log_path.read_text(errors="replace")
    assert set(states.values()) == {StateType.COMPLETED}, f"{states}\n{log[-3000:]}"
    assert "was killed by SIGKILL" in log and "restarting in" in log
    records = [json.loads((results / f"{i}.json").read_text()) for i in range(1, 9)]
    assert [r["text"] for r in records] == [sample_text(i) for i in range(1, 9)]
    assert {r["execution"]["host_pid"] for r in records} - {first}  # the new host served
    assert await active() == 0
    print(f"\nhost killed; the 8 runs completed {time.monotonic() - killed:.0f} s later")
