"""`gpuboard metrics`' core: a prometheus_client collector that answers every scrape from
metrics built by a background refresh, and the small HTTP server that serves it.

A scrape never waits on the Prefect server or NVML: a thread reads the board's snapshot
(`BoardSource`, the same reads as the board and `gpuboard status`) and the event feeds
every `interval_s` and swaps in the finished metric families; `collect()` hands back the
last ones. The thread also renders them once in the text format, and the HTTP endpoint
serves those bytes: rendering ~400 samples costs milliseconds of CPU, once per refresh
rather than once per scrape. A failing source never stops the refresh: it shows as
`gpuboard_source_up{source=...} 0` and the exporter keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prefect.client.orchestration import PrefectClient
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, ThreadingWSGIServer
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from gpuboard.core.board_source import READ_TIMEOUT, BoardSource
from gpuboard.core.metrics.run_observations import RunObservations
from gpuboard.core.metrics.snapshot_metrics import snapshot_metrics
from gpuboard.core.models import Snapshot
from gpuboard.core.prefect.event_cursor import EventCursor
from gpuboard.core.prefect.events import ReceivedEvent
from gpuboard.core.prefect.poll_client import NoRetries, describe_failure, poll_client
from gpuboard.core.reclaim_events import EVENT_NAME as RECLAIM_EVENT
from gpuboard.core.run_timings import EVENT_NAME as TIMINGS_EVENT

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

DEFAULT_PORT = 9464  # the port OpenTelemetry's Prometheus exporter uses by default
DEFAULT_HOST = "127.0.0.1"
DEFAULT_INTERVAL_S = 5.0

log = logging.getLogger(__name__)


class MetricsExporter(Collector):
    """What `gpuboard metrics` serves for `source`'s pool; register it in a registry.

    `since` (epoch seconds, default: now) is where the event-fed histograms and counters
    start counting.
    """

    def __init__(
        self,
        source: BoardSource,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        since: float | None = None,
        timeout: float = READ_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.source = source
        self.interval_s = interval_s
        self._timeout = timeout
        self._clock = clock
        start = clock() if since is None else since
        self.observations = RunObservations()
        self._timings = EventCursor(TIMINGS_EVENT, start)
        self._reclaims = EventCursor(RECLAIM_EVENT, start)
        self._client: PrefectClient | None = None
        self._no_retries = NoRetries()
        self._metrics: list[Metric] = []
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self)
        self._exposition = generate_latest(self._registry)
        self._refreshes = 0
        self._refresh_failures = 0
        self._stop = threading.Event()
        self._first = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the Collector protocol ---------------------------------------------------------

    def collect(self) -> Iterable[Metric]:
        """The metrics of the last refresh (a list swapped whole: no lock needed)."""
        return self._metrics

    @property
    def exposition(self) -> bytes:
        """The last refresh's metrics in Prometheus's text format (0.0.4)."""
        return self._exposition

    # -- refreshing ---------------------------------------------------------------------

    async def refresh(self) -> None:
        """Read everything once and swap in the metrics; never raises."""
        started = time.perf_counter()
        try:
            snapshot = await self.source.read()
            feeds = await self._read_feeds(snapshot)
            metrics = self._build(snapshot, feeds, time.perf_counter() - started)
        except Exception:  # a bug, not a source failure: keep the last metrics, say so
            log.exception("metrics refresh failed")
            self._refresh_failures += 1
            return
        self._metrics = metrics
        self._exposition = generate_latest(self._registry)
        self._refreshes += 1

    async def _read_feeds(self, snapshot: Snapshot) -> dict[str, bool]:
        """Feed the histograms and counters from the events; {feed: answered}."""
        if not snapshot.prefect_ok:
            await self._drop_client()
            return {"run-timings": False, "reclaim-events": False}
        self.observations.know_workers(w.name for w in snapshot.workers)
        answered = {}
        for feed, cursor, add in (
            ("run-timings", self._timings, self.observations.add_timings),
            ("reclaim-events", self._reclaims, self.observations.add_reclaims),
        ):
            events = await self._read_events(cursor, feed)
            answered[feed] = events is not None
            if events:
                add(events)
        return answered

    async def _read_events(self, cursor: EventCursor, feed: str) -> list[ReceivedEvent] | None:
        try:
            if self._client is None:
                self._client = poll_client(self.source.api_url)
                await self._client.__aenter__()
            with self._no_retries():
                return await asyncio.wait_for(cursor.read_new(self._client), self._timeout)
        except Exception as exc:
            log.debug("%s: %s", feed, describe_failure(exc, feed).message)
            await self._drop_client()
            return None

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)

    def _build(self, snapshot: Snapshot, feeds: dict[str, bool], took_s: float) -> list[Metric]:
        metrics = snapshot_metrics(snapshot, feeds)
        metrics += self.observations.metrics()
        duration = GaugeMetricFamily(
            "gpuboard_refresh_duration_seconds",
            "How long the exporter's last background refresh took.",
            value=took_s,
        )
        refreshed = GaugeMetricFamily(
            "gpuboard_refresh_timestamp_seconds",
            "When the exporter last refreshed (epoch seconds): a scrape is this old.",
            value=snapshot.taken_at,
        )
        metrics += [duration, refreshed]
        if snapshot.prefect_read_at is not None:
            metrics.append(
                GaugeMetricFamily(
                    "gpuboard_prefect_read_timestamp_seconds",
                    "When the Prefect server last answered a refresh (epoch seconds).",
                    value=snapshot.prefect_read_at,
                )
            )
        metrics.append(
            CounterMetricFamily(
                "gpuboard_refresh_failures",
                "Refreshes that failed on an exporter bug (sources failing do not count).",
                value=self._refresh_failures,
            )
        )
        return metrics

    # -- the background thread ----------------------------------------------------------

    def start(self, first_refresh_timeout: float | None = None) -> MetricsExporter:
        """Refresh in a daemon thread from now on; wait for the first refresh (up to
        `first_refresh_timeout`, default the read timeout plus a little)."""
        self._thread = threading.Thread(target=self._run, name="gpuboard-metrics", daemon=True)
        self._thread.start()
        self._first.wait(first_refresh_timeout or self._timeout + 2.0)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        asyncio.run(self._loop())

    async def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                await self.refresh()
                self._first.set()
                await asyncio.to_thread(self._stop.wait, self.interval_s)
        finally:
            self._first.set()
            await self._drop_client()
            with contextlib.suppress(Exception):
                await self.source.aclose()


@dataclass
class MetricsServer:
    """The exporter's HTTP endpoint: `url` answers GET /metrics."""

    exporter: MetricsExporter
    server: WSGIServer
    thread: threading.Thread
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving, then stop refreshing."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5.0)
        self.exporter.stop()


def serve_metrics(
    exporter: MetricsExporter, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT
) -> MetricsServer:
    """Serve `exporter` (started by the caller) on http://host:port/metrics in a thread
    (port 0: any free one). OSError when the port cannot be bound."""
    server = make_server(
        host, port, _metrics_app(exporter), ThreadingWSGIServer, handler_class=_QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, name="gpuboard-metrics-http")
    thread.daemon = True
    thread.start()
    return MetricsServer(exporter, server, thread, host, server.server_port)


def _metrics_app(exporter: MetricsExporter) -> WSGIApplication:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        if environ.get("PATH_INFO", "/") not in ("/metrics", "/"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"gpuboard serves /metrics\n"]
        body = exporter.exposition
        start_response(
            "200 OK",
            [("Content-Type", CONTENT_TYPE_PLAIN_0_0_4), ("Content-Length", str(len(body)))],
        )
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]

    return app


class _QuietHandler(WSGIRequestHandler):
    """No line on stderr per scrape."""

    def log_message(self, format: str, *args: Any) -> None:
        pass
