"""Who holds the GPU slots of a pool's workers, which holders are dead, which Running or
Pending runs have no live process, and the operator's remedies: release one dead holder's
lease, mark a stale Running run Crashed, put a stuck Pending run back to Scheduled. Each
refuses in read-only mode and is written to the audit log.

Two kinds of holders: a flow-run process that took its slot itself (the plain way) and
published a lease record, and a worker's inference host, which holds a slot per request
it serves and says so in the host state it publishes.

The board's holders screen (`h`) reads `read_holders` every couple of seconds; nothing here
releases anything on its own (that is `gpuboard worker`'s reclaimer): a board only finds
and judges (`reclaim_gcl(dry_run=True)`), and acts on a confirmed key press.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal
from uuid import UUID

from prefect.client.orchestration import PrefectClient

from gpuboard.core.audit import record_action
from gpuboard.core.config import gcl_name
from gpuboard.core.host.state import HostState, SlotHolder
from gpuboard.core.limit_actions import ReadOnlyError
from gpuboard.core.prefect.client import async_client
from gpuboard.core.prefect.leases import RunState, read_flow_run_states, release_lease
from gpuboard.core.prefect.run_health import StateMark
from gpuboard.core.reclaim import (
    PENDING_STUCK_AFTER_S,
    ReclaimReport,
    Release,
    StaleReport,
    default_stale_after_s,
    find_stale_runs,
    mark_run_crashed,
    reclaim_gcl,
    reclaim_lease,
    reschedule_stuck_run,
)
from gpuboard.core.reclaim_events import publish_reclaim


@dataclass(frozen=True)
class HostHolding:
    """A slot an inference host holds for one request, and for which flow run."""

    gcl: str
    worker: str
    holder: SlotHolder
    flow_run: RunState | None  # None: no flow run named, or the server has none
    host_live: bool  # the host published within HOST_STATE_STALE_AFTER
    reason: str


@dataclass(frozen=True)
class HoldersView:
    """One read of the holders of `gcls` and of the stale runs of `pool`."""

    read_at: float  # epoch seconds
    gcls: tuple[ReclaimReport, ...]  # one per GCL, in the order asked
    stale: StaleReport
    stale_after_s: float
    hosts: tuple[HostHolding, ...] = ()

    @property
    def errors(self) -> tuple[str, ...]:
        return tuple(e for report in self.gcls for e in report.errors) + self.stale.errors

    def unaccounted_slots(self, report: ReclaimReport) -> int:
        """Slots of `report`'s GCL held by no published lease and no live host's request:
        a holder killed before it said so; back when its lease expires."""
        by_hosts = sum(1 for h in self.hosts if h.gcl == report.gcl and h.host_live)
        return max(0, report.unrecorded_slots - by_hosts)


async def read_holders(
    gcls: Sequence[str],
    pool: str,
    *,
    api_url: str | None = None,
    check_processes: bool = True,
    local_workers: Collection[str] = (),
    stale_after_s: float | None = None,
    pending_after_s: float | None = None,
    host_states: Callable[[], Mapping[str, HostState]] | None = None,
) -> HoldersView:
    """The published holders of each GCL in `gcls`, judged, and the stale Running runs of
    work pool `pool`. Releases nothing. Failures are in the reports' `errors`.

    `check_processes`: a holder whose process is on this machine is judged by whether that
    process runs (the board runs on the GPU host); elsewhere by its run's state. So is a
    Running run of one of `local_workers` (the Prefect workers on this machine).
    `host_states` gives the workers' inference hosts as last heard (the board's snapshot).
    """
    hosts = dict(host_states()) if host_states is not None else {}
    threshold = default_stale_after_s() if stale_after_s is None else stale_after_s
    async with async_client(api_url) as client:
        reports = await asyncio.gather(
            *(
                reclaim_gcl(client, gcl, check_processes=check_processes, dry_run=True)
                for gcl in gcls
            )
        )
        # The records just read for the GCLs serve the stale check too (one read less),
        # unless a GCL's read failed.
        records = (
            None
            if any(report.errors for report in reports)
            else [holder.record for report in reports for holder in report.holders]
        )
        stale = await find_stale_runs(
            client,
            threshold,
            work_pool=pool,
            check_processes=check_processes,
            local_workers=local_workers,
            pending_after_s=PENDING_STUCK_AFTER_S if pending_after_s is None else pending_after_s,
            records=records,
        )
        holdings = await _host_holdings(client, hosts, set(gcls))
    return HoldersView(
        read_at=time.time(),
        gcls=tuple(reports),
        stale=stale,
        stale_after_s=threshold,
        hosts=holdings,
    )


async def _host_holdings(
    client: PrefectClient, hosts: Mapping[str, HostState], gcls: set[str]
) -> tuple[HostHolding, ...]:
    now = time.time()
    held = [
        (worker, state, holder)
        for worker, state in sorted(hosts.items())
        if gcl_name(worker) in gcls
        for holder in state.holders
    ]
    runs = await read_flow_run_states(client, (_uuid(h.flow_run_id) for _, _, h in held))
    holdings = []
    for worker, state, holder in held:
        live = not state.stale(now)
        where = f"pid {state.pid} on {state.host}" if state.pid else state.host
        reason = (
            f"inference host of {worker} ({where}): released when the inference ends"
            if live
            else f"inference host of {worker} silent for {state.age(now):.0f} s (its worker "
            "died?): the slot frees itself when its lease expires (<= 60 s) or `gpuboard "
            "worker` restarts; x releases it now"
        )
        holdings.append(
            HostHolding(
                gcl=gcl_name(worker),
                worker=worker,
                holder=holder,
                flow_run=_run_of(runs, holder.flow_run_id),
                host_live=live,
                reason=reason,
            )
        )
    return tuple(holdings)


def _run_of(runs: Mapping[UUID, RunState], flow_run_id: str | None) -> RunState | None:
    run_id = _uuid(flow_run_id)
    return runs.get(run_id) if run_id is not None else None


def _uuid(value: str | None) -> UUID | None:
    try:
        return UUID(value) if value else None
    except ValueError:
        return None


async def release_silent_host_slot(
    gcl: str,
    lease_id: UUID,
    host: HostState | None,
    *,
    api_url: str | None = None,
    read_only: bool = False,
) -> Release:
    """Release a slot held by an inference host that has stopped publishing (its whole
    worker died: nothing else will release it before its lease expires). `host` is the
    host as last heard; a host heard from again since is refused in `error`."""
    target = f"{gcl} lease {lease_id} of an inference host"
    if read_only:
        record_action("lease.release", target, result="refused: read-only")
        raise ReadOnlyError("gpuboard runs read-only: slots cannot be released")
    if host is None or not host.stale(time.time()):
        reason = "the host is publishing again" if host is not None else "no such host"
        record_action("lease.release", target, result=f"refused: {reason}")
        return Release(lease_id, None, "", was_held=None, error=reason)
    holder = next((h for h in host.holders if h.lease_id == str(lease_id)), None)
    flow_run_id = _uuid(holder.flow_run_id) if holder is not None else None
    reason = f"inference host of {host.worker} silent for {host.age(time.time()):.0f} s"
    async with async_client(api_url) as client:
        try:
            was_held = await release_lease(client, lease_id)
        except Exception as exc:
            release = Release(lease_id, flow_run_id, reason, None, f"release failed: {exc}")
        else:
            release = Release(lease_id, flow_run_id, reason, was_held=was_held)
            if was_held:
                await publish_reclaim(client, gcl, lease_id, flow_run_id, reason)
    record_action(
        "lease.release",
        f"{target} of flow run {flow_run_id or '?'}",
        before=reason,
        after="slot back" if release.was_held else "lease had expired",
        result="ok" if release.error is None else f"refused: {release.error}",
    )
    return release


async def release_dead_holder(
    gcl: str,
    lease_id: UUID,
    *,
    api_url: str | None = None,
    read_only: bool = False,
    check_processes: bool = True,
) -> Release:
    """Release lease `lease_id` of `gcl` if its holder is (still) dead: judged again now, so
    a holder that came back or a lease released meanwhile is refused in `error`."""
    target = f"{gcl} lease {lease_id}"
    if read_only:
        record_action("lease.release", target, result="refused: read-only")
        raise ReadOnlyError("gpuboard runs read-only: slots cannot be released")
    async with async_client(api_url) as client:
        release = await reclaim_lease(client, gcl, lease_id, check_processes=check_processes)
    record_action(
        "lease.release",
        f"{target} of flow run {release.flow_run_id or '?'}",
        before=release.reason or None,
        after="slot back" if release.was_held else "lease had expired",
        result="ok" if release.error is None else f"refused: {release.error}",
    )
    return release


# The two remedies for a run with no live process: what each asks the server, and the
# audit log's name for it.
RunRemedy = Literal["mark-crashed", "reschedule"]
_REMEDIES: dict[RunRemedy, Callable[[PrefectClient, UUID, str], Awaitable[StateMark]]] = {
    # Crashed, through Prefect's rules: a run that finished meanwhile keeps its state.
    "mark-crashed": mark_run_crashed,
    # Back to Scheduled, only while still Pending: for any worker of the pool to take.
    "reschedule": reschedule_stuck_run,
}


async def remedy_run(
    remedy: RunRemedy,
    flow_run_id: UUID,
    reason: str,
    *,
    name: str = "",
    api_url: str | None = None,
    read_only: bool = False,
) -> StateMark:
    """Apply `remedy` to a run with no live process; audited as `run.<remedy>`."""
    action = f"run.{remedy}"
    target = f"{name} ({flow_run_id})" if name else str(flow_run_id)
    if read_only:
        record_action(action, target, result="refused: read-only")
        raise ReadOnlyError(f"gpuboard runs read-only: {action} is refused")
    async with async_client(api_url) as client:
        mark = await _REMEDIES[remedy](client, flow_run_id, reason)
    record_action(
        action,
        target,
        before=reason,
        after=mark.state_name,
        result="ok" if mark.marked else f"refused: {mark.detail}",
    )
    return mark
