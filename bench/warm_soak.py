"""Warm-executor soak: N short runs through one warm worker. Counts runs lost and runs
executed twice, and reports each runner's resident memory over its runs and across
recycles (a runner retires after --runner-max-runs and a fresh one replaces it).

    .venv/bin/python bench/warm_soak.py --runs 1000 --runner-max-runs 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

from prefect.client.schemas.actions import WorkPoolCreate

from gpuboard.core.local_server import LocalServer, free_port
from gpuboard.core.prefect.client import async_client

FLOWS = Path(__file__).resolve().parent / "flows"


async def prepare_and_submit(api_url: str, runs: int, out: Path) -> list[str]:
    async with async_client(api_url) as client:
        await client.create_work_pool(WorkPoolCreate(name="soak", type="process"))
        flow_id = await client.create_flow_from_name("soak")
        deployment = await client.create_deployment(
            flow_id=flow_id,
            name="soak",
            work_pool_name="soak",
            entrypoint="soak.py:soak",
            path=str(FLOWS),
        )
        ids = []
        for index in range(runs):
            # A busy SQLite answers 503 past the client's retries now and then: try again
            # with the same idempotency key, which never makes a second run.
            for attempt in range(10):
                try:
                    run = await client.create_flow_run_from_deployment(
                        deployment,
                        parameters={"index": index, "out": str(out)},
                        idempotency_key=f"soak-{index}",
                    )
                    break
                except Exception:
                    if attempt == 9:
                        raise
                    await asyncio.sleep(1 + attempt)
            ids.append(str(run.id))
        return ids


async def final_states(api_url: str, ids: list[str]) -> Counter[str]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

    del ids
    async with async_client(api_url) as client:
        deployment = await client.read_deployment_by_name("soak/soak")
        states: Counter[str] = Counter()
        offset = 0
        while True:
            page = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    deployment_id=FlowRunFilterDeploymentId(any_=[deployment.id])
                ),
                limit=200,
                offset=offset,
            )
            states.update(run.state_type.value if run.state_type else "NONE" for run in page)
            if len(page) < 200:
                return states
            offset += 200


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--runners", type=int, default=3)
    parser.add_argument("--runner-max-runs", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="gpuboard-soak-"))
    out = home / "records"
    out.mkdir()
    server = LocalServer(home=home / "server", port=free_port())
    server.start()
    worker = None
    try:
        env = {**os.environ, "PREFECT_API_URL": server.api_url, "PREFECT_WORKER_QUERY_SECONDS": "2"}
        command = [sys.executable, "-m", "gpuboard.prefect_worker", "--executor", "warm"]
        command += ["--pool", "soak", "--name", "soak-1", "--limit", str(args.runners)]
        command += ["--runner-max-runs", str(args.runner_max_runs)]
        log = (home / "worker.log").open("ab")
        worker = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        started = time.time()
        ids = asyncio.run(prepare_and_submit(server.api_url, args.runs, out))
        print(f"{len(ids)} runs created in {time.time() - started:.0f} s", flush=True)
        deadline = time.monotonic() + args.timeout
        while len(list(out.glob("*.json"))) < args.runs and time.monotonic() < deadline:
            time.sleep(1)
        time.sleep(5)  # any run executed twice would write a second record by now
        took = time.time() - started
        states = asyncio.run(final_states(server.api_url, ids))
    finally:
        if worker is not None:
            os.killpg(worker.pid, 15)
            worker.wait(60)
        server.stop()
    records = [json.loads(p.read_text()) for p in out.glob("*.json")]
    per_run = Counter(r["flow_run_id"] for r in records)
    lost = len(set(ids) - set(per_run))
    twice = sum(1 for count in per_run.values() if count > 1)
    by_pid: dict[int, list[dict[str, float]]] = defaultdict(list)
    for record in sorted(records, key=lambda r: r["at"]):
        by_pid[record["pid"]].append(record)
    print(
        f"\nbench/warm_soak.py --runs {args.runs} --runners {args.runners} "
        f"--runner-max-runs {args.runner_max_runs}; {os.cpu_count()} cores; took {took:.0f} s\n"
    )
    print(
        f"runs: {args.runs}; records {len(records)}; lost {lost}; executed twice {twice}; "
        f"final states {dict(states)}"
    )
    print(f"runners used: {len(by_pid)} (recycled every {args.runner_max_runs} runs)\n")
    print("| runner pid | runs | RSS first run (MB) | RSS last run (MB) | max (MB) |")
    print("|---|---|---|---|---|")
    for pid, runs in sorted(by_pid.items(), key=lambda item: item[1][0]["at"]):
        rss = [r["rss_mb"] for r in runs]
        print(f"| {pid} | {len(runs)} | {rss[0]} | {rss[-1]} | {max(rss)} |")
    return 0 if lost == 0 and twice == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
