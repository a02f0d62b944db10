"""The embedded stack of `gpuboard up`: server, pool, GCLs, deployment and local workers.

It starts only what is missing (a server that answers is reused, a worker already online
is not started twice) and remembers what it started, so that stopping it stops exactly
that and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import urlparse

from gpuboard.core.config import DEFAULT_POOL, EMBEDDED_API_URL, gcl_name, gpuboard_home
from gpuboard.core.database import (
    DatabaseUnreachable,
    check_database,
    describe_database,
    redacted,
)
from gpuboard.core.inference import nvidia_gpu_count
from gpuboard.core.local_server import LocalServer, api_is_healthy
from gpuboard.core.models import GclState
from gpuboard.core.prefect.client import async_client
from gpuboard.core.prefect.deploy import deploy_process_image
from gpuboard.core.prefect.gcl import ensure_gcl, read_gpu_gcls
from gpuboard.core.prefect.pool import PoolWorker, ensure_work_pool, read_pool_workers
from gpuboard.core.prefect.runs import count_runs_by_state
from gpuboard.core.project import find_project_dir
from gpuboard.core.sizing import inference_threads_per_worker

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_WORKER_STOP_TIMEOUT_S = 30.0
# The order run states are shown in; others follow alphabetically.
_STATE_ORDER = ["SCHEDULED", "PENDING", "RUNNING", "COMPLETED", "FAILED", "CRASHED", "CANCELLED"]


class StackError(RuntimeError):
    """The stack cannot be brought up; the message says why and what to do."""


@dataclass(frozen=True)
class StackOptions:
    """What `gpuboard up` was asked for."""

    workers: int = 2
    gpu_slots: int = 2
    runs: int = 10
    pool: str = DEFAULT_POOL
    api_url: str = EMBEDDED_API_URL
    executor: str = "warm"  # how its workers run flow runs: "warm" runners or a "process" each
    # The database of a server started here (normalized, see core/database.py); None:
    # SQLite under GPUBOARD_HOME. A server that already answers keeps its own.
    database_url: str | None = None

    @property
    def worker_ids(self) -> list[str]:
        return [f"gpu-{index}" for index in range(1, self.workers + 1)]


@dataclass
class StartedWorker:
    """A `gpuboard worker` child this stack started, in its own process group."""

    worker_id: str
    process: subprocess.Popen[bytes]
    log_path: Path
    exit_reported: bool = False


@dataclass(frozen=True)
class StackStatus:
    """One reading of the stack for the status line."""

    api_url: str
    server_up: bool
    server_started_here: bool
    expected_workers: tuple[str, ...]
    workers: tuple[PoolWorker, ...] = ()
    gcls: tuple[GclState, ...] = ()
    runs: dict[str, int] = field(default_factory=dict)
    error: str | None = None


class Stack:
    """Brings the stack up with `start()` and down with `stop()` (only what it started)."""

    def __init__(self, options: StackOptions, log: Callable[[str], None] = print) -> None:
        self.options = options
        self.log = log
        self.home = gpuboard_home()
        self.server: LocalServer | None = None
        self.workers: dict[str, StartedWorker] = {}
        self.reused_workers: list[str] = []

    @property
    def state_path(self) -> Path:
        # One file per `gpuboard up`: two of them sharing a home must not erase each other's.
        return self.home / "stacks" / f"up-{os.getpid()}.json"

    def start(self) -> None:
        """Server, pool, GCLs, deployment, then the workers that are not online yet."""
        project_dir = find_project_dir()
        self._ensure_server()
        self.log(f"pool {self.options.pool!r}, GCLs and deployment ...")
        asyncio.run(self._ensure_pool_and_gcls())
        deploy_process_image(project_dir, self.options.api_url, pool=self.options.pool)
        self.log(f"deployed process-image/process-image from {project_dir}")
        online = {w.name for w in asyncio.run(self._read_workers()) if w.online}
        gpus = max(1, nvidia_gpu_count())
        for number, worker_id in enumerate(self.options.worker_ids):
            if worker_id in online:
                self.reused_workers.append(worker_id)
                self.log(f"worker {worker_id} is already online: not starting another")
            else:
                self._start_worker(worker_id, gpu_index=number % gpus)
        self._write_state()

    def wait_until_online(self, timeout: float = 120.0) -> bool:
        """Wait until every expected worker sends heartbeats; False on timeout."""
        deadline = time.monotonic() + timeout
        expected = set(self.options.worker_ids)
        while time.monotonic() < deadline:
            online = {w.name for w in asyncio.run(self._read_workers()) if w.online}
            if expected <= online:
                return True
            self.report_exited_workers()
            if self.workers and all(w.process.poll() is not None for w in self.workers.values()):
                return False
            time.sleep(1.0)
        return False

    def report_exited_workers(self) -> None:
        """Log, once each, the workers started here that have exited."""
        for worker in self.workers.values():
            returncode = worker.process.poll()
            if returncode is not None and not worker.exit_reported:
                worker.exit_reported = True
                self.log(
                    f"worker {worker.worker_id} exited with status {returncode}; "
                    f"its log: {worker.log_path}"
                )

    def stop(self) -> None:
        """Stop the workers started here, then the server if it was started here."""
        for worker in self.workers.values():
            if worker.process.poll() is None:
                self.log(f"stopping worker {worker.worker_id}")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(worker.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + _WORKER_STOP_TIMEOUT_S
        for worker in self.workers.values():
            try:
                worker.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.log(f"worker {worker.worker_id} did not stop in time: killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(worker.process.pid, signal.SIGKILL)
                worker.process.wait(timeout=10)
        if self.server is not None:
            self.log("stopping the Prefect server started here")
            self.server.stop()
        if self.workers or self.server is not None:
            self.log("stopped everything started here")
        with contextlib.suppress(FileNotFoundError):
            self.state_path.unlink()

    def read_status(self) -> StackStatus:
        """What the status line shows; an unreachable server is a value, not an error."""
        base = StackStatus(
            api_url=self.options.api_url,
            server_up=False,
            server_started_here=self.server is not None,
            expected_workers=tuple(self.options.worker_ids),
        )
        if not api_is_healthy(self.options.api_url):
            return base
        try:
            return asyncio.run(self._read_status(base))
        except Exception as exc:
            return StackStatus(**{**base.__dict__, "server_up": True, "error": str(exc)})

    # -- steps -----------------------------------------------------------------------

    def _ensure_server(self) -> None:
        url = self.options.api_url
        database_url = self.options.database_url
        if api_is_healthy(url):
            self.log(f"Prefect server answers at {url}: using it")
            if database_url is not None:
                self.log(
                    f"note: it keeps its own database; {describe_database(database_url)} "
                    "is used only by a server this command starts"
                )
            return
        parsed = urlparse(url)
        if parsed.hostname not in _LOOPBACK or parsed.port is None:
            raise StackError(
                f"no Prefect server answers at {url}, and gpuboard starts one only on this "
                "machine at an explicit port (http://127.0.0.1:<port>/api)"
            )
        if database_url is None:
            self.log(f"starting a Prefect server at {url} (data in {self.home / 'server'})")
        else:
            try:
                check_database(database_url)
            except DatabaseUnreachable as exc:
                raise StackError(f"cannot start a Prefect server on that database: {exc}") from None
            self.log(
                f"starting a Prefect server at {url} on {describe_database(database_url)} "
                f"(its log in {self.home / 'server'})"
            )
        self.server = LocalServer(
            home=self.home / "server", port=parsed.port, database_url=database_url
        )
        self.server.start()
        self._write_state()

    async def _ensure_pool_and_gcls(self) -> None:
        async with async_client(self.options.api_url) as client:
            await ensure_work_pool(client, self.options.pool)
            for worker_id in self.options.worker_ids:
                gcl, created = await ensure_gcl(client, gcl_name(worker_id), self.options.gpu_slots)
                kept = "created" if created else "kept"
                self.log(f"GCL {gcl.name}: limit {gcl.limit} ({kept})")

    async def _read_workers(self) -> list[PoolWorker]:
        async with async_client(self.options.api_url) as client:
            return await read_pool_workers(client, self.options.pool)

    def _start_worker(self, worker_id: str, gpu_index: int = 0) -> None:
        log_dir = self.home / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{worker_id}.log"
        options = self.options
        command = [
            sys.executable,
            "-m",
            "gpuboard",
            "worker",
            "--id",
            worker_id,
            "--pool",
            options.pool,
            "--runs",
            str(options.runs),
            "--gpu-slots",
            str(options.gpu_slots),
            "--api-url",
            options.api_url,
            # Each local worker's host: its own GPU where the machine has several, and its
            # share of the cores for ONNX Runtime.
            "--gpu-index",
            str(gpu_index),
            "--inference-threads",
            str(inference_threads_per_worker(options.workers)),
            "--executor",
            options.executor,
        ]
        env = {**os.environ, "PREFECT_API_URL": options.api_url}
        with log_path.open("ab") as log_file:
            process = subprocess.Popen(
                command,
                env=env,
                # Its runs import the installed flows: the worker needs no project folder,
                # and gpuboard's home outlives wherever `up` was started.
                cwd=self.home,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                # Its own process group: our Ctrl-C does not hit it mid-start, and stop()
                # signals exactly this group.
                start_new_session=True,
            )
        self.workers[worker_id] = StartedWorker(worker_id, process, log_path)
        self.log(f"started worker {worker_id} (pid {process.pid}, log {log_path})")

    async def _read_status(self, base: StackStatus) -> StackStatus:
        async with async_client(self.options.api_url) as client:
            workers = await read_pool_workers(client, self.options.pool)
            gcls = await read_gpu_gcls(client)
            runs = await count_runs_by_state(client, work_pool=self.options.pool)
        return StackStatus(
            **{
                **base.__dict__,
                "server_up": True,
                "workers": tuple(workers),
                "gcls": tuple(gcls),
                "runs": dict(runs),
            }
        )

    def _write_state(self) -> None:
        """Which processes this `gpuboard up` owns, for an operator looking for them."""
        state = {
            "pid": os.getpid(),
            "api_url": self.options.api_url,
            "server_pid": self.server.process.pid if self.server and self.server.process else None,
            "database": (
                redacted(self.options.database_url) if self.options.database_url else "sqlite"
            ),
            "workers": {w.worker_id: w.process.pid for w in self.workers.values()},
            "reused_workers": self.reused_workers,
        }
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        self.state_path.write_text(json.dumps(state, indent=2) + "\n")


def format_status_line(status: StackStatus, now: datetime | None = None) -> str:
    """One line: server, workers online, GPU slots in use/limit, runs by state."""
    stamp = (now or datetime.now()).strftime("%H:%M:%S")
    origin = "started here" if status.server_started_here else "reused"
    if not status.server_up:
        return f"{stamp} server {status.api_url} NOT ANSWERING ({origin})"
    if status.error:
        return f"{stamp} server up ({origin}) | cannot read state: {status.error}"
    online = [w.name for w in status.workers if w.online]
    expected_online = sum(1 for name in status.expected_workers if name in online)
    others = [name for name in online if name not in status.expected_workers]
    workers = f"workers {expected_online}/{len(status.expected_workers)} online"
    if others:
        workers += f" (+{len(others)} other: {' '.join(others)})"
    slots = " ".join(
        f"{g.name} {g.active_slots}/{g.limit}" + ("" if g.active else " inactive")
        for g in status.gcls
    )
    ordered = sorted(
        status.runs,
        key=lambda s: (_STATE_ORDER.index(s) if s in _STATE_ORDER else len(_STATE_ORDER), s),
    )
    runs = " ".join(f"{s.lower()} {status.runs[s]}" for s in ordered) or "none"
    return f"{stamp} server up ({origin}) | {workers} | slots {slots or 'none'} | runs {runs}"


def run_stack(
    options: StackOptions,
    show: Callable[[Stack], int],
    log: Callable[[str], None] = print,
    online_timeout: float = 180.0,
) -> int:
    """Bring the stack up, run `show` (dashboard or status lines) until it returns or the
    user stops it (Ctrl-C, SIGTERM), then stop what was started. Returns an exit status."""
    stack = Stack(options, log)
    # SIGTERM takes the same clean path as Ctrl-C. SIGINT is set too because a process
    # started in the background by a shell inherits it ignored.
    previous_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    previous_int = signal.signal(signal.SIGINT, _raise_interrupt)
    try:
        stack.start()
        log("waiting for the workers to come online ...")
        if stack.wait_until_online(online_timeout):
            log(f"stack up: workers {' '.join(options.worker_ids)} online at {options.api_url}")
        else:
            log(f"warning: not every worker came online; see the logs in {stack.home / 'logs'}")
        return show(stack)
    except KeyboardInterrupt:
        log("stopping ...")
        return 0
    finally:
        # Stopping takes seconds; a second Ctrl-C must not leave half of it running.
        signal.signal(signal.SIGINT, _say_stopping(log))
        signal.signal(signal.SIGTERM, _say_stopping(log))
        try:
            stack.stop()
        finally:
            signal.signal(signal.SIGINT, previous_int)
            signal.signal(signal.SIGTERM, previous_term)


def print_status_lines(
    stack: Stack, interval: float = 5.0, log: Callable[[str], None] = print
) -> int:
    """The headless view: a status line every `interval` seconds until interrupted."""
    while True:
        stack.report_exited_workers()
        log(format_status_line(stack.read_status()))
        time.sleep(interval)


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _say_stopping(log: Callable[[str], None]) -> Callable[[int, object], None]:
    def handler(_signum: int, _frame: object) -> None:
        log("already stopping: waiting for the workers to exit")

    return handler
