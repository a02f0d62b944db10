"""The three GCL lease calls the inference host makes, with the server's answers as values.

`acquire` asks for one slot of a GCL for a named holder and says, without raising, what
the server answered: granted (with the lease), full (423), paused (422: limit 0),
unusable (the GCL is missing or disabled, so the lease holds nothing), or busy (503 or
no answer: ask again soon). The host's queue decides what to do with each. These calls
go out with the client's retries off: Prefect's exponential back-off on a 503 is what
left runs waiting 8-15 s for a slot that was free (DESIGN.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal
from uuid import UUID

import httpx
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.exceptions import PrefectHTTPStatusError

log = logging.getLogger(__name__)

Answer = Literal["granted", "full", "paused", "unusable", "busy"]


@dataclass(frozen=True)
class SlotAnswer:
    """What the server said to one request for a slot."""

    answer: Answer
    lease_id: UUID | None = None
    detail: str = ""


async def acquire(
    client: PrefectClient,
    gcl: str,
    *,
    lease_seconds: float,
    task_run_id: UUID | None,
    flow_run_id: UUID | None,
) -> SlotAnswer:
    """Ask once for one slot of `gcl`, held for the task run (else the flow run) named."""
    holder = None
    if task_run_id is not None:
        holder = ConcurrencyLeaseHolder(type="task_run", id=task_run_id)
    elif flow_run_id is not None:
        holder = ConcurrencyLeaseHolder(type="flow_run", id=flow_run_id)
    try:
        response = await client.increment_concurrency_slots_with_lease(
            names=[gcl], slots=1, mode="concurrency", lease_duration=lease_seconds, holder=holder
        )
    except (PrefectHTTPStatusError, httpx.HTTPStatusError) as exc:
        status = exc.response.status_code
        if status == 423:
            return SlotAnswer("full")
        if status == 422:
            return SlotAnswer("paused", detail=_detail(exc.response))
        if status in (429, 502, 503, 504):
            return SlotAnswer("busy", detail=f"server answered {status}")
        raise
    except (httpx.TransportError, TimeoutError) as exc:
        return SlotAnswer("busy", detail=f"{type(exc).__name__}: {exc}")
    body = response.json()
    lease_id = UUID(str(body["lease_id"]))
    if not any(limit.get("name") == gcl for limit in body.get("limits", [])):
        # A missing or disabled GCL limits nothing: the server grants a lease over no
        # limit at all. Give it back; the caller fails the request instead of running free.
        await release(client, lease_id)
        return SlotAnswer("unusable")
    return SlotAnswer("granted", lease_id=lease_id)


async def release(client: PrefectClient, lease_id: UUID) -> Literal["released", "refused"]:
    """Give the lease's slot back. "refused" is Prefect 3.9's 409 at limit 0 (it divides
    by the limit on release): the lease stays until released later or it expires."""
    try:
        await client.release_concurrency_slots_with_lease(lease_id)
    except (PrefectHTTPStatusError, httpx.HTTPStatusError) as exc:
        if exc.response.status_code == 409:
            return "refused"
        raise
    return "released"


async def renew(client: PrefectClient, lease_id: UUID, lease_seconds: float) -> bool:
    """Extend the lease; False when the server no longer has it (410/404)."""
    try:
        await client.renew_concurrency_lease(lease_id, lease_duration=lease_seconds)
    except (PrefectHTTPStatusError, httpx.HTTPStatusError) as exc:
        if exc.response.status_code in (404, 410):
            return False
        raise
    return True


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", ""))
    except ValueError:
        return response.text[:200]
