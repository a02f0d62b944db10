"""Where each image's time went, from its flow run's own measurements: published when the
run ends as Prefect event `gpuboard.run.timings`, read back by the board.

Phases, in seconds: queued (due until a worker took it: its Pending), start-up (taken
until the flow body ran: a process start and imports, or nearly nothing on a warm
runner), download, slot wait, inference, save. With the run's worker and executor, the
board tells whether the GPU or the machine around it is the bottleneck.
"""

from __future__ import annotations

import logging
import os
import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

EVENT_NAME = "gpuboard.run.timings"
EXECUTOR_ENV = "GPUBOARD_EXECUTOR"  # set by a warm runner; a process per run has none
PHASES = ("queued_s", "startup_s", "download_s", "slot_wait_s", "inference_s", "save_s")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunTimings:
    """One finished image's phases (None where it could not be told)."""

    flow_run_id: str
    worker: str
    executor: str  # "warm" or "process"
    ended_at: float  # epoch seconds
    queued_s: float | None
    startup_s: float | None
    download_s: float | None
    slot_wait_s: float | None
    inference_s: float | None
    save_s: float | None
    # When its inference ran (epoch seconds, inside the slot), for the timeline; None in
    # reports from before these were sent: `inference_window` then estimates it.
    inference_started_at: float | None = None
    inference_ended_at: float | None = None
    image_id: str | None = None

    def inference_window(self) -> tuple[float, float] | None:
        """(start, end) of its inference: as measured, else back from its end and save."""
        if self.inference_started_at is not None and self.inference_ended_at is not None:
            return self.inference_started_at, self.inference_ended_at
        if self.inference_s is None:
            return None
        ended = self.ended_at - (self.save_s or 0.0)
        return ended - self.inference_s, ended

    def to_payload(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> RunTimings:
        """KeyError/TypeError/ValueError when `payload` is not one."""
        phases = {phase: _seconds(payload.get(phase)) for phase in PHASES}
        return cls(
            flow_run_id=str(payload["flow_run_id"]),
            worker=str(payload["worker"]),
            executor=str(payload.get("executor") or "process"),
            ended_at=float(payload["ended_at"]),
            **phases,
            inference_started_at=_seconds(payload.get("inference_started_at")),
            inference_ended_at=_seconds(payload.get("inference_ended_at")),
            image_id=None if payload.get("image_id") is None else str(payload["image_id"]),
        )


@dataclass(frozen=True)
class TimeSplit:
    """The median of each phase over a worker's recent runs."""

    worker: str
    runs: int
    executor: str
    medians: dict[str, float | None]


def split_by_worker(timings: Iterable[RunTimings]) -> tuple[TimeSplit, ...]:
    by_worker: dict[str, list[RunTimings]] = {}
    for timing in timings:
        by_worker.setdefault(timing.worker, []).append(timing)
    splits = []
    for worker, runs in sorted(by_worker.items()):
        medians: dict[str, float | None] = {}
        for phase in PHASES:
            values = [v for v in (getattr(run, phase) for run in runs) if v is not None]
            medians[phase] = statistics.median(values) if values else None
        latest = max(runs, key=lambda run: run.ended_at)
        splits.append(TimeSplit(worker, len(runs), latest.executor, medians))
    return tuple(splits)


def _seconds(value: object) -> float | None:
    return None if value is None else float(str(value))


def executor_here() -> str:
    return os.environ.get(EXECUTOR_ENV, "process")


def measure_flow_run(body_started: float) -> tuple[float | None, float | None]:
    """(queued, start-up) of the current flow run: from its due time to its Pending (taken
    by a worker), and from Pending to `body_started`. One request (its state history)."""
    from prefect.context import FlowRunContext

    from gpuboard.core.prefect.client import sync_client

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return None, None
    flow_run = context.flow_run
    try:
        with sync_client() as client:
            states = client.read_flow_run_states(flow_run.id)
    except Exception as exc:  # the timings are a report: never fail the run for them
        log.debug("cannot read the states of %s: %s", flow_run.id, exc)
        return None, None
    pending = next((s.timestamp for s in states if s.type.value == "PENDING"), None)
    due = flow_run.expected_start_time
    if pending is None:
        return None, None
    queued = max(0.0, (pending - due).total_seconds()) if due is not None else None
    return queued, max(0.0, body_started - pending.timestamp())


def publish(timings: RunTimings) -> None:
    """Emit the run's timings (Prefect's events client of this flow-run process)."""
    from prefect.events import emit_event

    emit_event(
        EVENT_NAME,
        resource={
            "prefect.resource.id": f"prefect.flow-run.{timings.flow_run_id}",
            "gpuboard.worker": timings.worker,
        },
        payload=timings.to_payload(),
        occurred=datetime.fromtimestamp(timings.ended_at).astimezone(),
    )
