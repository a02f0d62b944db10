"""The board reads less while nothing changes, and is live again on a change or a key."""

from __future__ import annotations

import dataclasses
import time

from test_dashboard_snapshot import fleet_snapshot
from textual.pilot import Pilot

from gpuboard.core.idle import IDLE_AFTER_READS, fingerprint
from gpuboard.core.models import Snapshot
from gpuboard.tui.app import GpuBoardApp


class CountingSource:
    """Answers `snapshot` (with a fresh clock, as a live source would) and counts reads."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.reads = 0

    async def read(self) -> Snapshot:
        self.reads += 1
        now = time.time()
        return dataclasses.replace(self.snapshot, taken_at=now, prefect_read_at=now)

    async def aclose(self) -> None:
        pass


def test_the_fingerprint_leaves_clocks_out_and_sees_changes() -> None:
    snapshot = fleet_snapshot()
    later = dataclasses.replace(
        snapshot,
        taken_at=snapshot.taken_at + 7,
        prefect_read_at=snapshot.taken_at + 7,
        workers=tuple(dataclasses.replace(w, heartbeat_age=99.0) for w in snapshot.workers),
    )
    assert fingerprint(later) == fingerprint(snapshot)
    first = snapshot.workers[0]
    assert first.gcl is not None
    busier = dataclasses.replace(
        snapshot,
        workers=(
            dataclasses.replace(first, gcl=dataclasses.replace(first.gcl, active_slots=0)),
            *snapshot.workers[1:],
        ),
    )
    assert fingerprint(busier) != fingerprint(snapshot)


async def reads_during(pilot: Pilot[int], source: CountingSource, seconds: float) -> int:
    before = source.reads
    await pilot.pause(seconds)
    return source.reads - before


async def test_an_unchanging_board_reads_less_and_wakes_on_a_change_or_a_key() -> None:
    source = CountingSource(fleet_snapshot())
    app = GpuBoardApp(source, pool="ml-pool", api_url="http://127.0.0.1:4200/api", refresh=0.2)
    async with app.run_test(size=(100, 30)) as pilot:
        # Live: a read every refresh until IDLE_AFTER_READS of them showed nothing new.
        while source.reads <= IDLE_AFTER_READS + 1:
            await pilot.pause(0.1)
        idle = await reads_during(pilot, source, 2.0)
        assert idle <= 1, f"{idle} reads in 2 s while idle (live: ~10)"
        # A key brings the configured refresh back.
        await pilot.press("r")
        woken = await reads_during(pilot, source, 1.0)
        assert woken >= 3, f"{woken} reads in 1 s after a key"
        # So does a change seen by an idle board's next read.
        while await reads_during(pilot, source, 1.0) > 1:
            pass  # idle again
        first = source.snapshot.workers[0]
        assert first.gcl is not None
        source.snapshot = dataclasses.replace(
            source.snapshot,
            workers=(
                dataclasses.replace(first, gcl=dataclasses.replace(first.gcl, active_slots=0)),
                *source.snapshot.workers[1:],
            ),
        )
        seen_at = source.reads
        while source.reads == seen_at:  # the idle board's next read (within 5 s) sees it
            await pilot.pause(0.05)
        live = await reads_during(pilot, source, 1.0)
        assert live >= 3, f"{live} reads in 1 s after a change"
