"""The GPU-owner check of `scripts/gpu-check`: on a GPU machine, runs 1 and then 10 flow
runs per worker through real `gpuboard worker`s and reads NVML's per-process GPU memory
while they run. Passes when only the workers' inference hosts hold GPU memory (no
flow-run process does) and the total held differs by less than 10 % between the two.

    .venv/bin/python scripts/gpu_owner_check.py [--workers 2] [--runs-per-worker 10]

Without an NVIDIA GPU it says so and exits 0, unless --no-gpu-ok is given: then it runs
the same batches on the CPU (to check the script itself) and skips the memory verdict.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from gpuboard.core.inference import nvidia_gpu_count
from gpuboard.core.local_server import LocalServer, free_port
from gpuboard.core.nvml_source import NvmlSource
from gpuboard.core.prefect.client import async_client
from gpuboard.core.prefect.deploy import deploy_process_image
from gpuboard.core.prefect.pool import ensure_work_pool, read_pool_workers
from gpuboard.core.project import find_project_dir

REPO = Path(__file__).resolve().parents[1]


class MemorySampler:
    """NVML's per-process GPU memory, every 0.2 s: the most each pid held."""

    def __init__(self) -> None:
        self.nvml = NvmlSource(flow_run_of=lambda _pid: None)
        self.peak: dict[int, int] = {}
        self.peak_total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            reading = self.nvml.read()
            total = 0
            for gpu in reading.gpus:
                for process in gpu.processes:
                    used = process.memory_used or 0
                    self.peak[process.pid] = max(self.peak.get(process.pid, 0), used)
                    total += used
            self.peak_total = max(self.peak_total, total)
            time.sleep(0.2)


def host_pids(workers: list[str]) -> dict[int, str]:
    """pid -> worker of each worker's inference host (from /proc)."""
    found = {}
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"gpuboard.inference_host" in argv:
            for worker in workers:
                if worker.encode() in argv:
                    found[int(cmdline.parent.name)] = worker
    return found


async def submit_and_wait(api_url: str, count: int, start: int) -> float:
    started = time.monotonic()
    async with async_client(api_url) as client:
        deployment = await client.read_deployment_by_name("process-image/process-image")
        ids = [
            (
                await client.create_flow_run_from_deployment(
                    deployment.id, parameters={"image_id": start + n}
                )
            ).id
            for n in range(count)
        ]
        while True:
            states = [(await client.read_flow_run(run)).state for run in ids]
            if all(state is not None and state.is_final() for state in states):
                failed = [s for s in states if s is not None and not s.is_completed()]
                if failed:
                    raise SystemExit(f"{len(failed)} run(s) did not complete: {failed[0]}")
                return time.monotonic() - started
            await asyncio.sleep(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs-per-worker", type=int, default=10)
    parser.add_argument("--no-gpu-ok", action="store_true")
    args = parser.parse_args()
    gpus = nvidia_gpu_count()
    if gpus == 0 and not args.no_gpu_ok:
        print("gpu-owner check: no NVIDIA GPU here; nothing to check")
        return 0
    home = Path(tempfile.mkdtemp(prefix="gpuboard-owner-check-"))
    server = LocalServer(home=home / "server", port=free_port())
    server.start()
    workers = [f"check-{n + 1}" for n in range(args.workers)]
    children: list[subprocess.Popen[bytes]] = []
    try:
        asyncio.run(_pool(server.api_url))
        deploy_process_image(find_project_dir(), server.api_url, pool="gpu-check")
        env = {
            **os.environ,
            "PREFECT_API_URL": server.api_url,
            "GPUBOARD_HOME": str(home),
            "GPUBOARD_RESULTS_DIR": str(home / "results"),
        }
        for number, worker in enumerate(workers):
            command = [sys.executable, "-m", "gpuboard", "worker", "--id", worker]
            command += ["--pool", "gpu-check", "--api-url", server.api_url, "--gpu-slots", "2"]
            command += ["--runs", str(args.runs_per_worker)]
            command += ["--gpu-index", str(number % max(1, gpus))]
            log = (home / f"{worker}.log").open("ab")
            children.append(
                subprocess.Popen(
                    command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            )
        asyncio.run(_online(server.api_url, set(workers)))
        time.sleep(5)  # the hosts load their models
        totals: dict[int, int] = {}
        strangers: dict[int, int] = {}  # GPU memory held by processes that are no host
        hosts_holding: set[int] = set()
        for per_worker in (1, args.runs_per_worker):
            with MemorySampler() as sampler:
                took = asyncio.run(
                    submit_and_wait(server.api_url, per_worker * len(workers), per_worker * 1000)
                )
            hosts = host_pids(workers)
            holders = {pid: used for pid, used in sampler.peak.items() if used}
            others = {pid: used for pid, used in holders.items() if pid not in hosts}
            strangers.update(others)
            hosts_holding |= {pid for pid in holders if pid in hosts}
            totals[per_worker] = sum(holders.get(pid, 0) for pid in hosts)
            print(f"--- {per_worker} flow run(s) per worker: {took:.1f} s")
            for pid, used in sorted(holders.items()):
                who = f"inference host of {hosts[pid]}" if pid in hosts else "NOT A HOST"
                print(f"  pid {pid:>7}  {used / 2**20:9.1f} MiB  {who}")
            print(f"  hosts' total {totals[per_worker] / 2**20:.1f} MiB; other processes {others}")
        if gpus == 0:
            print("no GPU: the memory verdict is skipped (--no-gpu-ok)")
            return 0
        low, high = totals[1], totals[args.runs_per_worker]
        change = abs(high - low) / low if low else float("inf")
        print(f"total GPU memory, 1 vs {args.runs_per_worker} per worker: {change:.1%} apart")
        ok = change < 0.10 and not strangers and len(hosts_holding) == len(workers)
        print("gpu-owner check:", "PASS" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        for child in children:
            os.killpg(child.pid, signal.SIGTERM)
        for child in children:
            child.wait(60)
        server.stop()


async def _pool(api_url: str) -> None:
    async with async_client(api_url) as client:
        await ensure_work_pool(client, "gpu-check")


async def _online(api_url: str, names: set[str]) -> None:
    for _ in range(240):
        async with async_client(api_url) as client:
            online = {w.name for w in await read_pool_workers(client, "gpu-check") if w.online}
        if names <= online:
            return
        await asyncio.sleep(0.5)
    raise SystemExit(f"workers {names} did not come online")


if __name__ == "__main__":
    sys.exit(main())
