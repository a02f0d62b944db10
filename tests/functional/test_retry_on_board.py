"""`R` on the board, driven with Pilot against a real Prefect server: the batches with
failed or crashed runs are offered with their counts, the chosen one is retried after a
y/n and its report shown, and the server then holds the same runs AwaitingRetry. Read-only,
`R` changes nothing. Plus `gpuboard logs` on a run that does not exist."""

from __future__ import annotations

import uuid

import pytest
from textual.widgets import OptionList

from fakes.fake_nvml import FakeNvml
from gpuboard.cli import main
from gpuboard.core.board_source import BoardSource
from gpuboard.core.local_server import LocalServer
from gpuboard.core.nvml_source import NvmlSource
from gpuboard.core.prefect.client import async_client
from gpuboard.core.retry import batches_to_retry
from gpuboard.tui.app import GpuBoardApp
from gpuboard.tui.screens.confirm_dialog import ConfirmDialog
from gpuboard.tui.screens.retry_dialog import ReportScreen, RetryBatchPicker
from gpuboard.tui.screens.run_log import LogScreen
from support.batches import Batch, make_batch
from support.pilot import until


def board(batch: Batch, api_url: str, *, read_only: bool = False) -> GpuBoardApp:
    return GpuBoardApp(
        BoardSource(batch.pool, api_url, nvml=NvmlSource(FakeNvml(init_error=12))),
        pool=batch.pool,
        api_url=api_url,
        refresh=0.5,
        read_only=read_only,
    )


async def state_names(api_url: str, runs: list[uuid.UUID]) -> list[str]:
    async with async_client(api_url) as client:
        return [(await client.read_flow_run(run)).state_name or "" for run in runs]


async def test_R_retries_the_chosen_batch_and_shows_the_report(
    prefect_server: LocalServer,
) -> None:
    api_url = prefect_server.api_url
    batch = await make_batch(api_url, ["Failed", "Crashed", "Completed"])
    # A second batch in the same pool: offered too, left alone.
    other = await make_batch(api_url, ["Failed", "Failed", "Failed"], pool=batch.pool)
    retried = [batch.runs["Failed-0"], batch.runs["Crashed-1"]]
    app = board(batch, api_url)
    async with app.run_test(size=(140, 40)) as pilot:
        app.action_retry_batch(batch.name)  # as the runs panel's selected run will ask
        await until(pilot, lambda: isinstance(app.screen, RetryBatchPicker))
        picker = app.screen
        assert isinstance(picker, RetryBatchPicker)
        offered = {b.batch: (b.failed, b.crashed) for b in picker.batches}
        assert offered == {batch.name: (1, 1), other.name: (3, 0)}
        assert picker.batches[0].batch == other.name  # most runs to retry first
        await pilot.press("enter")  # the preselected batch, not the bigger one listed first
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        assert batch.name in app.screen.question  # type: ignore[attr-defined]
        await pilot.press("y")
        await until(pilot, lambda: isinstance(app.screen, ReportScreen))
        report = app.screen.text  # type: ignore[attr-defined]
        assert "re-queued: 2" in report
        assert "not retried (not failed,crashed): 1 Completed" in report
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, ReportScreen))
    assert await state_names(api_url, retried) == ["AwaitingRetry", "AwaitingRetry"]
    assert await state_names(api_url, list(other.runs.values())) == ["Failed"] * 3
    left = {b.batch for b in await batches_to_retry(api_url=api_url, pool=batch.pool)}
    assert left == {other.name}  # a re-queued run is not failed: R would not offer it again


async def test_R_on_a_read_only_board_changes_nothing(prefect_server: LocalServer) -> None:
    api_url = prefect_server.api_url
    batch = await make_batch(api_url, ["Failed"])
    app = board(batch, api_url, read_only=True)
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.press("R")
        app.action_retry_batch(batch.name)  # even asked directly
        await pilot.pause(0.5)
        assert not isinstance(app.screen, RetryBatchPicker | ConfirmDialog)
    assert await state_names(api_url, [batch.runs["Failed-0"]]) == ["Failed"]


def test_logs_of_an_unknown_run_says_so(
    prefect_server: LocalServer, capsys: pytest.CaptureFixture[str]
) -> None:
    api_url = prefect_server.api_url
    missing = str(uuid.uuid4())
    assert main(["logs", missing, "--api-url", api_url]) == 1
    assert f"no flow run with id {missing}" in capsys.readouterr().err
    assert main(["logs", f"nobody-{missing[:6]}", "--api-url", api_url]) == 1
    assert "no flow run named" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["logs", missing, "--level", "loud", "--api-url", api_url])
    assert usage.value.code == 2


async def test_R_and_l_act_on_the_run_selected_in_the_runs_panel(
    prefect_server: LocalServer,
) -> None:
    api_url = prefect_server.api_url
    batch = await make_batch(api_url, ["Failed"])
    other = await make_batch(api_url, ["Failed", "Failed"], pool=batch.pool)
    target = str(batch.runs["Failed-0"])
    app = board(batch, api_url)
    async with app.run_test(size=(140, 40)) as pilot:
        await until(pilot, lambda: app.snapshot is not None and len(app.snapshot.failures) == 3)
        await pilot.press("tab")
        for _ in range(6):  # down the panel to the run of `batch`
            selected = app.selected_run()
            if selected is not None and selected.id == target:
                break
            await pilot.press("down")
        selected = app.selected_run()
        assert selected is not None and selected.id == target
        await pilot.press("R")
        await until(pilot, lambda: isinstance(app.screen, RetryBatchPicker))
        picker = app.screen
        assert isinstance(picker, RetryBatchPicker)
        names = [b.batch for b in picker.batches]
        assert names[0] == other.name  # listed first (more runs), yet not the one offered
        assert picker.query_one(OptionList).highlighted == names.index(batch.name)
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, RetryBatchPicker))
        await pilot.press("l")
        await until(pilot, lambda: isinstance(app.screen, LogScreen))
        assert str(app.screen.run_id) == target  # type: ignore[attr-defined]
    # Nothing was retried: the picker was left with Escape.
    assert await state_names(api_url, [batch.runs["Failed-0"]]) == ["Failed"]
