"""The pure parts of batch submission and of the stack's status line."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from uuid import uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

import gpuboard.flows
from gpuboard.core.batch import (
    BatchInputError,
    BatchReport,
    RunOutcome,
    batch_tag,
    batch_token,
    compact_ids,
    format_report,
    idempotency_key,
    validate_tags,
)
from gpuboard.core.config import ConfigError
from gpuboard.core.id_ranges import parse_id_ranges
from gpuboard.core.models import GclState
from gpuboard.core.prefect.pool import PoolWorker
from gpuboard.core.project import find_project_dir
from gpuboard.core.stack import StackStatus, format_status_line


def test_keys_tell_deployments_batches_and_ids_apart() -> None:
    key = idempotency_key("process-image/process-image", "sample", 7)
    assert key == "gpuboard:process-image/process-image:sample:7"
    assert idempotency_key("process-image/other", "sample", 7) != key
    assert idempotency_key("process-image/process-image", "night", 7) != key
    long_name = "https://example.com/" + "x" * 200 + "/{image_id}.png"
    assert batch_token(long_name).startswith("sha256-") and len(batch_token(long_name)) < 40
    assert batch_token(long_name) != batch_token(long_name + "y")


def test_tags_are_cleaned_and_gpuboards_own_refused() -> None:
    assert validate_tags([" night ", "urgent", "night"]) == ("night", "urgent")
    assert batch_tag("sample") == "batch:sample"
    for bad, reason in [([""], "empty"), (["batch:x"], "gpuboard's own"), (["x" * 101], "longer")]:
        with pytest.raises(BatchInputError, match=reason):
            validate_tags(bad)
    with pytest.raises(BatchInputError, match="at most 20"):
        validate_tags([f"t{i}" for i in range(21)])


@given(st.sets(st.integers(min_value=0, max_value=500), min_size=1))
def test_compact_ids_round_trips(ids: set[int]) -> None:
    assert parse_id_ranges(compact_ids(list(ids))) == sorted(ids)


def test_report_lists_each_outcome_and_every_failure() -> None:
    run = uuid4()
    report = BatchReport(
        "sample",
        "process-image/process-image",
        (
            RunOutcome(1, "existing", run),
            RunOutcome(2, "created", uuid4()),
            RunOutcome(3, "created", uuid4()),
            RunOutcome(4, "failed", reason="HTTP 503: busy"),
        ),
    )
    text = format_report(report)
    assert "created:  2  ids 2-3" in text
    assert "existing: 1  ids 1" in text
    assert "failed:   1  ids 4" in text and "id 4: HTTP 503: busy" in text
    assert not report.ok and report.flow_run_ids[0] == run


def test_status_line_shows_server_workers_slots_and_runs() -> None:
    status = StackStatus(
        api_url="http://127.0.0.1:4200/api",
        server_up=True,
        server_started_here=True,
        expected_workers=("gpu-1", "gpu-2"),
        workers=(PoolWorker("gpu-1", True, 3.0), PoolWorker("gpu-2", False, 99.0)),
        gcls=(GclState("gpu:gpu-1", 2, 1, True), GclState("gpu:gpu-2", 2, 0, True)),
        runs={"COMPLETED": 5, "RUNNING": 1, "SCHEDULED": 2},
    )
    line = format_status_line(status, now=datetime(2026, 1, 1, 12, 0, 0))
    assert line == (
        "12:00:00 server up (started here) | workers 1/2 online | "
        "slots gpu:gpu-1 1/2 gpu:gpu-2 0/2 | runs scheduled 2 running 1 completed 5"
    )
    down = StackStatus("http://127.0.0.1:4200/api", False, False, ("gpu-1",))
    assert "NOT ANSWERING" in format_status_line(down)


def test_the_project_deployed_is_the_packages_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GPUBOARD_PROJECT_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # the current folder plays no part
    found = find_project_dir()
    assert found == Path(gpuboard.flows.__file__).resolve().parent
    assert (found / "prefect.yaml").is_file() and (found / "process_image.py").is_file()


def test_a_project_dir_setting_with_a_prefect_yaml_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "prefect.yaml").write_text("deployments: []\n")
    monkeypatch.setenv("GPUBOARD_PROJECT_DIR", str(tmp_path))
    assert find_project_dir() == tmp_path.resolve()


def test_a_wrong_project_dir_setting_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPUBOARD_PROJECT_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match="GPUBOARD_PROJECT_DIR"):
        find_project_dir()
