"""Publishes each leaked GPU slot gpuboard releases as Prefect event `gpuboard.slot.reclaimed`,
so that a board or `gpuboard metrics` anywhere can count them (the reclaimer runs inside
each `gpuboard worker`, whose log is on its own machine)."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

from gpuboard.core.config import GCL_PREFIX
from gpuboard.core.prefect.events import emit_event

EVENT_NAME = "gpuboard.slot.reclaimed"
RESOURCE_PREFIX = "gpuboard.gcl."

log = logging.getLogger(__name__)


def worker_of_gcl(gcl: str) -> str:
    """`gpu:<worker>` -> `<worker>`; another name stays as it is."""
    return gcl.removeprefix(GCL_PREFIX)


async def publish_reclaim(
    client: Any, gcl: str, lease_id: UUID, flow_run_id: UUID | None, reason: str
) -> None:
    """Record one released slot; never raises (the release is done, this is a report)."""
    try:
        await emit_event(
            client,
            EVENT_NAME,
            resource={
                "prefect.resource.id": f"{RESOURCE_PREFIX}{gcl}",
                "gpuboard.worker": worker_of_gcl(gcl),
            },
            payload={
                "gcl": gcl,
                "worker": worker_of_gcl(gcl),
                "lease_id": str(lease_id),
                "flow_run_id": None if flow_run_id is None else str(flow_run_id),
                "reason": reason,
            },
            occurred=datetime.now(timezone.utc),
        )
    except Exception as exc:
        log.debug("cannot publish the reclaim of lease %s: %s", lease_id, exc)


def worker_of_event(payload: dict[str, Any]) -> str:
    """The worker whose slot a `gpuboard.slot.reclaimed` payload reports; ValueError if none."""
    worker = payload.get("worker") or worker_of_gcl(str(payload.get("gcl") or ""))
    if not worker:
        raise ValueError("reclaim event without a worker")
    return str(worker)
