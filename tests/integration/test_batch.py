"""Batch submission against a real Prefect server: a repeat creates nothing twice."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

from gpuboard.core.batch import BatchInputError, BatchProgress, submit_batch
from gpuboard.core.limit_actions import ReadOnlyError
from gpuboard.core.local_server import LocalServer
from gpuboard.core.prefect.client import async_client
from gpuboard.core.prefect.runs import DeploymentMissing


@pytest.fixture
async def deployment(fleet_server: LocalServer) -> tuple[str, uuid.UUID]:
    """A process-image deployment of its own, on a pool no worker polls: its runs stay
    scheduled and no other test's worker can take them."""
    suffix = uuid.uuid4().hex[:8]
    async with async_client(fleet_server.api_url) as client:
        pool = f"batch-{suffix}"
        await client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        flow_id = await client.create_flow_from_name("process-image")
        deployment_id = await client.create_deployment(
            flow_id=flow_id,
            name=f"batch-{suffix}",
            work_pool_name=pool,
            entrypoint="flows/process_image.py:process_image",
        )
    return f"process-image/batch-{suffix}", deployment_id


async def runs_of(api_url: str, deployment_id: uuid.UUID) -> dict[int, uuid.UUID]:
    """Image id -> flow run id of every run the deployment has."""
    async with async_client(api_url) as client:
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id])
            ),
            limit=200,
        )
        if len(runs) == 200:
            runs += await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id])
                ),
                limit=200,
                offset=200,
            )
    by_id: dict[int, uuid.UUID] = {}
    for run in runs:
        image_id = run.parameters["image_id"]
        assert image_id not in by_id, f"image {image_id} has two runs"
        by_id[image_id] = run.id
    return by_id


async def test_a_repeated_submit_creates_only_what_is_missing(
    fleet_server: LocalServer, deployment: tuple[str, uuid.UUID], isolated_home: Path
) -> None:
    name, deployment_id = deployment
    url = fleet_server.api_url
    progress: list[int] = []

    first = await submit_batch(
        range(1, 6), api_url=url, deployment=name, on_progress=lambda p: progress.append(p.done)
    )
    assert first.created == [1, 2, 3, 4, 5] and first.existing == [] and first.ok
    assert progress == [1, 2, 3, 4, 5]

    again = await submit_batch(range(1, 6), api_url=url, deployment=name)
    assert again.created == [] and again.existing == [1, 2, 3, 4, 5]
    assert again.flow_run_ids == first.flow_run_ids

    overlapping = await submit_batch(range(4, 9), api_url=url, deployment=name, concurrency=3)
    assert overlapping.created == [6, 7, 8] and overlapping.existing == [4, 5]

    runs = await runs_of(url, deployment_id)
    assert sorted(runs) == [1, 2, 3, 4, 5, 6, 7, 8]  # one run per id, no duplicate
    assert set(runs.values()) == set(first.flow_run_ids) | set(overlapping.flow_run_ids)

    # Another batch name is new work for the same ids; the source is passed on.
    other = await submit_batch(
        [1], api_url=url, deployment=name, batch="second-pass", source="file:///d/{image_id}.png"
    )
    assert other.created == [1]
    async with async_client(url) as client:
        run = await client.read_flow_run(other.flow_run_ids[0])
    assert run.parameters == {"image_id": 1, "source": "file:///d/{image_id}.png"}
    assert run.name == "image-1"

    audit = [json.loads(line) for line in (isolated_home / "audit.log").read_text().splitlines()]
    assert [entry["after"]["created"] for entry in audit] == [5, 0, 3, 1]


async def test_a_missing_deployment_or_bad_input_is_refused_before_any_run(
    prefect_server: LocalServer,
) -> None:
    with pytest.raises(DeploymentMissing, match="gpuboard up"):
        await submit_batch([1], api_url=prefect_server.api_url, deployment="process-image/nope")
    with pytest.raises(BatchInputError, match="image_id"):
        await submit_batch([1], api_url=prefect_server.api_url, source="file:///one.png")
    with pytest.raises(BatchInputError, match="twice"):
        await submit_batch([1, 1], api_url=prefect_server.api_url)


async def test_a_run_the_server_refuses_fails_alone_with_its_reason(
    prefect_server: LocalServer,
) -> None:
    suffix = uuid.uuid4().hex[:8]
    async with async_client(prefect_server.api_url) as client:
        await client.create_work_pool(WorkPoolCreate(name=f"strict-{suffix}", type="process"))
        flow_id = await client.create_flow_from_name("process-image")
        await client.create_deployment(
            flow_id=flow_id,
            name=f"strict-{suffix}",
            work_pool_name=f"strict-{suffix}",
            entrypoint="flows/process_image.py:process_image",
            # The server validates parameters against this: ids above 3 are refused (409).
            parameter_openapi_schema={
                "type": "object",
                "properties": {
                    "image_id": {"type": "integer", "maximum": 3},
                    "source": {"type": "string"},
                },
            },
            enforce_parameter_schema=True,
        )
    report = await submit_batch(
        range(2, 6), api_url=prefect_server.api_url, deployment=f"process-image/strict-{suffix}"
    )
    assert report.created == [2, 3] and not report.ok
    assert [o.image_id for o in report.failed] == [4, 5]
    assert all("greater than the maximum of 3" in (o.reason or "") for o in report.failed)


async def test_tags_are_set_on_new_runs_and_read_only_sends_nothing(
    fleet_server: LocalServer, deployment: tuple[str, uuid.UUID], isolated_home: Path
) -> None:
    name, deployment_id = deployment
    url = fleet_server.api_url
    report = await submit_batch(
        [3, 4], api_url=url, deployment=name, batch="tagged", tags=["night", " urgent ", "night"]
    )
    assert report.created == [3, 4]
    async with async_client(url) as client:
        run = await client.read_flow_run(report.flow_run_ids[0])
    assert sorted(run.tags) == ["batch:tagged", "night", "urgent"]

    with pytest.raises(BatchInputError, match="gpuboard's own"):
        await submit_batch([5], api_url=url, deployment=name, tags=["batch:x"])
    with pytest.raises(BatchInputError, match="empty"):
        await submit_batch([5], api_url=url, deployment=name, tags=[" "])
    # Read-only is refused first: even an unreachable server is never asked.
    with pytest.raises(ReadOnlyError):
        await submit_batch([5], api_url="http://127.0.0.1:9/api", deployment=name, read_only=True)
    assert sorted(await runs_of(url, deployment_id)) == [3, 4]
    last = json.loads((isolated_home / "audit.log").read_text().splitlines()[-1])
    assert last["action"] == "batch.submit" and last["result"] == "refused: read-only"


async def test_two_submits_of_one_batch_at_once_create_each_run_once(
    fleet_server: LocalServer, deployment: tuple[str, uuid.UUID]
) -> None:
    """Each new run carries its submission's marker: of two racing submits exactly one
    reports a run as created, the other as existing (or failed, retried below)."""
    name, deployment_id = deployment
    url = fleet_server.api_url
    first, second = await asyncio.gather(
        submit_batch(range(1, 61), api_url=url, deployment=name, batch="race"),
        submit_batch(range(31, 91), api_url=url, deployment=name, batch="race"),
    )
    retry = await submit_batch(range(1, 91), api_url=url, deployment=name, batch="race")
    assert retry.ok
    created = [*first.created, *second.created, *retry.created]
    assert sorted(created) == list(range(1, 91))  # every id created once, by one of them
    runs = await runs_of(url, deployment_id)
    assert sorted(runs) == list(range(1, 91))
    assert [runs[i] for i in range(1, 91)] == retry.flow_run_ids


async def test_a_server_without_bulk_creation_gets_runs_one_by_one(
    fleet_server: LocalServer,
    deployment: tuple[str, uuid.UUID],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Prefect servers before 3.9 lack `/create_flow_run/bulk`; gpuboard's own switch to
    the one-by-one path is forced here, the runs are then made on the real server."""
    from gpuboard.core import batch as batch_module
    from gpuboard.core.prefect.runs import BulkCreateUnsupported

    async def no_bulk(*args: object, **kwargs: object) -> object:
        raise BulkCreateUnsupported("404 Not Found")

    monkeypatch.setattr(batch_module, "create_runs_bulk", no_bulk)
    name, deployment_id = deployment
    report = await submit_batch([1, 2, 3], api_url=fleet_server.api_url, deployment=name)
    assert report.created == [1, 2, 3]
    assert sorted(await runs_of(fleet_server.api_url, deployment_id)) == [1, 2, 3]


async def test_a_batch_cut_by_a_server_restart_is_completed_by_a_retry(
    tmp_path: Path, server_database: str | None
) -> None:
    """The server stops after the first 100 runs; the rest fail with their reason, and the
    same submit after the restart (same database: SQLite, then PostgreSQL) creates exactly
    those."""
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    from support.seeding import free_port

    server = LocalServer(home=tmp_path / "server", port=free_port(), database_url=server_database)
    server.start()
    try:
        async with async_client(server.api_url) as client:
            await client.create_work_pool(WorkPoolCreate(name="restart", type="process"))
            flow_id = await client.create_flow_from_name("process-image")
            deployment_id = await client.create_deployment(
                flow_id=flow_id,
                name="restart",
                work_pool_name="restart",
                entrypoint="flows/process_image.py:process_image",
            )

        def stop_after_first_request(progress: BatchProgress) -> None:
            if progress.done == 100:
                server.stop()

        # Prefect's client would retry a lost connection for about a minute (it outlasts a
        # quick restart); one retry is enough to see the batch cut here.
        with temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 1}):
            cut = await submit_batch(
                range(1, 151),
                api_url=server.api_url,
                deployment="process-image/restart",
                on_progress=stop_after_first_request,
            )
        assert cut.created == list(range(1, 101))
        assert [o.image_id for o in cut.failed] == list(range(101, 151))
        assert all("Connect" in (o.reason or "") for o in cut.failed), cut.failed[0].reason

        server.start()
        retried = await submit_batch(
            range(1, 151), api_url=server.api_url, deployment="process-image/restart"
        )
        assert retried.created == list(range(101, 151))
        assert retried.existing == list(range(1, 101))
        runs = await runs_of(server.api_url, deployment_id)
        assert sorted(runs) == list(range(1, 151))
    finally:
        server.stop()
