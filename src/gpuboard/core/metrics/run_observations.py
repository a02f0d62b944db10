"""Histograms and counters built from events, each event counted once: the inference time
and slot wait of every run's timing report (`gpuboard.run.timings`), and every leaked GPU
slot released (`gpuboard.slot.reclaimed`).

These are observed values, not quantiles someone else computed: each finished run adds its
own inference time and slot wait to its worker's histograms. They count what happened
since the exporter started (a counter starting at 0, as Prometheus expects of a restarted
exporter), and are kept in prometheus_client's own Histogram and Counter.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from prometheus_client import Counter, Histogram
from prometheus_client.metrics_core import Metric

from gpuboard.core.prefect.events import ReceivedEvent
from gpuboard.core.reclaim_events import worker_of_event
from gpuboard.core.run_timings import RunTimings

log = logging.getLogger(__name__)

# An inference on a GPU takes tens of milliseconds, on a CPU up to seconds.
INFERENCE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# A slot is free at once, or after the inferences ahead of it: up to the server's
# 30 s Retry-After cap, or minutes behind a paused GCL.
SLOT_WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)


class RunObservations:
    """What the exporter has observed since it started, by worker."""

    def __init__(self) -> None:
        # registry=None: these live inside the exporter's collector, not a global registry.
        self.inference = Histogram(
            "gpuboard_inference_duration_seconds",
            "Inference time of each finished run's GPU step, from the run's timing report.",
            ["worker"],
            buckets=INFERENCE_BUCKETS,
            registry=None,
        )
        self.slot_wait = Histogram(
            "gpuboard_slot_wait_duration_seconds",
            "How long each finished run waited for its GPU slot, from its timing report.",
            ["worker"],
            buckets=SLOT_WAIT_BUCKETS,
            registry=None,
        )
        self.reclaims = Counter(
            "gpuboard_slot_reclaims",
            "Leaked GPU slots (their holder died) that gpuboard released before their "
            "lease expired.",
            ["worker"],
            registry=None,
        )
        self.runs_reported = Counter(
            "gpuboard_run_timing_reports",
            "Finished runs whose timing report the exporter read.",
            ["worker"],
            registry=None,
        )

    def know_workers(self, workers: Iterable[str]) -> None:
        """Export 0 for workers with nothing observed yet, so that rate() has a series."""
        for worker in workers:
            self.reclaims.labels(worker)
            self.runs_reported.labels(worker)

    def add_timings(self, events: Iterable[ReceivedEvent]) -> int:
        """Observe each run timing report; returns how many were read."""
        added = 0
        for event in events:
            try:
                timings = RunTimings.from_payload(event.payload)
            except (KeyError, TypeError, ValueError) as exc:
                log.debug("skipping run timings: %s", exc)
                continue
            self.runs_reported.labels(timings.worker).inc()
            if timings.inference_s is not None:
                self.inference.labels(timings.worker).observe(timings.inference_s)
            if timings.slot_wait_s is not None:
                self.slot_wait.labels(timings.worker).observe(timings.slot_wait_s)
            added += 1
        return added

    def add_reclaims(self, events: Iterable[ReceivedEvent]) -> int:
        """Count each released slot; returns how many were read."""
        added = 0
        for event in events:
            try:
                worker = worker_of_event(event.payload)
            except ValueError as exc:
                log.debug("skipping reclaim event: %s", exc)
                continue
            self.reclaims.labels(worker).inc()
            added += 1
        return added

    def metrics(self) -> list[Metric]:
        return [
            *self.inference.collect(),
            *self.slot_wait.collect(),
            *self.reclaims.collect(),
            *self.runs_reported.collect(),
        ]
