"""Why a run waits, against a real Prefect server: each reason made real on the server
(pool or queue paused, no worker, a drained worker, a worker at its flow-run limit, the
GPU slot paused or full), then read back as the board, `gpuboard status --json` and
`gpuboard why` say it. Workers here are heartbeats; test_drain_workers.py runs real ones."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prefect.client.schemas.actions import WorkPoolUpdate
from prefect.states import Completed

from gpuboard import cli
from gpuboard.core.drain import UnknownWorkerError, drain_worker, undrain_worker
from gpuboard.core.limit_actions import ReadOnlyError, change_worker_limit
from gpuboard.core.limits import LimitChange
from gpuboard.core.local_server import LocalServer
from gpuboard.core.models import RunView, Snapshot
from gpuboard.core.prefect.drain_flags import is_drained
from gpuboard.core.prefect.poll_client import poll_client
from gpuboard.core.prefect.worker_process import publish_worker_process
from gpuboard.core.process_identity import this_process
from gpuboard.core.status import read_snapshot, snapshot_to_json
from gpuboard.core.why_run import why_run
from support.seeding import (
    create_deployment,
    create_gcl,
    create_pool,
    create_run,
    heartbeat,
    start_task,
)


@dataclass
class Pool:
    api_url: str
    name: str
    worker: str
    deployment: uuid.UUID


@pytest.fixture
async def pool(prefect_server: LocalServer) -> AsyncIterator[Pool]:
    tag = uuid.uuid4().hex[:6]
    name, worker = f"why-{tag}", f"w-{tag}"
    async with poll_client(prefect_server.api_url) as client:
        await create_pool(client, name)
        deployment = await create_deployment(client, name)
    yield Pool(prefect_server.api_url, name, worker, deployment)


async def scheduled(pool: Pool) -> uuid.UUID:
    async with poll_client(pool.api_url) as client:
        return await create_run(client, pool.deployment, "Scheduled", image_id=1)


async def online(pool: Pool, *, run_limit: int | None = None) -> None:
    async with poll_client(pool.api_url) as client:
        await heartbeat(client, pool.name, pool.worker)
        if run_limit is not None:
            await publish_worker_process(client, pool.worker, this_process(), run_limit=run_limit)


async def board_reason(pool: Pool, run_id: uuid.UUID) -> tuple[Snapshot, RunView]:
    snapshot = await read_snapshot(pool.name, pool.api_url)
    assert snapshot.prefect_ok, snapshot.errors
    run = next(r for r in snapshot.running + snapshot.next_queued if r.id == str(run_id))
    return snapshot, run


async def status_json(pool: Pool) -> dict[str, Any]:
    """What `gpuboard status --json` prints, through its JSON round trip."""
    snapshot = await read_snapshot(pool.name, pool.api_url)
    return dict(json.loads(json.dumps(snapshot_to_json(snapshot))))


async def gpuboard(*argv: str) -> int:
    """The `gpuboard` command in a thread: it runs its own event loop."""
    return await asyncio.to_thread(cli.main, list(argv))


async def assert_reason(pool: Pool, run_id: uuid.UUID, code: str, words: str) -> None:
    """The board, `status --json` and `gpuboard why` give the same reason."""
    _, run = await board_reason(pool, run_id)
    assert run.wait_code == code and run.wait_reason is not None and words in run.wait_reason
    listed = await status_json(pool)
    rows = [r for key in ("running", "next_queued") for r in listed[key]]
    row = next(r for r in rows if r["id"] == str(run_id))
    assert row["wait_reason"] == {"code": code, "text": run.wait_reason}
    answer = await why_run(str(run_id), api_url=pool.api_url)
    assert answer.reason is not None and answer.reason.code == code, answer


async def test_no_worker_online(pool: Pool) -> None:
    run_id = await scheduled(pool)
    await assert_reason(pool, run_id, "no_worker_online", f"no worker of pool {pool.name}")


async def test_pool_paused_then_queue_paused(pool: Pool) -> None:
    await online(pool)
    run_id = await scheduled(pool)
    async with poll_client(pool.api_url) as client:
        await client.update_work_pool(pool.name, WorkPoolUpdate(is_paused=True))
    await assert_reason(pool, run_id, "pool_paused", f"work pool {pool.name} is paused")
    assert (await status_json(pool))["pool_paused"] is True
    async with poll_client(pool.api_url) as client:
        await client.update_work_pool(pool.name, WorkPoolUpdate(is_paused=False))
        queue = await client.read_work_queue_by_name("default", work_pool_name=pool.name)
        await client.update_work_queue(queue.id, is_paused=True)
    await assert_reason(pool, run_id, "queue_paused", "queue default")


async def test_worker_at_its_flow_run_limit(pool: Pool) -> None:
    await online(pool, run_limit=1)
    async with poll_client(pool.api_url) as client:
        await create_run(client, pool.deployment, "Running", image_id=0, worker=pool.worker)
    run_id = await scheduled(pool)
    await assert_reason(pool, run_id, "worker_at_run_limit", f"{pool.worker} 1 of 1")
    snapshot, _ = await board_reason(pool, run_id)
    view = snapshot.worker(pool.worker)
    assert view is not None and view.run_limit == 1


async def test_drained_worker_then_undrained(pool: Pool, isolated_home: Path) -> None:
    await online(pool, run_limit=4)
    async with poll_client(pool.api_url) as client:
        running = await create_run(
            client, pool.deployment, "Running", image_id=0, worker=pool.worker
        )
    run_id = await scheduled(pool)
    outcome = await drain_worker(pool.worker, pool=pool.name, api_url=pool.api_url)
    assert outcome.changed and outcome.runs == 1 and "no other worker" in outcome.message
    await assert_reason(pool, run_id, "worker_draining", "draining")
    snapshot, _ = await board_reason(pool, run_id)
    view = snapshot.worker(pool.worker)
    assert view is not None and view.drain_state == "DRAINING"
    worker_json = next(w for w in (await status_json(pool))["workers"] if w["name"] == pool.worker)
    assert worker_json["drain_state"] == "DRAINING" and worker_json["drained"] is True
    async with poll_client(pool.api_url) as client:
        await client.set_flow_run_state(running, Completed(), force=True)
    snapshot, _ = await board_reason(pool, run_id)
    view = snapshot.worker(pool.worker)
    assert view is not None and view.drain_state == "DRAINED"
    again = await drain_worker(pool.worker, pool=pool.name, api_url=pool.api_url)
    assert not again.changed
    undone = await undrain_worker(pool.worker, pool=pool.name, api_url=pool.api_url)
    assert undone.changed and not undone.drained
    _, run = await board_reason(pool, run_id)
    assert run.wait_code == "next_poll"
    entries = [json.loads(line) for line in (isolated_home / "audit.log").read_text().splitlines()]
    assert [(e["action"], e["target"]) for e in entries] == [
        ("worker.drain", pool.worker),
        ("worker.drain", pool.worker),
        ("worker.undrain", pool.worker),
    ]


async def test_drain_refused_read_only_and_unknown_worker(
    pool: Pool, isolated_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await online(pool)
    with pytest.raises(ReadOnlyError):
        await drain_worker(pool.worker, pool=pool.name, api_url=pool.api_url, read_only=True)
    with pytest.raises(UnknownWorkerError, match="no worker 'nobody-here'"):
        await drain_worker("nobody-here", pool=pool.name, api_url=pool.api_url)
    async with poll_client(pool.api_url) as client:
        assert not await is_drained(client, pool.worker)
        assert not await is_drained(client, "nobody-here")
    # The CLI twins: refused read-only, a clear line for an unknown worker, then a drain.
    args = ["--pool", pool.name, "--api-url", pool.api_url]
    assert (await gpuboard("drain", pool.worker, *args, "--read-only")) == cli.EXIT_FAILED
    assert (await gpuboard("drain", "nobody-here", *args)) == cli.EXIT_FAILED
    assert "no worker 'nobody-here'" in capsys.readouterr().err
    assert (await gpuboard("drain", pool.worker, *args)) == cli.EXIT_OK
    assert f"{pool.worker} drained" in capsys.readouterr().out
    async with poll_client(pool.api_url) as client:
        assert await is_drained(client, pool.worker)
    assert (await gpuboard("undrain", pool.worker, *args)) == cli.EXIT_OK
    async with poll_client(pool.api_url) as client:
        assert not await is_drained(client, pool.worker)
    results = [
        json.loads(line)["result"]
        for line in (isolated_home / "audit.log").read_text().splitlines()
    ]
    assert results[:2] == ["refused: read-only", results[1]] and results[1].startswith("refused:")


async def test_gpu_slot_paused_then_busy(pool: Pool) -> None:
    await online(pool)
    async with poll_client(pool.api_url) as client:
        await create_gcl(client, f"gpu:{pool.worker}", 1, active_slots=1)
        first = await create_run(client, pool.deployment, "Running", image_id=1, worker=pool.worker)
        await start_task(client, first, "run_ml_model")
        second = await create_run(
            client, pool.deployment, "Running", image_id=2, worker=pool.worker
        )
        await start_task(client, second, "run_ml_model")
    await assert_reason(pool, second, "slot_busy", "1/1 in use, 0 run(s) ahead")
    _, holder = await board_reason(pool, first)
    assert holder.wait_reason is None  # the first in the GPU step holds the slot
    async with poll_client(pool.api_url) as client:
        await change_worker_limit(client, pool.worker, LimitChange("pause", 0))
    await assert_reason(pool, second, "slot_paused", f"gpu:{pool.worker} is paused (limit 0)")


async def test_why_by_name_and_unknown_run(pool: Pool, capsys: pytest.CaptureFixture[str]) -> None:
    run_id = await scheduled(pool)
    async with poll_client(pool.api_url) as client:
        name = (await client.read_flow_run(run_id)).name
    assert (await gpuboard("why", name, "--api-url", pool.api_url, "--json")) == cli.EXIT_OK
    answer = json.loads(capsys.readouterr().out)
    assert answer["id"] == str(run_id) and answer["wait_reason"]["code"] == "no_worker_online"
    assert (await gpuboard("why", "no-such-run-name", "--api-url", pool.api_url)) == cli.EXIT_FAILED
    assert "no flow run named 'no-such-run-name'" in capsys.readouterr().err
