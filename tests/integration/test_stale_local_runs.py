"""Stale-run detection by process for workers on this machine, against a real server: a
Running run's recorded process (`infrastructure_pid`, as Prefect's process worker records
it) that is gone is flagged at once, a live one never, a remote worker's run only by
heartbeats."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

from gpuboard.core.local_server import LocalServer
from gpuboard.core.prefect.poll_client import poll_client
from gpuboard.core.reclaim import find_stale_runs
from support.seeding import create_deployment, create_pool, create_run, heartbeat


async def test_a_local_runs_dead_process_is_flagged_at_once(prefect_server: LocalServer) -> None:
    tag = uuid.uuid4().hex[:6]
    pool, here, elsewhere = f"stale-{tag}", f"here-{tag}", f"far-{tag}"
    exited = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(exited.stdout)
    async with poll_client(prefect_server.api_url) as client:
        await create_pool(client, pool)
        for worker in (here, elsewhere):
            await heartbeat(client, pool, worker)
        deployment = await create_deployment(client, pool)

        async def running(worker: str, pid: int) -> uuid.UUID:
            run_id = await create_run(client, deployment, "Running", image_id=pid, worker=worker)
            await client.update_flow_run(run_id, infrastructure_pid=str(pid))
            return run_id

        dead_here = await running(here, dead_pid)
        alive_here = await running(here, os.getpid())  # started long before it was Running
        dead_far = await running(elsewhere, dead_pid)

        report = await find_stale_runs(client, 3600, work_pool=pool, local_workers={here})
        assert report.errors == () and report.running == 3
        stale = {run.flow_run.id: run for run in report.stale}
        assert set(stale) == {dead_here}
        assert stale[dead_here].process_gone
        assert f"its process {dead_pid} on this machine is gone" == stale[dead_here].reason

        # By heartbeats alone none has sent one: with a short threshold the remote run is
        # flagged too, the local live one still not (its process is seen running).
        report = await find_stale_runs(client, 0.0, work_pool=pool, local_workers={here})
        stale = {run.flow_run.id: run for run in report.stale}
        assert set(stale) == {dead_here, dead_far}
        assert not stale[dead_far].process_gone and "no heartbeat" in stale[dead_far].reason
        assert alive_here not in stale

        # Without the process check (another machine's view): heartbeats only.
        report = await find_stale_runs(
            client, 0.0, work_pool=pool, local_workers={here}, check_processes=False
        )
        assert {run.flow_run.id for run in report.stale} == {dead_here, alive_here, dead_far}
