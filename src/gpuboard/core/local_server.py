"""Starts, health-checks and stops a local Prefect server (embedded stack, tests): on SQLite
in its home by default, or on the database a URL names (PostgreSQL for a fleet)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

# Leases in files survive a server restart; the default in-memory storage leaks a slot
# held across a restart for good (measured, see DESIGN.md).
_LEASE_STORAGE = "prefect.server.concurrency.lease_storage.filesystem"

# SQLite has one write lock, and Prefect's writes run in deferred transactions: a write
# that meets another one's commit fails at once ("database is locked", a 503 the client
# backs off from for seconds) instead of waiting. So every background writer the stack
# does not need costs its workers and its batch submissions time. Measured with
# bench/batch_create.py (1,000-2,000 runs, bench/RESULTS.md "Batch creation"):
_THROUGHPUT_SETTINGS = {
    # The late-runs service rewrites every queued run 15 s past its start time, one
    # transaction each: behind a 2,000-run batch, creation fell from ~70 to 7-15 s per
    # 100 runs (22 runs/s overall; 51 without it). A GPU queue's waiting runs are all
    # "late" by that measure; they stay Scheduled here, and workers take them the same.
    "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false",
    # The event persister wrote every 20 events; each write is a lock the others hit.
    # 500 (still flushed every 5 s when fewer arrive): 1,000 runs at 60 vs 46-51 runs/s.
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE": "500",
}


def server_env(home: Path, database_url: str | None = None) -> dict[str, str]:
    """Environment for a local server whose state lives under `home`, its database too
    unless `database_url` names one (postgresql+asyncpg://...)."""
    database = database_url or f"sqlite+aiosqlite:///{home / 'prefect.db'}"
    return {
        "PREFECT_HOME": str(home),
        # Both of Prefect's names: the SERVER one wins when both are set, and one left in
        # the caller's environment must not point the server elsewhere.
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": database,
        "PREFECT_API_DATABASE_CONNECTION_URL": database,
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": _LEASE_STORAGE,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
        "PREFECT_LOGGING_SERVER_LEVEL": "WARNING",
        **_THROUGHPUT_SETTINGS,
    }


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now, for a server of one's own (tests, benches)."""
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def api_is_healthy(api_url: str, timeout: float = 2.0) -> bool:
    """True when a Prefect API answers its health check at `api_url`."""
    try:
        response = httpx.get(f"{api_url.rstrip('/')}/health", timeout=timeout)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


@dataclass
class LocalServer:
    """One `prefect server start` child process on loopback."""

    home: Path
    port: int
    host: str = "127.0.0.1"
    database_url: str | None = None  # None: SQLite in `home`
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.port}/api"

    @property
    def log_path(self) -> Path:
        return self.home / "server.log"

    def start(self, timeout: float = 90.0) -> None:
        """Start the server and wait until it answers; raise with its log tail if it does not."""
        self.home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **server_env(self.home, self.database_url), **self.extra_env}
        env.pop("PREFECT_API_URL", None)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                self.host,
                "--port",
                str(self.port),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # our Ctrl-C must not reach it before we stop it
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"prefect server exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            if api_is_healthy(self.api_url, timeout=1.0):
                return
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(
            f"prefect server did not answer within {timeout:.0f}s:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and wait for it to exit."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=timeout)
        except ProcessLookupError:
            pass

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"
