"""Puts a known fleet on a real Prefect server: pool, worker heartbeats, GCLs, runs, task runs.

Everything goes through the Prefect API as workers and flows would write it; no worker or
flow process runs, so the numbers on the board are exactly the ones seeded here.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
    WorkPoolCreate,
)
from prefect.client.schemas.objects import State, StateType
from prefect.exceptions import ObjectAlreadyExists


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


async def create_pool(client: PrefectClient, pool: str) -> None:
    with contextlib.suppress(ObjectAlreadyExists):
        await client.create_work_pool(WorkPoolCreate(name=pool, type="process"))


async def heartbeat(client: PrefectClient, pool: str, worker: str, interval: int = 30) -> None:
    await client.send_worker_heartbeat(pool, worker, heartbeat_interval_seconds=interval)


async def create_gcl(
    client: PrefectClient, name: str, limit: int, *, active: bool = True, active_slots: int = 0
) -> None:
    await client.create_global_concurrency_limit(
        GlobalConcurrencyLimitCreate(name=name, limit=limit, active=active)
    )
    if active_slots:
        # The v2 API lets a GCL be created or updated with slots already in use: as if
        # that many inferences held one.
        await client.update_global_concurrency_limit(
            name, GlobalConcurrencyLimitUpdate(active_slots=active_slots)
        )


async def create_deployment(client: PrefectClient, pool: str) -> uuid.UUID:
    flow_id = await client.create_flow_from_name("process-image")
    return await client.create_deployment(
        flow_id=flow_id,
        name=unique("process-image"),
        work_pool_name=pool,
        entrypoint="flows/process_image.py:process_image",
    )


async def create_run(
    client: PrefectClient,
    deployment_id: uuid.UUID,
    state: str,
    *,
    image_id: int,
    worker: str | None = None,
    message: str | None = None,
    infrastructure_pid: int | None = None,
) -> uuid.UUID:
    """A run of the deployment created straight in `state` (`Late` is Scheduled, named Late)."""
    state_type = StateType.SCHEDULED if state == "Late" else StateType(state.upper())
    body: dict[str, Any] = {
        "state": {"type": state_type.value, "name": state, "message": message},
        "parameters": {"image_id": image_id},
    }
    if worker is not None:
        body["labels"] = {"prefect.worker.name": worker}
    response = await client.request(
        "POST", "/deployments/{id}/create_flow_run", path_params={"id": deployment_id}, json=body
    )
    response.raise_for_status()
    run_id = uuid.UUID(response.json()["id"])
    if infrastructure_pid is not None:
        await client.update_flow_run(run_id, infrastructure_pid=str(infrastructure_pid))
    return run_id


async def start_task(client: PrefectClient, flow_run_id: uuid.UUID, task_name: str) -> None:
    """A running task run of the pipeline (`download_image`, `run_ml_model`, `save_results`)."""
    response = await client.request(
        "POST",
        "/task_runs/",
        json={
            "flow_run_id": str(flow_run_id),
            "task_key": task_name,
            "dynamic_key": "0",
            "name": f"{task_name}-{uuid.uuid4().hex[:3]}",
            "state": State(type=StateType.RUNNING, name="Running").model_dump(
                mode="json", include={"type", "name"}
            ),
        },
    )
    response.raise_for_status()


def free_port() -> int:
    """A TCP port free on loopback right now, for a server of a test's own."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
