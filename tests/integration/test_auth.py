"""gpuboard against a Prefect server that requires an auth string (PREFECT_SERVER_API_AUTH_STRING).

With the right PREFECT_API_AUTH_STRING the CLI and the board work; with a wrong one they
say "unauthorized" and exit non-zero, and the credential appears nowhere: not in the
output, not on the board, not in the audit log.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fakes.fake_nvml import FakeNvml
from gpuboard.core.board_source import BoardSource
from gpuboard.core.local_server import LocalServer
from gpuboard.core.models import Snapshot
from gpuboard.core.nvml_source import NvmlSource
from support.seeding import free_port

SECRET = "admin:s3cret-4f9a1c"
WRONG = "admin:not-the-one-77b2"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    server = LocalServer(
        home=tmp_path_factory.mktemp("auth-server"),
        port=free_port(),
        extra_env={"PREFECT_SERVER_API_AUTH_STRING": SECRET},
    )
    server.start()
    yield server
    server.stop()


def gpuboard(
    server: LocalServer, auth: str, home: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PREFECT_API_URL": server.api_url,
        "PREFECT_API_AUTH_STRING": auth,
        "GPUBOARD_HOME": str(home),
    }
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from gpuboard.cli import main; sys.exit(main())",
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_right_auth_string_works(auth_server: LocalServer, tmp_path: Path) -> None:
    result = gpuboard(auth_server, SECRET, tmp_path, "status", "--json")
    # The pool does not exist yet: the server answered, and said so (not 401).
    assert "unauthorized" not in (result.stdout + result.stderr)
    assert "does not exist" in (result.stdout + result.stderr)
    limit = gpuboard(auth_server, SECRET, tmp_path, "limit", "gpu-1", "3")
    assert "has no GCL gpu:gpu-1" in limit.stderr and limit.returncode == 1


@pytest.mark.parametrize(
    "args",
    [
        ("status",),
        ("limit", "gpu-1", "3"),
        ("submit", "--count", "2"),
        ("cancel", "--queued", "--yes"),
    ],
)
def test_a_wrong_auth_string_says_unauthorized_and_never_shows_it(
    auth_server: LocalServer, tmp_path: Path, args: tuple[str, ...]
) -> None:
    result = gpuboard(auth_server, WRONG, tmp_path, *args)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "unauthorized" in output and "PREFECT_API_AUTH_STRING" in output
    assert "Traceback" not in output
    for secret in (WRONG, SECRET, "not-the-one", "s3cret"):
        assert secret not in output
    audit = tmp_path / "audit.log"
    if audit.exists():
        assert "not-the-one" not in audit.read_text() and "s3cret" not in audit.read_text()


async def board_errors(server: LocalServer, auth: str) -> tuple[str, Snapshot]:
    """One board read with `auth` as the client's auth string: its error text and snapshot."""
    from prefect.settings import PREFECT_API_AUTH_STRING, temporary_settings

    with temporary_settings({PREFECT_API_AUTH_STRING: auth}):
        source = BoardSource("ml-pool", server.api_url, nvml=NvmlSource(FakeNvml(init_error=12)))
        try:
            snapshot = await source.read()
        finally:
            await source.aclose()
    return " ".join(e.message for e in snapshot.errors), snapshot


async def test_the_board_says_unauthorized_without_the_credential(
    auth_server: LocalServer,
) -> None:
    messages, _ = await board_errors(auth_server, WRONG)
    assert "unauthorized" in messages
    assert "not-the-one" not in messages and "s3cret" not in messages
    messages, snapshot = await board_errors(auth_server, SECRET)
    assert "unauthorized" not in messages
    assert snapshot.prefect_read_at is not None or "does not exist" in messages
