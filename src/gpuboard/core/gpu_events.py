"""Carries each worker machine's NVML readings to every board, as Prefect events.

NVML is local to a machine, so each `gpuboard worker` publishes its reading every few
seconds as event `gpuboard.gpu.sample` on resource `gpuboard.worker.<id>`; a board
anywhere reads the newest one per worker in one request and shows it with its age.
Prefect's own event bus means no extra server, port or protocol to run.

Measured on the local SQLite server: a publication is one ~10 ms `POST /events`; the
event is readable ~1–5 s later (the server's event persister flushes in batches); the
read of the newest event per worker is one ~15 ms `POST /events/filter`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import datetime, timedelta, timezone
from typing import Any

from gpuboard.core.models import GpuProcess, GpuReading, GpuSample
from gpuboard.core.nvml_source import NvmlSource
from gpuboard.core.prefect.events import emit_event, read_latest_per_resource
from gpuboard.core.prefect.poll_client import NoRetries, poll_client

EVENT_NAME = "gpuboard.gpu.sample"
RESOURCE_PREFIX = "gpuboard.worker."
PUBLISH_INTERVAL = 5.0
# Readings older than this are not shown at all: that worker is gone (stale ones, younger,
# are shown and marked; see GPU_READING_STALE_AFTER).
READ_WINDOW = timedelta(minutes=10)
PAYLOAD_VERSION = 1

log = logging.getLogger(__name__)


def reading_to_payload(reading: GpuReading) -> dict[str, Any]:
    """The event payload for one reading: plain JSON, bytes as integers."""
    return {
        "version": PAYLOAD_VERSION,
        "host": reading.host,
        "pid_namespace": reading.pid_namespace,
        "sampled_at": reading.sampled_at,
        "unavailable": reading.unavailable,
        "gpus": [
            {
                "index": gpu.index,
                "uuid": gpu.uuid,
                "name": gpu.name,
                "memory_used": gpu.memory_used,
                "memory_total": gpu.memory_total,
                "utilization": gpu.utilization,
                "processes": [
                    {"pid": p.pid, "memory_used": p.memory_used, "flow_run_id": p.flow_run_id}
                    for p in gpu.processes
                ],
            }
            for gpu in reading.gpus
        ],
    }


def reading_from_payload(worker: str, payload: dict[str, Any]) -> GpuReading:
    """The reading a worker published; raises KeyError/TypeError/ValueError on a bad payload."""
    host = str(payload["host"])
    sampled_at = float(payload["sampled_at"])
    gpus = tuple(
        GpuSample(
            host=host,
            index=int(gpu["index"]),
            uuid=str(gpu.get("uuid") or ""),
            name=str(gpu.get("name") or f"GPU {gpu['index']}"),
            memory_used=int(gpu["memory_used"]),
            memory_total=int(gpu["memory_total"]),
            utilization=None if gpu.get("utilization") is None else int(gpu["utilization"]),
            processes=tuple(
                GpuProcess(
                    pid=int(p["pid"]),
                    memory_used=None if p.get("memory_used") is None else int(p["memory_used"]),
                    flow_run_id=p.get("flow_run_id"),
                )
                for p in gpu.get("processes", [])
            ),
            sampled_at=sampled_at,
        )
        for gpu in payload.get("gpus", [])
    )
    unavailable = payload.get("unavailable")
    return GpuReading(
        host=host,
        sampled_at=sampled_at,
        gpus=gpus,
        unavailable=None if unavailable is None else str(unavailable),
        workers=(worker,),
        pid_namespace=str(payload.get("pid_namespace") or ""),  # absent before 2026-11-29
    )


async def publish_reading(client: Any, worker_id: str, reading: GpuReading) -> None:
    """Publish one reading of `worker_id`'s machine."""
    await emit_event(
        client,
        EVENT_NAME,
        resource={
            "prefect.resource.id": f"{RESOURCE_PREFIX}{worker_id}",
            "prefect.resource.name": worker_id,
            "gpuboard.host": reading.host,
        },
        payload=reading_to_payload(reading),
        occurred=datetime.fromtimestamp(reading.sampled_at, tz=timezone.utc),
    )


async def read_published_readings(client: Any, now: float) -> list[GpuReading]:
    """The newest reading each worker published within READ_WINDOW (one request)."""
    since = datetime.fromtimestamp(now, tz=timezone.utc) - READ_WINDOW
    readings = []
    for event in await read_latest_per_resource(client, EVENT_NAME, RESOURCE_PREFIX, since):
        worker = event.resource_id[len(RESOURCE_PREFIX) :]
        try:
            readings.append(reading_from_payload(worker, event.payload))
        except (KeyError, TypeError, ValueError) as exc:
            # A payload from another gpuboard version must not hide everyone else's.
            log.debug("skipping GPU sample of %s: %s", worker, exc)
    return readings


class GpuPublisher:
    """Publishes this machine's NVML reading for `worker_id` every `interval` seconds.

    Runs in a daemon thread with its own event loop so that `gpuboard worker` can keep
    Prefect's worker in the foreground. A failed publication is logged once per streak
    and retried on the next tick; it never stops the worker.
    """

    def __init__(
        self,
        worker_id: str,
        *,
        interval: float = PUBLISH_INTERVAL,
        api_url: str | None = None,
        nvml: NvmlSource | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.interval = interval
        self.api_url = api_url
        self.nvml = nvml or NvmlSource()
        self.published = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> GpuPublisher:
        self._thread = threading.Thread(
            target=self.run_forever, name=f"gpuboard-gpu-publisher-{self.worker_id}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run_forever(self) -> None:
        """Publish until `stop()`; blocks the calling thread."""
        asyncio.run(self._loop())

    async def _loop(self) -> None:
        from gpuboard.core.config import configured_api_url

        api_url = self.api_url or configured_api_url()
        failing = False
        with NoRetries()():
            async with poll_client(api_url) as client:
                while not self._stop.is_set():
                    reading = await asyncio.to_thread(self.nvml.read)
                    try:
                        await publish_reading(client, self.worker_id, reading)
                    except Exception as exc:
                        if not failing:
                            log.warning(
                                "cannot publish GPU samples to %s: %s",
                                api_url,
                                str(exc) or type(exc).__name__,
                            )
                        failing = True
                    else:
                        if failing:
                            log.warning("publishing GPU samples to %s again", api_url)
                        failing = False
                        self.published += 1
                    await asyncio.to_thread(self._stop.wait, self.interval)
        self.nvml.close()


def start_gpu_publisher(
    worker_id: str, interval: float = PUBLISH_INTERVAL, api_url: str | None = None
) -> GpuPublisher:
    """Start publishing this machine's GPU readings as `worker_id`; returns the publisher."""
    return GpuPublisher(worker_id, interval=interval, api_url=api_url).start()
