"""`gpuboard up --database URL` against a real PostgreSQL: the embedded stack's server runs
on it (its runs are rows there, no SQLite file is made), a batch completes, and a database
that is not there is refused with one clear sentence before any server starts."""

from __future__ import annotations

import os
import signal
import sys
import uuid
from pathlib import Path

import pytest
from prefect.client.schemas.objects import StateType

from gpuboard.cli import main
from gpuboard.core.batch import submit_batch
from gpuboard.core.local_server import api_is_healthy, free_port
from support.postgres import PostgresServer
from support.stack import Children, wait_for_final_states, wait_for_line

pytestmark = pytest.mark.postgres


def test_a_missing_or_unreachable_database_is_refused_before_any_server(
    postgres_server: PostgresServer, capsys: pytest.CaptureFixture[str], isolated_home: Path
) -> None:
    api_url = f"http://127.0.0.1:{free_port()}/api"
    missing = postgres_server.url("no_such_database")
    assert main(["up", "--headless", "--database", missing, "--api-url", api_url]) == 1
    error = capsys.readouterr().err
    assert "database 'no_such_database' does not exist" in error, error
    assert "createdb no_such_database" in error
    closed = f"postgresql://gpuboard:s3cret@127.0.0.1:{free_port()}/prefect"
    assert main(["up", "--headless", "--database", closed, "--api-url", api_url]) == 1
    error = capsys.readouterr().err
    assert "cannot connect to PostgreSQL at 127.0.0.1" in error and "s3cret" not in error
    assert not api_is_healthy(api_url)  # nothing was started
    assert not (isolated_home / "server" / "prefect.db").exists()


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_up_on_postgres_runs_a_batch_whose_runs_are_rows_in_postgres(
    postgres_server: PostgresServer, children: Children, tmp_path: Path
) -> None:
    database_url = postgres_server.create_database("up")
    database = database_url.rsplit("/", 1)[1]
    api_url = f"http://127.0.0.1:{free_port()}/api"
    home, log = tmp_path / "home", tmp_path / "up.log"
    env = {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "GPUBOARD_HOME": str(home),
        "GPUBOARD_RESULTS_DIR": str(tmp_path / "results"),
    }
    command = [sys.executable, "-m", "gpuboard", "up", "--headless", "--refresh", "2"]
    command += ["--workers", "1", "--database", database_url]
    up = children.start(command, env, log)
    wait_for_line(log, "workers 1/1 online", up, timeout=240)
    assert f"on PostgreSQL 127.0.0.1:{postgres_server.port}/{database}" in log.read_text()

    report = await submit_batch([1, 2], batch=f"pg-{uuid.uuid4().hex[:6]}", api_url=api_url)
    assert report.ok and report.created == [1, 2]
    states = await wait_for_final_states(api_url, report.flow_run_ids, timeout=300)
    worker_log = (home / "logs" / "gpu-1.log").read_text(errors="replace")
    assert set(states.values()) == {StateType.COMPLETED}, f"{states}\n{worker_log[-3000:]}"

    # The server's database really is PostgreSQL: the runs are rows there, Completed.
    ids = ", ".join(f"'{run_id}'" for run_id in report.flow_run_ids)
    rows = postgres_server.fetch(
        f"SELECT id, state_type FROM flow_run WHERE id IN ({ids})", database
    )
    assert sorted(str(row["state_type"]) for row in rows) == ["COMPLETED", "COMPLETED"]
    assert not (home / "server" / "prefect.db").exists()

    up.send_signal(signal.SIGINT)  # Ctrl-C
    assert up.wait(timeout=90) == 0
    assert not api_is_healthy(api_url)
