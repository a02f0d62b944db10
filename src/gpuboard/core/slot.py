"""`gpu_slot()`: the one way a flow takes its worker's GPU slot (GCL `gpu:<worker id>`).

It wraps Prefect's `concurrency()` and fixes what Prefect's defaults get wrong for a GPU:
a missing or disabled GCL fails loudly instead of running unlimited, and limit 0 means
*paused* (wait until an operator raises it) instead of an immediate 422 error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import httpx
from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError  # public re-export

from gpuboard.core.config import current_worker_id, gcl_name
from gpuboard.core.models import GclState
from gpuboard.core.prefect.slot_lease import recorded_concurrency
from gpuboard.core.prefect.slots import current_holder, read_gcl_now

# The server's minimum. A process killed while holding the slot keeps it this long.
LEASE_SECONDS = 60
PAUSE_POLL_SECONDS = 1.0


_Logger = logging.Logger | logging.LoggerAdapter  # a run logger is an adapter


class GpuSlotError(RuntimeError):
    """The GPU slot cannot be taken as configured; the message says how to fix it."""


@dataclass
class SlotGrant:
    """What `gpu_slot()` yields: which GCL is held and how long taking it took."""

    name: str
    wait_s: float  # from asking to holding, pauses included


@contextmanager
def gpu_slot(
    worker_id: str | None = None,
    *,
    poll_s: float = PAUSE_POLL_SECONDS,
    lease_seconds: float = LEASE_SECONDS,
) -> Iterator[SlotGrant]:
    """Hold one slot of GCL `gpu:<worker_id>` (default: this process's WORKER_ID).

    Raises GpuSlotError when the GCL is missing or disabled; waits, polling every
    `poll_s` seconds, while its limit is 0.
    """
    worker = worker_id or current_worker_id()
    name = gcl_name(worker)
    log = _logger()
    asked = time.monotonic()
    was_paused = False
    with ExitStack() as held:
        while True:
            was_paused |= _wait_while_paused(name, worker, poll_s, log, logged=was_paused)
            try:
                held.enter_context(
                    recorded_concurrency(
                        name,
                        occupy=1,
                        lease_duration=lease_seconds,
                        strict=True,  # a GCL deleted since our read fails, never runs free
                        holder=current_holder(),
                        # strict=True would also cancel the inference when renewing the
                        # lease fails (a server blip, SQLite busy). The lease was just
                        # granted for 60 s and most inferences end well before it runs out.
                        raise_on_lease_renewal_failure=False,
                    )
                )
            except ConcurrencySlotAcquisitionError as exc:
                # The GCL changed between our read and the acquire: paused (422), deleted
                # or disabled. Read it again and wait, fail or retry accordingly.
                if _is_limit_zero_refusal(exc):
                    continue
                _check_usable(read_gcl_now(name), name, worker)
                raise
            break
        if was_paused:
            log.info("GPU slot %s: resumed, slot taken", name)
        yield SlotGrant(name=name, wait_s=time.monotonic() - asked)


def _wait_while_paused(
    name: str, worker: str, poll_s: float, log: _Logger, *, logged: bool
) -> bool:
    """Return once the GCL's limit is above 0: True when it had to wait for that.

    Polls rather than waiting on Prefect: `concurrency()` refuses limit 0 outright.
    The pause is logged once per `gpu_slot()` call (`logged` says it already was).
    """
    waited = False
    while True:
        state = _check_usable(read_gcl_now(name), name, worker)
        if state.limit > 0:
            return waited
        if not waited and not logged:
            log.info("GPU slot %s is paused (limit 0): waiting until it is raised", name)
        waited = True
        time.sleep(poll_s)


def _check_usable(state: GclState | None, name: str, worker: str) -> GclState:
    if state is None:
        raise GpuSlotError(
            f"GPU slot GCL {name!r} does not exist, so nothing would limit GPU work on "
            f"worker {worker!r}. Create it: `gpuboard worker --id {worker} --gpu-slots N` "
            f"creates it, or `prefect gcl create {name} --limit N`."
        )
    if not state.active:
        raise GpuSlotError(
            f"GPU slot GCL {name!r} is disabled, and Prefect ignores a disabled limit (GPU "
            f"work would run unlimited). Enable it: `prefect gcl enable {name}`; to stop GPU "
            f"work for a while set its limit to 0 (pause) instead."
        )
    return state


def _is_limit_zero_refusal(exc: BaseException) -> bool:
    # Prefect wraps the server's 422 "Slots requested is greater than the limit".
    cause = exc.__cause__
    return isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code == 422


def _logger() -> _Logger:
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()  # shows in the flow run's logs in Prefect
    except MissingContextError:
        return logging.getLogger(__name__)
