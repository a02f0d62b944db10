"""Times scrapes of `gpuboard metrics`' /metrics with 8 workers and 16 GPUs reported.

Starts a throwaway Prefect server (SQLite, loopback, own home), seeds a pool with 8
workers (heartbeats, GCLs of limit 2 with slots held, runs Running and Scheduled), has
each worker publish a GPU reading of 2 faked GPUs (the `gpuboard.gpu.sample` events a
`gpuboard worker` publishes from NVML), and 1,000 run timing reports; then serves the
exporter on loopback, refreshing every --interval seconds (the background reads go on
while the scrapes are timed), and times --scrapes GETs of /metrics as Prometheus makes
them (one keep-alive client). Not part of the test suite.

    .venv/bin/python bench/metrics_scrape.py [--scrapes 200] [--interval 1]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from gpuboard.core.board_source import BoardSource
from gpuboard.core.gpu_events import publish_reading
from gpuboard.core.local_server import LocalServer, free_port
from gpuboard.core.metrics.exporter import MetricsExporter, serve_metrics
from gpuboard.core.models import GpuProcess, GpuReading, GpuSample
from gpuboard.core.prefect.poll_client import poll_client
from gpuboard.core.run_timings import EVENT_NAME as TIMINGS_EVENT

POOL = "bench-metrics"
WORKERS = tuple(f"gpu-{i}" for i in range(1, 9))
GPUS_PER_WORKER = 2
LIMIT = 2
TIMING_REPORTS = 1000
GIB = 1024**3


async def seed(api_url: str) -> None:
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
        WorkPoolCreate,
    )

    async with poll_client(api_url, timeout=60.0) as client:
        await client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
        flow_id = await client.create_flow_from_name("process-image")
        deployment = await client.create_deployment(
            flow_id=flow_id, name="bench", work_pool_name=POOL, entrypoint="flows/x.py:f"
        )
        now = time.time()
        for n, worker in enumerate(WORKERS):
            await client.send_worker_heartbeat(POOL, worker, heartbeat_interval_seconds=30)
            await client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=f"gpu:{worker}", limit=LIMIT)
            )
            await client.update_global_concurrency_limit(
                f"gpu:{worker}", GlobalConcurrencyLimitUpdate(active_slots=n % (LIMIT + 1))
            )
            for state in ("RUNNING", "RUNNING", "SCHEDULED"):
                response = await client.request(
                    "POST",
                    "/deployments/{id}/create_flow_run",
                    path_params={"id": deployment},
                    json={
                        "state": {"type": state, "name": state.title()},
                        "parameters": {"image_id": n},
                        "labels": {"prefect.worker.name": worker},
                    },
                )
                response.raise_for_status()
            gpus = tuple(
                GpuSample(
                    host=f"host-{n}",
                    index=index,
                    uuid=f"GPU-{n:04d}-{index:04d}",
                    name="NVIDIA H100 80GB HBM3",
                    memory_used=(10 + index) * GIB,
                    memory_total=80 * GIB,
                    utilization=50 + index,
                    processes=(GpuProcess(pid=1000 + index, memory_used=3 * GIB),),
                    sampled_at=now,
                )
                for index in range(GPUS_PER_WORKER)
            )
            reading = GpuReading(host=f"host-{n}", sampled_at=now, gpus=gpus)
            await publish_reading(client, worker, reading)
        events = [
            {
                "id": str(uuid.uuid4()),
                "occurred": datetime.fromtimestamp(now - i * 0.1, tz=timezone.utc).isoformat(),
                "event": TIMINGS_EVENT,
                "resource": {"prefect.resource.id": f"prefect.flow-run.{uuid.uuid4()}"},
                "related": [],
                "payload": {
                    "flow_run_id": str(uuid.uuid4()),
                    "worker": WORKERS[i % len(WORKERS)],
                    "executor": "process",
                    "ended_at": now - i * 0.1,
                    "slot_wait_s": (i % 13) * 0.3,
                    "inference_s": 0.02 + (i % 17) * 0.01,
                },
            }
            for i in range(TIMING_REPORTS)
        ]
        for start in range(0, len(events), 100):
            response = await client.request("POST", "/events", json=events[start : start + 100])
            response.raise_for_status()


def gpu_count(text: str) -> int:
    return sum(
        len(family.samples)
        for family in text_string_to_metric_families(text)
        if family.name == "gpuboard_gpu_memory_used_bytes"
    )


def measure(api_url: str, scrapes: int, interval: float) -> None:
    source = BoardSource(POOL, api_url, follow_hosts=False)
    exporter = MetricsExporter(source, interval_s=interval, since=time.time() - 3600).start()
    server = serve_metrics(exporter, "127.0.0.1", free_port())
    try:
        with httpx.Client(timeout=10.0) as client:
            deadline = time.monotonic() + 60
            text = client.get(server.url).text
            # The events persister writes the GPU readings seconds after they are sent.
            while gpu_count(text) < len(WORKERS) * GPUS_PER_WORKER:
                if time.monotonic() > deadline:
                    raise SystemExit(f"only {gpu_count(text)} GPUs reported after 60 s")
                time.sleep(0.5)
                text = client.get(server.url).text
            times_ms = []
            for _ in range(scrapes):
                started = time.perf_counter()
                response = client.get(server.url)
                times_ms.append((time.perf_counter() - started) * 1000)
                response.raise_for_status()
                text = response.text
                time.sleep(0.02)
        samples = sum(len(f.samples) for f in text_string_to_metric_families(text))
        times_ms.sort()
        p95 = times_ms[max(0, round(0.95 * len(times_ms)) - 1)]
        print(
            f"{len(WORKERS)} workers, {gpu_count(text)} GPUs, {samples} samples, "
            f"{len(text.encode()) / 1024:.0f} KiB per scrape; background refresh every "
            f"{interval:g} s"
        )
        print(
            f"/metrics over {scrapes} scrapes: median {statistics.median(times_ms):.2f} ms, "
            f"p95 {p95:.2f} ms, max {times_ms[-1]:.2f} ms"
        )
    finally:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--interval", type=float, default=1.0, help="background refresh (s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gpuboard-bench-") as temp:
        server = LocalServer(home=Path(temp), port=free_port())
        server.start()
        try:
            asyncio.run(seed(server.api_url))
            measure(server.api_url, args.scrapes, args.interval)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
