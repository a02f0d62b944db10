"""Drains a worker, or takes the drain off: validated, audited, refused read-only.

A drained worker takes no new flow runs and lets those it has (Pending or Running on it)
finish; the pool's other workers take the queued runs, because a gpuboard pool's runs
are not bound to a worker until one takes them. The board shows it DRAINING while it
still has runs, then DRAINED: a GPU host can then be serviced without killing work.
The flag lives on the Prefect server (core/prefect/drain_flags.py); each worker reads
it before its polls (core/prefect/drain_gate.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect.client.orchestration import PrefectClient

from gpuboard.core.audit import operator_name, record_action
from gpuboard.core.config import gcl_name
from gpuboard.core.limit_actions import ReadOnlyError
from gpuboard.core.prefect.client import async_client
from gpuboard.core.prefect.drain_flags import clear_drained, set_drained
from gpuboard.core.prefect.gcl import read_gcl
from gpuboard.core.prefect.pool import read_pool_workers
from gpuboard.core.prefect.pool_facts import runs_taken_by_worker


class UnknownWorkerError(LookupError):
    """The worker named is neither in the pool nor has a `gpu:<id>` GCL."""


@dataclass(frozen=True)
class DrainOutcome:
    """What a drain or undrain did, with a sentence for the operator."""

    worker: str
    drained: bool  # the worker's flag after the call
    changed: bool  # False: it was so already
    runs: int  # its flow runs Pending or Running at the time
    message: str


async def drain_worker(
    worker: str, *, pool: str, api_url: str | None = None, read_only: bool = False
) -> DrainOutcome:
    """Mark `worker` drained: it takes no new flow runs; those it has finish."""
    return await _set(worker, True, pool=pool, api_url=api_url, read_only=read_only)


async def undrain_worker(
    worker: str, *, pool: str, api_url: str | None = None, read_only: bool = False
) -> DrainOutcome:
    """Take the drain off `worker`: it takes flow runs again at its next poll."""
    return await _set(worker, False, pool=pool, api_url=api_url, read_only=read_only)


async def _set(
    worker: str, drain: bool, *, pool: str, api_url: str | None, read_only: bool
) -> DrainOutcome:
    action = "worker.drain" if drain else "worker.undrain"
    if read_only:
        record_action(action, worker, result="refused: read-only")
        raise ReadOnlyError(
            f"gpuboard runs read-only: workers cannot be {'drained' if drain else 'undrained'}"
        )
    async with async_client(api_url) as client:
        try:
            others_online = await _check_known(client, worker, pool)
            if drain:
                changed = await set_drained(client, worker, by=operator_name())
            else:
                changed = await clear_drained(client, worker)
            runs = (await runs_taken_by_worker(client, pool))[worker]
        except UnknownWorkerError as exc:
            record_action(action, worker, result=f"refused: {exc}")
            raise
        except Exception as exc:
            record_action(action, worker, result=f"error: {exc}")
            raise
    record_action(
        action,
        worker,
        before={"drained": drain != changed},
        after={"drained": drain, "runs": runs},
        result="ok" if changed else f"ok: already {'drained' if drain else 'not drained'}",
    )
    message = (
        _drained_message(worker, pool, changed, runs, others_online)
        if drain
        else _undrained_message(worker, changed)
    )
    return DrainOutcome(worker, drain, changed, runs, message)


async def _check_known(client: PrefectClient, worker: str, pool: str) -> list[str]:
    """Raise UnknownWorkerError for a worker the server has never heard of; else return the
    pool's other online workers."""
    workers = await read_pool_workers(client, pool)
    if worker not in {w.name for w in workers} and await read_gcl(client, gcl_name(worker)) is None:
        known = ", ".join(w.name for w in workers) or "none"
        raise UnknownWorkerError(
            f"no worker {worker!r} in pool {pool!r} and no GCL {gcl_name(worker)} "
            f"(workers of the pool: {known})"
        )
    return [w.name for w in workers if w.online and w.name != worker]


def _drained_message(
    worker: str, pool: str, changed: bool, runs: int, others_online: list[str]
) -> str:
    first = f"{worker} drained" if changed else f"{worker} was drained already"
    has = f"its {runs} flow run(s) finish there" if runs else "it has no flow run: DRAINED"
    if others_online:
        goes = f"queued runs go to {', '.join(others_online)}"
    else:
        goes = f"no other worker of pool {pool} is online: queued runs wait"
    return f"{first}: it takes no new flow runs; {has}; {goes}"


def _undrained_message(worker: str, changed: bool) -> str:
    if not changed:
        return f"{worker} was not drained: nothing changed"
    return f"{worker} undrained: it takes flow runs again at its next poll"
