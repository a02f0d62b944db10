"""Who holds which lease of a GCL, over the Prefect API: lease records, their holders' run
states, and the release of one precise lease.

Prefect 3.9 keeps each lease's holder in the server's lease storage, but its API lists
holders only for `tag:` limits (the v1 `/concurrency_limits` routes); for a v2 GCL such as
`gpu:<worker>` it exposes `active_slots` and nothing about who holds them. So the holder
publishes its lease itself (`gpu_slot()` does, through `slot_lease.recorded_concurrency`):
one Prefect Variable per held lease, named `gpuboard-lease-<lease id>` and tagged with the
GCL, deleted when the slot is released. A record whose holder died stays behind, which is
exactly what a reclaimer looks for. Everything here is plain API: it works against a
remote server.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient, SyncPrefectClient
from prefect.client.schemas.actions import VariableCreate
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    TaskRunFilter,
    TaskRunFilterId,
)
from prefect.client.schemas.objects import FlowRun, TaskRun, Variable
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

from gpuboard.core.process_identity import ProcessIdentity

log = logging.getLogger(__name__)

RECORD_TAG = "gpuboard-lease"  # on every lease record, to list them all in one call
_NAME_PREFIX = "gpuboard-lease-"
_PAGE = 200  # the server's largest page for /variables/filter, /flow_runs/filter, ...
# The server's minimum lease. Renewing is how we ask whether a lease is still held; the
# renewal is followed at once by the release, so its length does not matter.
_PROBE_LEASE_SECONDS = 60


@dataclass(frozen=True)
class LeaseRecord:
    """One held lease of a GCL as its holder published it."""

    lease_id: UUID
    gcl: str
    task_run_id: UUID | None  # the holder Prefect records for the lease, when in a task
    flow_run_id: UUID | None
    acquired_at: float  # epoch seconds
    process: ProcessIdentity | None  # the process that holds it


@dataclass(frozen=True)
class RunState:
    """A flow run's or task run's state as the server holds it now."""

    id: UUID
    name: str
    state_type: str  # Prefect's StateType value: "RUNNING", "CRASHED", ...
    state_name: str
    state_since: float | None  # epoch seconds the state was entered
    # The Prefect worker that runs it (its `prefect.worker.name` label); flow runs only.
    worker: str | None = None
    # The PID of its process on its worker's machine, as a process worker records it.
    infrastructure_pid: int | None = None


@dataclass(frozen=True)
class HolderStates:
    """The current states of the runs that hold leases; a run the server lacks is absent."""

    flow_runs: Mapping[UUID, RunState]
    task_runs: Mapping[UUID, RunState]


def record_tag(gcl: str) -> str:
    """The tag that marks the lease records of GCL `gcl` (tags may hold any character)."""
    return f"{RECORD_TAG}:{gcl}"


def variable_name(lease_id: UUID) -> str:
    return f"{_NAME_PREFIX}{lease_id}"


def record_variable(record: LeaseRecord) -> VariableCreate:
    """The Variable that publishes `record`."""
    process = record.process
    value: dict[str, Any] = {
        "lease_id": str(record.lease_id),
        "gcl": record.gcl,
        "task_run_id": _str_or_none(record.task_run_id),
        "flow_run_id": _str_or_none(record.flow_run_id),
        "acquired_at": record.acquired_at,
        "process": None
        if process is None
        else {
            "host": process.host,
            "pid": process.pid,
            "pid_namespace": process.pid_namespace,
            "start_ticks": process.start_ticks,
        },
    }
    return VariableCreate(
        name=variable_name(record.lease_id),
        value=value,
        tags=[RECORD_TAG, record_tag(record.gcl)],
    )


def publish_record(client: SyncPrefectClient, record: LeaseRecord) -> None:
    """Publish `record` (synchronous: called by the slot holder, see slot_lease)."""
    client.create_variable(record_variable(record))


def withdraw_record(client: SyncPrefectClient, lease_id: UUID) -> None:
    """Delete the record of `lease_id`, if there is one (synchronous twin of forget_lease)."""
    with contextlib.suppress(ObjectNotFound):  # already gone: nothing to do
        client.delete_variable_by_name(variable_name(lease_id))


async def forget_lease(client: PrefectClient, lease_id: UUID) -> None:
    """Delete the record of `lease_id`, if there is one."""
    with contextlib.suppress(ObjectNotFound):  # already gone: nothing to do
        await client.delete_variable_by_name(variable_name(lease_id))


async def list_leases(client: PrefectClient, gcl: str | None = None) -> list[LeaseRecord]:
    """The published lease records of GCL `gcl` (of every GCL when None), oldest first.

    One request per 200 records. A record that does not parse (edited by hand) is logged
    and skipped: it names no lease we could release precisely.
    """
    tag = RECORD_TAG if gcl is None else record_tag(gcl)
    records: list[LeaseRecord] = []
    offset = 0
    while True:
        response = await client.request(
            "POST",
            "/variables/filter",
            json={
                "variables": {"tags": {"all_": [tag]}},
                "limit": _PAGE,
                "offset": offset,
            },
        )
        page = [Variable.model_validate(item) for item in response.json()]
        for variable in page:
            record = _parse_record(variable)
            if record is None:
                log.warning("ignoring unreadable lease record %s", variable.name)
            else:
                records.append(record)
        if len(page) < _PAGE:
            return sorted(records, key=lambda record: record.acquired_at)
        offset += _PAGE


async def release_lease(client: PrefectClient, lease_id: UUID) -> bool:
    """Release exactly the lease `lease_id`; True when it was still held, False when not.

    Never touches any other lease or the GCL's count: the server frees the slots that
    this one lease holds, and does nothing for a lease it no longer has.
    """
    try:
        # The one way the API tells whether a lease exists: renewing it (410 when gone).
        await client.renew_concurrency_lease(lease_id, lease_duration=_PROBE_LEASE_SECONDS)
        was_held = True
    except PrefectHTTPStatusError as exc:
        if exc.response.status_code != 410:
            raise
        was_held = False
    # Released even when the probe said gone: an expired lease the server has not swept
    # yet still holds its slots, and release frees them now.
    await client.release_concurrency_slots_with_lease(lease_id)
    return was_held


async def read_holder_states(client: PrefectClient, records: Iterable[LeaseRecord]) -> HolderStates:
    """The states of the records' flow runs and task runs: two requests per 200 of each."""
    records = list(records)
    flow_runs = await read_flow_run_states(client, (r.flow_run_id for r in records))
    task_run_ids = sorted({r.task_run_id for r in records if r.task_run_id}, key=str)
    task_runs: dict[UUID, RunState] = {}
    for chunk in _chunks(task_run_ids):
        for task_run in await client.read_task_runs(
            task_run_filter=TaskRunFilter(id=TaskRunFilterId(any_=chunk)), limit=len(chunk)
        ):
            task_runs[task_run.id] = run_state(task_run)
    return HolderStates(flow_runs=flow_runs, task_runs=task_runs)


async def read_flow_run_states(
    client: PrefectClient, ids: Iterable[UUID | None]
) -> dict[UUID, RunState]:
    """The states of the flow runs `ids` (None skipped): one request per 200; a run the
    server does not have is absent."""
    flow_run_ids = sorted({run_id for run_id in ids if run_id}, key=str)
    flow_runs: dict[UUID, RunState] = {}
    for chunk in _chunks(flow_run_ids):
        for flow_run in await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=chunk)), limit=len(chunk)
        ):
            flow_runs[flow_run.id] = run_state(flow_run)
    return flow_runs


def run_state(run: FlowRun | TaskRun) -> RunState:
    state = run.state
    worker = run.labels.get("prefect.worker.name") if isinstance(run, FlowRun) else None
    return RunState(
        id=run.id,
        name=run.name,
        state_type=state.type.value if state else (run.state_type.value if run.state_type else ""),
        state_name=(state.name if state else run.state_name) or "",
        state_since=_epoch(state.timestamp) if state else None,
        worker=str(worker) if worker else None,
        infrastructure_pid=_pid(run.infrastructure_pid) if isinstance(run, FlowRun) else None,
    )


def _pid(value: str | None) -> int | None:
    """A process worker's `infrastructure_pid` ("12345"; "host:12345" in some versions)."""
    tail = (value or "").rpartition(":")[2]
    return int(tail) if tail.isdigit() else None


def _parse_record(variable: Variable) -> LeaseRecord | None:
    value = variable.value
    if not isinstance(value, dict):
        return None
    try:
        process = value.get("process")
        return LeaseRecord(
            lease_id=UUID(str(value["lease_id"])),
            gcl=str(value["gcl"]),
            task_run_id=_uuid_or_none(value.get("task_run_id")),
            flow_run_id=_uuid_or_none(value.get("flow_run_id")),
            acquired_at=float(value["acquired_at"]),
            process=None
            if not isinstance(process, dict)
            else ProcessIdentity(
                host=str(process["host"]),
                pid=int(process["pid"]),
                pid_namespace=str(process.get("pid_namespace") or ""),
                start_ticks=_int_or_none(process.get("start_ticks")),
            ),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _chunks(ids: list[UUID]) -> list[list[UUID]]:
    return [ids[start : start + _PAGE] for start in range(0, len(ids), _PAGE)]


def _epoch(moment: datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()


def _str_or_none(value: UUID | None) -> str | None:
    return None if value is None else str(value)


def _uuid_or_none(value: object) -> UUID | None:
    return None if value in (None, "") else UUID(str(value))


def _int_or_none(value: object) -> int | None:
    return None if value is None else int(str(value))
