"""The `process-image` flow run in-process against a real Prefect server."""

from __future__ import annotations

import importlib
import json
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.states import State

from gpuboard.core.config import FLOW_NAME, gcl_name
from gpuboard.core.images import render_sample, sample_text
from gpuboard.core.local_server import LocalServer
from gpuboard.core.prefect.client import sync_client
from gpuboard.core.prefect.slots import read_gcl_now


@pytest.fixture(scope="module")
def flow_module() -> ModuleType:
    # The module the deployment's entrypoint names (gpuboard.flows.process_image.process_image).
    return importlib.import_module("gpuboard.flows.process_image")


@pytest.fixture
def worker(prefect_server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """A worker id in WORKER_ID whose GPU GCL exists with limit 1."""
    worker_id = f"flow-{uuid.uuid4().hex[:8]}"
    with sync_client() as client:
        client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=gcl_name(worker_id), limit=1)
        )
    monkeypatch.setenv("WORKER_ID", worker_id)
    return worker_id


def run(flow_module: ModuleType, image_id: int, **params: Any) -> State[Any]:
    state: State[Any] = flow_module.process_image(image_id, **params, return_state=True)
    return state


def test_flow_reads_the_sample_and_saves_the_result(
    flow_module: ModuleType, worker: str, isolated_home: Path
) -> None:
    state = run(flow_module, 7)
    assert state.is_completed(), state.message
    path = Path(state.result())
    assert path == isolated_home / "results" / "7.json"
    record = json.loads(path.read_text())
    assert record["image_id"] == 7 and record["worker"] == worker
    assert record["text"] == sample_text(7)
    assert len(record["boxes"]) == len(record["scores"]) >= 1
    assert record["model"] == "PP-OCRv6_det_small+PP-OCRv6_rec_small"
    assert record["provider"] in ("CPUExecutionProvider", "CUDAExecutionProvider")
    timings = record["timings"]
    assert set(timings) >= {
        "download_s",
        "model_load_s",
        "slot_wait_s",
        "inference_s",
        "inference_started_at",
        "inference_ended_at",
    }
    assert all(value >= 0 for value in timings.values() if value is not None)
    assert timings["inference_started_at"] <= timings["inference_ended_at"]
    # No inference host here (GPUBOARD_INFERENCE_SOCKET unset): the plain-worker way, the
    # model loaded in this process inside the slot.
    assert record["execution"]["mode"] == "in-process"
    assert timings["transfer_s"] is None
    span = timings["inference_ended_at"] - timings["inference_started_at"]
    assert abs(span - timings["inference_s"]) < 0.05
    slot_after = read_gcl_now(gcl_name(worker))
    assert slot_after is not None and slot_after.active_slots == 0

    # The server saw a completed `process-image` run with the three named tasks (the
    # model is loaded inside the GPU step, under its slot).
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    with sync_client() as client:
        flow_run = client.read_flow_run(flow_run_id)
        assert flow_run.state is not None and flow_run.state.is_completed()
        assert client.read_flow(flow_run.flow_id).name == FLOW_NAME
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    assert sorted(t.name.rsplit("-", 1)[0] for t in task_runs) == [
        "download_image",
        "run_ml_model",
        "save_results",
    ]


def test_a_corrupt_file_fails_only_its_own_run(
    flow_module: ModuleType, worker: str, tmp_path: Path, isolated_home: Path
) -> None:
    (tmp_path / "3.png").write_bytes(render_sample(3))
    (tmp_path / "4.png").write_bytes(render_sample(4)[:300])  # cut short
    source = f"file://{tmp_path}/{{image_id}}.png"

    broken = run(flow_module, 4, source=source)
    good = run(flow_module, 3, source=source)

    assert broken.is_failed()
    assert "image 4: corrupt or truncated image" in (broken.message or "")
    assert not (isolated_home / "results" / "4.json").exists()
    assert good.is_completed(), good.message
    assert json.loads(Path(good.result()).read_text())["text"] == sample_text(3)


def test_a_missing_gcl_fails_the_run_and_says_how_to_fix_it(
    flow_module: ModuleType, prefect_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKER_ID", "nobody-made-my-gcl")
    state = run(flow_module, 1)
    assert state.is_failed()
    assert "gpuboard worker --id nobody-made-my-gcl --gpu-slots N" in (state.message or "")


def test_a_bad_source_fails_the_run_before_any_work(flow_module: ModuleType, worker: str) -> None:
    state = run(flow_module, 1, source="ftp://host/{image_id}.png")
    assert state.is_failed()
    assert "unknown image source" in (state.message or "")
