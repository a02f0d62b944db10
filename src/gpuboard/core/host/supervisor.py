"""Starts a worker's inference host, restarts it when it dies, and frees what it held.

Runs inside `gpuboard worker`. The host tells it, over a pipe, each lease it holds; when
the host dies (SIGKILL, OOM killer, a CUDA fault) those leases are released at once, so
the worker's slots are back within a second instead of when the leases expire, and the
host is started again with a growing delay. The held leases are also kept in a file, so
that a `gpuboard worker` started after the whole worker was killed releases what the
previous host held. What the host says about itself goes to the state publisher.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from gpuboard.core.child_process import prepare_child
from gpuboard.core.config import gpuboard_home
from gpuboard.core.host.state import HostState, state_from_payload
from gpuboard.core.inference import ModelSettings
from gpuboard.core.prefect import leased_slots
from gpuboard.core.prefect.client import async_client

log = logging.getLogger(__name__)

RESTART_DELAYS_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
STABLE_AFTER_S = 60.0  # a host that ran this long starts its next restart delay afresh
STOP_TIMEOUT_S = 40.0  # the host's grace for in-flight inferences, and some


@dataclass(frozen=True)
class HostConfig:
    """What the supervisor starts: one host for `worker_id`."""

    worker_id: str
    api_url: str
    socket_path: Path
    model: ModelSettings


def default_socket_path(worker_id: str, api_url: str) -> Path:
    """Where worker `worker_id`'s host listens: a short path (Unix sockets allow ~107
    bytes) in a folder of this user's, the same for every life of the worker. The server
    and gpuboard's home are part of it: two stacks on one machine (a test beside a real
    one, two servers) may both have a `gpu-1`, and must not take over each other's."""
    folder = Path(tempfile.gettempdir()) / f"gpuboard-{os.getuid()}"
    scope = hashlib.sha256(f"{api_url}|{gpuboard_home()}".encode()).hexdigest()[:8]
    name = f"{worker_id}-{scope}.sock"
    if len(str(folder / name)) > 100:
        name = hashlib.sha256(f"{worker_id}|{scope}".encode()).hexdigest()[:24] + ".sock"
    return folder / name


def host_command(config: HostConfig, status_fd: int) -> list[str]:
    model = config.model
    command = [
        sys.executable,
        "-m",
        "gpuboard.inference_host",
        "--worker-id",
        config.worker_id,
        "--socket",
        str(config.socket_path),
        "--api-url",
        config.api_url,
        "--gpu-index",
        str(model.gpu_index),
        "--status-fd",
        str(status_fd),
    ]
    if model.threads is not None:
        command += ["--threads", str(model.threads)]
    if model.gpu_memory_limit is not None:
        command += ["--gpu-memory-limit", str(model.gpu_memory_limit)]
    if model.use_cuda is False:
        command.append("--cpu")
    return command


class HostSupervisor:
    """Keeps one inference host running until `stop()`; `state` merges what it knows."""

    def __init__(
        self,
        config: HostConfig,
        *,
        say: Callable[[str], None] = log.info,
        on_state: Callable[[HostState], None] = lambda _state: None,
        command: Callable[[HostConfig, int], list[str]] = host_command,
    ) -> None:
        self.config = config
        self._say = say
        self._on_state = on_state
        self._command = command
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._held: set[str] = set()
        self._thread: threading.Thread | None = None
        self.restarts = 0
        self.model_loads = 0
        self.released_after_death = 0
        self._state = HostState(worker=config.worker_id, status="starting", updated_at=time.time())

    @property
    def state(self) -> HostState:
        with self._lock:
            return self._state

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def lease_file(self) -> Path:
        return gpuboard_home() / "run" / f"{self.config.worker_id}.host-leases.json"

    def start(self) -> HostSupervisor:
        self._release_leftovers()
        self._thread = threading.Thread(
            target=self._run, name=f"gpuboard-host-{self.config.worker_id}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the host (it finishes what holds a slot) and stop restarting it."""
        self._stopping.set()
        process = self._process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_S)

    # -- the loop -----------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            started = time.monotonic()
            returncode = self._run_once()
            if self._stopping.is_set():
                break
            ran_for = time.monotonic() - started
            failures = 0 if ran_for >= STABLE_AFTER_S else failures + 1
            delay = RESTART_DELAYS_S[min(failures, len(RESTART_DELAYS_S) - 1)]
            released = self._release_held()
            self.restarts += 1
            reason = _describe_exit(returncode)
            self._say(
                f"inference host of {self.config.worker_id} {reason}; "
                f"{released} GPU slot(s) it held released; restarting in {delay:.1f} s"
            )
            # A host that could not load its model said why before it exited: keep that.
            said = self._state.error if self._state.status == "failed" else None
            self._update(
                self._state.with_changes(
                    status="failed" if said else "restarting",
                    pid=None,
                    holders=(),
                    queued=0,
                    error=f"{said or 'host ' + reason}; restarting in {delay:.0f} s",
                )
            )
            self._stopping.wait(delay)
        self._update(self._state.with_changes(status="stopped", pid=None, holders=(), queued=0))

    def _run_once(self) -> int:
        read_fd, write_fd = os.pipe()
        try:
            process = subprocess.Popen(
                self._command(self.config, write_fd),
                stdin=subprocess.DEVNULL,
                pass_fds=(write_fd,),
                preexec_fn=prepare_child,
            )
        except OSError as exc:
            os.close(read_fd)
            os.close(write_fd)
            self._say(f"cannot start the inference host: {exc}")
            return -1
        finally:
            with contextlib.suppress(OSError):
                os.close(write_fd)
        self._process = process
        self._update(self._state.with_changes(status="loading", pid=process.pid, error=None))
        with os.fdopen(read_fd, "rb") as reports:
            for line in reports:  # ends when the host exits (its end of the pipe closes)
                self._hear(line)
        return process.wait()

    def _hear(self, line: bytes) -> None:
        try:
            message: dict[str, Any] = json.loads(line)
        except ValueError:
            return
        if message.get("type") == "leases":
            with self._lock:
                self._held = {str(lease) for lease in message.get("held", [])}
            self._write_lease_file()
        elif message.get("type") == "state":
            try:
                reported = state_from_payload(message["state"])
            except (KeyError, TypeError, ValueError) as exc:
                log.debug("unreadable host state: %s", exc)
                return
            if reported.status == "ready" and self._state.status != "ready":
                self.model_loads += 1
            self._update(
                reported.with_changes(restarts=self.restarts, model_loads=self.model_loads)
            )

    def _update(self, state: HostState) -> None:
        state = state.with_changes(updated_at=time.time(), restarts=self.restarts)
        with self._lock:
            self._state = state
        self._on_state(state)

    # -- leases of a dead host ------------------------------------------------------------

    def _release_held(self) -> int:
        with self._lock:
            held, self._held = self._held, set()
        released = self._release(held)
        self.released_after_death += released
        self._write_lease_file()
        return released

    def _release_leftovers(self) -> None:
        """Leases a previous life of this worker's host left in the file (the worker was
        killed whole): released before the new host takes any."""
        try:
            leftovers = set(json.loads(self.lease_file.read_text()).get("held", []))
        except (OSError, ValueError, AttributeError):
            return
        if leftovers:
            released = self._release(leftovers)
            self._say(
                f"released {released} GPU slot(s) a previous inference host of "
                f"{self.config.worker_id} held"
            )
        self._write_lease_file()

    def _release(self, leases: set[str]) -> int:
        if not leases:
            return 0

        async def release_all() -> int:
            count = 0
            async with async_client(self.config.api_url) as client:
                for lease in leases:
                    try:
                        outcome = await leased_slots.release(client, UUID(lease))
                    except Exception as exc:
                        self._say(f"could not release lease {lease}: {exc} (it expires)")
                        continue
                    count += outcome == "released"
            return count

        try:
            return asyncio.run(release_all())
        except Exception as exc:
            self._say(f"could not release the dead host's leases: {exc} (they expire)")
            return 0

    def _write_lease_file(self) -> None:
        with self._lock:
            held = sorted(self._held)
        try:
            self.lease_file.parent.mkdir(parents=True, exist_ok=True)
            temp = self.lease_file.with_suffix(".tmp")
            temp.write_text(json.dumps({"held": held}))
            os.replace(temp, self.lease_file)
        except OSError as exc:
            log.debug("cannot write %s: %s", self.lease_file, exc)


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"
