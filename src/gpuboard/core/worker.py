"""Runs one GPU worker: makes sure its pool and GPU slot exist, then runs a Prefect process
worker named after it, whose flow runs know (WORKER_ID) which slot to take."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from prefect.client.orchestration import PrefectClient

from gpuboard.core.child_process import prepare_child
from gpuboard.core.config import (
    FLOW_HEARTBEAT_ENV,
    FLOW_HEARTBEAT_S,
    WORKER_ID_ENV,
    ConfigError,
    gcl_name,
)
from gpuboard.core.config import validate_worker_id as config_validate_worker_id
from gpuboard.core.gpu_events import start_gpu_publisher
from gpuboard.core.host.client import SOCKET_ENV
from gpuboard.core.host.publisher import HostStatePublisher
from gpuboard.core.host.supervisor import HostConfig, HostSupervisor, default_socket_path
from gpuboard.core.inference import ModelSettings
from gpuboard.core.prefect.client import async_client, csrf_protection
from gpuboard.core.prefect.drain_flags import is_drained
from gpuboard.core.prefect.gcl import ensure_gcl
from gpuboard.core.prefect.pool import ensure_work_pool, forget_worker, read_pool_workers
from gpuboard.core.prefect.worker_process import (
    forget_worker_process,
    publish_worker_process,
    read_worker_process,
)
from gpuboard.core.process_identity import is_running, this_process
from gpuboard.core.reclaim import DEFAULT_INTERVAL_S, reclaim_forever, reschedule_orphans

# Settings a gpuboard worker changes from Prefect's defaults unless the user set them.
WORKER_SETTING_DEFAULTS = {
    # Prefect polls every 10 s; a batch then waits up to 10 s before its first run starts.
    "PREFECT_WORKER_QUERY_SECONDS": "2",
    # Prefect's 30 s heartbeat makes a stopped worker look online for a minute or more.
    "PREFECT_WORKER_HEARTBEAT_SECONDS": "10",
    # Flow-run heartbeats every 30 s (Prefect's minimum; default 180): a run whose process
    # and worker both died is flagged stale after 90 s instead of 9 minutes.
    FLOW_HEARTBEAT_ENV: str(FLOW_HEARTBEAT_S),
}
CSRF_SUPPORT_ENV = "PREFECT_CLIENT_CSRF_SUPPORT_ENABLED"


class WorkerInputError(ValueError):
    """A worker option that cannot work; the message says why."""


@dataclass(frozen=True)
class WorkerOptions:
    """What `gpuboard worker` was asked for."""

    worker_id: str
    pool: str
    runs: int  # flow runs at once: the worker's `--limit`
    gpu_slots: int  # the GCL's limit, used only when the GCL is created
    api_url: str
    # How its inference host loads the model: which GPU, threads, arena cap.
    model: ModelSettings = field(default_factory=ModelSettings)
    # Where the host listens; None: default_socket_path(worker_id, api_url).
    socket_path: Path | None = None
    # One interpreter per flow run (core/prefect/single_interpreter.py); False: Prefect's
    # own start through its workspace supervisor (two). With the process executor.
    single_interpreter: bool = True
    # "warm": flow runs in warm runner processes (core/warm/); "process": a process each.
    executor: str = "warm"
    # A warm runner retires (and a fresh one replaces it) after this many runs, or once
    # its resident memory passes this many MB.
    runner_max_runs: int = 200
    runner_max_rss_mb: float = 1024.0

    @property
    def host_socket(self) -> Path:
        return self.socket_path or default_socket_path(self.worker_id, self.api_url)


def validate_worker_id(worker_id: str) -> str:
    """The one worker-id rule (config.validate_worker_id), as a WorkerInputError."""
    try:
        return config_validate_worker_id(worker_id)
    except ConfigError as exc:
        raise WorkerInputError(str(exc)) from None


async def prepare_worker(options: WorkerOptions) -> list[str]:
    """Create the pool and the GCL `gpu:<id>` when missing; never change an existing limit.

    Returns sentences saying what was found or made.
    """
    name = gcl_name(options.worker_id)
    async with async_client(options.api_url) as client:
        pool_created = await ensure_work_pool(client, options.pool)
        gcl, gcl_created = await ensure_gcl(client, name, options.gpu_slots)
        orphans = await _reschedule_orphans(client, options)
        drained = await is_drained(client, options.worker_id)
    notes = [f"work pool {options.pool!r} {'created' if pool_created else 'exists'}"]
    if gcl_created:
        notes.append(f"GCL {name} created with limit {gcl.limit}")
    elif gcl.limit != options.gpu_slots:
        notes.append(
            f"GCL {name} exists with limit {gcl.limit}: kept (--gpu-slots only sets the "
            "limit of a new GCL; change it from the board)"
        )
    else:
        notes.append(f"GCL {name} exists with limit {gcl.limit}")
    if not gcl.active:
        notes.append(f"warning: GCL {name} is inactive: its runs will fail until it is active")
    if drained:
        notes.append(
            f"worker {options.worker_id} is drained: it takes no flow runs until "
            f"`gpuboard undrain {options.worker_id}`"
        )
    return notes + orphans


async def _reschedule_orphans(client: PrefectClient, options: WorkerOptions) -> list[str]:
    """Runs a previous life of this worker left Pending go back to Scheduled, and this
    process is recorded as the worker's. Not while a worker of this name counts online,
    unless that is a previous life seen dead from here: a killed worker counts online for
    ~25 s (where it cannot be seen, the running reclaimer finds its runs after
    PENDING_STUCK_AFTER_S)."""
    online = {w.name for w in await read_pool_workers(client, options.pool) if w.online}
    previous = await read_worker_process(client, options.worker_id)
    await publish_worker_process(client, options.worker_id, this_process(), run_limit=options.runs)
    seen_dead = previous is not None and is_running(previous) is False
    if options.worker_id in online and not seen_dead:
        return []
    rescheduled = await reschedule_orphans(
        client, options.pool, options.worker_id, pending_after_s=0
    )
    back = [run.name for run, mark in rescheduled if mark.marked]
    if not back:
        return []
    return [
        f"{len(back)} run(s) left Pending by a previous {options.worker_id} put back to "
        f"Scheduled: {', '.join(back)}"
    ]


def worker_command(options: WorkerOptions) -> list[str]:
    """The Prefect worker's command line: the warm executor, or Prefect's process worker
    (by default the variant that starts each flow run as one interpreter)."""
    if options.executor == "warm":
        start = [sys.executable, "-m", "gpuboard.prefect_worker", "--executor", "warm"]
        start += ["--runner-max-runs", str(options.runner_max_runs)]
        start += ["--runner-max-rss-mb", str(options.runner_max_rss_mb)]
    elif options.single_interpreter:
        start = [sys.executable, "-m", "gpuboard.prefect_worker", "--executor", "process"]
    else:
        start = [sys.executable, "-m", "prefect", "worker", "start", "--type", "process"]
    return [
        *start,
        "--pool",
        options.pool,
        "--name",
        options.worker_id,
        "--limit",
        str(options.runs),
    ]


def worker_environment(
    options: WorkerOptions,
    base: dict[str, str] | None = None,
    *,
    server_csrf: bool | None = None,
) -> dict[str, str]:
    """The environment of the Prefect worker; its flow runs inherit it.

    `server_csrf=False` (the server said its CSRF protection is off): the clients skip
    asking for a token. Each Prefect client asks once, and a flow run makes ~7 of them:
    measured 7 of B's 51 requests per run in bench/pipeline.py.
    """
    env = dict(os.environ if base is None else base)
    for key, value in WORKER_SETTING_DEFAULTS.items():
        env.setdefault(key, value)
    if server_csrf is False:
        env.setdefault(CSRF_SUPPORT_ENV, "false")
    env["PREFECT_API_URL"] = options.api_url
    env[WORKER_ID_ENV] = options.worker_id  # picks the GCL gpu:<id> in the flow run
    env[SOCKET_ENV] = str(options.host_socket)  # the GPU step goes to the inference host
    return env


def server_csrf_protection(options: WorkerOptions) -> bool | None:
    """Whether the worker's server protects against CSRF (see `worker_environment`)."""
    return csrf_protection(options.api_url)


def run_worker(options: WorkerOptions, log: Callable[[str], None] = print) -> int:
    """Prepare, then run the Prefect worker until it exits; returns its exit status.

    SIGINT and SIGTERM are passed on to it once each, so it can stop its flow runs and
    leave cleanly; a second signal is passed on too (Prefect then stops at once).
    """
    validate_worker_id(options.worker_id)
    for note in asyncio.run(prepare_worker(options)):
        log(note)
    log(
        f"starting worker {options.worker_id} on pool {options.pool!r} "
        f"({options.runs} runs at once) against {options.api_url}"
    )
    # Releases, within seconds, the GPU slot of any of this worker's flow runs that dies
    # holding it (SIGKILL, OOM killer), instead of after its lease expires. Started first:
    # it also frees what a previous run of this worker left behind.
    stop_reclaiming = threading.Event()
    threading.Thread(
        target=reclaim_forever,
        args=(options.worker_id, DEFAULT_INTERVAL_S, stop_reclaiming),
        kwargs={"api_url": options.api_url, "say": log, "pool": options.pool},
        name="gpuboard-reclaimer",
        daemon=True,
    ).start()
    # This machine's NVML readings go to the server as events, so a board anywhere shows them.
    publisher = start_gpu_publisher(options.worker_id, api_url=options.api_url)
    # The one process of this worker that loads the model and touches the GPU.
    host_states = HostStatePublisher(options.api_url).start()
    host = HostSupervisor(
        HostConfig(options.worker_id, options.api_url, options.host_socket, options.model),
        say=log,
        on_state=host_states.update,
    ).start()
    child = subprocess.Popen(
        worker_command(options),
        env=worker_environment(options, server_csrf=server_csrf_protection(options)),
        stdin=subprocess.DEVNULL,
        # Its own session: a terminal's Ctrl-C or a group kill reaches only us, and we pass
        # it on exactly once (Prefect treats a second SIGINT as "stop now").
        start_new_session=True,
        preexec_fn=prepare_child,
    )

    def forward(signum: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        returncode = child.wait()
    finally:
        stop_reclaiming.set()
        host.stop()
        host_states.stop()
        publisher.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    with contextlib.suppress(Exception):
        asyncio.run(_forget(options))
    log(f"worker {options.worker_id} stopped ({_describe(returncode)})")
    # A child killed by signal N reports -N; a shell reports 128 + N.
    return returncode if returncode >= 0 else 128 - returncode


async def _forget(options: WorkerOptions) -> None:
    async with async_client(options.api_url) as client:
        await forget_worker(client, options.pool, options.worker_id)
        await forget_worker_process(client, options.worker_id)


def _describe(returncode: int) -> str:
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit status {returncode}"
