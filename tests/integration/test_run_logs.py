"""Reading a run's logs from a real server: each line once, in order, a late one too."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

from prefect import flow
from prefect.client.schemas.actions import LogCreate

from gpuboard.core.local_server import LocalServer
from gpuboard.core.prefect.client import async_client
from gpuboard.core.run_logs import LogReader
from support.seeding import create_pool


@flow(name="quiet")
def quiet() -> None:
    """Never run: its runs get log lines written straight to the server."""


async def test_each_line_is_read_once_and_a_late_one_is_not_lost(
    prefect_server: LocalServer,
) -> None:
    async with async_client(prefect_server.api_url) as client:
        pool = f"logs-{uuid.uuid4().hex[:6]}"
        await create_pool(client, pool)
        run = await client.create_flow_run(flow=quiet, name=f"logs-{pool}")
        start = datetime.now(timezone.utc)

        async def write(seconds: float, message: str, level: int = 20) -> None:
            stamp = start + timedelta(seconds=seconds)
            await client.create_logs(
                [
                    LogCreate(
                        name="t", level=level, message=message, timestamp=stamp, flow_run_id=run.id
                    )
                ]
            )

        reader = LogReader(client, run.id, min_level=20)
        await write(0, "one")
        await write(10, "three")
        await write(11, "noise", level=10)  # below the level asked
        assert [line.message for line in await reader.read_new()] == ["one", "three"]
        assert await reader.read_new() == []
        await write(5, "two, sent late")  # stamped before the newest line seen
        await write(12, "four")
        assert [line.message for line in await reader.read_new()] == ["two, sent late", "four"]
        assert await reader.read_new() == []
