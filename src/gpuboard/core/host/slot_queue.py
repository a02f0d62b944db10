"""One queue per worker for its GPU slots: requests are served first come, first served,
each under a slot of the worker's GCL `gpu:<id>` taken from Prefect for it.

One dispatcher asks the server for the head of the queue, instead of every waiting
process polling on its own. A slot this host gives back wakes the dispatcher at once, so
the next request holds it one round trip later; slots freed elsewhere (another process
using the same GCL) are noticed by asking again after 0.2-1.0 s. The GCL stays the one
truth: the server counts every lease, the host keeps no limit of its own, so a new limit
widens or narrows concurrency at the next ask, and limit 0 (422) holds the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from uuid import UUID

from prefect.client.orchestration import PrefectClient

from gpuboard.core.prefect import leased_slots
from gpuboard.core.prefect.gcl import read_gcl

log = logging.getLogger(__name__)

# The server's minimum lease. A host that dies holding slots has them released by its
# supervisor within a second; one that dies with its supervisor leaves them this long.
LEASE_SECONDS = 60.0
# A full GCL is asked again after HANDOFF_FIRST_S, then 1.5x longer up to HANDOFF_MAX_S
# (+-25 % jitter), unless a slot of this host comes back first: that wakes it at once.
HANDOFF_FIRST_S = 0.2
HANDOFF_MAX_S = 1.0
PAUSE_POLL_S = 1.0  # a paused GCL (limit 0) is asked again this often
BUSY_RETRY_S = (0.05, 0.3)  # a 503 / no answer: ask again after a short random delay
ERROR_RETRY_S = 1.0
# How stale the queue's knowledge that its GCL exists and is enabled may be: a GCL
# disabled by an operator lets at most this long of requests through unlimited.
GCL_CHECK_EVERY_S = 1.0


class SlotUnusable(RuntimeError):
    """The GCL is missing or disabled: nothing would limit the GPU work. Says how to fix it."""


@dataclass(frozen=True)
class Holder:
    """One request holding a slot: whom the lease names and since when."""

    lease_id: UUID
    image_id: int
    task_run_id: UUID | None
    flow_run_id: UUID | None
    held_since: float  # epoch seconds


@dataclass(frozen=True)
class Grant:
    """A slot taken for one request, and how long the request waited for it."""

    holder: Holder
    wait_s: float


@dataclass
class _Ticket:
    image_id: int
    task_run_id: UUID | None
    flow_run_id: UUID | None
    arrived: float  # monotonic
    result: asyncio.Future[Grant] = field(repr=False)


@dataclass
class QueueState:
    """What the queue looks like now, for the host's state reports."""

    queued: int = 0
    paused: bool = False
    holders: tuple[Holder, ...] = ()
    granted: int = 0  # since start
    error: str | None = None  # the server's trouble while asking, if any (cleared on success)


class SlotQueue:
    """FIFO of requests for slots of GCL `gcl`; `run()` is the dispatcher."""

    def __init__(
        self,
        client: PrefectClient,
        gcl: str,
        *,
        worker: str,
        lease_seconds: float = LEASE_SECONDS,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._client = client
        self.gcl = gcl
        self.worker = worker
        self.lease_seconds = lease_seconds
        self._on_change = on_change
        self._queue: deque[_Ticket] = deque()
        self._holders: dict[UUID, Holder] = {}
        self._renewed_at: dict[UUID, float] = {}
        # Leases Prefect refused to release (409 at limit 0): released once it is above 0.
        self._unreleased: dict[UUID, float] = {}
        self._arrived = asyncio.Event()
        self._returned = asyncio.Event()
        self._full_tries = 0  # refusals in a row because every slot was taken
        self._gcl_checked_at = -GCL_CHECK_EVERY_S
        self.state = QueueState()

    # -- what the server side of the host calls ----------------------------------------

    async def take(
        self, image_id: int, task_run_id: UUID | None, flow_run_id: UUID | None
    ) -> Grant:
        """Wait in line for a slot. Cancelling the wait (the client went away) leaves the
        line; a slot granted at that very moment is given back."""
        ticket = _Ticket(
            image_id,
            task_run_id,
            flow_run_id,
            time.monotonic(),
            asyncio.get_running_loop().create_future(),
        )
        self._queue.append(ticket)
        self._arrived.set()
        self._changed()
        try:
            return await asyncio.shield(ticket.result)
        except asyncio.CancelledError:
            if ticket.result.done() and not ticket.result.cancelled():
                if ticket.result.exception() is None:
                    await self.give_back(ticket.result.result())
            else:
                ticket.result.cancel()
            self._drop(ticket)
            raise

    async def give_back(self, grant: Grant) -> None:
        """Release the request's slot; the next in line is asked for at once."""
        lease_id = grant.holder.lease_id
        self._holders.pop(lease_id, None)
        self._renewed_at.pop(lease_id, None)
        self._returned.set()
        self._changed()
        await self._release(lease_id)

    # -- the dispatcher ----------------------------------------------------------------

    async def run(self) -> None:
        """Serve the queue until cancelled; never raises otherwise."""
        renewer = asyncio.create_task(self._renew_forever())
        try:
            while True:
                if not self._queue:
                    self._arrived.clear()
                    await self._arrived.wait()
                    continue
                await self._serve_head()
        finally:
            renewer.cancel()
            for ticket in self._queue:
                ticket.result.cancel()

    async def close(self) -> None:
        """Release every slot this queue still holds (the host is stopping)."""
        for lease_id in list(self._holders) + list(self._unreleased):
            self._holders.pop(lease_id, None)
            with contextlib.suppress(Exception):
                await leased_slots.release(self._client, lease_id)

    async def _serve_head(self) -> None:
        ticket = self._queue[0]
        if ticket.result.done():  # its client left
            self._drop(ticket)
            return
        asked = time.monotonic()
        try:
            if not await self._gcl_usable():
                await self._fail_all(await self._unusable_reason())
                return
            answer = await leased_slots.acquire(
                self._client,
                self.gcl,
                lease_seconds=self.lease_seconds,
                task_run_id=ticket.task_run_id,
                flow_run_id=ticket.flow_run_id,
            )
        except Exception as exc:  # 401, 404, 500...: say so and ask again; lose nothing
            self._set_error(f"asking for a slot of {self.gcl} failed: {_describe(exc)}")
            await asyncio.sleep(ERROR_RETRY_S)
            return
        log.debug(
            "image %s: %s in %.3f s (%s queued) %s",
            ticket.image_id,
            answer.answer,
            time.monotonic() - asked,
            len(self._queue),
            answer.detail,
        )
        if answer.answer == "granted":
            assert answer.lease_id is not None
            await self._grant(ticket, answer.lease_id)
            self._full_tries = 0
        elif answer.answer == "full":
            self._set_paused(False)
            if self._unreleased:  # the limit is above 0 again: what a pause kept can go
                await self._retry_unreleased()
            await self._wait_for_return(_handoff_delay(self._full_tries))
            self._full_tries += 1
        elif answer.answer == "paused":
            self._set_paused(True)
            await self._wait_for_return(PAUSE_POLL_S)
        elif answer.answer == "busy":
            await asyncio.sleep(random.uniform(*BUSY_RETRY_S))
        else:
            self._gcl_checked_at = -GCL_CHECK_EVERY_S  # read it before the next ask
            await self._fail_all(await self._unusable_reason())

    async def _grant(self, ticket: _Ticket, lease_id: UUID) -> None:
        self._queue.popleft()
        self._set_paused(False)
        self.state.error = None
        if ticket.result.done():  # the client left while we asked: give the slot back now
            await self._release(lease_id)
            self._changed()
            return
        holder = Holder(
            lease_id=lease_id,
            image_id=ticket.image_id,
            task_run_id=ticket.task_run_id,
            flow_run_id=ticket.flow_run_id,
            held_since=time.time(),
        )
        self._holders[lease_id] = holder
        self._renewed_at[lease_id] = time.monotonic()
        self.state.granted += 1
        ticket.result.set_result(Grant(holder, wait_s=time.monotonic() - ticket.arrived))
        self._changed()
        await self._retry_unreleased()

    async def _fail_all(self, reason: str) -> None:
        while self._queue:
            ticket = self._queue.popleft()
            if not ticket.result.done():
                ticket.result.set_exception(SlotUnusable(reason))
        self._changed()

    async def _gcl_usable(self) -> bool:
        """Whether the GCL exists and is enabled, read at most every GCL_CHECK_EVERY_S.

        A grant's answer shows a missing GCL but not a disabled one (the server grants a
        lease that limits nothing), so the GCL itself is read, at most once a second.
        """
        now = time.monotonic()
        if now - self._gcl_checked_at < GCL_CHECK_EVERY_S:
            return True
        state = await read_gcl(self._client, self.gcl)
        self._gcl_checked_at = now
        return state is not None and state.active

    async def _unusable_reason(self) -> str:
        worker = self.worker
        try:
            state = await read_gcl(self._client, self.gcl)
        except Exception:
            state = None
        if state is not None and not state.active:
            return (
                f"GPU slot GCL {self.gcl!r} is disabled, and Prefect ignores a disabled limit "
                f"(GPU work would run unlimited). Enable it: `prefect gcl enable {self.gcl}`; "
                "to stop GPU work for a while set its limit to 0 (pause) instead."
            )
        return (
            f"GPU slot GCL {self.gcl!r} does not exist, so nothing would limit GPU work on "
            f"worker {worker!r}. Create it: `gpuboard worker --id {worker} --gpu-slots N` "
            f"creates it, or `prefect gcl create {self.gcl} --limit N`."
        )

    async def _wait_for_return(self, timeout: float) -> None:
        """Sleep up to `timeout`, less if a slot of this host comes back meanwhile."""
        self._returned.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._returned.wait(), timeout)

    async def _release(self, lease_id: UUID) -> None:
        for attempt in range(5):
            try:
                outcome = await leased_slots.release(self._client, lease_id)
            except Exception as exc:
                if attempt == 4:
                    if _http_status(exc) == 503:
                        # On PostgreSQL a release at limit 0 is a division by zero that
                        # the server answers 503, not 409: kept for after the resume too.
                        self._unreleased[lease_id] = time.monotonic()
                    # The lease is no longer renewed: the server frees it when it expires.
                    log.warning(
                        "could not release GPU slot lease %s of %s (%s): it frees itself "
                        "within %.0f s",
                        lease_id,
                        self.gcl,
                        _describe(exc),
                        self.lease_seconds,
                    )
                    return
                await asyncio.sleep(random.uniform(*BUSY_RETRY_S))
                continue
            if outcome == "refused":
                # Prefect 3.9 cannot release at limit 0 (it divides by the limit): the
                # work is done and must not fail for it. Released once the limit is
                # above 0 again, or freed by the server when the lease expires.
                if not self._unreleased:
                    log.warning(
                        "GPU slot %s was paused while held: Prefect cannot release it at "
                        "limit 0; it is released on resume (or when its lease expires)",
                        self.gcl,
                    )
                self._unreleased[lease_id] = time.monotonic()
            return

    async def _retry_unreleased(self) -> None:
        """Once the limit is above 0 (a grant, or a 423), release what a pause kept."""
        for lease_id, since in list(self._unreleased.items()):
            if time.monotonic() - since > self.lease_seconds:
                del self._unreleased[lease_id]  # expired: the server has freed it
                continue
            with contextlib.suppress(Exception):
                if await leased_slots.release(self._client, lease_id) == "released":
                    del self._unreleased[lease_id]

    async def _renew_forever(self) -> None:
        """Renew leases held longer than half their length (a long inference)."""
        while True:
            await asyncio.sleep(self.lease_seconds / 4)
            if self._unreleased and not self._queue:
                await self._retry_unreleased()
            now = time.monotonic()
            for lease_id, renewed in list(self._renewed_at.items()):
                if now - renewed < self.lease_seconds / 2:
                    continue
                try:
                    if await leased_slots.renew(self._client, lease_id, self.lease_seconds):
                        self._renewed_at[lease_id] = now
                except Exception as exc:
                    log.warning("could not renew GPU slot lease %s: %s", lease_id, exc)

    # -- state ----------------------------------------------------------------------------

    def _drop(self, ticket: _Ticket) -> None:
        with contextlib.suppress(ValueError):
            self._queue.remove(ticket)
        self._changed()

    def _set_paused(self, paused: bool) -> None:
        if self.state.paused != paused:
            self.state.paused = paused
            if paused:
                log.info("GPU slot %s is paused (limit 0): requests wait for a raise", self.gcl)
            else:
                log.info("GPU slot %s: resumed", self.gcl)
            self._changed()

    def _set_error(self, error: str) -> None:
        if self.state.error != error:
            log.warning("%s", error)
            self.state.error = error
            self._changed()

    def _changed(self) -> None:
        self.state.queued = sum(1 for ticket in self._queue if not ticket.result.done())
        self.state.holders = tuple(sorted(self._holders.values(), key=lambda h: h.held_since))
        self._on_change()


def _handoff_delay(tries: int) -> float:
    base = min(HANDOFF_MAX_S, HANDOFF_FIRST_S * 1.5**tries)
    return base * (0.75 + 0.5 * random.random())


def _describe(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if response is not None:
        return f"server answered {response.status_code}: {' '.join(response.text[:200].split())}"
    return f"{type(exc).__name__}: {exc}"


def _http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)
