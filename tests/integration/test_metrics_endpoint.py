"""`gpuboard metrics` against a real Prefect server: /metrics scraped over HTTP, parsed with
prometheus_client's own text parser, checked against what the server holds, the faked
NVML, and the run timing and reclaim events; and against no server at all."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fakes.fake_nvml import GIB, FakeGpu, FakeNvml
from gpuboard.core.board_source import BoardSource
from gpuboard.core.local_server import LocalServer, free_port
from gpuboard.core.metrics.exporter import MetricsExporter, MetricsServer, serve_metrics
from gpuboard.core.nvml_source import NvmlSource
from gpuboard.core.prefect.poll_client import poll_client
from gpuboard.core.reclaim_events import publish_reclaim
from gpuboard.core.run_timings import EVENT_NAME as TIMINGS_EVENT
from support.seeding import (
    create_deployment,
    create_gcl,
    create_pool,
    create_run,
    heartbeat,
    start_task,
)

# More than one page of /events/filter (50): the exporter must read every one, once.
REPORTED_RUNS = 60


@dataclass(frozen=True)
class Scraped:
    url: str  # the endpoint, serving until the module's tests end
    worker: str
    text: str
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]
    inference_s: list[float]

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def fake_nvml() -> NvmlSource:
    gpus = [
        FakeGpu(uuid="GPU-aaaa", memory_used=12 * GIB, utilization=40, processes=[(77, 3 * GIB)]),
        FakeGpu(uuid="GPU-bbbb", memory_used=1 * GIB, memory_total=40 * GIB, utilization=None),
    ]
    return NvmlSource(FakeNvml(gpus), host="metrics-node", flow_run_of=lambda _pid: None)


async def seed(api_url: str, pool: str, worker: str) -> list[float]:
    """A pool with one worker (GCL limit 3, 1 slot held), 3 runs Running in the GPU step,
    one Scheduled; REPORTED_RUNS timing reports and one reclaimed slot, as events."""
    async with poll_client(api_url) as client:
        await create_pool(client, pool)
        await heartbeat(client, pool, worker)
        await create_gcl(client, f"gpu:{worker}", 3, active_slots=1)
        deployment = await create_deployment(client, pool)
        for image_id in range(3):
            run = await create_run(client, deployment, "Running", image_id=image_id, worker=worker)
            await start_task(client, run, "run_ml_model")
        await create_run(client, deployment, "Scheduled", image_id=9)
        now = time.time()
        inference_s = [0.02 * (i % 7 + 1) for i in range(REPORTED_RUNS)]
        events = [
            {
                "id": str(uuid.uuid4()),
                "occurred": datetime.fromtimestamp(now - i * 0.01, tz=timezone.utc).isoformat(),
                "event": TIMINGS_EVENT,
                "resource": {"prefect.resource.id": f"prefect.flow-run.{uuid.uuid4()}"},
                "related": [],
                "payload": {
                    "flow_run_id": str(uuid.uuid4()),
                    "worker": worker,
                    "executor": "process",
                    "ended_at": now,
                    "slot_wait_s": 0.5 if i % 2 else 3.0,
                    "inference_s": inference_s[i],
                },
            }
            for i in range(REPORTED_RUNS)
        ]
        response = await client.request("POST", "/events", json=events)
        response.raise_for_status()
        await publish_reclaim(client, f"gpu:{worker}", uuid.uuid4(), None, "its process is gone")
    return inference_s


def scrape(server: MetricsServer) -> str:
    response = httpx.get(server.url, timeout=5.0)
    response.raise_for_status()
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def scrape_until(server: MetricsServer, ready: object, timeout: float = 45.0) -> str:
    """Scrape until `ready(samples)` holds: events reach the database seconds late."""
    deadline = time.monotonic() + timeout
    while True:
        text = scrape(server)
        if ready(parse(text)) or time.monotonic() > deadline:  # type: ignore[operator]
            return text
        time.sleep(0.5)


@pytest.fixture(scope="module")
def scraped(prefect_server: LocalServer) -> Iterator[Scraped]:
    pool, worker = f"metrics-{uuid.uuid4().hex[:6]}", f"w-{uuid.uuid4().hex[:6]}"
    started = time.time()
    inference_s = asyncio.run(seed(prefect_server.api_url, pool, worker))
    source = BoardSource(pool, prefect_server.api_url, nvml=fake_nvml(), follow_hosts=False)
    exporter = MetricsExporter(source, interval_s=0.5, since=started - 1).start()
    server = serve_metrics(exporter, "127.0.0.1", free_port())
    try:
        count_key = ("gpuboard_inference_duration_seconds_count", frozenset({("worker", worker)}))
        reclaim_key = ("gpuboard_slot_reclaims_total", frozenset({("worker", worker)}))
        text = scrape_until(
            server,
            lambda s: s.get(count_key) == REPORTED_RUNS and s.get(reclaim_key) == 1,
        )
        yield Scraped(server.url, worker, text, parse(text), inference_s)
    finally:
        server.close()


def test_metrics_match_what_the_server_holds(scraped: Scraped) -> None:
    worker = scraped.worker
    assert scraped.value("gpuboard_source_up", source="prefect") == 1
    assert scraped.value("gpuboard_source_up", source="nvml") == 1
    assert scraped.value("gpuboard_worker_online", worker=worker) == 1
    assert scraped.value("gpuboard_worker_gpu_slots_limit", worker=worker) == 3
    assert scraped.value("gpuboard_worker_gpu_slots_in_use", worker=worker) == 1
    # 3 runs in the GPU step, 1 slot held: 2 wait for one.
    assert scraped.value("gpuboard_worker_gpu_slots_waiting", worker=worker) == 2
    assert scraped.value("gpuboard_worker_paused", worker=worker) == 0
    assert scraped.value("gpuboard_worker_flow_runs_running", worker=worker) == 3
    assert scraped.value("gpuboard_flow_runs", state="running") == 3
    # The Scheduled run may have been marked Late by now.
    queued = [scraped.value("gpuboard_flow_runs", state=s) for s in ("scheduled", "late")]
    assert sum(v or 0 for v in queued) == 1
    assert scraped.value("gpuboard_flow_runs", state="pending") == 0


def test_gpu_metrics_are_the_nvml_readings(scraped: Scraped) -> None:
    first = {"host": "metrics-node", "index": "0", "uuid": "GPU-aaaa"}
    second = {"host": "metrics-node", "index": "1", "uuid": "GPU-bbbb"}
    model = {"model": "NVIDIA H100 80GB HBM3"}
    assert scraped.value("gpuboard_gpu_memory_used_bytes", **first, **model) == 12 * GIB
    assert scraped.value("gpuboard_gpu_memory_total_bytes", **first, **model) == 80 * GIB
    assert scraped.value("gpuboard_gpu_utilization_ratio", **first, **model) == 0.4
    assert scraped.value("gpuboard_gpu_processes", **first, **model) == 1
    assert scraped.value("gpuboard_gpu_memory_used_bytes", **second, **model) == 1 * GIB
    assert scraped.value("gpuboard_gpu_memory_total_bytes", **second, **model) == 40 * GIB
    # NVML says "Not Supported": no value rather than a made-up 0.
    assert scraped.value("gpuboard_gpu_utilization_ratio", **second, **model) is None


def test_histograms_count_each_timing_report_once(scraped: Scraped) -> None:
    worker = scraped.worker
    assert scraped.value("gpuboard_inference_duration_seconds_count", worker=worker) == 60
    total = scraped.value("gpuboard_inference_duration_seconds_sum", worker=worker)
    assert total == pytest.approx(sum(scraped.inference_s))
    below = sum(1 for s in scraped.inference_s if s <= 0.05)
    bucket = scraped.value("gpuboard_inference_duration_seconds_bucket", worker=worker, le="0.05")
    assert bucket == below
    # Half the runs waited 0.5 s for their slot, half 3 s.
    wait = "gpuboard_slot_wait_duration_seconds_bucket"
    assert scraped.value(wait, worker=worker, le="1.0") == 30
    assert scraped.value(wait, worker=worker, le="5.0") == 60
    assert scraped.value("gpuboard_slot_reclaims_total", worker=worker) == 1
    assert scraped.value("gpuboard_run_timing_reports_total", worker=worker) == 60


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_metrics(scraped: Scraped) -> None:
    checked = subprocess.run(
        ["promtool", "check", "metrics"],
        input=scraped.text,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_an_unreachable_server_leaves_metrics_answering() -> None:
    url = f"http://127.0.0.1:{free_port()}/api"
    source = BoardSource("ml-pool", url, nvml=fake_nvml(), follow_hosts=False)
    exporter = MetricsExporter(source, interval_s=0.5).start()
    server = serve_metrics(exporter, "127.0.0.1", free_port())
    try:
        first = parse(scrape(server))
        refreshed = ("gpuboard_refresh_timestamp_seconds", frozenset())
        # Scraped again after another refresh, which failed too.
        samples = parse(scrape_until(server, lambda s: s[refreshed] > first[refreshed], 30.0))
    finally:
        server.close()
    for taken in (first, samples):
        up = {dict(labels)["source"]: v for (n, labels), v in taken.items() if n.endswith("_up")}
        assert up["prefect"] == 0 and up["run-timings"] == 0 and up["nvml"] == 1
        # The GPUs of this machine are still there; nothing is claimed about the pool.
        assert any(name == "gpuboard_gpu_memory_used_bytes" for name, _ in taken)
        assert not any(name.startswith("gpuboard_worker_") for name, _ in taken)
        assert not any(name == "gpuboard_flow_runs" for name, _ in taken)
    assert samples[refreshed] > first[refreshed]


DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "gpuboard.json"


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    # Grafana's variables, as "All" expands them.
    return [q.replace("$instance", ".*").replace("$worker", ".*") for q in queries]


def test_the_dashboard_shows_only_metrics_the_exporter_serves(scraped: Scraped) -> None:
    served = set(re.findall(r"^(?:# (?:HELP|TYPE) )?(gpuboard_\w+)", scraped.text, re.M))
    used = {name for query in dashboard_queries() for name in re.findall(r"gpuboard_\w+", query)}
    assert used, "no queries found"
    assert used <= served, f"not served: {sorted(used - served)}"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_the_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"gpuboard:dashboard_query_{n}", "expr": query}
                    for n, query in enumerate(dashboard_queries())
                ],
            }
        ]
    }
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    checked = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus is not installed")
def test_a_real_prometheus_scrapes_the_endpoint_and_answers_a_query(
    scraped: Scraped, tmp_path: Path
) -> None:
    target = scraped.url.removeprefix("http://").removesuffix("/metrics")
    config = {
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [{"job_name": "gpuboard", "static_configs": [{"targets": [target]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    web = f"127.0.0.1:{free_port()}"
    log = (tmp_path / "prometheus.log").open("w")
    prometheus = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address={web}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    query = f'gpuboard_worker_gpu_slots_limit{{job="gpuboard",worker="{scraped.worker}"}}'
    try:
        deadline = time.monotonic() + 60
        result: list[dict[str, object]] = []
        while not result and time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                answer = httpx.get(f"http://{web}/api/v1/query", params={"query": query})
            except httpx.TransportError:
                continue  # not listening yet
            if answer.status_code == 200:
                result = answer.json()["data"]["result"]
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)
        log.close()
    assert result, (tmp_path / "prometheus.log").read_text()[-2000:]
    assert [float(r["value"][1]) for r in result] == [3.0]  # type: ignore[index]
