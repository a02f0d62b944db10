"""`gpu_slot()`: the one way a flow takes its worker's GPU slot (GCL `gpu:<worker id>`).

It wraps Prefect's `concurrency()` and fixes what Prefect's defaults get wrong for a GPU:
a missing or disabled GCL fails loudly instead of running unlimited, and limit 0 means
*paused* (wait until an operator raises it) instead of an immediate 422 error.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import httpx
from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError  # public re-export

from gpuboard.core.config import current_worker_id, gcl_name
from gpuboard.core.models import GclState
from gpuboard.core.prefect.poll_client import NoRetries
from gpuboard.core.prefect.slot_lease import recorded_concurrency
from gpuboard.core.prefect.slots import current_holder, read_gcl_now

# The server's minimum. A process killed while holding the slot keeps it this long.
LEASE_SECONDS = 60
PAUSE_POLL_SECONDS = 1.0
# A full GCL: Prefect's own wait sleeps for the server's Retry-After, which grows with the
# slots' average hold time (seconds to tens of seconds) and left freed slots idle while
# runs waited (a 14.7 s wait behind a free slot, seen on the board). gpu_slot() asks
# again itself: first after HANDOFF_FIRST_S, then 1.5x longer each time up to
# HANDOFF_MAX_S, with jitter so that waiters do not ask in step. A waiter thus costs the
# server at most ~1-5 requests a second, and a freed slot is taken within about a second.
HANDOFF_FIRST_S = 0.2
HANDOFF_MAX_S = 1.0


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
    full_retries = 0
    work_done = False
    try:
        with ExitStack() as release_settings, ExitStack() as held:
            while True:
                # The GCL is read before the first try and after a refusal that may mean a
                # pause; a full GCL (423) is simply asked again, with no read in between.
                if full_retries == 0:
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
                            max_retries=0,
                        )
                    )
                except ConcurrencySlotAcquisitionError as exc:
                    if _refusal_status(exc) == 423:  # every slot is taken: ask again shortly
                        time.sleep(handoff_delay(full_retries))
                        full_retries += 1
                        continue
                    full_retries = 0
                    # The GCL changed between our read and the acquire: paused (422), deleted
                    # or disabled. Read it again and wait, fail or retry accordingly.
                    if _refusal_status(exc) == 422:
                        continue
                    _check_usable(read_gcl_now(name), name, worker)
                    raise
                break
            if was_paused:
                log.info("GPU slot %s: resumed, slot taken", name)
            yield SlotGrant(name=name, wait_s=time.monotonic() - asked)
            work_done = True
            if _paused_now(name):
                # The release below will be refused (see the except clause). PostgreSQL
                # answers it 503, which Prefect's client retries for about 4 minutes
                # (measured): ask once. `release_settings` is left after `held`.
                release_settings.enter_context(NoRetries()())
    except httpx.HTTPStatusError as exc:
        if not (work_done and _release_refused_while_paused(exc, name)):
            raise
        # Prefect 3.9 divides by the limit when it releases a slot, so a slot held
        # when its GCL was paused (limit 0) cannot be released (SQLite: 409; PostgreSQL:
        # division by zero, answered 503). The work is done and must not fail for it:
        # the lease, no longer renewed, expires within LEASE_SECONDS and the server
        # frees the slot then (once the limit is above 0).
        log.warning(
            "GPU slot %s was paused while held: Prefect cannot release it at limit 0; "
            "it frees itself when its lease expires (at most %.0f s after resume)",
            name,
            lease_seconds,
        )


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


def _release_refused_while_paused(exc: httpx.HTTPStatusError, name: str) -> bool:
    if exc.response.status_code not in (409, 503) or "decrement" not in str(exc.request.url):
        return False
    return _paused_now(name)


def _paused_now(name: str) -> bool:
    state = read_gcl_now(name)
    return state is not None and state.limit == 0


def _refusal_status(exc: BaseException) -> int | None:
    """The server's status behind Prefect's acquisition error: 423 = full, 422 = limit 0."""
    cause = exc.__cause__
    return cause.response.status_code if isinstance(cause, httpx.HTTPStatusError) else None


def handoff_delay(retries: int, jitter: Callable[[], float] = random.random) -> float:
    """Seconds to wait before asking a full GCL again, after `retries` refusals."""
    base = min(HANDOFF_MAX_S, HANDOFF_FIRST_S * 1.5**retries)
    return base * (0.75 + 0.5 * jitter())  # +-25 %


def _logger() -> _Logger:
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()  # shows in the flow run's logs in Prefect
    except MissingContextError:
        return logging.getLogger(__name__)
