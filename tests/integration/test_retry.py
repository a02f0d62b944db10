"""`gpuboard retry` against a real Prefect server, no worker: which runs of a batch are
re-queued, what the report says of each, that a second retry re-queues nothing, that a
run whose deployment is gone is skipped, and that read-only refuses and leaves all as is."""

from __future__ import annotations

import json
import uuid

import pytest

from gpuboard.cli import main
from gpuboard.core.audit import audit_log_path
from gpuboard.core.limit_actions import ReadOnlyError
from gpuboard.core.local_server import LocalServer
from gpuboard.core.prefect.client import async_client
from gpuboard.core.retry import batches_to_retry, format_retry_report, retry_batch
from support.batches import make_batch


async def state_names(api_url: str, runs: list[uuid.UUID]) -> list[str]:
    async with async_client(api_url) as client:
        return [(await client.read_flow_run(run)).state_name or "" for run in runs]


def audit_entries(action: str) -> list[dict[str, object]]:
    lines = audit_log_path().read_text().splitlines()
    return [entry for entry in map(json.loads, lines) if entry["action"] == action]


async def test_retry_requeues_failed_and_crashed_runs_once(prefect_server: LocalServer) -> None:
    api_url = prefect_server.api_url
    batch = await make_batch(api_url, ["Failed", "Crashed", "Completed", "Scheduled"])
    other = await make_batch(api_url, ["Failed"])  # another batch: not touched
    failed, crashed = batch.runs["Failed-0"], batch.runs["Crashed-1"]

    found = {b.batch: b for b in await batches_to_retry(api_url=api_url, pool=batch.pool)}
    assert (found[batch.name].failed, found[batch.name].crashed) == (1, 1)

    first = await retry_batch(batch.name, api_url=api_url)
    assert {o.flow_run_id: o.state_before for o in first.requeued} == {
        failed: "Failed",
        crashed: "Crashed",
    }
    assert first.skipped == [] and first.failed == []
    assert first.others == {"Completed": 1, "Scheduled": 1}
    # The same runs, moved to AwaitingRetry for a worker to take again.
    assert await state_names(api_url, [failed, crashed]) == ["AwaitingRetry", "AwaitingRetry"]
    assert await state_names(api_url, [other.runs["Failed-0"]]) == ["Failed"]

    second = await retry_batch(batch.name, api_url=api_url)
    assert second.requeued == []
    assert {o.flow_run_id for o in second.skipped} == {failed, crashed}
    assert all("already re-queued" in (o.reason or "") for o in second.skipped)
    text = format_retry_report(second)
    assert "re-queued: 0" in text and "skipped:   2" in text and "AwaitingRetry" in text

    entries = audit_entries("batch.retry")
    assert [e["after"] for e in entries] == [
        {"requeued": 2, "skipped": 0, "failed": 0},
        {"requeued": 0, "skipped": 2, "failed": 0},
    ]
    assert entries[0]["target"] == f"batch {batch.name}"


async def test_a_run_whose_deployment_is_gone_is_skipped(prefect_server: LocalServer) -> None:
    api_url = prefect_server.api_url
    batch = await make_batch(api_url, ["Failed"])
    async with async_client(api_url) as client:
        await client.delete_deployment(batch.deployment_id)
    report = await retry_batch(batch.name, api_url=api_url)
    assert report.requeued == []
    [skipped] = report.skipped
    assert "deployment" in (skipped.reason or "") and "gone" in (skipped.reason or "")
    assert await state_names(api_url, [batch.runs["Failed-0"]]) == ["Failed"]


async def test_read_only_refuses_and_changes_nothing(prefect_server: LocalServer) -> None:
    api_url = prefect_server.api_url
    batch = await make_batch(api_url, ["Failed"])
    with pytest.raises(ReadOnlyError):
        await retry_batch(batch.name, api_url=api_url, read_only=True)
    assert await state_names(api_url, [batch.runs["Failed-0"]]) == ["Failed"]
    [entry] = audit_entries("batch.retry")
    assert entry["result"] == "refused: read-only"


def test_cli_retries_only_the_states_asked_and_reports_each_run(
    prefect_server: LocalServer, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    api_url = prefect_server.api_url
    batch = asyncio.run(make_batch(api_url, ["Failed", "Crashed"]))
    code = main(["retry", "--batch", batch.name, "--state", "crashed", "--api-url", api_url])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "re-queued: 1" in out and str(batch.runs["Crashed-1"]) in out
    assert "not retried (not crashed): 1 Failed" in out
    names = asyncio.run(state_names(api_url, [batch.runs["Failed-0"], batch.runs["Crashed-1"]]))
    assert names == ["Failed", "AwaitingRetry"]

    assert main(["retry", "--batch", batch.name, "--read-only", "--api-url", api_url]) == 1
    assert "read-only" in capsys.readouterr().err
    assert asyncio.run(state_names(api_url, [batch.runs["Failed-0"]])) == ["Failed"]

    assert main(["retry", "--batch", f"nobody-{uuid.uuid4().hex[:6]}", "--api-url", api_url]) == 1
    assert "no runs on this server" in capsys.readouterr().out
    with pytest.raises(SystemExit) as usage:
        main(["retry", "--batch", batch.name, "--state", "completed", "--api-url", api_url])
    assert usage.value.code == 2
