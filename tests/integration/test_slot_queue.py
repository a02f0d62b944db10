"""The inference host's slot queue against a real Prefect server: first come first served,
never more slots held than the GCL's limit, the lease named for its task run, pause and
resize without reload, and a missing or disabled GCL refused with how to fix it."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

from gpuboard.core.config import gcl_name
from gpuboard.core.host.slot_queue import Grant, SlotQueue, SlotUnusable
from gpuboard.core.local_server import LocalServer
from gpuboard.core.prefect import leased_slots
from gpuboard.core.prefect.client import async_client
from gpuboard.core.prefect.gcl import read_gcl
from gpuboard.core.prefect.poll_client import NoRetries
from support.seeding import create_gcl

# The client fixture and the tests share the session's event loop.
pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
async def client(fleet_server: LocalServer) -> AsyncIterator[PrefectClient]:
    with NoRetries()():
        async with async_client(fleet_server.api_url) as opened:
            yield opened


async def new_queue(
    client: PrefectClient, limit: int | None, *, active: bool = True
) -> tuple[SlotQueue, asyncio.Task[None]]:
    worker = f"q-{uuid.uuid4().hex[:8]}"
    if limit is not None:
        await create_gcl(client, gcl_name(worker), limit, active=active)
    queue = SlotQueue(client, gcl_name(worker), worker=worker)
    return queue, asyncio.create_task(queue.run())


async def set_limit(client: PrefectClient, queue: SlotQueue, limit: int) -> None:
    await client.update_global_concurrency_limit(
        queue.gcl, GlobalConcurrencyLimitUpdate(limit=limit)
    )


async def active_slots(client: PrefectClient, queue: SlotQueue) -> int:
    state = await read_gcl(client, queue.gcl)
    assert state is not None
    return state.active_slots


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


class Sampler:
    """Reads the GCL's active slots on the server every 50 ms while work runs."""

    def __init__(self, client: PrefectClient, queue: SlotQueue) -> None:
        self.client, self.queue = client, queue
        self.most = 0
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.most = max(self.most, await active_slots(self.client, self.queue))
            await asyncio.sleep(0.05)

    async def stop(self) -> int:
        self._task.cancel()
        return self.most


async def work(queue: SlotQueue, image_id: int, hold_s: float, log: list[tuple[str, int]]) -> Grant:
    grant = await queue.take(image_id, uuid.uuid4(), uuid.uuid4())
    log.append(("start", image_id))
    await asyncio.sleep(hold_s)
    log.append(("end", image_id))
    await queue.give_back(grant)
    return grant


def deepest(log: list[tuple[str, int]]) -> int:
    depth = most = 0
    for event, _ in log:
        depth += 1 if event == "start" else -1
        most = max(most, depth)
    return most


async def test_requests_are_served_in_order_never_beyond_the_limit(
    client: PrefectClient,
) -> None:
    queue, dispatcher = await new_queue(client, limit=2)
    sampler = Sampler(client, queue)
    log: list[tuple[str, int]] = []
    tasks = []
    for image_id in range(8):
        tasks.append(asyncio.create_task(work(queue, image_id, 0.3, log)))
        await asyncio.sleep(0.01)  # arrival order = image id
    grants = await asyncio.gather(*tasks)
    assert await sampler.stop() <= 2  # counted on the server
    assert deepest(log) == 2  # both slots were used, never a third
    starts = [image_id for event, image_id in log if event == "start"]
    assert starts == sorted(starts)  # first come, first served
    assert max(grant.wait_s for grant in grants) > 0.3  # the later ones really waited
    assert await active_slots(client, queue) == 0
    assert queue.state.queued == 0 and queue.state.holders == ()
    dispatcher.cancel()


async def test_the_lease_names_the_requesting_task_run(
    client: PrefectClient, fleet_server: LocalServer
) -> None:
    queue, dispatcher = await new_queue(client, limit=1)
    task_run = uuid.uuid4()
    grant = await queue.take(5, task_run, uuid.uuid4())
    # Prefect's own record of the lease (its filesystem lease storage) names the holder.
    lease_file = Path(fleet_server.home) / "concurrency_leases" / f"{grant.holder.lease_id}.json"
    holder = json.loads(lease_file.read_text())["metadata"]["holder"]
    assert holder == {"type": "task_run", "id": str(task_run)}
    assert [h.task_run_id for h in queue.state.holders] == [task_run]
    await queue.give_back(grant)
    assert not lease_file.exists()
    dispatcher.cancel()


async def test_limit_zero_holds_the_queue_until_raised(client: PrefectClient) -> None:
    queue, dispatcher = await new_queue(client, limit=0)
    waiting = asyncio.create_task(queue.take(1, None, None))
    await eventually(lambda: _true(queue.state.paused))
    await asyncio.sleep(1.5)
    assert not waiting.done() and queue.state.queued == 1
    await set_limit(client, queue, 1)
    grant = await asyncio.wait_for(waiting, 10)
    assert not queue.state.paused and grant.wait_s >= 1.5
    await queue.give_back(grant)
    dispatcher.cancel()


async def test_a_new_limit_widens_concurrency_without_reload(client: PrefectClient) -> None:
    queue, dispatcher = await new_queue(client, limit=1)
    log: list[tuple[str, int]] = []
    first = [asyncio.create_task(work(queue, i, 0.3, log)) for i in range(3)]
    await asyncio.gather(*first)
    assert deepest(log) == 1
    await set_limit(client, queue, 3)
    log.clear()
    sampler = Sampler(client, queue)
    await asyncio.gather(*[asyncio.create_task(work(queue, i, 0.6, log)) for i in range(6)])
    assert deepest(log) == 3 and await sampler.stop() <= 3
    dispatcher.cancel()


async def test_a_slot_paused_while_held_is_released_after_resume(client: PrefectClient) -> None:
    """Prefect 3.9 refuses the release at limit 0 (SQLite 409, PostgreSQL 503); the work
    is not failed for it, and the slot is given back once the limit is above 0 again, not
    only at lease expiry."""
    queue, dispatcher = await new_queue(client, limit=1)
    grant = await queue.take(1, None, None)
    await set_limit(client, queue, 0)
    await queue.give_back(grant)  # no exception: the work is done
    assert await active_slots(client, queue) == 1  # Prefect could not release it
    await set_limit(client, queue, 1)
    # The next grant sees the limit above 0 again and releases the kept lease.
    other = await asyncio.wait_for(queue.take(2, None, None), 10)
    await queue.give_back(other)
    await eventually(lambda: _eq(active_slots(client, queue), 0))
    dispatcher.cancel()


async def test_leaving_the_line_takes_no_slot(client: PrefectClient) -> None:
    queue, dispatcher = await new_queue(client, limit=1)
    held = await queue.take(1, None, None)
    waiting = asyncio.create_task(queue.take(2, None, None))
    await eventually(lambda: _true(queue.state.queued == 1))
    waiting.cancel()  # its client went away
    await eventually(lambda: _true(queue.state.queued == 0))
    await queue.give_back(held)
    await asyncio.sleep(0.5)
    assert await active_slots(client, queue) == 0  # nobody was granted the freed slot
    dispatcher.cancel()


@pytest.mark.parametrize("active", [None, False], ids=["missing", "disabled"])
async def test_an_unusable_gcl_is_refused_with_how_to_fix_it(
    client: PrefectClient, active: bool | None
) -> None:
    queue, dispatcher = await new_queue(client, None if active is None else 2, active=False)
    with pytest.raises(SlotUnusable) as refused:
        await asyncio.wait_for(queue.take(1, None, None), 10)
    if active is None:
        assert f"gpuboard worker --id {queue.worker} --gpu-slots N" in str(refused.value)
    else:
        assert f"prefect gcl enable {queue.gcl}" in str(refused.value)
    dispatcher.cancel()


async def test_plain_concurrency_users_share_the_slots(client: PrefectClient) -> None:
    """The GCL is the one truth: leases taken outside the queue count against it too."""
    queue, dispatcher = await new_queue(client, limit=2)
    outside = await leased_slots.acquire(
        client, queue.gcl, lease_seconds=60, task_run_id=None, flow_run_id=None
    )
    assert outside.answer == "granted" and outside.lease_id is not None
    log: list[tuple[str, int]] = []
    tasks = [asyncio.create_task(work(queue, i, 0.5, log)) for i in range(6)]
    await asyncio.sleep(1.2)
    assert deepest(log) == 1  # one slot left for the queue
    await leased_slots.release(client, outside.lease_id)
    await asyncio.gather(*tasks)
    assert deepest(log) == 2  # the slot freed outside was noticed and taken
    dispatcher.cancel()


async def _true(value: bool) -> bool:
    return value


async def _eq(value: Awaitable[int], expected: int) -> bool:
    return await value == expected
