"""`gpuboard status [--json]`: one snapshot of the board, headless, for people and scripts."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any, TextIO

from gpuboard.core.board_source import BoardSource
from gpuboard.core.config import configured_api_url
from gpuboard.core.host.state import HostState, state_to_payload
from gpuboard.core.models import GpuReading, GpuSample, RunView, Snapshot, WorkerView
from gpuboard.core.nvml_source import NvmlSource

JSON_VERSION = 1


async def read_snapshot(
    pool: str, api_url: str | None = None, nvml: NvmlSource | None = None
) -> Snapshot:
    """One snapshot of `pool`, read the way the board reads it."""
    # One read: the newest host states through the API, no websocket to open and close.
    source = BoardSource(
        pool, api_url or configured_api_url(), nvml=nvml or NvmlSource(), follow_hosts=False
    )
    try:
        return await source.read()
    finally:
        await source.aclose()


def status_main(pool: str, as_json: bool, api_url: str | None, *, out: TextIO | None = None) -> int:
    """Print one snapshot; exit status 1 when the Prefect API could not be read."""
    snapshot = asyncio.run(read_snapshot(pool, api_url))
    stream = out or sys.stdout
    if as_json:
        json.dump(snapshot_to_json(snapshot), stream, indent=2, sort_keys=False)
        stream.write("\n")
    else:
        stream.write(snapshot_to_text(snapshot))
    return 0 if snapshot.prefect_ok else 1


def snapshot_to_json(snapshot: Snapshot) -> dict[str, Any]:
    """The snapshot as JSON: stable keys, bytes as integers, times as epoch seconds."""
    now = snapshot.taken_at
    return {
        "version": JSON_VERSION,
        "pool": snapshot.pool,
        "api_url": snapshot.api_url,
        "taken_at": now,
        "connected": snapshot.connected,
        "pool_paused": snapshot.pool_paused,
        "paused_queues": list(snapshot.paused_queues),
        "errors": [
            {"source": e.source, "kind": e.kind, "message": e.message} for e in snapshot.errors
        ],
        "workers": [_worker_json(w, now) for w in snapshot.workers],
        "runs": None
        if snapshot.runs is None
        else {
            "scheduled": snapshot.runs.scheduled,
            "late": snapshot.runs.late,
            "pending": snapshot.runs.pending,
            "queued": snapshot.runs.queued,
            "running": snapshot.runs.running,
            "completed": snapshot.runs.completed,
            "failed": snapshot.runs.failed,
            "crashed": snapshot.runs.crashed,
            "finished_window_seconds": snapshot.runs.window_seconds,
        },
        "running": [_run_json(r, now) for r in snapshot.running],
        "next_queued": [_run_json(r, now) for r in snapshot.next_queued],
        "failures": [_run_json(r, now) for r in snapshot.failures],
        "machines": [reading_to_json(r, now) for r in snapshot.gpu_readings],
        "time_splits": [
            {
                "worker": split.worker,
                "executor": split.executor,
                "runs": split.runs,
                "medians_s": split.medians,
            }
            for split in snapshot.time_splits
        ],
        "cost": {"api_calls": snapshot.cost.api_calls, "api_ms": round(snapshot.cost.api_ms, 1)},
    }


def _worker_json(worker: WorkerView, now: float) -> dict[str, Any]:
    advice = worker.advice
    return {
        "name": worker.name,
        "in_pool": worker.in_pool,
        "online": worker.online,
        "heartbeat_age_s": _round(worker.heartbeat_age),
        "gcl": None if worker.gcl is None else worker.gcl.name,
        "limit": worker.limit,
        "active_slots": worker.active_slots,
        "paused": worker.paused,
        "unprotected": worker.unprotected,
        "drained": worker.drained,
        "drain_state": worker.drain_state,
        "run_limit": worker.run_limit,
        "pending": worker.pending,
        "running": worker.running,
        "waiting": worker.waiting,
        "downloading": worker.downloading,
        "loading": worker.loading,
        "inferring": worker.inferring,
        "saving": worker.saving,
        "counts_capped": worker.counts_capped,
        "counts_from_host": worker.counts_from_host,
        "inference_host": None if worker.host is None else _host_json(worker.host, now),
        "executor": None if worker.executor is None else worker.executor.to_payload(),
        "gpus": [_gpu_json(g) for g in worker.gpus],
        "advice": None
        if advice is None
        else {
            "peak_per_inference": advice.peak_per_inference,
            "usable_memory": advice.usable_memory,
            "fits": advice.fits,
            "limit": advice.limit,
            "sharing_workers": list(advice.sharing_workers),
            "over_limit": advice.over_limit,
        },
    }


def _host_json(host: HostState, now: float) -> dict[str, Any]:
    payload = state_to_payload(host)
    payload.pop("version", None)
    payload["age_s"] = _round(host.age(now))
    payload["stale"] = host.stale(now)
    return payload


def _gpu_json(gpu: GpuSample) -> dict[str, Any]:
    return {
        "host": gpu.host,
        "index": gpu.index,
        "uuid": gpu.uuid,
        "name": gpu.name,
        "memory_used": gpu.memory_used,
        "memory_total": gpu.memory_total,
        "utilization": gpu.utilization,
        "sampled_at": gpu.sampled_at,
        "processes": [
            {
                "pid": p.pid,
                "memory_used": p.memory_used,
                "flow_run_id": p.flow_run_id,
                "flow_run_name": p.flow_run_name,
            }
            for p in gpu.processes
        ],
    }


def reading_to_json(reading: GpuReading, now: float) -> dict[str, Any]:
    return {
        "host": reading.host,
        "local": reading.local,
        "workers": list(reading.workers),
        "age_s": _round(reading.age(now)),
        "stale": reading.stale(now),
        "unavailable": reading.unavailable,
        "gpus": [_gpu_json(g) for g in reading.gpus],
    }


def _run_json(run: RunView, now: float) -> dict[str, Any]:
    return {
        "id": run.id,
        "name": run.name,
        "state": run.state_name,
        "state_type": run.state_type,
        "worker": run.worker,
        "step": run.step,
        "image_id": run.image_id,
        "elapsed_s": _round(run.elapsed(now)),
        "expected_start_time": run.expected_start_time,
        "end_time": run.end_time,
        "message": run.message,
        "work_queue": run.work_queue,
        "wait_reason": None
        if run.wait_reason is None
        else {"code": run.wait_code, "text": run.wait_reason},
        "batch": run.batch,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def snapshot_to_text(snapshot: Snapshot) -> str:
    """A short human report: connection, workers, GPUs, run counts."""
    from gpuboard.core.text_format import human_age, human_bytes

    lines = [f"gpuboard · pool {snapshot.pool} · {snapshot.api_url}"]
    for error in snapshot.errors:
        lines.append(f"! {error.source}: {error.message}")
    if snapshot.prefect_read_at is not None:
        lines.append("")
        lines.append("workers:")
        if not snapshot.workers:
            lines.append("  (none: no worker has joined the pool)")
        for w in snapshot.workers:
            lines.append("  " + _worker_line(w, snapshot.taken_at))
    if snapshot.pool_paused:
        lines.append(f"pool {snapshot.pool} is PAUSED: no worker takes its runs")
    for queue in snapshot.paused_queues:
        lines.append(f"queue {queue} is PAUSED")
    runs = snapshot.runs
    if runs is not None:
        lines.append("")
        lines.append(
            f"runs: queued {runs.queued} (scheduled {runs.scheduled}, late {runs.late}, "
            f"pending {runs.pending}) · running {runs.running} · last hour: completed "
            f"{runs.completed}, failed {runs.failed} ({runs.crashed} crashed)"
        )
    waiting = [r for r in snapshot.next_queued + snapshot.running if r.wait_reason]
    if waiting:
        lines.append("")
        lines.append("why they wait:")
        for run in waiting:
            lines.append(f"  {run.name} ({run.state_name}): {run.wait_reason}")
    if snapshot.time_splits:
        lines.append("")
        lines.append("where the time goes (median s, runs of the last 10 min):")
        for split in snapshot.time_splits:
            phases = " · ".join(
                f"{key.removesuffix('_s').replace('_', ' ')} "
                + ("—" if value is None else f"{value:.2f}")
                for key, value in split.medians.items()
            )
            lines.append(f"  {split.worker} ({split.executor}, {split.runs} runs): {phases}")
    if snapshot.gpu_readings:
        lines.append("")
        lines.append("gpus:")
    for reading in snapshot.gpu_readings:
        where = reading.host + (" (this machine)" if reading.local else "")
        if reading.workers:
            where += " · " + ", ".join(reading.workers)
        if not reading.local:
            where += f" · {human_age(reading.age(snapshot.taken_at))} ago"
            where += " STALE" if reading.stale(snapshot.taken_at) else ""
        lines.append(f"  {where}")
        if reading.unavailable:
            lines.append(f"    {reading.unavailable}")
        for gpu in reading.gpus:
            util = "n/a" if gpu.utilization is None else f"{gpu.utilization}%"
            lines.append(
                f"    #{gpu.index} {gpu.name}: {human_bytes(gpu.memory_used)} / "
                f"{human_bytes(gpu.memory_total)} · util {util} · {len(gpu.processes)} processes"
            )
    return "\n".join(lines) + "\n"


def _worker_line(w: WorkerView, now: float) -> str:
    from gpuboard.core.text_format import human_age

    state = "online" if w.online else "offline"
    if w.heartbeat_age is not None:
        state += f" ({human_age(w.heartbeat_age)} ago)"
    if not w.in_pool:
        state = "not in pool"
    if w.drain_state is not None:
        state += f" · {w.drain_state}"
    if w.gcl is None:
        slots = "UNPROTECTED (no GCL)"
    elif not w.gcl.active:
        slots = "UNPROTECTED (GCL disabled)"
    elif w.paused:
        slots = f"PAUSED ({w.gcl.active_slots} in use)"
    else:
        slots = f"slots {w.gcl.active_slots}/{w.gcl.limit}"
    line = (
        f"{w.name}: {state} · {slots} · waiting {w.waiting} · downloading {w.downloading} · "
        f"loading {w.loading} · inferring {w.inferring} · saving {w.saving}"
    )
    if w.host is not None:
        from gpuboard.core.text_format import describe_host

        line += f"\n    inference host: {describe_host(w.host, now)}"
    if w.executor is not None:
        runners = w.executor
        line += (
            f"\n    warm runners: {runners.busy} busy, {runners.idle} idle, "
            f"{runners.starting} starting of {runners.size} · {runners.runs} runs, "
            f"{runners.recycled} recycled, {runners.replaced} replaced"
        )
    return line
