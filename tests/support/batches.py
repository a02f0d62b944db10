"""Batches of runs left Failed, Crashed, Completed... without a worker: for retry tests."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from prefect.client.schemas.objects import State, StateType

from gpuboard.core.batch import batch_tag
from gpuboard.core.prefect.client import async_client
from support.seeding import create_pool

FLOWS = Path(__file__).resolve().parent / "flows"


@dataclass
class Batch:
    name: str
    pool: str
    deployment_id: uuid.UUID
    runs: dict[str, uuid.UUID]  # state it was put in -> run


async def make_batch(
    api_url: str, states: list[str], *, batch: str | None = None, pool: str | None = None
) -> Batch:
    """A deployment in a pool with no worker, and one run of `batch` per state in `states`
    (each put straight into it, as a worker would have left it)."""
    tag = uuid.uuid4().hex[:6]
    name, pool = batch or f"retry-{tag}", pool or f"retry-pool-{tag}"
    runs: dict[str, uuid.UUID] = {}
    async with async_client(api_url) as client:
        await create_pool(client, pool)
        flow_id = await client.create_flow_from_name("fails-once")
        deployment_id = await client.create_deployment(
            flow_id=flow_id,
            name=f"fails-once-{tag}",
            work_pool_name=pool,
            entrypoint="fails_once.py:fails_once",
            path=str(FLOWS),
        )
        for n, state in enumerate(states):
            run = await client.create_flow_run_from_deployment(
                deployment_id, tags=[batch_tag(name)], name=f"{state.lower()}-{n}"
            )
            if state != "Scheduled":
                await client.set_flow_run_state(
                    run.id, State(type=StateType(state.upper()), name=state), force=True
                )
            runs[f"{state}-{n}"] = run.id
    return Batch(name, pool, deployment_id, runs)
