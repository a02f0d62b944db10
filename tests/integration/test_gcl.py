"""The GCL helpers against a real Prefect server."""

from __future__ import annotations

import uuid

from gpuboard.core.local_server import LocalServer
from gpuboard.core.prefect.client import async_client
from gpuboard.core.prefect.gcl import ensure_gcl, read_gcl, read_gpu_gcls, set_gcl_limit


async def test_ensure_creates_then_never_overwrites(fleet_server: LocalServer) -> None:
    name = f"gpu:test-{uuid.uuid4().hex[:8]}"
    async with async_client(fleet_server.api_url) as client:
        assert await read_gcl(client, name) is None
        state, created = await ensure_gcl(client, name, 2)
        assert created and state.limit == 2 and state.active_slots == 0
        state, created = await ensure_gcl(client, name, 7)
        assert not created and state.limit == 2
        assert name in [gcl.name for gcl in await read_gpu_gcls(client)]
        state = await set_gcl_limit(client, name, 0)
        assert state.limit == 0 and state.paused
