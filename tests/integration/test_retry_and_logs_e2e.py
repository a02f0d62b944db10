"""Retry and logs end to end: a real `gpuboard worker` runs the flows.

A batch whose runs fail is retried twice: re-queued once, and the worker runs the same
flow runs again (they complete on their second try). A run's log lines appear while it
runs and new ones as it goes on: with `gpuboard logs --follow` and on the board's log
screen opened with `l`.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prefect.client.schemas.objects import StateType

from fakes.fake_nvml import FakeNvml
from gpuboard.core.batch import batch_tag
from gpuboard.core.board_source import BoardSource
from gpuboard.core.local_server import LocalServer
from gpuboard.core.nvml_source import NvmlSource
from gpuboard.core.prefect.client import async_client
from gpuboard.core.prefect.pool import ensure_work_pool
from gpuboard.core.retry import retry_batch
from gpuboard.tui.app import GpuBoardApp
from gpuboard.tui.screens.run_log import LogRunPicker, LogScreen
from support.pilot import until
from support.stack import Children, wait_for_final_states, wait_for_online

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

FLOWS = Path(__file__).resolve().parents[1] / "support" / "flows"


@dataclass
class Stack:
    api_url: str
    pool: str
    fails_once: uuid.UUID  # deployment
    chatty: uuid.UUID  # deployment


@pytest.fixture(scope="module")
def children() -> Iterator[Children]:
    started = Children()
    try:
        yield started
    finally:
        started.stop_all()


@pytest.fixture(scope="module")
async def stack(
    prefect_server: LocalServer, children: Children, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    """One real worker (2 runs at a time) on a pool of its own, and the two test flows."""
    api_url = prefect_server.api_url
    suffix = uuid.uuid4().hex[:6]
    pool = worker = f"operator-{suffix}"
    logs = tmp_path_factory.mktemp("operator-worker")
    async with async_client(api_url) as client:
        await ensure_work_pool(client, pool)
        deployments = []
        for flow, entrypoint in (("fails-once", "fails_once"), ("chatty", "chatty")):
            flow_id = await client.create_flow_from_name(flow)
            deployments.append(
                await client.create_deployment(
                    flow_id=flow_id,
                    name=f"{flow}-{suffix}",
                    work_pool_name=pool,
                    entrypoint=f"{entrypoint}.py:{entrypoint}",
                    path=str(FLOWS),
                )
            )
    env = {**os.environ, "PREFECT_API_URL": api_url, "GPUBOARD_RESULTS_DIR": str(logs)}
    command = [sys.executable, "-m", "gpuboard", "worker", "--id", worker, "--pool", pool]
    command += ["--api-url", api_url, "--gpu-slots", "1", "--runs", "2", "--inference-threads", "1"]
    children.start(command, env, logs / "worker.log")
    await wait_for_online(api_url, pool, {worker}, timeout=120)
    yield Stack(api_url, pool, deployments[0], deployments[1])


async def test_a_failed_batch_retried_twice_is_requeued_once_and_runs_again(
    stack: Stack,
) -> None:
    batch = f"flaky-{uuid.uuid4().hex[:6]}"
    async with async_client(stack.api_url) as client:
        runs = [
            (
                await client.create_flow_run_from_deployment(
                    stack.fails_once, tags=[batch_tag(batch)], name=f"flaky-{n}"
                )
            ).id
            for n in range(2)
        ]
    first_try = await wait_for_final_states(stack.api_url, runs, timeout=180)
    assert set(first_try.values()) == {StateType.FAILED}

    first = await retry_batch(batch, api_url=stack.api_url)
    second = await retry_batch(batch, api_url=stack.api_url)
    assert {o.flow_run_id for o in first.requeued} == set(runs)
    assert second.requeued == []
    # Skipped with why: re-queued already, or (a fast worker) already done again.
    assert {o.flow_run_id for o in second.skipped} | set(
        await _ids_now_completed(stack.api_url, runs)
    ) >= set(runs)

    again = await wait_for_final_states(stack.api_url, runs, timeout=180)
    assert set(again.values()) == {StateType.COMPLETED}  # the same runs, on their second try
    async with async_client(stack.api_url) as client:
        for run_id in runs:
            run = await client.read_flow_run(run_id)
            assert run.run_count == 2
            names = [s.name for s in await client.read_flow_run_states(run_id)]
            # Failed, re-queued once (one AwaitingRetry), then taken and run again by the
            # worker: [..., Failed, AwaitingRetry, Pending, Submitting, Running, Completed].
            assert names.count("AwaitingRetry") == 1, names
            requeued = names.index("AwaitingRetry")
            assert names[requeued - 1] == "Failed", names
            assert "Running" in names[requeued:] and names[-1] == "Completed", names
    third = await retry_batch(batch, api_url=stack.api_url)
    assert third.requeued == [] and third.others == {"Completed": 2}


async def _ids_now_completed(api_url: str, runs: list[uuid.UUID]) -> list[uuid.UUID]:
    async with async_client(api_url) as client:
        return [r for r in runs if (await client.read_flow_run(r)).state_type == "COMPLETED"]


async def chatty_run(stack: Stack, gate: Path) -> uuid.UUID:
    async with async_client(stack.api_url) as client:
        run = await client.create_flow_run_from_deployment(
            stack.chatty, parameters={"gate": str(gate)}, name=f"chatty-{uuid.uuid4().hex[:6]}"
        )
    return run.id


async def state_of(api_url: str, run: uuid.UUID) -> str:
    async with async_client(api_url) as client:
        return str((await client.read_flow_run(run)).state_type)


async def test_logs_follow_prints_lines_while_the_run_runs(stack: Stack, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    run = await chatty_run(stack, gate)
    command = [sys.executable, "-m", "gpuboard", "logs", str(run), "--follow"]
    follower = subprocess.Popen(
        [*command, "--api-url", stack.api_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(follower.stdout.readline, "")))
    reader.start()
    try:
        deadline = time.monotonic() + 180
        while not any("chatty first line" in line for line in lines):
            assert follower.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            await asyncio.sleep(0.2)
        # Printed while the run runs: it waits at the gate, its second line not yet written.
        assert await state_of(stack.api_url, run) == "StateType.RUNNING"
        assert not any("chatty second line" in line for line in lines)
        gate.touch()
        assert await asyncio.to_thread(follower.wait, 120) == 0  # ends once the run is final
    finally:
        if follower.poll() is None:
            follower.kill()
        reader.join(timeout=10)
    text = "".join(lines)
    assert text.index("chatty first line") < text.index("chatty second line")
    assert "[chatty-step-" in text and "chatty task line" in text  # its task run's log too
    assert sum("chatty first line" in line for line in lines) == 1  # each line once
    assert await state_of(stack.api_url, run) == "StateType.COMPLETED"

    filtered = ["--level", "warning", "--grep", "SECOND", "--api-url", stack.api_url]
    only = subprocess.run(
        [sys.executable, "-m", "gpuboard", "logs", str(run), *filtered],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert only.returncode == 0, only.stderr
    assert [line.split(" ", 1)[1].strip() for line in only.stdout.splitlines()] == [
        "WARNING  chatty second line"
    ]


async def test_l_opens_a_running_runs_log_and_follows_it(stack: Stack, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    run = await chatty_run(stack, gate)
    app = GpuBoardApp(
        BoardSource(stack.pool, stack.api_url, nvml=NvmlSource(FakeNvml(init_error=12))),
        pool=stack.pool,
        api_url=stack.api_url,
        refresh=0.5,
    )
    async with app.run_test(size=(140, 40)) as pilot:
        # The board lists the run once it runs; `l` offers the runs it shows.
        await until(pilot, lambda: any(r.id == str(run) for r in app._runs_shown()), timeout=180)
        await pilot.press("l")
        await until(pilot, lambda: isinstance(app.screen, LogRunPicker))
        picker = app.screen
        assert isinstance(picker, LogRunPicker)
        await pilot.press(*["down"] * [r.id for r in picker.runs].index(str(run)), "enter")
        await until(pilot, lambda: isinstance(app.screen, LogScreen))
        screen = app.screen
        assert isinstance(screen, LogScreen) and screen.run_id == run

        def shows(text: str) -> bool:
            return any(text in line for line in screen.shown_lines())

        await until(pilot, lambda: shows("chatty first line"), timeout=60)
        assert not shows("chatty second line") and screen.following
        gate.touch()
        await until(pilot, lambda: shows("chatty second line"), timeout=60)
        await until(pilot, lambda: not screen.following, timeout=60)
        assert "end of log" in str(screen.query_one("#log-status").render())
        # The filters: from WARNING up only the second line; a search keeps what matches.
        await pilot.press("v", "v")  # all levels -> info -> warning
        assert [line.split(" ", 1)[1] for line in screen.shown_lines()] == [
            "WARNING  chatty second line"
        ]
        await pilot.press("v", "v")  # -> error -> all levels again
        assert shows("chatty first line")
        await pilot.press("slash", *"TASK", "space", *"line", "enter")
        assert len(screen.shown_lines()) == 1 and shows("chatty task line")
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, LogScreen))
