"""Prefect calls the GPU slot helper needs from synchronous flow code: read a GCL, name
the lease holder."""

from __future__ import annotations

from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.context import FlowRunContext, TaskRunContext
from prefect.utilities.asyncutils import run_coro_as_sync

from gpuboard.core.models import GclState
from gpuboard.core.prefect.client import async_client
from gpuboard.core.prefect.gcl import read_gcl


def read_gcl_now(name: str) -> GclState | None:
    """The GCL called `name` as the server holds it now, None when there is none."""

    async def read() -> GclState | None:
        async with async_client() as client:
            return await read_gcl(client, name)

    # run_coro_as_sync works both outside an event loop and inside a flow or task run
    # (where one may already be running on this thread).
    return run_coro_as_sync(read())


def current_holder() -> ConcurrencyLeaseHolder | None:
    """Who the server should record as holding a slot: this task run, else this flow run."""
    task_run = TaskRunContext.get()
    if task_run is not None:
        return ConcurrencyLeaseHolder(type="task_run", id=task_run.task_run.id)
    flow_run = FlowRunContext.get()
    if flow_run is not None and flow_run.flow_run is not None:
        return ConcurrencyLeaseHolder(type="flow_run", id=flow_run.flow_run.id)
    return None
