"""A real PostgreSQL server for the tests: its own cluster in a temporary folder, on a free
loopback port, trust authentication, stopped and removed at the end.

The server binaries come from PATH or from Debian's `postgresql` package
(/usr/lib/postgresql/<version>/bin, which it does not put on PATH). initdb and postgres
refuse to run as root: as root, the cluster belongs to the `postgres` user (made by the
Debian package) and the server runs as that user.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

REQUIRE_ENV = "GPUBOARD_REQUIRE_POSTGRES"
SUPERUSER = "gpuboard"
_T = TypeVar("_T")

# Test clusters need no durability; without fsync a database is created and Prefect's
# migrations run in a fraction of the time on a slow disk.
_TEST_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",  # a few Prefect servers, each with its own pool
}


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries on this machine; the message says how to get them."""


def find_bin_dir() -> Path:
    """The folder with initdb and postgres: PATH first, then Debian's newest version."""
    on_path = shutil.which("postgres")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: [int(part) for part in re.findall(r"\d+", p.parent.parent.name)],
    )
    if debian:
        return debian[-1].parent
    raise PostgresUnavailable(
        "no PostgreSQL server binaries (initdb, postgres) on PATH or in "
        "/usr/lib/postgresql/*/bin: install Debian's `postgresql` package "
        "(`make test` does, as root)"
    )


def postgres_required() -> bool:
    """CI sets GPUBOARD_REQUIRE_POSTGRES=1: a missing server then fails, not skips."""
    return os.environ.get(REQUIRE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def run_async(coroutine: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a coroutine to its end from sync code, even under a running event loop."""
    result: list[_T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coroutine()))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


@dataclass
class PostgresServer:
    """One PostgreSQL cluster in a folder of its own, listening on 127.0.0.1:`port`."""

    port: int
    bin_dir: Path = field(default_factory=find_bin_dir)
    root: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    _owner: pwd.struct_passwd | None = None
    _databases: int = 0

    @property
    def data_dir(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        assert self.root is not None
        return self.root / "postgres.log"

    def url(self, database: str = "postgres", driver: str = "postgresql+asyncpg") -> str:
        """A URL for `database`: Prefect's form by default, `driver="postgresql"` for asyncpg."""
        return f"{driver}://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def start(self, timeout: float = 60.0) -> None:
        """initdb, then the server; wait until it accepts connections."""
        self._owner = _unprivileged_owner()
        # Under /tmp, not pytest's folder: the server's user must reach it, and pytest's
        # folders are private to the user running the tests.
        self.root = Path(tempfile.mkdtemp(prefix="gpuboard-pg-"))
        if self._owner is not None:
            os.chown(self.root, self._owner.pw_uid, self._owner.pw_gid)
        initdb = [str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER]
        initdb += ["--auth=trust", "--encoding=UTF8", "--no-locale", "--no-sync"]
        done = subprocess.run(initdb, capture_output=True, timeout=120, **self._as_owner())
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{done.stdout.decode()}{done.stderr.decode()}")
        command = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir)]
        command += ["-p", str(self.port), "-h", "127.0.0.1", "-k", str(self.root)]
        for name, value in _TEST_SETTINGS.items():
            command += ["-c", f"{name}={value}"]
        with self.log_path.open("ab") as log:
            if self._owner is not None:
                os.chown(self.log_path, self._owner.pw_uid, self._owner.pw_gid)
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of the test run reaches it through stop()
                **self._as_owner(),
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited:\n{self.log_tail()}")
            if self._accepts_connections():
                return
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"postgres did not accept connections in {timeout:.0f}s")

    def create_database(self, prefix: str = "test") -> str:
        """A new empty database; returns its Prefect URL (postgresql+asyncpg://...)."""
        self._databases += 1
        name = f"{prefix}_{os.getpid()}_{self._databases}"
        self.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def execute(self, sql: str, database: str = "postgres") -> None:
        """Run one statement as the superuser."""

        async def run() -> None:
            import asyncpg

            connection = await asyncpg.connect(self.url(database, driver="postgresql"))
            try:
                await connection.execute(sql)
            finally:
                await connection.close()

        run_async(run)

    def fetch(self, sql: str, database: str) -> list[dict[str, Any]]:
        """Rows of one query as dicts: what the database really holds."""

        async def run() -> list[dict[str, Any]]:
            import asyncpg

            connection = await asyncpg.connect(self.url(database, driver="postgresql"))
            try:
                return [dict(row) for row in await connection.fetch(sql)]
            finally:
                await connection.close()

        return run_async(run)

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT), SIGKILL if it hangs, then remove the cluster's folder."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no postgres log)"

    def _accepts_connections(self) -> bool:
        try:
            self.execute("SELECT 1")
        except (OSError, ConnectionError):
            return False
        except Exception as exc:
            if "starting up" in str(exc):  # asyncpg's CannotConnectNowError
                return False
            raise
        return True

    def _as_owner(self) -> dict[str, Any]:
        if self._owner is None:
            return {}
        return {
            "user": self._owner.pw_uid,
            "group": self._owner.pw_gid,
            "extra_groups": [],
            "cwd": str(self.root),
            "env": {**os.environ, "HOME": str(self.root), "USER": self._owner.pw_name},
        }


def _unprivileged_owner() -> pwd.struct_passwd | None:
    """Who runs the server: None (this user) unless we are root; then `postgres`, else
    `nobody`."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise PostgresUnavailable("running as root and no `postgres` or `nobody` user to run it as")
