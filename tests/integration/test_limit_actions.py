"""Limit changes against a real Prefect server: the GCL, the pause memory and the audit log."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from gpuboard.core.audit import audit_log_path
from gpuboard.core.limit_actions import ReadOnlyError, change_worker_limit
from gpuboard.core.limits import LimitInputError, parse_limit_change
from gpuboard.core.local_server import LocalServer
from gpuboard.core.prefect.client import async_client
from gpuboard.core.prefect.gcl import ensure_gcl, read_gcl


async def test_pause_then_resume_restores_the_limit(
    fleet_server: LocalServer, isolated_home: Path
) -> None:
    worker = f"w-{uuid.uuid4().hex[:6]}"
    async with async_client(fleet_server.api_url) as client:
        await ensure_gcl(client, f"gpu:{worker}", 3)
        outcome = await change_worker_limit(client, worker, parse_limit_change("+1"))
        assert (outcome.before, outcome.after.limit) == (3, 4)
        outcome = await change_worker_limit(client, worker, parse_limit_change("pause"))
        assert outcome.after.paused and "paused" in outcome.message
        outcome = await change_worker_limit(client, worker, parse_limit_change("resume"))
        assert outcome.after.limit == 4
        state = await read_gcl(client, f"gpu:{worker}")
        assert state is not None and state.limit == 4
    entries = [json.loads(line) for line in audit_log_path().read_text().splitlines()]
    assert [(e["before"], e["after"]) for e in entries] == [(3, 4), (4, 0), (0, 4)]


async def test_refused_changes_leave_the_server_alone(fleet_server: LocalServer) -> None:
    worker = f"w-{uuid.uuid4().hex[:6]}"
    async with async_client(fleet_server.api_url) as client:
        await ensure_gcl(client, f"gpu:{worker}", 1)
        with pytest.raises(LimitInputError, match="between 0 and"):
            await change_worker_limit(client, worker, parse_limit_change("-2"))
        with pytest.raises(ReadOnlyError):
            await change_worker_limit(client, worker, parse_limit_change("5"), read_only=True)
        with pytest.raises(LimitInputError, match="has no GCL"):
            await change_worker_limit(client, "nobody-" + worker, parse_limit_change("5"))
        state = await read_gcl(client, f"gpu:{worker}")
        assert state is not None and state.limit == 1


def test_cli_limit_changes_the_server(
    fleet_server: LocalServer, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    from gpuboard.cli import main

    worker = f"w-{uuid.uuid4().hex[:6]}"

    async def setup_and_read(limit: int | None = None) -> int:
        async with async_client(fleet_server.api_url) as client:
            if limit is not None:
                await ensure_gcl(client, f"gpu:{worker}", limit)
            state = await read_gcl(client, f"gpu:{worker}")
            assert state is not None
            return state.limit

    asyncio.run(setup_and_read(2))
    assert main(["limit", worker, "+1", "--api-url", fleet_server.api_url]) == 0
    assert asyncio.run(setup_and_read()) == 3
    assert main(["limit", worker, "pause", "--api-url", fleet_server.api_url]) == 0
    assert "paused" in capsys.readouterr().out
    assert asyncio.run(setup_and_read()) == 0
    assert main(["limit", worker, "resume", "--api-url", fleet_server.api_url]) == 0
    assert asyncio.run(setup_and_read()) == 3
    with pytest.raises(SystemExit) as exit_info:
        main(["limit", worker, "lots", "--api-url", fleet_server.api_url])
    assert exit_info.value.code == 2
    assert asyncio.run(setup_and_read()) == 3
