"""Shared fixtures: a real Prefect server on loopback, started once per test session; a
real PostgreSQL server and a second Prefect server on it, for the tests that run on both."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuboard.core.local_server import LocalServer
from support.postgres import PostgresServer, PostgresUnavailable, postgres_required
from support.seeding import free_port
from support.stack import Children

# The databases a fleet's Prefect server may sit on: tests that take `fleet_server` or
# `server_database` run once on each. `-m "not postgres"` leaves the PostgreSQL variants out.
DATABASES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server (its own cluster, loopback, trust) for the whole session.

    Skips where no server binaries exist, unless GPUBOARD_REQUIRE_POSTGRES=1 (CI): then
    fails, so a CI machine without PostgreSQL cannot pass by skipping."""
    try:
        server = PostgresServer(port=free_port())
    except PostgresUnavailable as exc:
        if postgres_required():
            pytest.fail(f"GPUBOARD_REQUIRE_POSTGRES is set but {exc}")
        pytest.skip(str(exc))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def prefect_server_pg(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalServer]:
    """A second real Prefect server for the session, on a database of `postgres_server`."""
    database_url = postgres_server.create_database("prefect")
    server = LocalServer(
        home=tmp_path_factory.mktemp("prefect-server-pg"),
        port=free_port(),
        database_url=database_url,
    )
    server.start()
    yield server
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10, at_exit=False)
    server.stop()


@pytest.fixture(params=DATABASES)
def fleet_server(request: pytest.FixtureRequest) -> Iterator[LocalServer]:
    """The session's Prefect server on SQLite, then (second variant) the one on PostgreSQL.

    PREFECT_API_URL names the variant's server during the test, for this process (Prefect
    clients made without a URL) and the children it starts."""
    sqlite_server: LocalServer = request.getfixturevalue("prefect_server")
    if request.param == "sqlite":
        yield sqlite_server
        return
    server: LocalServer = request.getfixturevalue("prefect_server_pg")
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch = request.getfixturevalue("monkeypatch")
    monkeypatch.setenv("PREFECT_API_URL", server.api_url)
    with temporary_settings({PREFECT_API_URL: server.api_url}):
        yield server


@pytest.fixture(params=DATABASES)
def server_database(request: pytest.FixtureRequest) -> str | None:
    """For a test that starts a Prefect server of its own (to stop and restart it): the
    `LocalServer.database_url` of the variant: None (SQLite in its home), then a new
    database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return None
    postgres: PostgresServer = request.getfixturevalue("postgres_server")
    return postgres.create_database("own")


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own GPUBOARD_HOME so nothing touches the user's ~/.gpuboard."""
    home = tmp_path / "gpuboard-home"
    monkeypatch.setenv("GPUBOARD_HOME", str(home))
    monkeypatch.delenv("GPUBOARD_RESULTS_DIR", raising=False)
    return home


@pytest.fixture
def children() -> Iterator[Children]:
    """Processes a test starts (workers, stacks); each stopped, with its group, at the end."""
    started = Children()
    try:
        yield started
    finally:
        started.stop_all()
