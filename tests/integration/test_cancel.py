"""Cancelling queued runs against a real Prefect server: queued ones end, started ones run on."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from gpuboard.core.audit import audit_log_path
from gpuboard.core.cancel import cancel_queued, cancel_run, queued_run_ids
from gpuboard.core.limit_actions import ReadOnlyError
from gpuboard.core.local_server import LocalServer
from gpuboard.core.prefect.client import async_client
from support.seeding import create_deployment, create_pool, create_run, unique


async def _pool_with_runs(api_url: str, states: list[str]) -> tuple[str, list[uuid.UUID]]:
    """A pool of its own (no worker polls it) with one run per state, in that order."""
    pool = unique("cancel")
    async with async_client(api_url) as client:
        await create_pool(client, pool)
        deployment = await create_deployment(client, pool)
        runs = [
            await create_run(client, deployment, state, image_id=index)
            for index, state in enumerate(states)
        ]
    return pool, runs


async def _states(api_url: str, run_ids: list[uuid.UUID]) -> list[str]:
    async with async_client(api_url) as client:
        names = []
        for run_id in run_ids:
            state = (await client.read_flow_run(run_id)).state
            assert state is not None
            names.append(state.name)
    return names


def _audit() -> list[dict[str, object]]:
    return [json.loads(line) for line in audit_log_path().read_text().splitlines()]


async def test_a_queued_run_is_cancelled_and_a_running_one_left_alone(
    prefect_server: LocalServer,
) -> None:
    url = prefect_server.api_url
    _, (scheduled, running) = await _pool_with_runs(url, ["Scheduled", "Running"])

    done = await cancel_run(scheduled, api_url=url)
    assert done.status == "cancelled" and done.reason is None and done.name
    untouched = await cancel_run(running, api_url=url)
    assert untouched.status == "not-queued" and "Running" in (untouched.reason or "")

    assert await _states(url, [scheduled, running]) == ["Cancelled", "Running"]
    again = await cancel_run(scheduled, api_url=url)
    assert again.status == "not-queued" and "Cancelled" in (again.reason or "")
    # A Pending run whose worker already started its process is handed to that worker to
    # stop (Cancelling), as `prefect flow-run cancel` does.
    async with async_client(url) as client:
        deployment = (await client.read_flow_run(scheduled)).deployment_id
        assert deployment is not None
        started = await create_run(
            client, deployment, "Pending", image_id=9, infrastructure_pid=4321
        )
    handed = await cancel_run(started, api_url=url)
    assert handed.status == "cancelled" and await _states(url, [started]) == ["Cancelling"]
    missing = await cancel_run(uuid.uuid4(), api_url=url)
    assert missing.status == "failed" and missing.reason == "no such flow run"

    entries = _audit()
    assert [e["action"] for e in entries] == ["run.cancel"] * 5
    assert [e["after"] for e in entries] == [
        "cancelled",
        "not-queued",
        "not-queued",
        "cancelled",
        "failed",
    ]
    assert str(scheduled) in str(entries[0]["target"])


async def test_cancel_queued_ends_every_queued_run_of_the_pool_only(
    prefect_server: LocalServer,
) -> None:
    url = prefect_server.api_url
    pool, runs = await _pool_with_runs(
        url, ["Scheduled", "Late", "Pending", "Running", "Completed"]
    )
    _, (elsewhere,) = await _pool_with_runs(url, ["Scheduled"])

    assert set(await queued_run_ids(pool, api_url=url)) == set(runs[:3])
    progress: list[tuple[int, int]] = []
    outcomes = await cancel_queued(pool, api_url=url, on_progress=lambda *p: progress.append(p))

    assert {o.flow_run_id for o in outcomes} == set(runs[:3])
    assert all(o.status == "cancelled" for o in outcomes)
    assert progress == [(1, 3), (2, 3), (3, 3)]
    assert await _states(url, runs) == [
        "Cancelled",
        "Cancelled",
        "Cancelled",
        "Running",
        "Completed",
    ]
    assert await _states(url, [elsewhere]) == ["Scheduled"]
    assert await queued_run_ids(pool, api_url=url) == []
    (entry,) = _audit()
    assert entry["action"] == "runs.cancel-queued" and entry["target"] == f"pool {pool}"
    assert entry["after"] == {"cancelled": 3, "not-queued": 0, "failed": 0}


async def test_read_only_refuses_before_any_request(
    prefect_server: LocalServer, isolated_home: Path
) -> None:
    url = prefect_server.api_url
    pool, (scheduled,) = await _pool_with_runs(url, ["Scheduled"])
    with pytest.raises(ReadOnlyError):
        await cancel_run(scheduled, api_url=url, read_only=True)
    with pytest.raises(ReadOnlyError):
        await cancel_queued(pool, api_url=url, read_only=True)
    # An unreachable URL proves no request is tried: the refusal comes first.
    with pytest.raises(ReadOnlyError):
        await cancel_queued(pool, api_url="http://127.0.0.1:9/api", read_only=True)
    assert await _states(url, [scheduled]) == ["Scheduled"]
    assert [e["result"] for e in _audit()] == ["refused: read-only"] * 3
