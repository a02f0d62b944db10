"""Measures how fast 1,000 flow runs are created, three ways side by side, and what is lost.

One invocation; each way gets a fresh embedded server (LocalServer: SQLite, loopback, own
temporary home) so runs left by one way do not slow the next. The ways:

- gather:     naive `asyncio.gather` of `create_flow_run_from_deployment` for every id
- sequential: the same calls one after the other
- gpuboard:   `gpuboard.core.batch.submit_batch` with its defaults

Every call carries an idempotency key, so afterwards the runs of the deployment are read
back and counted per image id: lost = ids without a run, duplicated = runs beyond one per
id. HTTP answers are counted by status code (a 503 is SQLite's "database is locked";
Prefect's client retries it itself after a back-off).

    .venv/bin/python bench/batch_create.py [--runs 1000] [--ways gather,sequential,gpuboard]
        [--server stock|gpuboard] [--env KEY=VALUE ...] [--time-limit 600]

`--server gpuboard` (the default) runs the server with the settings `gpuboard up` uses
(`core/local_server.server_env`); `--server stock` with Prefect's defaults for
everything but the database path. `--env` adds server settings on top (to measure one
at a time). Not part of the test suite; timings are never assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import json
import os
import platform
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from uuid import UUID

import httpx
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import WorkPoolCreate

from gpuboard.core import batch as batch_module
from gpuboard.core import local_server
from gpuboard.core.batch import idempotency_key, submit_batch
from gpuboard.core.local_server import LocalServer
from gpuboard.core.prefect.client import async_client
from gpuboard.core.prefect.runs import filtered_runs

POOL = "bench-pool"
FLOW = "process-image"
DEPLOYMENT = "bench"
FULL_NAME = f"{FLOW}/{DEPLOYMENT}"
WAYS = ("gather", "sequential", "gpuboard")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Result:
    way: str
    requested: int
    seconds: float = 0.0
    runs_per_s: float = 0.0
    present: int = 0  # distinct ids with a run on the server afterwards
    lost: int = 0
    duplicated: int = 0
    errors: int = 0  # calls that ended in an exception (after the client's own retries)
    finished: bool = True  # False: stopped at --time-limit
    statuses: dict[str, int] = field(default_factory=dict)  # HTTP answers by code
    per_100_s: list[float] = field(default_factory=list)  # seconds per 100 runs, in order
    error_sample: str = ""
    server_cpu_s: float = 0.0  # CPU time of the server's processes while creating


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of every live process in process group `pgid` (the
    server runs in a session of its own, uvicorn as its child)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5 of stat: the process group
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def _count_answers(client: PrefectClient, statuses: collections.Counter[str]) -> None:
    """Count every HTTP answer the client receives, retried ones included."""

    async def hook(response: httpx.Response) -> None:
        statuses[f"{response.request.method} {response.status_code}"] += 1

    client._client.event_hooks["response"].append(hook)


async def prepare(api_url: str) -> UUID:
    async with async_client(api_url) as client:
        await client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
        flow_id = await client.create_flow_from_name(FLOW)
        return await client.create_deployment(
            flow_id=flow_id,
            name=DEPLOYMENT,
            work_pool_name=POOL,
            entrypoint="flows/process_image.py:process_image",
        )


async def create_plain(
    api_url: str, deployment_id: UUID, ids: list[int], result: Result, gather: bool
) -> None:
    statuses: collections.Counter[str] = collections.Counter()
    marks: list[float] = []
    async with async_client(api_url) as client:
        _count_answers(client, statuses)

        async def one(image_id: int) -> None:
            await client.create_flow_run_from_deployment(
                deployment_id,
                parameters={"image_id": image_id, "source": "sample"},
                idempotency_key=idempotency_key(FULL_NAME, result.way, image_id),
                tags=[f"batch:{result.way}"],
            )
            marks.append(time.monotonic())

        calls: list[Awaitable[None]] = [one(i) for i in ids]
        start = time.monotonic()
        if gather:
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
        else:
            outcomes = []
            for call in calls:
                try:
                    await call
                    outcomes.append(None)
                except Exception as exc:  # counted, as gather's return_exceptions does
                    outcomes.append(exc)
        result.seconds = time.monotonic() - start
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    result.errors = len(errors)
    result.error_sample = repr(errors[0])[:200] if errors else ""
    result.statuses = dict(statuses)
    result.per_100_s = _per_100(start, marks)


async def create_gpuboard(
    api_url: str, ids: list[int], result: Result, concurrency: int | None
) -> None:
    marks: list[float] = []
    statuses: collections.Counter[str] = collections.Counter()

    def counting_client(api_url: str | None = None) -> PrefectClient:
        client = async_client(api_url)
        _count_answers(client, statuses)
        return client

    batch_module.async_client = counting_client
    start = time.monotonic()
    try:
        report = await submit_batch(
            ids,
            api_url=api_url,
            deployment=FULL_NAME,
            batch=result.way,
            on_progress=lambda p: marks.append(time.monotonic()),
            concurrency=concurrency or batch_module.DEFAULT_CONCURRENCY,
        )
    finally:
        batch_module.async_client = async_client
    result.seconds = time.monotonic() - start
    result.statuses = dict(statuses)
    result.errors = len(report.failed)
    result.error_sample = (report.failed[0].reason or "")[:200] if report.failed else ""
    result.per_100_s = _per_100(start, marks)


def _per_100(start: float, marks: list[float]) -> list[float]:
    marks = sorted(marks)
    edges = [start, *marks[99::100]]
    return [round(b - a, 2) for a, b in itertools.pairwise(edges)]


async def count_on_server(api_url: str, deployment_id: UUID) -> collections.Counter[int]:
    """Runs per image id of the deployment, read back page by page."""
    per_id: collections.Counter[int] = collections.Counter()
    body = {"deployments": {"id": {"any_": [str(deployment_id)]}}, "sort": "ID_DESC"}
    async with async_client(api_url) as client:
        async for row in filtered_runs(client, body):
            per_id[row["parameters"]["image_id"]] += 1
    return per_id


async def run_way(way: str, args: argparse.Namespace, env: dict[str, str]) -> Result:
    ids = list(range(1, args.runs + 1))
    result = Result(way, len(ids))
    with tempfile.TemporaryDirectory(prefix="gpuboard-batch-bench-") as temp:
        server = LocalServer(home=Path(temp), port=free_port(), extra_env=env)
        server.start()
        try:
            deployment_id = await prepare(server.api_url)
            work: Callable[[], Awaitable[None]]
            if way == "gpuboard":
                work = lambda: create_gpuboard(  # noqa: E731
                    server.api_url, ids, result, args.concurrency
                )
            else:
                work = lambda: create_plain(  # noqa: E731
                    server.api_url, deployment_id, ids, result, gather=way == "gather"
                )
            pgid = server.process.pid if server.process else 0
            cpu_before = group_cpu_seconds(pgid)
            try:
                await asyncio.wait_for(work(), timeout=args.time_limit)
            except asyncio.TimeoutError:
                result.finished = False
                result.seconds = float(args.time_limit)
            result.server_cpu_s = round(group_cpu_seconds(pgid) - cpu_before, 1)
            per_id = await count_on_server(server.api_url, deployment_id)
        finally:
            server.stop()
    result.present = sum(1 for i in ids if per_id[i] > 0)
    result.lost = len(ids) - result.present
    result.duplicated = sum(n - 1 for n in per_id.values() if n > 1)
    result.runs_per_s = round(result.present / result.seconds, 1) if result.seconds else 0.0
    result.seconds = round(result.seconds, 1)
    return result


def _stock_env(home: Path) -> dict[str, str]:
    """Only what a server needs to run here at all: its own home and database."""
    return {
        "PREFECT_HOME": str(home),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
    }


def table(results: list[Result]) -> str:
    rows = [
        ("runs requested", lambda r: r.requested),
        ("finished", lambda r: "yes" if r.finished else "NO (time limit)"),
        ("seconds", lambda r: r.seconds),
        ("runs/s (present / seconds)", lambda r: r.runs_per_s),
        ("lost", lambda r: r.lost),
        ("duplicated", lambda r: r.duplicated),
        ("calls failed", lambda r: r.errors),
        ("HTTP 503 answers", lambda r: sum(n for k, n in r.statuses.items() if k.endswith("503"))),
        ("server CPU s while creating", lambda r: r.server_cpu_s),
        ("s per 100 runs", lambda r: " ".join(f"{s:g}" for s in r.per_100_s)),
    ]
    width = 26
    head = "| " + " | ".join(["metric".ljust(width)] + [r.way.ljust(width) for r in results])
    lines = [head + " |", "|" + "|".join(["-" * (width + 2)] * (len(results) + 1)) + "|"]
    for name, get in rows:
        cells = [name.ljust(width)] + [str(get(r)).ljust(width) for r in results]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--ways", default=",".join(WAYS))
    parser.add_argument("--server", choices=("gpuboard", "stock"), default="gpuboard")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--time-limit", type=float, default=600.0, metavar="SECONDS")
    parser.add_argument(
        "--concurrency", type=int, help="submit_batch's concurrency (default: its own)"
    )
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    ways = [w.strip() for w in args.ways.split(",") if w.strip()]
    unknown = set(ways) - set(WAYS)
    if unknown:
        parser.error(f"unknown ways: {sorted(unknown)}")
    print(
        f"{args.runs} runs, server settings: {args.server} {env or ''}; "
        f"{platform.node()} {os.cpu_count()} cores; load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    if args.server == "stock":
        local_server.server_env = _stock_env
    results = []
    for way in ways:
        result = asyncio.run(run_way(way, args, env))
        print(f"  {way}: {json.dumps(asdict(result))}", flush=True)
        results.append(result)
    print(table(results))
    print(f"load after: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    main()
