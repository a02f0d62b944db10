"""The board's snapshot as Prometheus metric families: workers' GPU slots, GPUs, runs by
state, inference hosts, and which sources answered.

Gauges, but for the counters inference hosts keep: a snapshot is a reading of now. Values
the board holds only from an earlier read (the Prefect server away, a GPU reading gone
stale) are left out rather than passed off as current; `gpuboard_source_up` says which
source failed.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from gpuboard.core.models import Snapshot, WorkerView

# The snapshot's sources fed through the Prefect API (all down when the API is).
PREFECT_SOURCES = ("prefect", "gpu-events", "host-events")
RUN_STATES = ("scheduled", "late", "pending", "running")
ENDED_STATES = ("completed", "failed", "crashed")


def snapshot_metrics(
    snapshot: Snapshot, feeds_up: Mapping[str, bool] | None = None
) -> list[Metric]:
    """Every metric one snapshot gives; `feeds_up`: other sources read with it, and
    whether each answered (for `gpuboard_source_up`)."""
    families: list[Metric] = [_sources_up(snapshot, feeds_up or {})]
    if snapshot.prefect_ok and snapshot.prefect_read_at is not None:
        families += _worker_metrics(snapshot.workers)
        families += _run_metrics(snapshot)
        families += _host_metrics(snapshot.workers)
    families += _gpu_metrics(snapshot)
    return families


def _sources_up(snapshot: Snapshot, feeds_up: Mapping[str, bool]) -> GaugeMetricFamily:
    up = GaugeMetricFamily(
        "gpuboard_source_up",
        "1 where the source answered the last refresh, 0 where it failed.",
        labels=["source"],
    )
    failed = {error.source for error in snapshot.errors}
    prefect_down = not snapshot.prefect_ok
    for source in PREFECT_SOURCES:
        up.add_metric([source], 0 if prefect_down or source in failed else 1)
    local = next((r for r in snapshot.gpu_readings if r.local), None)
    if local is not None:
        up.add_metric(["nvml"], 0 if local.unavailable else 1)
    for feed, answered in feeds_up.items():
        up.add_metric([feed], 1 if answered else 0)
    return up


def _worker_metrics(workers: tuple[WorkerView, ...]) -> list[Metric]:
    labels = ["worker"]
    online = GaugeMetricFamily(
        "gpuboard_worker_online",
        "1 while the worker heartbeats to its work pool, else 0 (also for a gpu:<worker> "
        "GCL whose worker is not in the pool).",
        labels=labels,
    )
    in_use = GaugeMetricFamily(
        "gpuboard_worker_gpu_slots_in_use",
        "GPU slots of the worker's GCL held now (active_slots).",
        labels=labels,
    )
    limit = GaugeMetricFamily(
        "gpuboard_worker_gpu_slots_limit",
        "The limit of the worker's GCL: inferences at once on its GPU (0: paused).",
        labels=labels,
    )
    waiting = GaugeMetricFamily(
        "gpuboard_worker_gpu_slots_waiting",
        "The worker's GPU steps waiting for a slot.",
        labels=labels,
    )
    paused = GaugeMetricFamily(
        "gpuboard_worker_paused",
        "1 while the worker's GCL limit is 0 (gpuboard's pause).",
        labels=labels,
    )
    unprotected = GaugeMetricFamily(
        "gpuboard_worker_unprotected",
        "1 where the worker has no active GCL: its GPU step would run unlimited.",
        labels=labels,
    )
    drained = GaugeMetricFamily(
        "gpuboard_worker_drained",
        "1 while the worker is drained (takes no new flow runs).",
        labels=labels,
    )
    running = GaugeMetricFamily(
        "gpuboard_worker_flow_runs_running",
        "The worker's flow runs in state Running.",
        labels=labels,
    )
    for worker in workers:
        name = [worker.name]
        online.add_metric(name, 1 if worker.online and worker.in_pool else 0)
        if worker.gcl is not None:
            in_use.add_metric(name, worker.gcl.active_slots)
            limit.add_metric(name, worker.gcl.limit)
        waiting.add_metric(name, worker.waiting)
        paused.add_metric(name, 1 if worker.paused else 0)
        unprotected.add_metric(name, 1 if worker.unprotected else 0)
        drained.add_metric(name, 1 if worker.drained else 0)
        running.add_metric(name, worker.running)
    return [online, in_use, limit, waiting, paused, unprotected, drained, running]


def _run_metrics(snapshot: Snapshot) -> list[Metric]:
    runs = snapshot.runs
    if runs is None:
        return []
    now = GaugeMetricFamily(
        "gpuboard_flow_runs",
        "The pool's flow runs now, by state (late: Scheduled past their start time).",
        labels=["state"],
    )
    for state in RUN_STATES:
        now.add_metric([state], getattr(runs, state))
    ended = GaugeMetricFamily(
        "gpuboard_flow_runs_ended_last_hour",
        "The pool's flow runs that ended in the last hour, by final state (failed "
        "excludes crashed: the states add up).",
        labels=["state"],
    )
    ended.add_metric(["completed"], runs.completed)
    ended.add_metric(["failed"], runs.failed - runs.crashed)
    ended.add_metric(["crashed"], runs.crashed)
    pool_paused = GaugeMetricFamily(
        "gpuboard_pool_paused", "1 while the work pool is paused.", labels=["pool"]
    )
    pool_paused.add_metric([snapshot.pool], 1 if snapshot.pool_paused else 0)
    return [now, ended, pool_paused]


def _host_metrics(workers: tuple[WorkerView, ...]) -> list[Metric]:
    """Each worker's inference host, as it last published itself (fresh states only)."""
    ready = GaugeMetricFamily(
        "gpuboard_inference_host_ready",
        "1 while the worker's inference host is ready to infer.",
        labels=["worker"],
    )
    quantiles = GaugeMetricFamily(
        "gpuboard_inference_host_duration_seconds",
        "Inference time quantiles the host computes over its recent inferences (a "
        "gauge of the host's own figures, not aggregatable across hosts; see the "
        "gpuboard_inference_duration_seconds histogram for that).",
        labels=["worker", "quantile"],
    )
    # Counters the host keeps itself: they start again from 0 when it (or, for restarts,
    # its worker) restarts, which Prometheus's rate() takes as a counter reset.
    served = CounterMetricFamily(
        "gpuboard_inference_host_requests",
        "Inferences the host answered since it started.",
        labels=["worker"],
    )
    failed = CounterMetricFamily(
        "gpuboard_inference_host_failures",
        "Inference requests the host answered with an error since it started.",
        labels=["worker"],
    )
    restarts = CounterMetricFamily(
        "gpuboard_inference_host_restarts",
        "Restarts of the inference host since its worker started.",
        labels=["worker"],
    )
    for worker in workers:
        host = worker.host
        if host is None or not worker.counts_from_host:
            continue  # none, or stale: its figures are not current
        name = [worker.name]
        ready.add_metric(name, 1 if host.status == "ready" else 0)
        for quantile, value in (("0.5", host.inference_p50_s), ("0.95", host.inference_p95_s)):
            if value is not None:
                quantiles.add_metric([worker.name, quantile], value)
        served.add_metric(name, host.served)
        failed.add_metric(name, host.failed)
        restarts.add_metric(name, host.restarts)
    return [ready, quantiles, served, failed, restarts]


def _gpu_metrics(snapshot: Snapshot) -> list[Metric]:
    labels = ["host", "index", "uuid", "model"]
    used = GaugeMetricFamily(
        "gpuboard_gpu_memory_used_bytes", "GPU memory in use, as NVML reports it.", labels=labels
    )
    total = GaugeMetricFamily(
        "gpuboard_gpu_memory_total_bytes", "GPU memory in all, as NVML reports it.", labels=labels
    )
    utilization = GaugeMetricFamily(
        "gpuboard_gpu_utilization_ratio",
        "Fraction of the last sample period in which a kernel ran (NVML; absent where "
        "not supported, as under MIG).",
        labels=labels,
    )
    processes = GaugeMetricFamily(
        "gpuboard_gpu_processes", "Processes holding memory on the GPU.", labels=labels
    )
    age = GaugeMetricFamily(
        "gpuboard_gpu_sample_age_seconds",
        "How old the machine's GPU reading is (0 for the exporter's own machine).",
        labels=["host"],
    )
    now = snapshot.taken_at
    for reading in snapshot.gpu_readings:
        if reading.unavailable or reading.stale(now):
            continue
        age.add_metric([reading.host], 0.0 if reading.local else reading.age(now))
        for gpu in reading.gpus:
            gpu_labels = [gpu.host, str(gpu.index), gpu.uuid, gpu.name]
            used.add_metric(gpu_labels, gpu.memory_used)
            total.add_metric(gpu_labels, gpu.memory_total)
            if gpu.utilization is not None:
                utilization.add_metric(gpu_labels, gpu.utilization / 100)
            processes.add_metric(gpu_labels, len(gpu.processes))
    return [used, total, utilization, processes, age]
