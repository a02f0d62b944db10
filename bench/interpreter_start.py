"""Interpreter-start benchmark: a process worker's flow runs started two ways, side by side.

(A) supervisor: the deployment's job variables set no `command`. Prefect 3.9's process
    worker then starts each run as `python -m prefect.runner._workspace_supervisor
    <config>`, which runs the deployment's pull steps and then execs
    `python -m prefect.engine` in the same process: two interpreter starts, two
    `import prefect`, one pid.
(B) command:    job variables {"command": "<this venv's python> -m prefect.engine"}. The
    worker takes the EngineCommandStarter path: one interpreter, and the engine runs the
    pull steps itself (prefect.flows.load_flow_from_flow_run).

Both sides deploy bench/flows/trivial.py (three tasks that return at once) with one pull
step, `set_working_directory` to "{{ $GPUBOARD_PROJECT_DIR }}" (as prefect.yaml did before
the flow moved into the package: a pull step is what this bench measures),
and run it under one stock `prefect worker start --type process --limit 3`
(PREFECT_WORKER_QUERY_SECONDS=2). Each side gets its own fresh LocalServer (own free
port, own temporary home) and runs after the other, in the order of --sides.

    .venv/bin/python bench/interpreter_start.py --runs 20
    .venv/bin/python bench/interpreter_start.py --runs 20 --sides BA --json /tmp/r.json

Figures, per side (timings are noisy on a shared 2-core machine: compare the two
columns of one invocation, not invocations against each other):

- makespan: first create call -> the last run's end time (server's).
- worker tree CPU / run: the worker's utime+stime+cutime+cstime (/proc/<pid>/stat
  fields 14-17), after the batch (every flow-run process reaped) less before it: the
  worker itself plus every flow-run process it waited for.
- server CPU / run: the server process tree's CPU over the same window.
- machine CPU / run: all cores' busy time (/proc/stat) over the same window; it also
  holds this harness and whatever else the machine did ("of which not worker/server":
  when that is large, another job shared the machine and the wall times are suspect).
- process start -> flow body: the flow's record; the start is the fork (an exec keeps
  it), so (A) includes the supervisor's interpreter and the pull step. The split below
  it uses the probe's time for the engine's interpreter start.
- Pending -> process start / flow body: from the run's Pending state timestamp.
- interpreter starts / run: a `sitecustomize` probe, put on the worker's PYTHONPATH
  (flow runs inherit it), notes every interpreter start after the worker's own with its
  pid and command line; the exec'd engine of (A) is a second start under the same pid.
  --no-probe leaves it out (its cost is one small file write per start).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

from gpuboard.core.local_server import LocalServer
from gpuboard.core.prefect.client import async_client

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
ENTRYPOINT = "bench/flows/trivial.py:trivial"
FLOW_NAME = "bench-trivial"
PULL_STEPS = [
    {
        "prefect.deployments.steps.set_working_directory": {
            "directory": "{{ $GPUBOARD_PROJECT_DIR }}"
        }
    }
]
WORKER_LIMIT = 3
QUERY_SECONDS = "2"

# Settings a user may have in the shell that would make a worker not stock.
_UNSET = (
    "PREFECT_API_URL",
    "PREFECT_WORKER_HEARTBEAT_SECONDS",
    "PREFECT_FLOWS_HEARTBEAT_FREQUENCY",
    "PREFECT_RUNNER_AUTO_INSTALL_DEPENDENCIES",
)

# Written into each side's home and put first on the worker's PYTHONPATH: Python's
# `site` imports it at every interpreter start, before the main module runs.
_PROBE = '''"""Notes this interpreter start (bench/interpreter_start.py's probe)."""
import os as _os
import time as _time

_folder = _os.environ.get("BENCH_PROBE_DIR")
if _folder:
    try:
        _now = _time.time()
        with open("/proc/self/cmdline", "rb") as _f:
            _argv = [_a.decode(errors="replace") for _a in _f.read().split(b"\\0") if _a]
        _line = "%d\\t%d\\t%.6f\\t%s\\n" % (_os.getpid(), _os.getppid(), _now, " ".join(_argv))
        _name = "%d-%d" % (_os.getpid(), _time.monotonic_ns())
        with open(_os.path.join(_folder, _name), "w") as _f:
            _f.write(_line)
    except OSError:
        pass
'''

FINAL_TYPES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@dataclass(frozen=True)
class Side:
    key: str
    label: str
    job_variables: dict[str, Any]
    warm: bool = False  # gpuboard's warm executor instead of a stock process worker


def sides() -> dict[str, Side]:
    return {
        "A": Side("A", "supervisor (no command)", {}),
        "B": Side("B", "command = engine", {"command": f"{sys.executable} -m prefect.engine"}),
        "W": Side("W", "warm runners", {}, warm=True),
    }


@dataclass
class SideResult:
    side: Side
    runs: int
    t0: float = 0.0
    submit_s: float = 0.0
    timed_out: bool = False
    unreaped: int = 0
    worker_pid: int = 0
    worker_cpu_s: float = float("nan")
    server_cpu_s: float = float("nan")
    machine_cpu_s: float = float("nan")
    window_s: float = float("nan")
    states: dict[str, int] = field(default_factory=dict)
    end_times: list[float] = field(default_factory=list)
    pending_at: dict[str, float] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    starts: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------- /proc


def _stat_fields(pid: int) -> list[str]:
    """Fields 3.. of /proc/<pid>/stat (after the parenthesised command name)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def own_and_reaped_cpu(pid: int) -> float:
    """utime + stime + cutime + cstime (fields 14-17) of `pid`, in seconds: the process
    and every child it has waited for (and what those waited for)."""
    fields = _stat_fields(pid)
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / os.sysconf("SC_CLK_TCK")


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def tree_cpu(root: int) -> float:
    """CPU seconds of `root` and its live descendants, reaped children included."""
    parents: dict[int, int] = {}
    used: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            pid = int(stat.parent.name)
            parents[pid] = int(fields[1])
            used[pid] = sum(int(fields[i]) for i in (11, 12, 13, 14)) / tick
    total, stack = 0.0, [root]
    while stack:
        pid = stack.pop()
        total += used.get(pid, 0.0)
        stack.extend(child for child, parent in parents.items() if parent == pid)
    return total


def machine_busy_cpu() -> float:
    """Busy CPU seconds of all cores since boot (/proc/stat: all but idle and iowait)."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in first[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- running


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def worker_env(api_url: str, home: Path, out: Path, probe: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _UNSET}
    env.update(
        {
            "PREFECT_API_URL": api_url,
            "PREFECT_HOME": str(home / "worker-home"),
            "PREFECT_WORKER_QUERY_SECONDS": QUERY_SECONDS,
            "GPUBOARD_PROJECT_DIR": str(REPO_DIR),
            "WORKER_ID": "bench-1",
            "BENCH_OUT": str(out),
        }
    )
    if probe is not None:
        (probe / "starts").mkdir(parents=True, exist_ok=True)
        (probe / "sitecustomize.py").write_text(_PROBE)
        existing = env.get("PYTHONPATH")
        env["PYTHONPATH"] = str(probe) + (os.pathsep + existing if existing else "")
        env["BENCH_PROBE_DIR"] = str(probe / "starts")
    return env


def start_worker(
    pool: str, name: str, env: dict[str, str], home: Path, warm: bool = False
) -> subprocess.Popen[bytes]:
    log = (home / "worker.log").open("ab")
    start = (
        [sys.executable, "-m", "gpuboard.prefect_worker", "--executor", "warm"]
        if warm
        else [sys.executable, "-m", "prefect", "worker", "start", "--type", "process"]
    )
    proc = subprocess.Popen(
        [*start, "--pool", pool, "--name", name, "--limit", str(WORKER_LIMIT)],
        env=env,
        cwd=home,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # its own group: stopped with everything it started
    )
    log.close()
    return proc


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM the process group, then SIGKILL it; wait for the leader."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError):  # leftovers of the group, if any
        os.killpg(proc.pid, signal.SIGKILL)


async def prepare(api_url: str, pool: str, side: Side) -> Any:
    async with async_client(api_url) as client:
        await client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        flow_id = await client.create_flow_from_name(FLOW_NAME)
        return await client.create_deployment(
            flow_id=flow_id,
            name=f"trivial-{side.key.lower()}",
            work_pool_name=pool,
            entrypoint=ENTRYPOINT,
            pull_steps=PULL_STEPS,
            job_variables=side.job_variables,
        )


async def wait_for_worker(api_url: str, pool: str, name: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    async with async_client(api_url) as client:
        while time.monotonic() < deadline:
            if any(w.name == name for w in await client.read_workers_for_work_pool(pool)):
                return
            await asyncio.sleep(0.5)
    raise TimeoutError(f"worker {name} did not register with pool {pool}")


async def submit(api_url: str, deployment_id: Any, runs: int) -> None:
    async with async_client(api_url) as client:
        for index in range(runs):
            await client.create_flow_run_from_deployment(
                deployment_id, parameters={"index": index}, name=f"trivial-{index}"
            )


async def wait_final(api_url: str, deployment_id: Any, runs: int, timeout: float) -> bool:
    """Poll (1 s) until every run of the deployment is final; False on timeout."""
    deadline = time.monotonic() + timeout
    flt = FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]))
    async with async_client(api_url) as client:
        while time.monotonic() < deadline:
            found = await client.read_flow_runs(flow_run_filter=flt, limit=runs + 10)
            final = [r for r in found if r.state and r.state.type.value in FINAL_TYPES]
            if len(final) >= runs:
                return True
            await asyncio.sleep(1.0)
    return False


async def collect(api_url: str, deployment_id: Any, result: SideResult) -> None:
    flt = FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]))
    async with async_client(api_url) as client:
        for run in await client.read_flow_runs(flow_run_filter=flt, limit=result.runs + 10):
            name = run.state.type.value if run.state else "NONE"
            result.states[name] = result.states.get(name, 0) + 1
            if run.end_time is not None:
                result.end_times.append(run.end_time.timestamp())
            for state in await client.read_flow_run_states(run.id):
                if state.type.value == "PENDING":
                    result.pending_at.setdefault(str(run.id), state.timestamp.timestamp())


def wait_reaped(pid: int, timeout: float = 30.0) -> int:
    """Wait until `pid` has no child left (all flow-run processes reaped); the count left."""
    deadline = time.monotonic() + timeout
    while (left := len(children_of(pid))) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def read_starts(folder: Path) -> list[dict[str, Any]]:
    starts = []
    for path in folder.glob("*"):
        with contextlib.suppress(OSError, ValueError):
            pid, ppid, at, cmd = path.read_text().rstrip("\n").split("\t", 3)
            starts.append({"pid": int(pid), "ppid": int(ppid), "t": float(at), "cmd": cmd})
    return sorted(starts, key=lambda s: s["t"])


def run_side(side: Side, args: argparse.Namespace) -> SideResult:
    home = Path(tempfile.mkdtemp(prefix=f"gpuboard-interp-{side.key}-"))
    out = home / "records"
    probe = None if args.no_probe else home / "probe"
    server = LocalServer(home=home / "server", port=free_port())
    pool, name = f"interp-{side.key.lower()}", f"bench-{side.key.lower()}"
    result = SideResult(side, args.runs)
    worker: subprocess.Popen[bytes] | None = None
    print(f"[{side.key}] {side.label}: server {server.api_url}, home {home}", flush=True)
    server.start()
    try:
        deployment = asyncio.run(prepare(server.api_url, pool, side))
        worker = start_worker(
            pool, name, worker_env(server.api_url, home, out, probe), home, warm=side.warm
        )
        # The warm runners live on through the batch: their CPU is read live (tree), where
        # a process worker's flow runs are reaped children by the end.
        worker_cpu = tree_cpu if side.warm else own_and_reaped_cpu
        result.worker_pid = worker.pid
        asyncio.run(wait_for_worker(server.api_url, pool, name))
        time.sleep(args.settle)  # both sides start from an idle worker
        server_pid = server.process.pid if server.process else 0
        worker_before = worker_cpu(worker.pid)
        server_before = tree_cpu(server_pid)
        machine_before = machine_busy_cpu()
        print(f"[{side.key}] worker {worker.pid} online; submitting {args.runs} runs", flush=True)
        result.t0 = time.time()
        asyncio.run(submit(server.api_url, deployment, args.runs))
        result.submit_s = time.time() - result.t0
        result.timed_out = not asyncio.run(
            wait_final(server.api_url, deployment, args.runs, args.timeout)
        )
        result.unreaped = 0 if side.warm else wait_reaped(worker.pid)
        result.worker_cpu_s = worker_cpu(worker.pid) - worker_before
        result.server_cpu_s = tree_cpu(server_pid) - server_before
        result.machine_cpu_s = machine_busy_cpu() - machine_before
        result.window_s = time.time() - result.t0
        asyncio.run(collect(server.api_url, deployment, result))
        result.records = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
        if probe is not None:
            result.starts = read_starts(probe / "starts")
    finally:
        if worker is not None:
            stop_process(worker)
        server.stop()
    print(f"[{side.key}] done: states {result.states}", flush=True)
    return result


# --------------------------------------------------------------------------- metrics


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def start_kind(cmd: str) -> str:
    if "prefect.runner._workspace_supervisor" in cmd:
        return "supervisor"
    if "prefect.engine" in cmd or "_workspace_runtime_bootstrap" in cmd:
        return "engine"
    return "other"


def summarize(result: SideResult) -> dict[str, Any]:
    recs = result.records
    done = max(1, result.states.get("COMPLETED", 0))
    startup = [r["body"] - r["process_started_at"] for r in recs]
    dispatch = [
        r["process_started_at"] - result.pending_at[r["flow_run_id"]]
        for r in recs
        if r["flow_run_id"] in result.pending_at
    ]
    pending_to_body = [
        r["body"] - result.pending_at[r["flow_run_id"]]
        for r in recs
        if r["flow_run_id"] in result.pending_at
    ]
    # Interpreter starts of this batch: after the worker's own, not the worker's pid.
    batch = [s for s in result.starts if s["t"] >= result.t0 - 1 and s["pid"] != result.worker_pid]
    kinds: dict[str, int] = {}
    for start in batch:
        kind = start_kind(start["cmd"])
        kinds[kind] = kinds.get(kind, 0) + 1
    # fork -> the engine's interpreter (A: the supervisor's part) -> the flow body
    engine_at = {s["pid"]: s["t"] for s in batch if start_kind(s["cmd"]) == "engine"}
    to_engine = [
        engine_at[r["pid"]] - r["process_started_at"] for r in recs if r["pid"] in engine_at
    ]
    engine_to_body = [r["body"] - engine_at[r["pid"]] for r in recs if r["pid"] in engine_at]
    return {
        "side": f"{result.side.key} {result.side.label}",
        "job_variables": result.side.job_variables,
        "completed": f"{result.states.get('COMPLETED', 0)}/{result.runs}"
        + (" TIMEOUT" if result.timed_out else ""),
        "states": result.states,
        "makespan_s": max(result.end_times, default=float("nan")) - result.t0,
        "submit_s": result.submit_s,
        "worker_cpu_per_run_s": result.worker_cpu_s / done,
        "server_cpu_per_run_s": result.server_cpu_s / done,
        "stack_cpu_per_run_s": (result.worker_cpu_s + result.server_cpu_s) / done,
        "machine_cpu_per_run_s": result.machine_cpu_s / done,
        "other_cpu_per_run_s": (result.machine_cpu_s - result.worker_cpu_s - result.server_cpu_s)
        / done,
        "window_s": result.window_s,
        "unreaped_children": result.unreaped,
        "startup_p50_s": pct(startup, 0.5),
        "startup_p95_s": pct(startup, 0.95),
        "to_engine_p50_s": pct(to_engine, 0.5) if result.starts else None,
        "engine_to_body_p50_s": pct(engine_to_body, 0.5) if result.starts else None,
        "dispatch_p50_s": pct(dispatch, 0.5),
        "pending_to_body_p50_s": pct(pending_to_body, 0.5),
        "pending_to_body_p95_s": pct(pending_to_body, 0.95),
        "interpreters_per_run": len(batch) / len(recs) if result.starts and recs else None,
        "interpreter_kinds": kinds if result.starts else None,
        "pids_per_run": len({r["pid"] for r in recs}) / len(recs) if recs else None,
        "engine_child_of_worker": f"{sum(r['ppid'] == result.worker_pid for r in recs)}"
        f"/{len(recs)}",
        "cwd_in_body": sorted({r["cwd"] for r in recs}),
        "worker_id_in_body": sorted({str(r["worker_id"]) for r in recs}),
    }


ROWS = [
    ("completed", "runs completed", "{}"),
    ("makespan_s", "makespan (s)", "{:.1f}"),
    ("worker_cpu_per_run_s", "worker tree CPU s / run", "{:.3f}"),
    ("server_cpu_per_run_s", "server CPU s / run", "{:.3f}"),
    ("stack_cpu_per_run_s", "worker tree + server CPU s / run", "{:.3f}"),
    ("machine_cpu_per_run_s", "machine CPU s / run (all cores)", "{:.3f}"),
    ("other_cpu_per_run_s", "  of which not worker/server", "{:.3f}"),
    ("startup_p50_s", "process start -> flow body p50 (s)", "{:.2f}"),
    ("startup_p95_s", "process start -> flow body p95 (s)", "{:.2f}"),
    ("to_engine_p50_s", "  process start -> engine interp. p50", "{:.2f}"),
    ("engine_to_body_p50_s", "  engine interp. -> flow body p50", "{:.2f}"),
    ("dispatch_p50_s", "Pending -> process start p50 (s)", "{:.2f}"),
    ("pending_to_body_p50_s", "Pending -> flow body p50 (s)", "{:.2f}"),
    ("pending_to_body_p95_s", "Pending -> flow body p95 (s)", "{:.2f}"),
    ("interpreters_per_run", "interpreter starts / run", "{:.2f}"),
    ("interpreter_kinds", "  by kind", "{}"),
    ("pids_per_run", "flow-run pids / run", "{:.2f}"),
    ("engine_child_of_worker", "engine's parent is the worker", "{}"),
]


def compare(summaries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A - B and B / A of the per-run CPU figures and of the startup time."""
    if not {"A", "B"} <= summaries.keys():
        return {}
    a, b = summaries["A"], summaries["B"]
    out = {}
    for key in (
        "worker_cpu_per_run_s",
        "machine_cpu_per_run_s",
        "server_cpu_per_run_s",
        "stack_cpu_per_run_s",
        "startup_p50_s",
        "startup_p95_s",
        "pending_to_body_p50_s",
        "makespan_s",
    ):
        out[key] = {"A_minus_B": a[key] - b[key], "B_over_A": b[key] / a[key] if a[key] else None}
    return out


def fmt(value: Any, spec: str) -> str:
    if value is None:
        return "n/a"
    try:
        return spec.format(value)
    except (ValueError, TypeError):
        return str(value)


def table(summaries: dict[str, dict[str, Any]], comparison: dict[str, Any]) -> str:
    keys = list(summaries)
    both = bool(comparison)
    head = ["metric", *(summaries[k]["side"] for k in keys)] + (["A - B", "B / A"] if both else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for key, label, spec in ROWS:
        cells = [label, *(fmt(summaries[k][key], spec) for k in keys)]
        if both:
            diff = comparison.get(key)
            cells += (
                [fmt(diff["A_minus_B"], "{:+.3f}"), fmt(diff["B_over_A"], "{:.2f}")]
                if diff
                else ["", ""]
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--sides", default="AB", help="which sides to run, in order (AB, BA, A, B)")
    parser.add_argument("--settle", type=float, default=5.0, help="idle seconds before submitting")
    parser.add_argument("--timeout", type=float, default=300.0, help="per side, for the batch")
    parser.add_argument("--no-probe", action="store_true", help="no interpreter-start probe")
    parser.add_argument("--json", type=Path, help="also write the summaries here")
    args = parser.parse_args(argv)
    known = sides()
    if not args.sides or any(key not in known for key in args.sides):
        parser.error("--sides takes A, B and/or W")
    started, load = time.time(), os.getloadavg()
    summaries = {key: summarize(run_side(known[key], args)) for key in args.sides}
    comparison = compare(summaries)
    header = (
        f"bench/interpreter_start.py --runs {args.runs} --sides {args.sides}"
        f"{' --no-probe' if args.no_probe else ''}; worker --limit {WORKER_LIMIT}, "
        f"PREFECT_WORKER_QUERY_SECONDS={QUERY_SECONDS}; {os.cpu_count()} cores, load avg "
        f"before {load[0]:.2f}, after {os.getloadavg()[0]:.2f}; took {time.time() - started:.0f} s"
    )
    text = table(summaries, comparison)
    print(f"\n{header}\n\n{text}\n")
    for key, summary in summaries.items():
        print(
            f"[{key}] final states {summary['states']}; flow body cwd {summary['cwd_in_body']}; "
            f"WORKER_ID {summary['worker_id_in_body']}; unreaped {summary['unreaped_children']}"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "header": header,
                    "args": vars(args) | {"json": str(args.json)},
                    "summaries": summaries,
                    "comparison": comparison,
                    "table": text,
                },
                indent=2,
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
