"""Measures what one dashboard refresh costs with 10,000 flow runs in the database.

Starts a throwaway Prefect server (SQLite, loopback, own home), seeds a pool with workers,
GCLs, GPU samples and 10,000 runs in every state, then times the board's read: requests
per refresh and wall time, end to end and per request. Not part of the test suite.

    .venv/bin/python bench/dashboard_refresh.py [--runs 10000] [--refreshes 30]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx

from gpuboard.core.board_source import BoardSource
from gpuboard.core.local_server import LocalServer
from gpuboard.core.prefect.snapshot import read_prefect

POOL = "bench-pool"
BULK = 100  # runs per bulk create request
WORKERS = ("gpu-1", "gpu-2", "gpu-3", "gpu-4")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


WEIGHTS = {
    "COMPLETED": 0.88,
    "FAILED": 0.04,
    "CRASHED": 0.01,
    "SCHEDULED": 0.05,
    "LATE": 0.01,
    "PENDING": 0.004,
    "RUNNING": 0.006,
}


def _state(kind: str) -> dict[str, Any]:
    """The state a seeded run is created in (the server stamps it with the current time)."""
    names = {
        "COMPLETED": "Completed",
        "FAILED": "Failed",
        "CRASHED": "Crashed",
        "RUNNING": "Running",
        "PENDING": "Pending",
        "SCHEDULED": "Scheduled",
        "LATE": "Late",
    }
    state: dict[str, Any] = {"type": "SCHEDULED" if kind == "LATE" else kind, "name": names[kind]}
    if kind in ("FAILED", "CRASHED"):
        state["message"] = "Task run encountered an exception: OutOfMemoryError"
    return state


async def post(http: httpx.AsyncClient, path: str, body: Any, retries: dict[str, int]) -> Any:
    """POST until the server takes it: SQLite answers 503 while another writer holds it."""
    delay = 0.05
    while True:
        try:
            response = await http.post(path, json=body)
        except (httpx.ReadError, httpx.RemoteProtocolError):
            retries["dropped"] += 1  # a kept-alive connection the server had just closed
            continue
        if response.status_code not in (503, 502):
            response.raise_for_status()
            return response.json() if response.content else None
        retries["503"] += 1
        await asyncio.sleep(delay)
        delay = min(2.0, delay * 2)


async def seed(api_url: str, runs: int, first_id: int = 0) -> None:
    """Pool, workers, GCLs, a deployment, `runs` flow runs in every state, GPU samples."""
    retries = {"503": 0, "dropped": 0}
    async with httpx.AsyncClient(base_url=api_url, timeout=60) as http:
        await http.post("/work_pools/", json={"name": POOL, "type": "process"})
        for worker in WORKERS:
            await post(
                http,
                f"/work_pools/{POOL}/workers/heartbeat",
                {"name": worker, "heartbeat_interval_seconds": 30},
                retries,
            )
            await http.post(
                "/v2/concurrency_limits/",
                json={"name": f"gpu:{worker}", "limit": 4, "active": True},
            )
        flow = await post(http, "/flows/", {"name": "process-image"}, retries)
        deployment = await post(
            http,
            "/deployments/",
            {
                "name": "process-image",
                "flow_id": flow["id"],
                "work_pool_name": POOL,
                "entrypoint": "flows/process_image.py:process_image",
            },
            retries,
        )
        kinds = random.choices(list(WEIGHTS), weights=list(WEIGHTS.values()), k=runs)
        # Due Scheduled runs last: the server's late-runs service then rewrites them while
        # the seeding still writes, and the two writers queue on SQLite's one lock.
        order = sorted(
            enumerate(kinds, start=first_id), key=lambda item: item[1] in ("SCHEDULED", "LATE")
        )
        running_ids: list[str] = []
        started = time.perf_counter()
        # Prefect 3.9's bulk create, 100 runs a request, one request in flight: what
        # gpuboard's submitter does (bench/batch_create.py).
        for start in range(0, len(order), BULK):
            chunk = order[start : start + BULK]
            bodies: list[dict[str, Any]] = []
            for image_id, kind in chunk:
                body: dict[str, Any] = {
                    "state": _state(kind),
                    "parameters": {"image_id": image_id},
                    # Retrying a create after a dropped connection must not duplicate it.
                    "idempotency_key": f"bench-{image_id}",
                }
                if kind == "RUNNING":
                    body["labels"] = {"prefect.worker.name": random.choice(WORKERS)}
                bodies.append(body)
            for _attempt in range(10):
                answer = await post(
                    http, f"/deployments/{deployment['id']}/create_flow_run/bulk", bodies, retries
                )
                results = answer["results"]
                if all(r.get("flow_run_id") for r in results):
                    break
                retries["refused in bulk"] = retries.get("refused in bulk", 0) + 1
                await asyncio.sleep(0.5)  # "database is locked" per run: the same again
            else:
                raise SystemExit(f"seeding failed: {results[:3]}")
            running_ids += [
                r["flow_run_id"]
                for r, (_, kind) in zip(results, chunk, strict=True)
                if kind == "RUNNING"
            ]
            if (start // BULK) % 10 == 9:
                print(f"  {start + len(chunk)} runs created", flush=True)
        elapsed = time.perf_counter() - started
        print(f"seeded {runs} runs in {elapsed:.0f}s ({runs / elapsed:.0f}/s; retried {retries})")
        # Each running run is in one step of the pipeline.
        for run_id in running_ids:
            task = random.choice(["download_image", "run_ml_model", "run_ml_model", "save_results"])
            await post(
                http,
                "/task_runs/",
                {
                    "flow_run_id": run_id,
                    "task_key": task,
                    "dynamic_key": "0",
                    "name": f"{task}-{uuid.uuid4().hex[:3]}",
                    "state": {"type": "RUNNING", "name": "Running"},
                },
                retries,
            )


async def publish_samples(api_url: str) -> None:
    """A GPU sample from each worker, as `gpuboard worker` publishes them."""
    from gpuboard.core.gpu_events import publish_reading
    from gpuboard.core.models import GpuReading, GpuSample
    from gpuboard.core.prefect.poll_client import poll_client

    async with poll_client(api_url) as client:
        for worker in WORKERS:
            gpu = GpuSample(
                host=f"host-{worker}",
                index=0,
                uuid=f"GPU-{worker}",
                name="NVIDIA H100",
                memory_used=20 * 1024**3,
                memory_total=80 * 1024**3,
                utilization=50,
                processes=(),
                sampled_at=time.time(),
            )
            await publish_reading(
                client, worker, GpuReading(host=gpu.host, sampled_at=gpu.sampled_at, gpus=(gpu,))
            )
        for worker in WORKERS:  # keep them online for the measurement
            await client.send_worker_heartbeat(POOL, worker, heartbeat_interval_seconds=30)


async def runs_in_pool(api_url: str) -> int:
    from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName

    from gpuboard.core.prefect.poll_client import poll_client

    async with poll_client(api_url) as client:
        return await client.count_flow_runs(
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[POOL]))
        )


def group_cpu_seconds(pgid: int) -> float:
    """CPU time (user + system) of every process in process group `pgid`: the server."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5 of /proc/pid/stat: the process group
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


async def measure(api_url: str, refreshes: int, server_pgid: int | None = None) -> None:
    source = BoardSource(POOL, api_url)
    await source.read()  # warm: CSRF token, connections
    await asyncio.sleep(6)  # let the event persister flush the GPU samples
    idle_cpu = 0.0
    if server_pgid is not None:  # the server's own background work, to subtract
        before, started = group_cpu_seconds(server_pgid), time.monotonic()
        await asyncio.sleep(10)
        idle_cpu = (group_cpu_seconds(server_pgid) - before) / (time.monotonic() - started)
    costs = []
    cpu_started = time.process_time()
    server_before, wall_started = (
        group_cpu_seconds(server_pgid) if server_pgid else 0.0,
        time.monotonic(),
    )
    for _ in range(refreshes):
        snapshot = await source.read()
        costs.append(snapshot.cost)
    cpu_ms = (time.process_time() - cpu_started) / refreshes * 1000
    wall = time.monotonic() - wall_started
    await source.aclose()
    ms = [c.api_ms for c in costs]
    calls = sorted({c.api_calls for c in costs})
    print(
        f"board refresh ({refreshes}x): requests {calls}, "
        f"median {statistics.median(ms):.0f} ms, p95 {sorted(ms)[int(len(ms) * 0.95) - 1]:.0f} ms, "
        f"max {max(ms):.0f} ms; board process CPU {cpu_ms:.0f} ms per refresh"
    )
    if server_pgid is not None:
        server_cpu = group_cpu_seconds(server_pgid) - server_before - idle_cpu * wall
        print(
            f"  server CPU per refresh: {server_cpu / refreshes * 1000:.0f} ms "
            f"(its idle background work, {idle_cpu * 1000:.0f} ms/s, subtracted)"
        )
    runs = snapshot.runs
    print(f"  counts: {runs}")
    print(f"  workers: {[(w.name, w.running, w.waiting, w.inferring) for w in snapshot.workers]}")
    print(f"  gpu readings: {len(snapshot.gpu_readings)}")
    await per_request(api_url)


async def per_request(api_url: str) -> None:
    """Each request of a refresh alone, one after the other: where the server time goes."""
    from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName

    from gpuboard.core.prefect import snapshot
    from gpuboard.core.prefect.poll_client import poll_client

    timings: dict[str, list[float]] = {}

    async def on_response(response: httpx.Response) -> None:
        await response.aread()
        key = f"{response.request.method} {response.request.url.path}"
        timings.setdefault(key, []).append(response.elapsed.total_seconds() * 1000)

    async def sequential(*calls: Any) -> list[Any]:
        return [await call for call in calls]

    original = snapshot._gather
    snapshot._gather = sequential
    try:
        async with poll_client(api_url) as client:
            client._client.event_hooks["response"].append(on_response)
            rounds = []
            for _ in range(5):
                started = time.perf_counter()
                await read_prefect(client, POOL, datetime.now(timezone.utc))
                rounds.append((time.perf_counter() - started) * 1000)
            # The alternative for counts: one /flow_runs/history call over all time.
            for _ in range(5):
                now = datetime.now(timezone.utc)
                await client.request(
                    "POST",
                    "/flow_runs/history",
                    json={
                        "history_start": (now - timedelta(days=30)).isoformat(),
                        "history_end": now.isoformat(),
                        "history_interval_seconds": 31 * 86400,
                        "work_pools": WorkPoolFilter(
                            name=WorkPoolFilterName(any_=[POOL])
                        ).model_dump(mode="json"),
                    },
                )
    finally:
        snapshot._gather = original
    print(f"  the same read, requests one at a time: median {statistics.median(rounds):.0f} ms")
    print("  per request alone (median ms):")
    for key, values in sorted(timings.items()):
        print(f"    {key:55s} x{len(values) // 5:<2d} {statistics.median(values):6.1f}")


def open_board_cpu(api_url: str, refresh: float, seconds: float) -> tuple[float, int]:
    """Percent of one core the real board (`python -m gpuboard`) uses, open on a 140x40
    pseudo-terminal, over `seconds` after a warm-up; and how many frames it wrote."""
    import fcntl
    import pty
    import signal
    import struct
    import subprocess
    import sys
    import termios

    main_fd, child_fd = pty.openpty()
    fcntl.ioctl(child_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 140, 0, 0))
    board = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gpuboard",
            "--api-url",
            api_url,
            "--pool",
            POOL,
            "--refresh",
            str(refresh),
        ],
        stdin=child_fd,
        stdout=child_fd,
        stderr=child_fd,
        start_new_session=True,
        env={**os.environ, "TERM": "xterm-256color", "GPUBOARD_READ_ONLY": "1"},
    )
    os.close(child_fd)
    written = 0

    def drain(for_s: float) -> None:
        nonlocal written
        import select

        end = time.monotonic() + for_s
        while (left := end - time.monotonic()) > 0:
            ready, _, _ = select.select([main_fd], [], [], left)
            if ready:
                try:
                    written += len(os.read(main_fd, 65536))
                except OSError:
                    return

    try:
        # Start-up, and the IDLE_AFTER_READS reads before the board sees nothing changes.
        drain(35)
        before, started, written = _cpu_seconds(board.pid), time.monotonic(), 0
        drain(seconds)
        used = _cpu_seconds(board.pid) - before
        return 100 * used / (time.monotonic() - started), written
    finally:
        board.send_signal(signal.SIGTERM)
        try:
            board.wait(timeout=10)
        except subprocess.TimeoutExpired:
            board.kill()
        os.close(main_fd)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--refreshes", type=int, default=30)
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=60,
        help="how long to measure the open board's CPU at each refresh interval (0: skip)",
    )
    parser.add_argument(
        "--home",
        type=Path,
        help="server home to keep (and reuse once seeded) instead of a temp one",
    )
    args = parser.parse_args()
    random.seed(7)
    with tempfile.TemporaryDirectory(prefix="gpuboard-bench-") as temp:
        server = LocalServer(home=args.home or Path(temp), port=free_port())
        server.start()
        try:
            present = asyncio.run(runs_in_pool(server.api_url))
            if present >= args.runs:
                print(f"reusing {present} runs already in {server.home}")
            else:
                asyncio.run(seed(server.api_url, args.runs - present, present))
            asyncio.run(publish_samples(server.api_url))
            pgid = server.process.pid if server.process else None  # its own session
            asyncio.run(measure(server.api_url, args.refreshes, pgid))
            if args.idle_seconds:
                for refresh in (2.0, 1.0, 5.0):  # `gpuboard`'s default, the fastest, `up`'s
                    percent, written = open_board_cpu(server.api_url, refresh, args.idle_seconds)
                    print(
                        f"open board, --refresh {refresh:g}, nothing changing: {percent:.1f} % "
                        f"of one core over {args.idle_seconds:.0f} s ({written / 1024:.0f} KiB "
                        "drawn)"
                    )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
