"""`gpuboard status [--json]` against a real Prefect server, and against none."""

from __future__ import annotations

import asyncio
import io
import json
import uuid

from gpuboard.core.local_server import LocalServer
from gpuboard.core.prefect.poll_client import poll_client
from gpuboard.core.status import status_main
from support.seeding import (
    create_deployment,
    create_gcl,
    create_pool,
    create_run,
    free_port,
    heartbeat,
    start_task,
)


async def _seed(api_url: str, pool: str, worker: str) -> None:
    async with poll_client(api_url) as client:
        await create_pool(client, pool)
        await heartbeat(client, pool, worker)
        await create_gcl(client, f"gpu:{worker}", 3, active_slots=1)
        deployment = await create_deployment(client, pool)
        for image_id in range(3):
            run = await create_run(client, deployment, "Running", image_id=image_id, worker=worker)
            await start_task(client, run, "run_ml_model")
        await create_run(client, deployment, "Scheduled", image_id=9)


def test_status_json_reports_workers_and_runs(prefect_server: LocalServer) -> None:
    pool, worker = f"status-{uuid.uuid4().hex[:6]}", f"w-{uuid.uuid4().hex[:6]}"
    asyncio.run(_seed(prefect_server.api_url, pool, worker))
    out = io.StringIO()
    assert status_main(pool, True, prefect_server.api_url, out=out) == 0
    data = json.loads(out.getvalue())
    (only,) = [w for w in data["workers"] if w["in_pool"]]  # the server is shared
    assert only["name"] == worker and only["online"] is True
    assert (only["limit"], only["active_slots"], only["waiting"], only["inferring"]) == (3, 1, 2, 1)
    assert isinstance(only["gpus"], list)
    assert data["runs"]["running"] == 3 and data["runs"]["queued"] == 1
    assert data["connected"] is True and data["errors"] == []

    text = io.StringIO()
    assert status_main(pool, False, prefect_server.api_url, out=text) == 0
    assert f"{worker}: online" in text.getvalue() and "slots 1/3 · waiting 2" in text.getvalue()


def test_status_exits_non_zero_when_the_api_is_unreachable() -> None:
    out = io.StringIO()
    url = f"http://127.0.0.1:{free_port()}/api"
    assert status_main("ml-pool", True, url, out=out) == 1
    data = json.loads(out.getvalue())
    assert data["connected"] is False and data["errors"][0]["kind"] == "unreachable"
    text = io.StringIO()
    assert status_main("ml-pool", False, url, out=text) == 1
    assert "unreachable" in text.getvalue()
