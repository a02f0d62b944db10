"""Reads and writes the `gpu:<worker>` Global Concurrency Limits."""

from __future__ import annotations

import contextlib

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
)
from prefect.client.schemas.responses import GlobalConcurrencyLimitResponse
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from gpuboard.core.config import GCL_PREFIX
from gpuboard.core.models import GclState

_PAGE = 200  # the server's maximum page size for GCL reads


def _state(response: GlobalConcurrencyLimitResponse) -> GclState:
    return GclState(
        name=response.name,
        limit=response.limit,
        active_slots=response.active_slots,
        active=response.active,
    )


async def read_gcl(client: PrefectClient, name: str) -> GclState | None:
    """The GCL called `name`, or None when the server has none by that name."""
    try:
        return _state(await client.read_global_concurrency_limit_by_name(name))
    except ObjectNotFound:
        return None


async def read_gpu_gcls(client: PrefectClient) -> list[GclState]:
    """Every GCL whose name starts with `gpu:`, sorted by name."""
    found: list[GclState] = []
    offset = 0
    while True:
        page = await client.read_global_concurrency_limits(limit=_PAGE, offset=offset)
        found.extend(_state(r) for r in page if r.name.startswith(GCL_PREFIX))
        if len(page) < _PAGE:
            return sorted(found, key=lambda gcl: gcl.name)
        offset += _PAGE


async def ensure_gcl(client: PrefectClient, name: str, limit: int) -> tuple[GclState, bool]:
    """Create GCL `name` with `limit` when missing; never change an existing one.

    Returns the GCL as the server then holds it and whether this call created it.
    """
    existing = await read_gcl(client, name)
    if existing is not None:
        return existing, False
    # Another process may create it between our read and write: theirs stands.
    with contextlib.suppress(ObjectAlreadyExists):
        await client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=name, limit=limit, active=True)
        )
    created = await read_gcl(client, name)
    if created is None:
        raise RuntimeError(f"GCL {name!r} vanished right after it was created")
    return created, existing is None


async def set_gcl_limit(client: PrefectClient, name: str, limit: int) -> GclState:
    """Set the limit of the existing GCL `name`; ObjectNotFound when it does not exist."""
    await client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=limit))
    state = await read_gcl(client, name)
    if state is None:
        raise ObjectNotFound(http_exc=Exception(f"GCL {name!r} not found after update"))
    return state
