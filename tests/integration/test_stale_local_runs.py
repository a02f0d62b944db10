"""Stale-run detection by process for workers on this machine, against a real server: a
Running run's recorded process (`infrastructure_pid`, as Prefect's process worker records
it) that is gone is flagged at once, a live one never, a remote worker's run only by
heartbeats."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import uuid

from gpuboard.core.local_server import LocalServer
from gpuboard.core.prefect.poll_client import poll_client
from gpuboard.core.prefect.worker_process import publish_worker_process
from gpuboard.core.process_identity import this_process
from gpuboard.core.reclaim import find_stale_runs, reschedule_stuck_run
from gpuboard.core.worker import (
    CSRF_SUPPORT_ENV,
    WorkerOptions,
    prepare_worker,
    server_csrf_protection,
    worker_environment,
)
from support.seeding import create_deployment, create_pool, create_run, heartbeat


def exited_pid() -> int:
    """The PID of a process that has exited (reused by a later one only after a wrap)."""
    exited = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(exited.stdout)


async def test_a_local_runs_dead_process_is_flagged_at_once(prefect_server: LocalServer) -> None:
    tag = uuid.uuid4().hex[:6]
    pool, here, elsewhere = f"stale-{tag}", f"here-{tag}", f"far-{tag}"
    dead_pid = exited_pid()
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


async def test_runs_left_pending_by_a_dead_worker_go_back_to_scheduled(
    prefect_server: LocalServer,
) -> None:
    """A worker killed between taking runs (Pending) and their processes reporting Running
    leaves them Pending for ever in plain Prefect. The board flags them; `gpuboard worker`
    starting again under that name puts back exactly its own whose process is not running."""
    tag = uuid.uuid4().hex[:6]
    pool, dead_worker, other = f"orphans-{tag}", f"gone-{tag}", f"other-{tag}"
    dead_pid = exited_pid()
    options = WorkerOptions(dead_worker, pool, runs=2, gpu_slots=1, api_url=prefect_server.api_url)
    async with poll_client(prefect_server.api_url) as client:
        await create_pool(client, pool)
        deployment = await create_deployment(client, pool)

        async def pending(worker: str | None, pid: int | None, image_id: int) -> uuid.UUID:
            run_id = await create_run(
                client, deployment, "Pending", image_id=image_id, worker=worker
            )
            if pid is not None:
                await client.update_flow_run(run_id, infrastructure_pid=str(pid))
            return run_id

        orphan_started = await pending(dead_worker, dead_pid, 1)  # its process died
        orphan_unstarted = await pending(dead_worker, None, 2)  # killed before the process
        still_starting = await pending(dead_worker, os.getpid(), 3)  # its process runs here
        elsewhere = await pending(other, None, 4)  # another worker's: never touched
        unlabelled = await pending(None, None, 5)  # nobody's: only the board can offer it

        # The board's view (this machine sees `dead_worker`'s processes).
        report = await find_stale_runs(
            client, 3600, work_pool=pool, local_workers={dead_worker}, pending_after_s=0.0
        )
        stale = {run.flow_run.id: run for run in report.stale}
        assert stale[orphan_started].process_gone
        assert set(stale) == {orphan_started, orphan_unstarted, elsewhere, unlabelled}
        assert "Pending for" in stale[unlabelled].reason

        async def states() -> dict[uuid.UUID, str]:
            ids = (orphan_started, orphan_unstarted, still_starting, elsewhere, unlabelled)
            return {i: (await client.read_flow_run(i)).state_name or "" for i in ids}

        # While a worker of that name still counts online, its restart leaves them alone.
        await heartbeat(client, pool, dead_worker, interval=10)
        await prepare_worker(options)
        assert set((await states()).values()) == {"Pending"}

        # Still online, but its previous life (its recorded process) is seen dead from
        # here: a quick restart after a kill puts its runs back at once.
        me = this_process()
        assert me.start_ticks is not None
        dead = dataclasses.replace(me, pid=exited_pid())
        await publish_worker_process(client, dead_worker, dead)
        notes = await prepare_worker(options)
        assert any("2 run(s) left Pending" in note for note in notes), notes
        after = await states()
        assert after[orphan_started] == after[orphan_unstarted] == "Scheduled"
        assert after[still_starting] == after[elsewhere] == after[unlabelled] == "Pending"

        # The operator's remedy for the unlabelled one; refused for a run that moved on.
        mark = await reschedule_stuck_run(client, unlabelled, "test")
        assert mark.marked and mark.state_name == "Scheduled"
        again = await reschedule_stuck_run(client, unlabelled, "test")
        assert not again.marked and again.detail == "no longer Pending"


def test_workers_skip_csrf_tokens_only_where_the_server_has_no_csrf_protection(
    prefect_server: LocalServer,
) -> None:
    options = WorkerOptions("csrf-1", "pool", runs=1, gpu_slots=1, api_url=prefect_server.api_url)
    assert server_csrf_protection(options) is False  # LocalServer: Prefect's default, off
    env = worker_environment(options, {}, server_csrf=False)
    assert env[CSRF_SUPPORT_ENV] == "false"
    for unknown_or_on in (None, True):
        env = worker_environment(options, {}, server_csrf=unknown_or_on)
        assert CSRF_SUPPORT_ENV not in env
    # A user's own setting wins.
    env = worker_environment(options, {CSRF_SUPPORT_ENV: "true"}, server_csrf=False)
    assert env[CSRF_SUPPORT_ENV] == "true"
    unreachable = WorkerOptions("csrf-1", "pool", 1, 1, api_url="http://127.0.0.1:9/api")
    assert server_csrf_protection(unreachable) is None
