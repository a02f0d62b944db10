"""The warm executor (`gpuboard worker --executor warm`) against a real Prefect server:
what Prefect users rely on still holds. A run's states, logs and result are those of the
process worker; cancelling a Running run kills only its runner and the next run starts on
a fresh one; a runner SIGKILLed mid-run leaves its run Crashed at once and the queue goes
on; a worker stopped with runs running and queued loses none of them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import pytest
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import StateType
from prefect.states import Cancelling

from gpuboard.core.batch import submit_batch
from gpuboard.core.local_server import LocalServer
from gpuboard.core.prefect.client import async_client
from gpuboard.core.prefect.deploy import deploy_process_image
from gpuboard.core.prefect.pool import ensure_work_pool
from gpuboard.core.project import find_project_dir
from support.stack import Children, wait_for_final_states, wait_for_online

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

FLOWS = Path(__file__).resolve().parents[1] / "support" / "flows"


async def start_worker(
    children: Children,
    api_url: str,
    tmp_path: Path,
    executor: str,
    runs: int = 2,
    extra_env: dict[str, str] | None = None,
) -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:6]
    pool, worker = f"{executor}-{suffix}", f"{executor}-{suffix}"
    async with async_client(api_url) as client:
        await ensure_work_pool(client, pool)
    env = {**os.environ, "PREFECT_API_URL": api_url, "GPUBOARD_RESULTS_DIR": str(tmp_path)}
    env.update(extra_env or {})
    command = [sys.executable, "-m", "gpuboard", "worker", "--id", worker, "--pool", pool]
    command += ["--api-url", api_url, "--gpu-slots", "1", "--runs", str(runs)]
    command += ["--executor", executor, "--inference-threads", "1"]
    # Started outside the checkout, in a folder of its own that its runs must leave alone.
    (tmp_path / "worker-cwd").mkdir(exist_ok=True)
    children.start(command, env, tmp_path / f"{worker}.log", cwd=tmp_path / "worker-cwd")
    await wait_for_online(api_url, pool, {worker}, timeout=120)
    return pool, worker


async def sleepy_runs(api_url: str, pool: str, out: Path, seconds: list[float]) -> list[uuid.UUID]:
    async with async_client(api_url) as client:
        flow_id = await client.create_flow_from_name("sleepy")
        deployment = await client.create_deployment(
            flow_id=flow_id,
            name=f"sleepy-{uuid.uuid4().hex[:6]}",
            work_pool_name=pool,
            entrypoint="sleepy.py:sleepy",
            path=str(FLOWS),
        )
        return [
            (
                await client.create_flow_run_from_deployment(
                    deployment, parameters={"seconds": s, "out": str(out)}
                )
            ).id
            for s in seconds
        ]


async def started(out: Path, run: uuid.UUID, timeout: float = 120) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    marker = out / f"{run}.json"
    while not marker.exists():
        assert time.monotonic() < deadline, f"run {run} never started"
        await asyncio.sleep(0.1)
    return json.loads(marker.read_text())


@pytest.mark.parametrize("executor", ["warm", "process"])
async def test_a_run_looks_the_same_on_the_server_either_way(
    prefect_server: LocalServer, children: Children, tmp_path: Path, executor: str
) -> None:
    api_url = prefect_server.api_url
    pool, _ = await start_worker(children, api_url, tmp_path, executor)
    deploy_process_image(find_project_dir(), api_url, pool=pool)
    report = await submit_batch([1, 2, 3], batch=f"same-{uuid.uuid4().hex[:6]}", api_url=api_url)
    states = await wait_for_final_states(api_url, report.flow_run_ids, timeout=240)
    assert set(states.values()) == {StateType.COMPLETED}
    async with async_client(api_url) as client:
        for run_id in report.flow_run_ids:
            run = await client.read_flow_run(run_id)
            task_runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
            )
            assert sorted(t.name.rsplit("-", 1)[0] for t in task_runs) == [
                "download_image",
                "run_ml_model",
                "save_results",
            ]
            assert {t.state_type for t in task_runs} == {StateType.COMPLETED}
            names = [s.name for s in await client.read_flow_run_states(run_id)]
            assert names[-2:] == ["Running", "Completed"]
            image = run.parameters["image_id"]
            record = json.loads((tmp_path / f"{image}.json").read_text())
            # The runner's (or process's) pid is the run's infrastructure pid.
            assert run.infrastructure_pid == str(record["execution"]["flow_process"]["pid"])
            deadline = time.monotonic() + 30
            while True:  # logs arrive in batches
                logs = await client.read_logs(
                    log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))
                )
                messages = [log.message for log in logs]
                if any(f"image {image}: " in m for m in messages) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            assert any(f"image {image}: " in m for m in messages), messages
            assert any("Finished in state Completed()" in m for m in messages)


async def test_cancelling_a_running_run_kills_only_its_runner(
    prefect_server: LocalServer, children: Children, tmp_path: Path
) -> None:
    api_url = prefect_server.api_url
    pool, _ = await start_worker(children, api_url, tmp_path, "warm", runs=2)
    long_run, neighbour, after = await sleepy_runs(api_url, pool, tmp_path, [60, 6, 0.5])
    first = await started(tmp_path, long_run)
    other = await started(tmp_path, neighbour)
    async with async_client(api_url) as client:
        await client.set_flow_run_state(long_run, Cancelling(), force=True)
    states = await wait_for_final_states(api_url, [long_run], timeout=60)
    assert states[long_run] == StateType.CANCELLED
    with pytest.raises(ProcessLookupError):
        os.kill(int(first["pid"]), 0)  # its runner is gone
    os.kill(int(other["pid"]), 0)  # the neighbour's is not
    finished = await wait_for_final_states(api_url, [neighbour, after], timeout=120)
    assert set(finished.values()) == {StateType.COMPLETED}
    assert (await started(tmp_path, after))["pid"] != first["pid"]  # a fresh runner


async def test_a_runner_killed_mid_run_leaves_it_crashed_and_is_replaced(
    prefect_server: LocalServer, children: Children, tmp_path: Path
) -> None:
    api_url = prefect_server.api_url
    pool, _ = await start_worker(children, api_url, tmp_path, "warm", runs=1)
    victim, *rest = await sleepy_runs(api_url, pool, tmp_path, [60, 0.5, 0.5, 0.5])
    os.kill(int((await started(tmp_path, victim))["pid"]), signal.SIGKILL)
    killed = time.monotonic()
    states = await wait_for_final_states(api_url, [victim], timeout=60)
    assert states[victim] == StateType.CRASHED
    print(f"\nCrashed {time.monotonic() - killed:.1f} s after the SIGKILL")
    assert time.monotonic() - killed < 30  # at once, not after missed heartbeats
    finished = await wait_for_final_states(api_url, rest, timeout=120)
    assert set(finished.values()) == {StateType.COMPLETED}


async def test_a_stopped_worker_finishes_its_running_runs_and_loses_no_queued_one(
    prefect_server: LocalServer, children: Children, tmp_path: Path
) -> None:
    api_url = prefect_server.api_url
    pool, worker = await start_worker(children, api_url, tmp_path, "warm", runs=2)
    runs = await sleepy_runs(api_url, pool, tmp_path, [4, 4, 1, 1, 1, 1])
    await started(tmp_path, runs[0])
    await started(tmp_path, runs[1])
    first = children.processes[-1]
    first.send_signal(signal.SIGTERM)  # as Ctrl-C or a service manager would
    assert first.wait(timeout=90) == 0
    async with async_client(api_url) as client:
        running = [await client.read_flow_run(run) for run in runs[:2]]
    assert {run.state_type for run in running} == {StateType.COMPLETED}  # drained
    await start_worker_again(children, api_url, tmp_path, pool, worker)
    finished = await wait_for_final_states(api_url, runs, timeout=180)
    assert set(finished.values()) == {StateType.COMPLETED}
    # The deployment has no pull steps: Prefect copies its folder into the run's working
    # directory, which is the runner's scratch one, as a process worker's is a temporary one.
    assert list((tmp_path / "worker-cwd").iterdir()) == []


async def start_worker_again(
    children: Children, api_url: str, tmp_path: Path, pool: str, worker: str
) -> None:
    env = {**os.environ, "PREFECT_API_URL": api_url, "GPUBOARD_RESULTS_DIR": str(tmp_path)}
    command = [sys.executable, "-m", "gpuboard", "worker", "--id", worker, "--pool", pool]
    command += ["--api-url", api_url, "--gpu-slots", "1", "--runs", "2", "--executor", "warm"]
    children.start(command, env, tmp_path / f"{worker}-again.log", cwd=tmp_path / "worker-cwd")


async def test_the_seeds_own_flow_runs_unchanged_on_a_warm_worker(
    prefect_server: LocalServer, children: Children, tmp_path: Path
) -> None:
    """The seed's pattern: its flow takes `concurrency("gpu:<id>")` itself, in the runner."""
    api_url = prefect_server.api_url
    out = tmp_path / "records"
    out.mkdir()
    pool, _ = await start_worker(
        children, api_url, tmp_path, "warm", extra_env={"BENCH_OUT": str(out)}
    )
    bench_flows = Path(__file__).resolve().parents[2] / "bench" / "flows"
    async with async_client(api_url) as client:
        flow_id = await client.create_flow_from_name("bench-sleep-plain")
        deployment = await client.create_deployment(
            flow_id=flow_id,
            name=f"plain-{uuid.uuid4().hex[:6]}",
            work_pool_name=pool,
            entrypoint="sleep_plain.py:sleep_plain",
            path=str(bench_flows),
        )
        runs = [
            (
                await client.create_flow_run_from_deployment(
                    deployment,
                    parameters={"index": i, "download_s": 0.1, "gpu_s": 0.3, "save_s": 0.1},
                )
            ).id
            for i in range(4)
        ]
    states = await wait_for_final_states(api_url, runs, timeout=180)
    assert set(states.values()) == {StateType.COMPLETED}
    records = [json.loads(p.read_text()) for p in out.glob("*.json")]
    assert sorted(r["index"] for r in records) == [0, 1, 2, 3]
    assert len({r["pid"] for r in records}) <= 2  # on the worker's two warm runners
