"""Shared fixtures: a real Prefect server on loopback, started once per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuboard.core.local_server import LocalServer
from support.seeding import free_port


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """A real Prefect server (SQLite, loopback) for the whole session.

    PREFECT_API_URL points at it for this process and every child it starts.
    """
    server = LocalServer(home=tmp_path_factory.mktemp("prefect-server"), port=free_port())
    server.start()
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: server.api_url}):
        yield server
        # Flow runs in this process log to the API in the background: flush them before the
        # server goes, or the session ends on "Error logging to API" noise.
        APILogWorker.drain_all(timeout=10, at_exit=False)
    server.stop()
    if previous is None:
        os.environ.pop("PREFECT_API_URL", None)
    else:
        os.environ["PREFECT_API_URL"] = previous


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own GPUBOARD_HOME so nothing touches the user's ~/.gpuboard."""
    home = tmp_path / "gpuboard-home"
    monkeypatch.setenv("GPUBOARD_HOME", str(home))
    monkeypatch.delenv("GPUBOARD_RESULTS_DIR", raising=False)
    return home
