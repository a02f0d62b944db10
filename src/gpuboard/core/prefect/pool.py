"""The process work pool and the workers polling it: create the pool, read who is online."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import httpx
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.workers.process import ProcessWorker

POOL_TYPE = "process"
# A worker that missed this many heartbeats is gone. Prefect's own OFFLINE status waits
# for 3 missed heartbeats (90 s by default), too slow to tell whether to start a worker.
_MISSED_HEARTBEATS = 2
_HEARTBEAT_SLACK_S = 5.0


@dataclass(frozen=True)
class PoolWorker:
    """One worker as the pool knows it."""

    name: str
    online: bool
    heartbeat_age_s: float | None  # None when it never sent a heartbeat


async def ensure_work_pool(client: PrefectClient, name: str) -> bool:
    """Create the process work pool `name` when missing; True when this call created it."""
    try:
        pool = await client.read_work_pool(name)
    except ObjectNotFound:
        pass
    else:
        if pool.type != POOL_TYPE:
            raise RuntimeError(
                f"work pool {name!r} exists with type {pool.type!r}; gpuboard workers need a "
                f"{POOL_TYPE!r} pool: pick another --pool or delete that one"
            )
        return False
    try:
        await client.create_work_pool(
            WorkPoolCreate(
                name=name,
                type=POOL_TYPE,
                # Filled in here rather than left empty: a pool created with an empty
                # template only becomes usable once a worker has filled it in.
                base_job_template=ProcessWorker.get_default_base_job_template(),
            )
        )
    except ObjectAlreadyExists:
        return False  # another process created it between our read and write
    return True


async def read_pool_workers(client: PrefectClient, pool: str) -> list[PoolWorker]:
    """The workers of `pool`, sorted by name; a missing pool has none."""
    try:
        workers = await client.read_workers_for_work_pool(pool, limit=200)
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code == 404:
            return []
        raise
    now = datetime.now(timezone.utc)
    found = []
    for worker in workers:
        age = (
            (now - worker.last_heartbeat_time).total_seconds()
            if worker.last_heartbeat_time is not None
            else None
        )
        interval = worker.heartbeat_interval_seconds or 30
        fresh = age is not None and age < _MISSED_HEARTBEATS * interval + _HEARTBEAT_SLACK_S
        found.append(PoolWorker(worker.name, worker.status == "ONLINE" and fresh, age))
    return sorted(found, key=lambda w: w.name)


async def forget_worker(client: PrefectClient, pool: str, name: str) -> None:
    """Remove a stopped worker's record, so nobody counts it online for another 90 s."""
    try:
        await client.request(
            "DELETE",
            "/work_pools/{work_pool_name}/workers/{name}",
            path_params={"work_pool_name": pool, "name": name},
        )
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code != 404:
            raise
