"""GPU-owner benchmark: the stock pattern and gpuboard's inference host, side by side.

(A) stock:    Prefect 3.9.1 as the seed sets it up: a server with Prefect's defaults,
              stock `prefect worker start --type process --limit R` workers, GCL
              `gpu:<id>` with the limit each; the flow (bench/flows/sleep_plain.py with
              workload "ocr") loads the same rapidocr models in its own process before it
              asks for its slot, then reads the image inside bare `concurrency()`.
(B) gpuboard: `gpuboard worker --runs R` workers on gpuboard's server settings, running
              the real `process-image` deployment: each worker's inference host loaded
              the model once, takes the slot per image and reads it; the flow runs (in
              warm runners: the default executor) send pixels.
(P) gpuboard with `--executor process`: the same, a fresh single interpreter per run.

Same sample images, same workers x limit x runs per worker, each side on its own fresh
server, one after the other. Figures per side: makespan, CPU seconds per image (the
side's processes from /proc, reaped children included, and the whole machine from
/proc/stat), model loads, slot waits, and the waiting done while the run's worker had a
free slot, judged against the server's GCL occupancy sampled every --sample-s.

    .venv/bin/python bench/gpu_owner.py --runs 30 --workers 2 --limit 2 --worker-runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pipeline
from gpuboard.core.local_server import LocalServer
from gpuboard.core.prefect.client import async_client
from gpuboard.core.prefect.deploy import deploy_process_image
from gpuboard.core.project import find_project_dir
from gpuboard.core.sizing import inference_threads_per_worker


@dataclass
class Outcome:
    """One side's batch: per-image records in one shape, and what it cost."""

    label: str
    records: list[dict[str, Any]] = field(default_factory=list)  # worker, asked, started, ended
    t0: float = 0.0
    done_at: float = 0.0
    timed_out: bool = False
    tree_cpu_s: float = 0.0
    machine_cpu_s: float = 0.0
    model_loads: int = 0
    samples: dict[str, list[tuple[float, int, int]]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- measuring


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (/proc/stat, all cores)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(value) for value in fields]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class GclSampler:
    """Reads every `gpu:*` GCL (one request) every `every_s` seconds until stopped."""

    def __init__(self, api_url: str, every_s: float) -> None:
        self.api_url, self.every_s = api_url, every_s
        self.samples: dict[str, list[tuple[float, int, int]]] = {}
        self._stop = asyncio.Event()

    async def run(self) -> None:
        async with async_client(self.api_url) as client:
            while not self._stop.is_set():
                read_at = time.time()
                try:
                    with_limits = await client.read_global_concurrency_limits(limit=200)
                except Exception:  # the server stopping under it, a 503: skip this one
                    with_limits = []
                for gcl in with_limits:
                    if gcl.name.startswith("gpu:"):
                        self.samples.setdefault(gcl.name[4:], []).append(
                            (read_at, gcl.active_slots, gcl.limit)
                        )
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.every_s)

    def stop(self) -> None:
        self._stop.set()


def waits_while_free(
    records: list[dict[str, Any]], samples: dict[str, list[tuple[float, int, int]]]
) -> dict[str, float]:
    """For each run's wait (asked .. started), the time its worker's GCL, as sampled, had
    a free slot: the worst run's, and the share of all waiting."""
    total_wait = total_free = worst = 0.0
    for record in records:
        series = samples.get(record["worker"], [])
        asked, started = record["asked"], record["started"]
        total_wait += max(0.0, started - asked)
        free = 0.0
        for (at, active, limit), following in zip(series, [*series[1:], None], strict=False):
            end = following[0] if following is not None else at
            overlap = min(end, started) - max(at, asked)
            if overlap > 0 and active < limit:
                free += overlap
        total_free += free
        worst = max(worst, free)
    return {
        "wait_total_s": total_wait,
        "free_while_waiting_s": total_free,
        "free_share": total_free / total_wait if total_wait else 0.0,
        "worst_free_wait_s": worst,
    }


# --------------------------------------------------------------------------- side A


def run_stock(args: argparse.Namespace) -> Outcome:
    """The seed's pattern through bench/pipeline.py's side A, OCR workload."""
    outcome = Outcome("A stock Prefect")
    side_args = argparse.Namespace(
        runs=args.runs,
        workers=args.workers,
        limit=args.limit,
        worker_runs=args.worker_runs,
        workload="ocr",
        download_s=0.0,
        gpu_s=0.0,
        save_s=0.0,
        settle=args.settle,
        timeout=args.timeout,
    )
    sampler_box: dict[str, Any] = {}
    original_submit = pipeline.submit

    async def submit_and_sample(api_url: str, deployment_id: Any, runs: int, params: Any) -> None:
        # The sampler runs in a thread of its own from the first create to the last record.
        sampler = GclSampler(api_url, args.sample_s)
        sampler_box["sampler"] = sampler
        sampler_box["thread"] = _in_thread(sampler)
        sampler_box["machine"] = machine_busy_seconds()
        await original_submit(api_url, deployment_id, runs, params)

    pipeline.submit = submit_and_sample
    try:
        result = pipeline.run_side(pipeline.SIDES["A"], side_args)
    finally:
        pipeline.submit = original_submit
    machine_after = machine_busy_seconds()
    sampler = sampler_box["sampler"]
    sampler.stop()
    sampler_box["thread"].join(10)
    outcome.t0, outcome.done_at, outcome.timed_out = result.t0, result.done_at, result.timed_out
    outcome.tree_cpu_s = result.worker_cpu_s + result.server_cpu_s
    # The sampler's own reads are in the machine's figure on both sides alike.
    outcome.machine_cpu_s = machine_after - sampler_box["machine"]
    outcome.samples = sampler.samples
    outcome.records = [
        {
            "worker": r["worker"],
            "asked": r["asked"],
            "started": r["started"],
            "ended": r["ended"],
            "end": r["end"],
            "model_load_s": r.get("model_load_s", 0.0),
        }
        for r in result.records
    ]
    outcome.model_loads = sum(1 for r in result.records if r.get("model_load_s", 0.0) > 0)
    return outcome


def _in_thread(sampler: GclSampler) -> Any:
    import threading

    thread = threading.Thread(target=lambda: asyncio.run(sampler.run()), daemon=True)
    thread.start()
    return thread


# --------------------------------------------------------------------------- side B


def run_gpuboard(args: argparse.Namespace, executor: str = "warm") -> Outcome:
    outcome = Outcome(f"gpuboard host, {executor} executor")
    home = Path(tempfile.mkdtemp(prefix="gpuboard-bench-owner-"))
    results = home / "results"
    server = LocalServer(
        home=home / "server",
        port=pipeline.free_port(),
        extra_env=dict(item.split("=", 1) for item in args.server_env),
    )
    pool = "bench-owner"
    worker_ids = [f"b{i + 1}" for i in range(args.workers)]
    print(f"[B] starting server on {server.api_url} (home {home})", flush=True)
    server.start()
    workers = []
    try:
        asyncio.run(_create_pool(server.api_url, pool))
        deploy_process_image(find_project_dir(), server.api_url, pool=pool)
        env = pipeline.base_env()
        env.update(
            {
                "PREFECT_API_URL": server.api_url,
                "GPUBOARD_HOME": str(home / "gpuboard"),
                "GPUBOARD_RESULTS_DIR": str(results),
            }
        )
        threads = inference_threads_per_worker(args.workers)
        for worker_id in worker_ids:
            command = [str(Path(sys.executable).parent / "gpuboard"), "worker", "--id", worker_id]
            command += ["--pool", pool, "--runs", str(args.worker_runs)]
            command += ["--gpu-slots", str(args.limit), "--api-url", server.api_url]
            command += ["--inference-threads", str(threads), "--executor", executor]
            log = (home / f"worker-{worker_id}.log").open("ab")
            workers.append(
                pipeline.subprocess.Popen(
                    command,
                    env=env,
                    cwd=pipeline.REPO_DIR,
                    stdout=log,
                    stderr=pipeline.subprocess.STDOUT,
                    stdin=pipeline.subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
            log.close()
        _wait_for_hosts(home, worker_ids, timeout=180)
        asyncio.run(pipeline.wait_for_workers(server.api_url, pool, worker_ids))
        time.sleep(args.settle)
        print(f"[B] workers {worker_ids} online, models loaded; submitting {args.runs}", flush=True)
        cpu_before = [pipeline.tree_cpu_seconds(p.pid) for p in workers]
        server_pid = server.process.pid if server.process else 0
        server_before = pipeline.tree_cpu_seconds(server_pid)
        sampler = GclSampler(server.api_url, args.sample_s)
        sampler_thread = _in_thread(sampler)
        machine_before = machine_busy_seconds()
        outcome.t0 = time.time()
        asyncio.run(_submit(server.api_url, pool, args.runs))
        deadline = time.monotonic() + args.timeout
        while len(list(results.glob("*.json"))) < args.runs:
            if time.monotonic() > deadline:
                outcome.timed_out = True
                break
            time.sleep(0.2)
        outcome.done_at = time.time()
        outcome.machine_cpu_s = machine_busy_seconds() - machine_before
        outcome.tree_cpu_s = sum(
            pipeline.tree_cpu_seconds(p.pid) - before
            for p, before in zip(workers, cpu_before, strict=True)
        ) + (pipeline.tree_cpu_seconds(server_pid) - server_before)
        sampler.stop()
        sampler_thread.join(10)
        outcome.samples = sampler.samples
        documents = [json.loads(p.read_text()) for p in sorted(results.glob("*.json"))]
        for document in documents:
            timings = document["timings"]
            started = timings["inference_started_at"]
            outcome.records.append(
                {
                    "worker": document["worker"],
                    "asked": started - timings["slot_wait_s"],
                    "started": started,
                    "ended": timings["inference_ended_at"],
                    "end": None,
                    "model_load_s": timings["model_load_s"],
                    "transfer_s": timings.get("transfer_s"),
                    "onnxruntime_in_flow": document["execution"]["flow_process"][
                        "onnxruntime_imported"
                    ],
                }
            )
        loads = {
            (d["worker"], d["execution"]["host_pid"], d["execution"]["host_started_at"])
            for d in documents
        }
        outcome.model_loads = len(loads)
        outcome.extra["host_load_s"] = sorted(
            {round(d["execution"]["host_model_load_s"], 2) for d in documents}
        )
        outcome.extra["flow_imported_onnxruntime"] = sum(
            1 for r in outcome.records if r["onnxruntime_in_flow"]
        )
        # The last run's end: its result file's write time.
        outcome.extra["last_result_at"] = max(
            (p.stat().st_mtime for p in results.glob("*.json")), default=float("nan")
        )
    finally:
        for proc in workers:
            pipeline.stop_process(proc, timeout=60)
        server.stop()
    print(f"[B] done: {len(outcome.records)}/{args.runs} results", flush=True)
    return outcome


async def _create_pool(api_url: str, pool: str) -> None:
    from prefect.client.schemas.actions import WorkPoolCreate

    async with async_client(api_url) as client:
        await client.create_work_pool(WorkPoolCreate(name=pool, type="process"))


def _wait_for_hosts(home: Path, worker_ids: list[str], timeout: float) -> None:
    """Until each worker's log says its inference host loaded the model."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = [(home / f"worker-{w}.log") for w in worker_ids]
        if all(log.exists() and "loaded on" in log.read_text(errors="replace") for log in logs):
            return
        time.sleep(0.5)
    raise TimeoutError("the inference hosts did not load their model in time")


async def _submit(api_url: str, pool: str, runs: int) -> None:
    """One run per image, created one after another (as side A's harness does)."""
    async with async_client(api_url) as client:
        deployment = await client.read_deployment_by_name("process-image/process-image")
        for image_id in range(1, runs + 1):
            await client.create_flow_run_from_deployment(
                deployment.id, parameters={"image_id": image_id}, name=f"bench-{image_id}"
            )


# --------------------------------------------------------------------------- report


def summarize(outcome: Outcome, args: argparse.Namespace) -> dict[str, Any]:
    records = outcome.records
    ends = [r["end"] for r in records if r.get("end")]
    last = max(ends) if ends else outcome.extra.get("last_result_at", outcome.done_at)
    makespan = last - outcome.t0
    waits = [r["started"] - r["asked"] for r in records]
    inferences = [r["ended"] - r["started"] for r in records]
    done = max(1, len(records))
    free = waits_while_free(records, outcome.samples)
    return {
        "completed": f"{len(records)}/{args.runs}" + (" TIMEOUT" if outcome.timed_out else ""),
        "makespan_s": makespan,
        "machine_cpu_per_image_s": outcome.machine_cpu_s / done,
        "tree_cpu_per_image_s": outcome.tree_cpu_s / done,
        "model_loads": outcome.model_loads,
        "model_load_p50_s": pipeline.pct([r["model_load_s"] for r in records], 0.5),
        "inference_p50_s": pipeline.pct(inferences, 0.5),
        "transfer_p50_s": pipeline.pct(
            [r["transfer_s"] for r in records if r.get("transfer_s") is not None], 0.5
        ),
        "wait_p50_s": pipeline.pct(waits, 0.5),
        "wait_p95_s": pipeline.pct(waits, 0.95),
        "worst_free_wait_s": free["worst_free_wait_s"],
        "free_share": free["free_share"],
        "wait_total_s": free["wait_total_s"],
        "samples": sum(len(s) for s in outcome.samples.values()),
        **{k: v for k, v in outcome.extra.items() if k != "last_result_at"},
    }


ROWS = [
    ("completed", "images completed", "{}"),
    ("makespan_s", "makespan (s)", "{:.1f}"),
    ("machine_cpu_per_image_s", "CPU s per image, whole machine", "{:.2f}"),
    ("tree_cpu_per_image_s", "CPU s per image, the side's processes", "{:.2f}"),
    ("model_loads", "model loads", "{}"),
    ("model_load_p50_s", "model load p50 in a run (s)", "{:.2f}"),
    ("inference_p50_s", "inference p50 (s)", "{:.2f}"),
    ("transfer_p50_s", "pixels to the host and back p50 (s)", "{:.3f}"),
    ("wait_p50_s", "slot wait p50 (s)", "{:.2f}"),
    ("wait_p95_s", "slot wait p95 (s)", "{:.2f}"),
    ("worst_free_wait_s", "worst run: waited with a free slot (s)", "{:.2f}"),
    ("free_share", "share of waiting done with a free slot", "{:.1%}"),
    ("wait_total_s", "all slot waiting (s)", "{:.1f}"),
    ("samples", "GCL samples taken", "{}"),
]


def report(summaries: dict[str, dict[str, Any]]) -> str:
    keys = list(summaries)
    # Each other side over A, the stock pattern.
    others = [k for k in keys if k != "A"] if "A" in keys else []
    lines = [
        f"| {'metric':<40} | "
        + " | ".join(f"{k:<18}" for k in keys)
        + "".join(f" | {k} / A" for k in others)
        + " |",
        "|" + "-" * 42 + "|" + "|".join("-" * 20 for _ in keys) + "|-------" * len(others) + "|",
    ]
    for key, name, spec in ROWS:
        values = {k: summaries[k].get(key) for k in keys}
        ratios = []
        for k in others:
            base, value = values["A"], values[k]
            ok = isinstance(base, float) and isinstance(value, float) and base
            ratios.append(f"{value / base:.2f}" if ok else "")
        cells = " | ".join(f"{pipeline.fmt(v, spec):<18}" for v in values.values())
        lines.append(f"| {name:<40} | {cells}" + "".join(f" | {r:<5}" for r in ratios) + " |")
    text = "\n".join(lines)
    print(text)
    for k in keys:
        extra = {
            key: v
            for key, v in summaries[k].items()
            if key in ("host_load_s", "flow_imported_onnxruntime")
        }
        if extra:
            print(f"[{k}] {extra}")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--limit", type=int, default=2)
    parser.add_argument("--worker-runs", type=int, default=3, help="flow runs at once per worker")
    parser.add_argument(
        "--sides",
        default="AB",
        help="A stock, B gpuboard (warm executor), P gpuboard (process executor)",
    )
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--sample-s", type=float, default=0.25, help="GCL sampling period")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting for side B's server (repeatable), to measure one setting's effect",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    load = os.getloadavg()
    started = time.time()
    outcomes = {}
    for side in args.sides:
        if side == "A":
            outcomes[side] = run_stock(args)
        else:
            outcomes[side] = run_gpuboard(args, "warm" if side == "B" else "process")
    summaries = {side: summarize(outcome, args) for side, outcome in outcomes.items()}
    print(
        f"\nbench/gpu_owner.py --runs {args.runs} --workers {args.workers} --limit {args.limit} "
        f"--worker-runs {args.worker_runs}; {os.cpu_count()} cores, load avg before "
        f"{load[0]:.2f}, after {os.getloadavg()[0]:.2f}; took {time.time() - started:.0f} s\n"
    )
    report(summaries)
    if args.json:
        args.json.write_text(
            json.dumps(
                {"args": vars(args) | {"json": str(args.json)}, "summaries": summaries},
                indent=2,
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
