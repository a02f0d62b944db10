"""`gpuboard submit` and `gpuboard cancel` as a user runs them, against a real Prefect server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

from gpuboard.cli import main
from gpuboard.core.local_server import LocalServer
from gpuboard.core.prefect.client import async_client
from support.seeding import create_deployment, create_pool, create_run, unique


async def _deployment(api_url: str) -> tuple[str, str, uuid.UUID]:
    """Pool, `flow/deployment` name and id of a deployment of its own that no worker polls."""
    pool = unique("cli")
    async with async_client(api_url) as client:
        await create_pool(client, pool)
        deployment_id = await create_deployment(client, pool)
        deployment = await client.read_deployment(deployment_id)
    return pool, f"process-image/{deployment.name}", deployment_id


async def _runs(api_url: str, deployment_id: uuid.UUID) -> dict[int, tuple[str, list[str]]]:
    """Image id -> (state name, tags) of every run of the deployment."""
    async with async_client(api_url) as client:
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id])
            ),
            limit=200,
        )
    found: dict[int, tuple[str, list[str]]] = {}
    for run in runs:
        assert run.parameters["image_id"] not in found, "two runs for one id"
        assert run.state is not None
        found[run.parameters["image_id"]] = (run.state.name, sorted(run.tags))
    return found


async def test_submit_ids_with_tags_then_cancel_the_queued_runs(
    prefect_server: LocalServer, capsys: pytest.CaptureFixture[str]
) -> None:
    url = prefect_server.api_url
    pool, name, deployment_id = await _deployment(url)
    submit = ["submit", "--ids", "1-3,7", "--tag", "night", "--deployment", name]

    # main() runs its own event loop: off this test's loop, in a thread.
    async def gpuboard(*argv: str) -> int:
        return await asyncio.to_thread(main, [*argv, "--api-url", url])

    assert await gpuboard(*submit) == 0
    out = capsys.readouterr().out
    assert "created:  4  ids 1-3,7" in out and "existing: 0" in out
    runs = await _runs(url, deployment_id)
    assert sorted(runs) == [1, 2, 3, 7]
    assert all(tags == ["batch:sample", "night"] for _, tags in runs.values())

    assert await gpuboard(*submit) == 0  # the same batch again: nothing new
    assert "created:  0" in (out := capsys.readouterr().out) and "existing: 4  ids 1-3,7" in out
    assert sorted(await _runs(url, deployment_id)) == [1, 2, 3, 7]

    # Off a terminal, --queued without --yes states the number and changes nothing.
    assert await gpuboard("cancel", "--queued", "--pool", pool) == 2
    assert "cancel 4 queued run(s)" in capsys.readouterr().err
    assert {state for state, _ in (await _runs(url, deployment_id)).values()} == {"Scheduled"}

    assert await gpuboard("cancel", "--queued", "--pool", pool, "--yes") == 0
    assert "cancelled:      4 of 4" in capsys.readouterr().out
    assert {state for state, _ in (await _runs(url, deployment_id)).values()} == {"Cancelled"}
    assert await gpuboard("cancel", "--queued", "--pool", pool, "--yes") == 0
    assert "no queued runs" in capsys.readouterr().out


async def test_cancel_one_run_leaves_a_started_one_alone(
    prefect_server: LocalServer, capsys: pytest.CaptureFixture[str]
) -> None:
    url = prefect_server.api_url
    _, _, deployment_id = await _deployment(url)
    async with async_client(url) as client:
        queued = await create_run(client, deployment_id, "Late", image_id=1)
        running = await create_run(client, deployment_id, "Running", image_id=2)

    assert await asyncio.to_thread(main, ["cancel", str(running), "--api-url", url]) == 1
    assert "not cancelled" in capsys.readouterr().out
    assert await asyncio.to_thread(main, ["cancel", str(queued), "--api-url", url]) == 0
    assert "cancelled" in capsys.readouterr().out
    assert await _runs(url, deployment_id) == {1: ("Cancelled", []), 2: ("Running", [])}


async def test_the_installed_command_reports_progress_in_plain_lines(
    prefect_server: LocalServer, isolated_home: Path
) -> None:
    """As a subprocess, stderr a pipe: progress lines, not a redrawn bar; the report on stdout."""
    url = prefect_server.api_url
    _, name, deployment_id = await _deployment(url)
    command = [sys.executable, "-m", "gpuboard", "submit", "--count", "12", "--start", "5"]
    done = await asyncio.to_thread(
        subprocess.run,
        [*command, "--deployment", name, "--batch", "sub", "--api-url", url],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
    )
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and "12/12 created 12, existing 0, failed 0" in done.stderr
    assert "created:  12  ids 5-16" in done.stdout
    assert sorted(await _runs(url, deployment_id)) == list(range(5, 17))
    audit = [json.loads(line) for line in (isolated_home / "audit.log").read_text().splitlines()]
    assert audit[-1]["action"] == "batch.submit" and audit[-1]["after"]["created"] == 12
