"""Pipeline benchmark: the same batch run two ways, side by side, in one invocation.

(A) plain:    a flow whose GPU step holds bare `prefect.concurrency.sync.concurrency(
              "gpu:<id>")`, run by stock `prefect worker start --type process` workers
              (default polling), on a stock server (Prefect's default Retry-After, leases
              in memory).
(B) gpuboard: the same flow with `gpu_slot()`, run by `gpuboard worker` (its worker
              settings, reclaimer thread) on gpuboard's LocalServer settings.

Each side gets its own fresh Prefect server (own port, temporary home) and runs after
the other, so they never share a database or the CPU. Workload "sleep": the steps sleep
1 s / 3 s / 0.5 s (download / GPU / save), so only orchestration is measured; workload
"ocr": the real OCR step on sample images (bench/flows/pipeline_steps.py).

    .venv/bin/python bench/pipeline.py --runs 20 --workers 1 --limit 2 --worker-runs 10

See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, WorkPoolCreate
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

from gpuboard.core.local_server import LocalServer
from gpuboard.core.prefect.client import async_client

BENCH_DIR = Path(__file__).resolve().parent
FLOWS_DIR = BENCH_DIR / "flows"
REPO_DIR = BENCH_DIR.parent

# Settings a user may have in the shell that would make (A) not stock.
_STOCK_UNSET = (
    "PREFECT_WORKER_QUERY_SECONDS",
    "PREFECT_WORKER_HEARTBEAT_SECONDS",
    "PREFECT_FLOWS_HEARTBEAT_FREQUENCY",
    "PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS",
    "PREFECT_API_URL",
)


_MEMORY_LEASES = "prefect.server.concurrency.lease_storage.memory"


@dataclass(frozen=True)
class Side:
    key: str  # "A" / "B"
    label: str
    flow_file: str
    flow_func: str
    flow_name: str
    server_env: dict[str, str]


SIDES = {
    "A": Side(
        "A",
        "plain concurrency()",
        "sleep_plain.py",
        "sleep_plain",
        "bench-sleep-plain",
        # Prefect's default lease storage (memory); LocalServer otherwise sets files.
        {"PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": _MEMORY_LEASES},
    ),
    "B": Side(
        "B",
        "gpuboard gpu_slot()",
        "sleep_gpuboard.py",
        "sleep_gpuboard",
        "bench-sleep-gpuboard",
        {},
    ),
}


@dataclass
class SideResult:
    side: Side
    runs: int
    workers: int
    limit: int
    records: list[dict[str, Any]] = field(default_factory=list)
    states: dict[str, int] = field(default_factory=dict)
    t0: float = 0.0
    submitted_s: float = 0.0
    done_at: float = 0.0
    pending_at: dict[str, float] = field(default_factory=dict)  # flow run id -> Pending time
    running_at: dict[str, float] = field(default_factory=dict)  # flow run id -> Running time
    requests: int | None = None
    requests_by_route: dict[str, int] = field(default_factory=dict)
    timed_out: bool = False
    worker_cpu_s: float = float("nan")  # workers and their flow runs, during the batch
    server_cpu_s: float = float("nan")


# --------------------------------------------------------------------------- running


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds (user + system) used so far by `root` and everything below it, the
    reaped children included (a live parent's cutime/cstime count the children it
    waited for: the flow-run processes a Prefect worker has finished)."""
    stats: dict[int, tuple[int, float]] = {}  # pid -> (ppid, seconds)
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            used = sum(int(fields[i]) for i in (11, 12, 13, 14)) / tick
            stats[int(stat.parent.name)] = (int(fields[1]), used)
    total, stack = 0.0, [root]
    while stack:
        pid = stack.pop()
        total += stats.get(pid, (0, 0.0))[1]
        stack.extend(child for child, (ppid, _) in stats.items() if ppid == pid)
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    for key in _STOCK_UNSET:
        env.pop(key, None)
    return env


def worker_process(
    side: Side,
    worker_id: str,
    pool: str,
    worker_runs: int,
    limit: int,
    api_url: str,
    out: Path,
    home: Path,
) -> subprocess.Popen[bytes]:
    env = base_env()
    env.update(
        {
            "PREFECT_API_URL": api_url,
            "PREFECT_HOME": str(home),
            "WORKER_ID": worker_id,
            "BENCH_OUT": str(out),
            "GPUBOARD_HOME": str(home / "gpuboard"),
        }
    )
    if side.key == "A":
        command = [
            sys.executable,
            "-m",
            "prefect",
            "worker",
            "start",
            "--pool",
            pool,
            "--name",
            worker_id,
            "--type",
            "process",
            "--limit",
            str(worker_runs),
        ]
    else:
        command = [
            str(Path(sys.executable).parent / "gpuboard"),
            "worker",
            "--id",
            worker_id,
            "--pool",
            pool,
            "--runs",
            str(worker_runs),
            "--gpu-slots",
            str(limit),
            "--api-url",
            api_url,
        ]
    log = (home / f"worker-{worker_id}.log").open("ab")
    proc = subprocess.Popen(
        command,
        env=env,
        cwd=REPO_DIR,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    return proc


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


async def prepare(side: Side, api_url: str, pool: str, worker_ids: list[str], limit: int) -> Any:
    async with async_client(api_url) as client:
        await client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        for worker_id in worker_ids:
            # (B)'s `gpuboard worker` would create it too; made here so both start alike.
            await client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=f"gpu:{worker_id}", limit=limit)
            )
        flow_id = await client.create_flow_from_name(side.flow_name)
        return await client.create_deployment(
            flow_id=flow_id,
            name="sleep",
            work_pool_name=pool,
            entrypoint=f"{side.flow_file}:{side.flow_func}",
            path=str(FLOWS_DIR),
        )


async def wait_for_workers(
    api_url: str, pool: str, worker_ids: list[str], timeout: float = 120.0
) -> None:
    deadline = time.monotonic() + timeout
    async with async_client(api_url) as client:
        while time.monotonic() < deadline:
            workers = await client.read_workers_for_work_pool(pool)
            if {w.name for w in workers} >= set(worker_ids):
                return
            await asyncio.sleep(0.5)
    raise TimeoutError(f"workers {worker_ids} did not register with pool {pool}")


async def submit(api_url: str, deployment_id: Any, runs: int, params: dict[str, Any]) -> None:
    """Create the runs one after another (the fastest way on SQLite, see batch.py)."""
    async with async_client(api_url) as client:
        for index in range(runs):
            await client.create_flow_run_from_deployment(
                deployment_id, parameters={"index": index, **params}, name=f"bench-{index}"
            )


async def collect_states(api_url: str, deployment_id: Any, result: SideResult) -> None:
    async with async_client(api_url) as client:
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id])
            ),
            limit=200,
        )
        for run in runs:
            name = run.state.type.value if run.state else "NONE"
            result.states[name] = result.states.get(name, 0) + 1
            for state in await client.read_flow_run_states(run.id):
                ts = state.timestamp.timestamp()
                if state.type.value == "PENDING":
                    result.pending_at.setdefault(str(run.id), ts)
                if state.type.value == "RUNNING":
                    result.running_at.setdefault(str(run.id), ts)


_ACCESS = re.compile(r'"(GET|POST|PATCH|PUT|DELETE) (/api/[^ ?"]*)')
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def count_requests(log_text: str) -> tuple[int, dict[str, int]]:
    routes: dict[str, int] = {}
    total = 0
    for match in _ACCESS.finditer(log_text):
        total += 1
        route = f"{match.group(1)} {_UUID.sub('{id}', match.group(2))}"
        routes[route] = routes.get(route, 0) + 1
    return total, routes


def run_side(side: Side, args: argparse.Namespace) -> SideResult:
    home = Path(tempfile.mkdtemp(prefix=f"gpuboard-bench-{side.key}-"))
    out = home / "records"
    out.mkdir()
    server = LocalServer(
        home=home,
        port=free_port(),
        # INFO makes uvicorn write its access log: one line per request, counted below.
        extra_env={"PREFECT_SERVER_LOGGING_LEVEL": "INFO", **side.server_env},
    )
    result = SideResult(side, args.runs, args.workers, args.limit)
    pool = f"bench-{side.key.lower()}"
    worker_ids = [f"{side.key.lower()}{i + 1}" for i in range(args.workers)]
    workers: list[subprocess.Popen[bytes]] = []
    print(f"[{side.key}] starting server on {server.api_url} (home {home})", flush=True)
    server.start()
    try:
        deployment = asyncio.run(prepare(side, server.api_url, pool, worker_ids, args.limit))
        for worker_id in worker_ids:
            workers.append(
                worker_process(
                    side, worker_id, pool, args.worker_runs, args.limit, server.api_url, out, home
                )
            )
        asyncio.run(wait_for_workers(server.api_url, pool, worker_ids))
        time.sleep(args.settle)  # both sides start from idle workers
        log_before = server.log_path.read_text(errors="replace")
        print(f"[{side.key}] workers {worker_ids} online; submitting {args.runs} runs", flush=True)
        cpu_before = [tree_cpu_seconds(proc.pid) for proc in workers]
        server_pid = server.process.pid if server.process else 0
        server_before = tree_cpu_seconds(server_pid)
        result.t0 = time.time()
        params = {
            "download_s": args.download_s,
            "gpu_s": args.gpu_s,
            "save_s": args.save_s,
            "workload": args.workload,
        }
        asyncio.run(submit(server.api_url, deployment, args.runs, params))
        result.submitted_s = time.time() - result.t0
        # Wait on the records the runs write: no polling requests to the server.
        deadline = time.monotonic() + args.timeout
        while len(list(out.glob("*.json"))) < args.runs:
            if time.monotonic() > deadline:
                result.timed_out = True
                break
            time.sleep(0.2)
        result.done_at = time.time()
        result.worker_cpu_s = sum(
            tree_cpu_seconds(proc.pid) - before
            for proc, before in zip(workers, cpu_before, strict=True)
        )
        result.server_cpu_s = tree_cpu_seconds(server_pid) - server_before
        log_after = server.log_path.read_text(errors="replace")
        total, routes = count_requests(log_after[len(log_before) :])
        if total:
            result.requests = total - args.runs  # less the creates this harness made
            result.requests_by_route = routes
        time.sleep(1.0)  # let the last runs' final states land
        asyncio.run(collect_states(server.api_url, deployment, result))
        result.records = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    finally:
        for proc in workers:
            stop_process(proc)
        server.stop()
    print(
        f"[{side.key}] done: {len(result.records)}/{args.runs} records, states {result.states}",
        flush=True,
    )
    return result


# --------------------------------------------------------------------------- metrics


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def slot_metrics(records: list[dict[str, Any]], limit: int) -> dict[str, float]:
    """Per worker GCL: busy slots while >= 1 run waited for one, and the longest gap.

    occupancy = integral(busy slots over time while a waiter exists) / (limit x that time)
    gap = the longest stretch with a waiter and fewer than `limit` slots busy.
    Held = inference start .. end as each run recorded it (the GPU work itself).
    """
    busy_area = wait_time = 0.0
    largest_gap = 0.0
    for worker in sorted({r["worker"] for r in records}):
        events: list[tuple[float, int, int]] = []  # time, d_busy, d_waiting
        for r in records:
            if r["worker"] != worker:
                continue
            events += [
                (r["asked"], 0, 1),
                (r["started"], 0, -1),
                (r["started"], 1, 0),
                (r["ended"], -1, 0),
            ]
        events.sort(key=lambda e: (e[0], e[1]))  # at one instant, releases before takes
        busy = waiting = 0
        gap_start: float | None = None
        for i, (t, d_busy, d_wait) in enumerate(events):
            busy += d_busy
            waiting += d_wait
            nxt = events[i + 1][0] if i + 1 < len(events) else t
            span = nxt - t
            if waiting > 0 and span > 0:
                wait_time += span * limit
                busy_area += span * min(busy, limit)
            starving = waiting > 0 and busy < limit
            if starving and gap_start is None:
                gap_start = t
            if not starving and gap_start is not None:
                largest_gap = max(largest_gap, t - gap_start)
                gap_start = None
    return {
        "occupancy": busy_area / wait_time if wait_time else float("nan"),
        "largest_gap": largest_gap,
        "waited_s": wait_time / limit if limit else 0.0,
    }


def summarize(result: SideResult, args: argparse.Namespace) -> dict[str, Any]:
    recs = result.records
    if args.workload == "ocr":
        # The GPU work as measured, spread over every slot, plus one run's work outside
        # its slot (render, model load, save: the part a first run cannot overlap).
        inference = [r["ended"] - r["started"] for r in recs]
        outside = [(r["asked"] - r["body"]) + (r["end"] - r["released"]) for r in recs]
        ideal = sum(inference) / len(recs) * args.runs / (args.workers * args.limit) + min(
            outside, default=float("nan")
        )
    else:
        ideal = args.runs * args.gpu_s / (args.workers * args.limit) + args.download_s + args.save_s
    model_loads = [r.get("model_load_s", 0.0) for r in recs]
    inferences = [r["ended"] - r["started"] for r in recs]
    end = max((r["end"] for r in recs), default=float("nan"))
    makespan = end - result.t0
    waits = [r["started"] - r["asked"] for r in recs]
    # worker dispatch: Pending (the worker took the run) -> the flow-run process exists
    dispatch = [
        r["process_started_at"] - result.pending_at[r["flow_run_id"]]
        for r in recs
        if r["flow_run_id"] in result.pending_at
    ]
    startup = [r["body"] - r["process_started_at"] for r in recs]
    pending_to_body = [
        r["body"] - result.pending_at[r["flow_run_id"]]
        for r in recs
        if r["flow_run_id"] in result.pending_at
    ]
    created_to_pending = [
        result.pending_at[r["flow_run_id"]] - result.t0
        for r in recs
        if r["flow_run_id"] in result.pending_at
    ]
    per_worker: dict[str, int] = {}
    for r in recs:
        per_worker[r["worker"]] = per_worker.get(r["worker"], 0) + 1
    slots = slot_metrics(recs, args.limit)
    return {
        "completed": f"{len(recs)}/{args.runs}" + (" TIMEOUT" if result.timed_out else ""),
        "states": result.states,
        "runs per worker": per_worker,
        "makespan_s": makespan,
        "ideal_s": ideal,
        "ratio": makespan / ideal,
        "occupancy": slots["occupancy"],
        "largest_gap_s": slots["largest_gap"],
        "wait_p50_s": pct(waits, 0.5),
        "wait_p95_s": pct(waits, 0.95),
        "submit_s": result.submitted_s,
        "t0_to_pending_max_s": max(created_to_pending, default=float("nan")),
        "dispatch_p50_s": pct(dispatch, 0.5),
        "startup_p50_s": pct(startup, 0.5),
        "startup_p95_s": pct(startup, 0.95),
        "pending_to_body_p50_s": pct(pending_to_body, 0.5),
        "pending_to_body_p95_s": pct(pending_to_body, 0.95),
        "requests_per_run": (result.requests / args.runs) if result.requests is not None else None,
        "cpu_per_run_s": (result.worker_cpu_s + result.server_cpu_s) / max(1, len(recs)),
        "server_cpu_per_run_s": result.server_cpu_s / max(1, len(recs)),
        # Makespan if the CPU work were spread perfectly over every core: a floor.
        "cpu_floor_s": (result.worker_cpu_s + result.server_cpu_s) / (os.cpu_count() or 1),
        "model_load_p50_s": pct(model_loads, 0.5),
        "inference_p50_s": pct(inferences, 0.5),
        "top_routes": sorted(result.requests_by_route.items(), key=lambda kv: -kv[1])[:8],
    }


ROWS = [
    ("completed", "runs completed", "{}"),
    ("makespan_s", "makespan (s)", "{:.1f}"),
    ("ideal_s", "ideal (s)", "{:.1f}"),
    ("ratio", "makespan / ideal", "{:.2f}"),
    ("occupancy", "slot occupancy while waited", "{:.3f}"),
    ("largest_gap_s", "largest idle gap w/ waiter (s)", "{:.2f}"),
    ("wait_p50_s", "slot wait p50 (s)", "{:.2f}"),
    ("wait_p95_s", "slot wait p95 (s)", "{:.2f}"),
    ("submit_s", "create all runs (s)", "{:.2f}"),
    ("t0_to_pending_max_s", "submit start -> last Pending (s)", "{:.1f}"),
    ("dispatch_p50_s", "Pending -> process exists p50 (s)", "{:.2f}"),
    ("startup_p50_s", "process start -> flow body p50 (s)", "{:.2f}"),
    ("startup_p95_s", "process start -> flow body p95 (s)", "{:.2f}"),
    ("pending_to_body_p50_s", "Pending -> flow body p50 (s)", "{:.2f}"),
    ("pending_to_body_p95_s", "Pending -> flow body p95 (s)", "{:.2f}"),
    ("requests_per_run", "server requests per run", "{:.1f}"),
    ("cpu_per_run_s", "CPU s per run (runs, workers, server)", "{:.2f}"),
    ("server_cpu_per_run_s", "  of which the server", "{:.2f}"),
    ("cpu_floor_s", "CPU floor: all that CPU / cores (s)", "{:.1f}"),
    ("model_load_p50_s", "model load p50 (s, before the slot)", "{:.2f}"),
    ("inference_p50_s", "GPU step p50 (s, inside the slot)", "{:.2f}"),
]


def fmt(value: Any, spec: str) -> str:
    if value is None:
        return "n/a"
    try:
        return spec.format(value)
    except (ValueError, TypeError):
        return str(value)


def print_table(summaries: dict[str, dict[str, Any]]) -> str:
    keys = list(summaries)
    header = (
        f"| {'metric':<36} | "
        + " | ".join(f"{SIDES[k].key} {SIDES[k].label:<22}" for k in keys)
        + " |"
    )
    lines = [header, "|" + "-" * 38 + "|" + "|".join("-" * 26 for _ in keys) + "|"]
    for key, name, spec in ROWS:
        lines.append(
            f"| {name:<36} | "
            + " | ".join(f"{fmt(summaries[k][key], spec):<24}" for k in keys)
            + " |"
        )
    lines.append(
        f"| {'runs per worker':<36} | "
        + " | ".join(f"{summaries[k]['runs per worker']!s:<24}" for k in keys)
        + " |"
    )
    text = "\n".join(lines)
    print(text)
    for k in keys:
        print(f"\n[{k}] top server routes during the batch: {summaries[k]['top_routes']}")
        print(f"[{k}] final states: {summaries[k]['states']}")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--limit", type=int, default=2, help="GCL limit per worker")
    parser.add_argument("--worker-runs", type=int, default=10, help="flow runs at once per worker")
    parser.add_argument("--sides", default="AB", help="which sides to run, in order (default AB)")
    parser.add_argument(
        "--workload",
        choices=("sleep", "ocr"),
        default="sleep",
        help="sleep: fixed sleeps (orchestration only); ocr: the real OCR step on sample images",
    )
    parser.add_argument("--download-s", type=float, default=1.0)
    parser.add_argument("--gpu-s", type=float, default=3.0)
    parser.add_argument("--save-s", type=float, default=0.5)
    parser.add_argument("--settle", type=float, default=3.0, help="idle seconds before submitting")
    parser.add_argument("--timeout", type=float, default=240.0, help="per side, for the batch")
    parser.add_argument("--json", type=Path, help="also write the summaries here")
    args = parser.parse_args(argv)
    started = time.time()
    load = os.getloadavg()
    summaries = {}
    for key in args.sides:
        summaries[key] = summarize(run_side(SIDES[key], args), args)
    print(
        f"\nbench/pipeline.py --runs {args.runs} --workers {args.workers} --limit {args.limit} "
        f"--worker-runs {args.worker_runs} --workload {args.workload} "
        f"(sleep {args.download_s}/{args.gpu_s}/{args.save_s} s); "
        f"{os.cpu_count()} cores, load avg before {load[0]:.2f}, after {os.getloadavg()[0]:.2f}; "
        f"took {time.time() - started:.0f} s\n"
    )
    print_table(summaries)
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
