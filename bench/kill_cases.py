"""Kill cases of the inference host, timed: how long a GPU slot stays taken after a kill.

Against a real Prefect server and a real host (its supervisor in this process, the real
OCR model), with clients in processes of their own as flow runs are:

- a client SIGKILLed while its request waits in line (the GCL's one slot held elsewhere):
  how long until the host has dropped it (queue empty) and whether it took a slot;
- a client SIGKILLed the moment its slot is granted, and 0.3 s into its inference (a
  page of 20 lines, ~0.5 s of OCR here): time until the slot is free on the server;
- the host SIGKILLed holding both slots: time until both are free on the server, and
  until it serves again;
- the whole worker (`gpuboard worker`, its Prefect worker and host) SIGKILLed holding a
  slot: time until the slot is free with no restart (lease expiry), and when
  `gpuboard worker` is started again at once.

    .venv/bin/python bench/kill_cases.py --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.settings import PREFECT_API_URL, temporary_settings

from gpuboard.core.config import gcl_name
from gpuboard.core.host.supervisor import HostConfig, HostSupervisor, default_socket_path
from gpuboard.core.inference import ModelSettings
from gpuboard.core.local_server import LocalServer, free_port
from gpuboard.core.prefect.client import async_client, sync_client
from gpuboard.core.prefect.pool import ensure_work_pool
from gpuboard.core.prefect.slots import read_gcl_now

REPO = Path(__file__).resolve().parents[1]
REQUEST = REPO / "tests" / "support" / "host_request.py"


def until(condition: Callable[[], bool], timeout: float) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            return float("nan")
        time.sleep(0.02)
    return time.monotonic() - started


def active(gcl: str) -> int:
    state = read_gcl_now(gcl)
    return -1 if state is None else state.active_slots


def client(socket_path: Path, image_id: int, lines: int = 0) -> subprocess.Popen[str]:
    command = [sys.executable, str(REQUEST), str(socket_path), str(image_id)]
    if lines:
        command += ["--lines", str(lines)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    process.stdout.readline()  # "sending"
    return process


def kill(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait()


def hold_outside(gcl: str) -> str:
    with sync_client() as api:
        response = api.request(
            "POST",
            "/v2/concurrency_limits/increment-with-lease",
            json={"names": [gcl], "slots": 1, "mode": "concurrency", "lease_duration": 60},
        )
    return str(response.json()["lease_id"])


def release_outside(lease_id: str) -> None:
    with sync_client() as api:
        api.request(
            "POST", "/v2/concurrency_limits/decrement-with-lease", json={"lease_id": lease_id}
        )


def host_cases(api_url: str, repeat: int) -> dict[str, list[float]]:
    worker = f"kill-{uuid.uuid4().hex[:6]}"
    gcl = gcl_name(worker)
    with sync_client() as api:
        api.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=gcl, limit=1))
    socket_path = default_socket_path(worker, api_url)
    supervisor = HostSupervisor(
        HostConfig(worker, api_url, socket_path, ModelSettings(threads=1)), say=lambda _: None
    ).start()
    until(lambda: supervisor.state.status == "ready", 120)
    times: dict[str, list[float]] = {}
    try:
        for n in range(repeat):
            # waiting: the only slot is held elsewhere
            lease = hold_outside(gcl)
            waiter = client(socket_path, 100 + n)
            until(lambda: supervisor.state.queued == 1, 20)
            kill(waiter)
            times.setdefault("waiting: out of the line (s)", []).append(
                until(lambda: supervisor.state.queued == 0, 20)
            )
            release_outside(lease)
            time.sleep(0.5)
            times.setdefault("waiting: slots taken after (must be 0)", []).append(active(gcl))
            for label, delay in (("just granted", 0.0), ("0.3 s into inference", 0.3)):
                holder = client(socket_path, 200 + n, lines=20)
                until(lambda: active(gcl) == 1, 20)
                time.sleep(delay)
                kill(holder)
                times.setdefault(f"{label}: slot free after (s)", []).append(
                    until(lambda: active(gcl) == 0, 60)
                )
        # the host killed holding the slot
        for n in range(repeat):
            holder = client(socket_path, 300 + n, lines=20)
            until(lambda: active(gcl) == 1, 20)
            pid = supervisor.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            times.setdefault("host killed: slot free after (s)", []).append(
                until(lambda: active(gcl) == 0, 60)
            )
            times.setdefault("host killed: serving again after (s)", []).append(
                until(
                    lambda pid=pid: supervisor.state.status == "ready" and supervisor.pid != pid,
                    120,
                )
            )
            holder.wait()
    finally:
        supervisor.stop()
    return times


def worker_case(api_url: str, restart: bool, home: Path) -> float:
    """Seconds until the slot of a whole worker SIGKILLed while holding it is free."""
    worker = f"whole-{uuid.uuid4().hex[:6]}"
    gcl = gcl_name(worker)
    env = {**os.environ, "PREFECT_API_URL": api_url, "GPUBOARD_HOME": str(home)}
    command = [sys.executable, "-m", "gpuboard", "worker", "--id", worker, "--pool", "kill"]
    command += ["--api-url", api_url, "--gpu-slots", "1", "--inference-threads", "1"]
    log = (home / f"{worker}.log").open("ab")
    first = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    socket_path = default_socket_path(worker, api_url)
    until(lambda: "loaded on" in (home / f"{worker}.log").read_text(errors="replace"), 120)
    holder = client(socket_path, 400, lines=60)
    until(lambda: active(gcl) == 1, 30)
    os.killpg(first.pid, signal.SIGKILL)  # the worker's whole process group: host included
    with contextlib.suppress(ProcessLookupError):
        _kill_host(worker)
    first.wait()
    killed = time.monotonic()
    second = None
    if restart:
        second = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    until(lambda: active(gcl) == 0, 150)
    freed = time.monotonic() - killed
    holder.wait()
    if second is not None:
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(60)
    log.close()
    return freed


def _kill_host(worker: str) -> None:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            argv = cmdline.read_bytes().split(b"\0")
            if b"gpuboard.inference_host" in argv and worker.encode() in argv:
                os.kill(int(cmdline.parent.name), signal.SIGKILL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="gpuboard-bench-kill-"))
    server = LocalServer(home=home / "server", port=free_port())
    server.start()
    os.environ["PREFECT_API_URL"] = server.api_url
    os.environ["GPUBOARD_HOME"] = str(home)  # the workers' too: their sockets are found
    try:

        async def pool() -> None:
            async with async_client(server.api_url) as api:
                await ensure_work_pool(api, "kill")

        asyncio.run(pool())
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            times = host_cases(server.api_url, args.repeat)
            times["whole worker killed, not restarted: slot free after (s)"] = [
                worker_case(server.api_url, restart=False, home=home)
            ]
            times["whole worker killed, restarted at once: slot free after (s)"] = [
                worker_case(server.api_url, restart=True, home=home)
            ]
    finally:
        server.stop()
    print(f"\nbench/kill_cases.py --repeat {args.repeat}; {os.cpu_count()} cores\n")
    print("| case | median | all |")
    print("|---|---|---|")
    for case, values in times.items():
        shown = ", ".join(f"{v:.2f}" for v in values)
        print(f"| {case} | {statistics.median(values):.2f} | {shown} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
