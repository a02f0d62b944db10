"""Snapshots as `gpuboard status` prints them (JSON and text), and GPU event payloads."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from gpuboard.core.gpu_events import reading_from_payload, reading_to_payload
from gpuboard.core.models import (
    GclState,
    GpuProcess,
    GpuReading,
    GpuSample,
    LimitAdvice,
    RunCounts,
    RunView,
    Snapshot,
    SourceError,
    WorkerView,
)
from gpuboard.core.status import snapshot_to_json, snapshot_to_text

GIB = 1024**3
NOW = 1_800_000_000.0


def sample(host: str = "node-1") -> GpuSample:
    return GpuSample(
        host=host,
        index=0,
        uuid="GPU-1",
        name="NVIDIA H100",
        memory_used=31 * GIB,
        memory_total=80 * GIB,
        utilization=87,
        processes=(GpuProcess(4001, 7 * GIB, "run-1", "brave-otter"), GpuProcess(9, None)),
        sampled_at=NOW - 3,
    )


def snapshot() -> Snapshot:
    gpu = sample()
    return Snapshot(
        pool="ml-pool",
        api_url="http://127.0.0.1:4200/api",
        taken_at=NOW,
        prefect_read_at=NOW,
        workers=(
            WorkerView(
                "gpu-1",
                True,
                True,
                2.0,
                GclState("gpu:gpu-1", 4, 3, True),
                running=6,
                waiting=2,
                downloading=1,
                inferring=3,
                gpus=(gpu,),
                advice=LimitAdvice(gpu.key, 7 * GIB, 69 * GIB, 9, 4, ("gpu-1",)),
            ),
            WorkerView("gpu-2", True, True, 1.0, GclState("gpu:gpu-2", 0, 0, True)),
            WorkerView("gpu-3", True, False, 95.0, None),
            WorkerView("gone", False, False, None, GclState("gpu:gone", 2, 0, False)),
        ),
        runs=RunCounts(
            scheduled=3, late=1, pending=2, running=6, completed=40, failed=2, crashed=1
        ),
        running=(
            RunView(
                "r1",
                "brave-otter",
                "RUNNING",
                "Running",
                "gpu-1",
                "infer",
                "17",
                start_time=NOW - 12,
            ),
        ),
        gpu_readings=(
            GpuReading("node-1", NOW - 3, (gpu,), workers=("gpu-1",)),
            GpuReading("vm", NOW, unavailable="NVML not available: no driver", local=True),
            GpuReading("node-9", NOW - 300, (sample("node-9"),), workers=("gpu-9",)),
        ),
        errors=(SourceError("gpu-events", "Prefect API answered 500: boom"),),
    )


def test_json_has_the_documented_fields_in_bytes() -> None:
    data = json.loads(json.dumps(snapshot_to_json(snapshot())))
    gpu_1 = data["workers"][0]
    assert {k: gpu_1[k] for k in ("name", "online", "limit", "active_slots", "waiting")} == {
        "name": "gpu-1",
        "online": True,
        "limit": 4,
        "active_slots": 3,
        "waiting": 2,
    }
    assert gpu_1["gpus"][0]["memory_used"] == 31 * GIB
    assert gpu_1["gpus"][0]["memory_total"] == 80 * GIB
    assert gpu_1["advice"]["fits"] == 9 and gpu_1["advice"]["over_limit"] is False
    assert data["workers"][1]["paused"] is True
    assert data["workers"][2]["unprotected"] is True and data["workers"][2]["limit"] is None
    assert data["workers"][3]["in_pool"] is False and data["workers"][3]["unprotected"] is True
    assert data["runs"] == {
        "scheduled": 3,
        "late": 1,
        "pending": 2,
        "queued": 6,
        "running": 6,
        "completed": 40,
        "failed": 2,
        "crashed": 1,
        "finished_window_seconds": 3600,
    }
    assert data["running"][0]["elapsed_s"] == 12.0
    machines = {m["host"]: m for m in data["machines"]}
    assert machines["node-9"]["stale"] and not machines["node-1"]["stale"]
    assert machines["vm"]["unavailable"] == "NVML not available: no driver"
    assert data["connected"] is True and data["errors"][0]["source"] == "gpu-events"


def test_text_says_paused_unprotected_and_stale() -> None:
    text = snapshot_to_text(snapshot())
    assert "gpu-1: online (2.0s ago) · slots 3/4 · waiting 2" in text
    assert "gpu-2: online (1.0s ago) · PAUSED" in text
    assert "gpu-3: offline (1m35s ago) · UNPROTECTED (no GCL)" in text
    assert "gone: not in pool · UNPROTECTED (GCL disabled)" in text
    assert "queued 6 (scheduled 3, late 1, pending 2)" in text
    assert "node-9 · gpu-9 · 5m00s ago STALE" in text
    assert "NVML not available: no driver" in text


def test_unreachable_snapshot_is_not_connected() -> None:
    failed = Snapshot("p", "u", NOW, errors=(SourceError("prefect", "down", "unreachable"),))
    assert not failed.connected and not failed.prefect_ok and failed.stale
    data = snapshot_to_json(failed)
    assert data["connected"] is False and data["workers"] == [] and data["runs"] is None


_sizes = st.integers(min_value=0, max_value=2**50)


@given(
    gpus=st.lists(
        st.tuples(
            _sizes,
            _sizes,
            st.none() | st.integers(0, 100),
            st.lists(st.tuples(st.integers(1, 2**22), st.none() | _sizes, st.none() | st.uuids())),
        ),
        max_size=8,
    ),
    unavailable=st.none() | st.text(max_size=40),
)
def test_gpu_payload_round_trip(
    gpus: list[tuple[int, int, int | None, list[tuple[int, int | None, object]]]],
    unavailable: str | None,
) -> None:
    reading = GpuReading(
        host="node",
        sampled_at=NOW,
        gpus=tuple(
            GpuSample(
                "node",
                index,
                f"GPU-{index}",
                "H100",
                used,
                total,
                util,
                tuple(
                    GpuProcess(pid, mem, None if run is None else str(run))
                    for pid, mem, run in procs
                ),
                NOW,
            )
            for index, (used, total, util, procs) in enumerate(gpus)
        ),
        unavailable=unavailable,
    )
    payload = json.loads(json.dumps(reading_to_payload(reading)))
    back = reading_from_payload("gpu-1", payload)
    assert back == GpuReading(
        reading.host, reading.sampled_at, reading.gpus, reading.unavailable, workers=("gpu-1",)
    )
