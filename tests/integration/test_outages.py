"""Outages against a real Prefect server: the board's server goes away and comes back.
(A worker killed hard and started again: test_stack_e2e.py.)

No mocks: a real `prefect server` process stopped and started on the same home and port;
only NVML is faked for the board.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from fakes.fake_nvml import FakeNvml
from gpuboard.core.board_source import BoardSource
from gpuboard.core.local_server import LocalServer, api_is_healthy
from gpuboard.core.nvml_source import NvmlSource
from gpuboard.core.prefect.gcl import set_gcl_limit
from gpuboard.core.prefect.poll_client import poll_client
from gpuboard.tui.app import GpuBoardApp
from gpuboard.tui.widgets.banner import Banner
from gpuboard.tui.widgets.workers_table import WorkersTable
from support.pilot import until
from support.seeding import create_gcl, create_pool, free_port, heartbeat, unique

# -- the board's own server stops and starts again ------------------------------------------


def slots_cell(app: GpuBoardApp, worker: str) -> str:
    """The worker's `slots` cell as shown, e.g. `██░ 1/3`."""
    table = app.query_one(WorkersTable)
    cells = dict(
        zip(
            (str(column.key.value) for column in table.ordered_columns),
            (str(cell) for cell in table.get_row(worker)),
            strict=True,
        )
    )
    return cells["slots"].strip()


def slots_of(app: GpuBoardApp, worker: str) -> tuple[int | None, int | None]:
    """(active slots, limit) of `worker` in the board's current snapshot."""
    view = app.snapshot.worker(worker) if app.snapshot is not None else None
    return (None, None) if view is None else (view.active_slots, view.limit)


async def test_board_recovers_when_its_server_stops_and_starts_again(
    tmp_path: Path, server_database: str | None
) -> None:
    # A server of its own: stopping the session's server would break every other test.
    # Its database: SQLite in its home, then a PostgreSQL database that outlives it.
    home, port = tmp_path / "server", free_port()
    server = LocalServer(home=home, port=port, database_url=server_database)
    server.start()
    pool, worker = unique("outage"), "gpu-o"
    gcl = f"gpu:{worker}"
    try:
        async with poll_client(server.api_url) as client:
            await create_pool(client, pool)
            await heartbeat(client, pool, worker)
            await create_gcl(client, gcl, 3, active_slots=1)
        source = BoardSource(
            pool, server.api_url, nvml=NvmlSource(FakeNvml(init_error=12), host="board-host")
        )
        app = GpuBoardApp(source, pool=pool, api_url=server.api_url, refresh=0.3)
        async with app.run_test(size=(100, 30)) as pilot:
            banner = app.query_one(Banner)
            panel = app.query_one("#workers-panel")
            await until(pilot, lambda: slots_of(app, worker) == (1, 3), timeout=30)
            assert app.snapshot is not None and not app.snapshot.stale
            assert not banner.has_class("-visible")
            assert slots_cell(app, worker).endswith("1/3")

            # Stopped in a thread: the board keeps polling while the server goes.
            await asyncio.to_thread(server.stop)
            assert not api_is_healthy(server.api_url)
            await until(pilot, lambda: banner.has_class("-visible"), timeout=30)
            snapshot = app.snapshot
            assert snapshot is not None and snapshot.stale and not snapshot.connected
            assert "unreachable" in str(banner.render()).lower()
            assert banner.has_class("-unreachable") and panel.has_class("-stale")
            # The last data stays, on screen and in the snapshot.
            assert slots_of(app, worker) == (1, 3)
            assert slots_cell(app, worker).endswith("1/3")
            # Still stale after more refreshes against a dead port (not a one-off).
            await pilot.pause(1.5)
            assert app.snapshot is not None and app.snapshot.stale
            assert banner.has_class("-visible") and slots_of(app, worker) == (1, 3)

            # Same home (same database), same port: the board was never told anything.
            restarted = LocalServer(home=home, port=port, database_url=server_database)
            server = restarted
            starting = time.monotonic()
            await asyncio.to_thread(restarted.start)
            answering = time.monotonic()
            await until(pilot, lambda: not banner.has_class("-visible"), timeout=60)
            live = time.monotonic()
            snapshot = app.snapshot
            assert snapshot is not None and snapshot.connected and not snapshot.stale
            assert not panel.has_class("-stale")
            assert slots_of(app, worker) == (1, 3)  # the database survived the restart

            # Data is current: a change made on the restarted server reaches the board.
            async with poll_client(restarted.api_url) as client:
                await heartbeat(client, pool, worker)
                await set_gcl_limit(client, gcl, 5)
            changed = time.monotonic()
            await until(pilot, lambda: slots_of(app, worker) == (1, 5), timeout=30)
            seen = time.monotonic()
            assert slots_cell(app, worker).endswith("1/5")
            assert app.snapshot is not None and not app.snapshot.stale
            assert not banner.has_class("-visible")
            # Recorded, never asserted beyond the generous timeouts above.
            print(
                f"\nserver restart took {answering - starting:.1f} s; board live again "
                f"{live - answering:.1f} s after the server answered; a limit change on the "
                f"restarted server shown {seen - changed:.1f} s after it was made"
            )
    finally:
        server.stop()
