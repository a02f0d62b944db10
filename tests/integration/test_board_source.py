"""The board's source against a real Prefect server: cost per refresh, GPU events, failures."""

from __future__ import annotations

import asyncio
import time
import uuid

from fakes.fake_nvml import GIB, FakeGpu, FakeNvml
from gpuboard.core.board_source import BoardSource
from gpuboard.core.gpu_events import GpuPublisher, publish_reading, read_published_readings
from gpuboard.core.local_server import LocalServer
from gpuboard.core.models import GPU_READING_STALE_AFTER, GpuReading
from gpuboard.core.nvml_source import NvmlSource
from gpuboard.core.prefect.poll_client import poll_client
from gpuboard.core.prefect.snapshot import step_of_task
from support.seeding import (
    create_deployment,
    create_gcl,
    create_pool,
    create_run,
    free_port,
    heartbeat,
    start_task,
)


async def test_one_refresh_costs_the_same_requests_however_many_runs(
    fleet_server: LocalServer,
) -> None:
    pool, worker = f"cost-{uuid.uuid4().hex[:6]}", f"w-{uuid.uuid4().hex[:6]}"
    # Every part read on every refresh here; by default the last hour's part is read every
    # FINISHED_EVERY seconds only.
    # Host states polled on every read (no events websocket): a fixed count too.
    source = BoardSource(pool, fleet_server.api_url, finished_every=0, follow_hosts=False)
    async with poll_client(fleet_server.api_url) as client:
        await create_pool(client, pool)
        await heartbeat(client, pool, worker)
        await create_gcl(client, f"gpu:{worker}", 2)
        deployment = await create_deployment(client, pool)
        run = await create_run(client, deployment, "Running", image_id=0, worker=worker)
        await start_task(client, run, "download_image")
        await source.read()  # a fresh client first fetches a CSRF token: not part of a refresh
        few = await source.read()
        for image_id in range(1, 41):
            state = "Running" if image_id % 4 == 0 else "Completed"
            created = await create_run(client, deployment, state, image_id=image_id, worker=worker)
            if state == "Running":
                await start_task(client, created, "run_ml_model")
        many = await source.read()
    await source.aclose()
    assert few.prefect_ok and many.prefect_ok
    assert few.runs is not None and many.runs is not None
    assert (few.runs.running, many.runs.running) == (1, 11)
    assert many.runs.completed == 30
    # Workers, GCLs, 4 counts, 2 run lists, the pool, its queues, the worker records (drain
    # flags, flow-run limits), the running runs' tasks, the GPU readings, the
    # host states; then the slow part: the last hour's 3 counts and latest failures, the
    # executors' states and the runs' timings.
    assert few.cost.api_calls == many.cost.api_calls == 14 + 6
    view = many.worker(worker)
    assert view is not None and (view.inferring, view.waiting, view.downloading) == (0, 10, 1)

    # The usual board follows host states on the events websocket: once it is connected,
    # a refresh reads them through the API only every POLL_EVERY_S.
    usual = BoardSource(pool, fleet_server.api_url)
    await usual.read()
    deadline = time.monotonic() + 20
    while not usual.host_feed.stream_up:
        assert time.monotonic() < deadline, "the events websocket never connected"
        await asyncio.sleep(0.05)
    first, second = await usual.read(), await usual.read()
    await usual.aclose()
    assert (first.cost.api_calls, second.cost.api_calls) == (13, 13)
    assert second.runs is not None and second.runs.completed == 30  # shown again, not lost


async def test_gpu_readings_travel_as_events_and_age(fleet_server: LocalServer) -> None:
    fresh_worker, old_worker = f"fresh-{uuid.uuid4().hex[:6]}", f"old-{uuid.uuid4().hex[:6]}"
    fake = FakeNvml([FakeGpu(memory_used=12 * GIB, processes=[(77, 3 * GIB)])])
    now = time.time()
    fresh = NvmlSource(fake, host="node-a", flow_run_of={77: "run-77"}.get).read()
    old = GpuReading(
        "node-b", now - GPU_READING_STALE_AFTER - 30, unavailable="NVML not available: x"
    )
    async with poll_client(fleet_server.api_url) as client:
        await publish_reading(client, fresh_worker, fresh)
        await publish_reading(client, old_worker, old)
        readings: dict[str, GpuReading] = {}
        deadline = time.monotonic() + 20
        while len(readings) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.5)  # the server persists events in batches
            readings = {
                r.workers[0]: r
                for r in await read_published_readings(client, time.time())
                if r.workers[0] in (fresh_worker, old_worker)
            }
    got = readings[fresh_worker]
    assert got.host == "node-a" and not got.stale(time.time())
    assert got.gpus[0].memory_used == 12 * GIB
    assert got.gpus[0].processes[0].flow_run_id == "run-77"
    assert readings[old_worker].stale(time.time())
    assert readings[old_worker].unavailable == "NVML not available: x"


async def test_publisher_thread_publishes_until_stopped(prefect_server: LocalServer) -> None:
    worker = f"pub-{uuid.uuid4().hex[:6]}"
    nvml = NvmlSource(FakeNvml(), host="node-p")
    publisher = GpuPublisher(worker, interval=0.2, api_url=prefect_server.api_url, nvml=nvml)
    publisher.start()
    try:
        deadline = time.monotonic() + 20
        found: list[GpuReading] = []
        async with poll_client(prefect_server.api_url) as client:
            while not found and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                found = [
                    r
                    for r in await read_published_readings(client, time.time())
                    if r.workers == (worker,)
                ]
    finally:
        publisher.stop()
    assert found and found[0].host == "node-p" and found[0].gpus
    assert publisher.published >= 2
    count = publisher.published
    await asyncio.sleep(0.5)
    assert publisher.published == count  # stopped


async def test_publisher_survives_an_unreachable_server() -> None:
    publisher = GpuPublisher(
        "lonely",
        interval=0.1,
        api_url=f"http://127.0.0.1:{free_port()}/api",
        nvml=NvmlSource(FakeNvml(), host="h"),
    )
    publisher.start()
    await asyncio.sleep(0.5)
    publisher.stop()
    assert publisher.published == 0 and publisher._thread is not None
    assert not publisher._thread.is_alive()


async def test_a_missing_pool_is_an_error_value(prefect_server: LocalServer) -> None:
    source = BoardSource(f"no-such-pool-{uuid.uuid4().hex[:6]}", prefect_server.api_url)
    snapshot = await source.read()
    await source.aclose()
    assert snapshot.connected and not snapshot.prefect_ok
    assert "does not exist" in snapshot.errors[0].message
    assert "gpuboard up" in snapshot.errors[0].message


async def test_an_unreachable_server_is_an_error_value_quickly() -> None:
    source = BoardSource("ml-pool", f"http://127.0.0.1:{free_port()}/api")
    started = time.monotonic()
    first = await source.read()
    second = await source.read()
    await source.aclose()
    assert time.monotonic() - started < 5
    for snapshot in (first, second):
        assert not snapshot.connected and snapshot.errors[0].kind == "unreachable"
        assert snapshot.workers == () and snapshot.prefect_read_at is None


def test_steps_from_task_names() -> None:
    assert step_of_task("download_image-3fa") == "download"
    assert step_of_task("run_ml_model-0") == "gpu"
    assert step_of_task("load_model-1") == "load"
    assert step_of_task("save_results-9") == "save"
    assert step_of_task("something_else-1") is None
