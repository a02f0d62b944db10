"""Which workers are drained, kept on the Prefect server as one Variable per worker.

A drained worker takes no new flow runs (core/prefect/drain_gate.py reads its flag before
each poll) and lets those it has finish. The flag lives on the server rather than in the
worker: it survives a restart of the worker, and every board and CLI sees the same one.
A Variable rather than a paused work queue: gpuboard's workers share the pool's queue,
and pausing it would stop every worker, not one.

`read_worker_records` reads, in one request, every worker's drain flag and the flow-run
limit each gpuboard worker published at its start (core/prefect/worker_process.py).
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import VariableCreate
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from gpuboard.core.prefect.worker_process import RECORD_TAG as WORKER_RECORD_TAG

DRAIN_TAG = "gpuboard-drain"
_RECORDS_READ_CAP = 200  # the API's page maximum


def drain_variable_name(worker_id: str) -> str:
    """Variable names are lowercase letters, digits, `-` and `_`; worker ids are wider."""
    return f"gpuboard-drain-{hashlib.sha256(worker_id.encode()).hexdigest()[:20]}"


@dataclass(frozen=True)
class WorkerRecords:
    """What gpuboard keeps on the server about its workers, read in one request."""

    drained_since: dict[str, float] = field(default_factory=dict)  # worker -> epoch seconds
    run_limits: dict[str, int] = field(default_factory=dict)  # worker -> its --runs


async def set_drained(client: PrefectClient, worker_id: str, *, by: str) -> bool:
    """Mark `worker_id` drained; False when it already was (the first drain's time is kept)."""
    if await is_drained(client, worker_id):
        return False
    try:
        await client.create_variable(
            VariableCreate(
                name=drain_variable_name(worker_id),
                value={
                    "worker": worker_id,
                    "since": datetime.now(timezone.utc).timestamp(),
                    "by": by,
                },
                tags=[DRAIN_TAG],
            )
        )
    except ObjectAlreadyExists:
        return False  # drained meanwhile by another board
    return True


async def clear_drained(client: PrefectClient, worker_id: str) -> bool:
    """Take the drain off `worker_id`; False when it was not drained."""
    if not await is_drained(client, worker_id):
        return False
    with contextlib.suppress(ObjectNotFound):
        await client.delete_variable_by_name(drain_variable_name(worker_id))
    return True


async def is_drained(client: PrefectClient, worker_id: str) -> bool:
    """One small GET: cheap enough for a worker to ask before every poll."""
    variable = await client.read_variable_by_name(drain_variable_name(worker_id))
    return variable is not None and _record_worker(variable.value) == worker_id


async def read_worker_records(client: PrefectClient) -> WorkerRecords:
    """Every drain flag and every published flow-run limit, in one `/variables/filter`."""
    response = await client.request(
        "POST",
        "/variables/filter",
        json={"variables": {"name": {"like_": "gpuboard-"}}, "limit": _RECORDS_READ_CAP},
    )
    records = WorkerRecords()
    for variable in response.json():
        tags = variable.get("tags") or []
        value = variable.get("value")
        worker = _record_worker(value)
        if worker is None or not isinstance(value, dict):
            continue
        if DRAIN_TAG in tags:
            since = value.get("since")
            records.drained_since[worker] = float(since) if isinstance(since, int | float) else 0.0
        elif WORKER_RECORD_TAG in tags and isinstance(value.get("runs"), int):
            records.run_limits[worker] = int(value["runs"])
    return records


def _record_worker(value: Any) -> str | None:
    if isinstance(value, dict) and isinstance(value.get("worker"), str):
        return str(value["worker"])
    return None
