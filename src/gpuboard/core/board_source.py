"""Builds one `Snapshot` per call from every source the board has, never raising.

Sources: the Prefect API (workers, GCLs, runs), GPU readings and inference-host states the
workers publish as Prefect events (host states followed live on the events websocket),
and this machine's own NVML. A failing source becomes a `SourceError`
in the snapshot; the last good Prefect data is kept and marked by its age, so the screen
keeps showing it while the server is away and picks up again when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Protocol

from prefect.client.orchestration import PrefectClient

from gpuboard.core.advisor import PeakTracker, advice_for_workers
from gpuboard.core.gpu_events import read_published_readings
from gpuboard.core.host.state import HostState
from gpuboard.core.host_feed import HostStateFeed
from gpuboard.core.models import (
    GpuProcess,
    GpuReading,
    GpuSample,
    RefreshCost,
    RunView,
    Snapshot,
    SourceError,
    WorkerView,
)
from gpuboard.core.nvml_source import NvmlSource
from gpuboard.core.prefect.matching_runs import read_matching_runs
from gpuboard.core.prefect.poll_client import (
    NoRetries,
    RequestCounter,
    describe_failure,
    poll_client,
)
from gpuboard.core.prefect.snapshot import PrefectRead, read_prefect
from gpuboard.core.run_filter import RunFilter
from gpuboard.core.run_reports import RunReports, RunReportsFeed
from gpuboard.core.why import PoolWaitFacts, explain_runs

# A whole refresh gives up after this long; the next tick tries again.
READ_TIMEOUT = 8.0
# What finished in the last hour is read this often, not every refresh: it changes slowly
# and counting an hour of completed runs is the costliest request of a refresh.
FINISHED_EVERY = 10.0


class SnapshotSource(Protocol):
    """What the board polls: anything that returns a Snapshot and can be closed."""

    async def read(self) -> Snapshot: ...

    async def aclose(self) -> None: ...


class BoardSource:
    """The board's live source for work pool `pool` on the Prefect API at `api_url`."""

    def __init__(
        self,
        pool: str,
        api_url: str,
        *,
        nvml: NvmlSource | None = None,
        clock: Callable[[], float] = time.time,
        timeout: float = READ_TIMEOUT,
        finished_every: float = FINISHED_EVERY,
        follow_hosts: bool = True,
    ) -> None:
        self.pool = pool
        self.api_url = api_url.rstrip("/")
        self.nvml = nvml
        self._clock = clock
        self._timeout = timeout
        self._finished_every = finished_every
        self._finished_at = 0.0
        self._counter = RequestCounter()
        self._client: PrefectClient | None = None
        self._last: PrefectRead | None = None
        self._last_at: float | None = None
        self._published: list[GpuReading] = []
        self.host_feed = HostStateFeed(self.api_url, stream=follow_hosts, clock=clock)
        self._reports = RunReportsFeed(finished_every)
        self._run_reports = RunReports()
        self._host_states: dict[str, HostState] = {}
        self._peaks = PeakTracker()
        self._no_retries = NoRetries()
        # Set by the board while its runs panel filters: each read then reads the matches.
        self.run_filter: RunFilter | None = None
        self._matching: tuple[RunView, ...] | None = None

    def set_run_filter(self, run_filter: RunFilter | None) -> None:
        """Read the runs `run_filter` matches at every read from now on (None: stop)."""
        self.run_filter = run_filter if run_filter is not None and run_filter.active else None
        self._matching = None

    async def read(self) -> Snapshot:
        now = self._clock()
        errors: list[SourceError] = []
        local = await asyncio.to_thread(self.nvml.read) if self.nvml is not None else None
        requests_before = self._counter.requests
        started = time.perf_counter()
        with self._no_retries():
            prefect, published, hosts, reports = await self._read_prefect(now)
            matching = await self._read_matching()
        api_ms = (time.perf_counter() - started) * 1000
        if isinstance(prefect, SourceError):
            errors.append(prefect)
            if prefect.kind == "unreachable":
                # A client that has connected once retries refused connections for minutes;
                # a fresh one gives up at once, so the banner shows and goes without delay.
                await self._drop_client()
        else:
            if self._last is None or prefect.finished is not self._last.finished:
                self._finished_at = now
            self._last, self._last_at = prefect, now
        if isinstance(published, SourceError):
            if not isinstance(prefect, SourceError):
                errors.append(published)
        else:
            self._published = published
        if isinstance(hosts, SourceError):
            if not isinstance(prefect, SourceError):
                errors.append(hosts)
        else:
            self._host_states = hosts
        if not isinstance(reports, SourceError):
            self._run_reports = reports
        if isinstance(matching, SourceError):
            if not isinstance(prefect, SourceError):
                errors.append(matching)
        else:
            self._matching = matching
        readings = merge_readings(local, self._published)
        return self._assemble(
            now, readings, errors, self._counter.requests - requests_before, api_ms
        )

    async def aclose(self) -> None:
        await self.host_feed.aclose()
        await self._drop_client()
        if self.nvml is not None:
            self.nvml.close()

    async def _read_prefect(
        self, now: float
    ) -> tuple[
        PrefectRead | SourceError,
        list[GpuReading] | SourceError,
        dict[str, HostState] | SourceError,
        RunReports | SourceError,
    ]:
        try:
            if self._client is None:
                self._client = poll_client(self.api_url, self._counter)
                await self._client.__aenter__()
            client = self._client
            last = self._last
            fresh_enough = last is not None and now - self._finished_at < self._finished_every
            prefect, published, hosts, reports = await asyncio.wait_for(
                asyncio.gather(
                    read_prefect(
                        client,
                        self.pool,
                        datetime.fromtimestamp(now, tz=timezone.utc),
                        finished=last.finished if last is not None and fresh_enough else None,
                    ),
                    read_published_readings(client, now),
                    self.host_feed.read(client),
                    self._reports.read(client, now),
                    return_exceptions=True,
                ),
                self._timeout,
            )
        except Exception as exc:  # the timeout, or the client failing to open
            failure = describe_failure(exc)
            return failure, failure, failure, failure
        return (
            describe_failure(prefect) if isinstance(prefect, BaseException) else prefect,
            describe_failure(published, "gpu-events")
            if isinstance(published, BaseException)
            else published,
            describe_failure(hosts, "host-events") if isinstance(hosts, BaseException) else hosts,
            describe_failure(reports, "run-reports")
            if isinstance(reports, BaseException)
            else reports,
        )

    async def _read_matching(self) -> tuple[RunView, ...] | SourceError | None:
        """The filter's matches (one request), after the refresh's own reads."""
        run_filter = self.run_filter
        if run_filter is None or self._client is None:
            return None
        try:
            matching = await asyncio.wait_for(
                read_matching_runs(self._client, self.pool, run_filter), self._timeout
            )
        except Exception as exc:
            return describe_failure(exc, "runs-filter")
        # A filter changed while this read ran must not get the old filter's matches.
        return matching if run_filter == self.run_filter else None

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            # Closing a client whose server is gone may fail: there is nothing to do.
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)

    def _assemble(
        self,
        now: float,
        readings: list[GpuReading],
        errors: list[SourceError],
        calls: int,
        api_ms: float,
    ) -> Snapshot:
        prefect = self._last
        if prefect is None:
            return Snapshot(
                pool=self.pool,
                api_url=self.api_url,
                taken_at=now,
                gpu_readings=tuple(readings),
                errors=tuple(errors),
                cost=RefreshCost(calls, api_ms),
            )
        host_pids = {
            (worker, state.pid): worker
            for worker, state in self._host_states.items()
            if state.pid is not None and not state.stale(now)
        }
        readings = [_map_processes(r, prefect.pid_runs, host_pids) for r in readings]
        for reading in readings:
            for gpu in reading.gpus:
                self._peaks.observe(gpu)
        workers = _join_hosts(prefect.workers, self._host_states, now)
        workers = tuple(
            dataclasses.replace(w, executor=self._run_reports.executors.get(w.name))
            for w in workers
        )
        workers = _join_gpus(workers, readings, self._peaks)
        running, next_queued = explain_runs(
            _host_steps(prefect.running, workers),
            prefect.next_queued,
            PoolWaitFacts(
                self.pool,
                workers,
                pool_paused=prefect.pause.pool_paused,
                paused_queues=prefect.pause.paused_queues,
            ),
            now=now,
        )
        return Snapshot(
            pool=self.pool,
            api_url=self.api_url,
            taken_at=now,
            prefect_read_at=self._last_at,
            workers=workers,
            runs=prefect.runs,
            running=running,
            next_queued=next_queued,
            failures=prefect.finished.failures,
            pool_paused=prefect.pause.pool_paused,
            paused_queues=tuple(sorted(prefect.pause.paused_queues)),
            matching=self._matching if self.run_filter is not None else None,
            gpu_readings=tuple(readings),
            # Only this pool's workers: the reports of the whole server are read at once.
            time_splits=tuple(
                split
                for split in self._run_reports.time_splits
                if any(w.name == split.worker for w in workers)
            ),
            errors=tuple(errors),
            cost=RefreshCost(calls, api_ms),
        )


def merge_readings(local: GpuReading | None, published: list[GpuReading]) -> list[GpuReading]:
    """One reading per machine: the board's own machine first, then by host.

    Workers on the board's machine publish what the board reads itself: the board's own
    read is fresher, so it stands, and those workers are listed on it; those of them in the
    board's PID namespace too (their runs' PIDs are the board's to check) in
    `workers_sharing_pids`.
    """
    by_host: dict[str, GpuReading] = {}
    here = local.pid_namespace if local is not None else ""
    sharing = {
        worker
        for reading in published
        if local is not None
        and reading.host == local.host
        and here
        and reading.pid_namespace == here
        for worker in reading.workers
    }
    for reading in sorted(published, key=lambda r: r.sampled_at):
        known = by_host.get(reading.host)
        workers = tuple(sorted({*reading.workers, *(known.workers if known else ())}))
        by_host[reading.host] = dataclasses.replace(reading, workers=workers)
    merged = []
    if local is not None:
        mine = by_host.pop(local.host, None)
        # Where NVML fails here but a worker on this machine published, show theirs.
        if mine is not None and local.unavailable and not mine.unavailable:
            merged.append(mine)
        else:
            merged.append(
                dataclasses.replace(
                    local,
                    workers=mine.workers if mine else (),
                    workers_sharing_pids=tuple(sorted(sharing)),
                )
            )
    merged.extend(by_host[host] for host in sorted(by_host))
    return merged


def _map_processes(
    reading: GpuReading,
    pid_runs: dict[tuple[str, int], tuple[str, str]],
    host_pids: dict[tuple[str, int], str] | None = None,
) -> GpuReading:
    """Name the flow run of each GPU process (by its id where known, else by its PID), and
    the inference host of a worker on the machine (by the PID its host published)."""
    names = {run_id: name for run_id, name in pid_runs.values()}
    hosts = host_pids or {}

    def mapped(process: GpuProcess) -> GpuProcess:
        for worker in reading.workers:
            if (worker, process.pid) in hosts:
                return dataclasses.replace(process, host_of=worker)
        run_id = process.flow_run_id
        if run_id is None:
            for worker in reading.workers:
                found = pid_runs.get((worker, process.pid))
                if found is not None:
                    run_id = found[0]
                    break
        if run_id is None:
            return process
        return dataclasses.replace(process, flow_run_id=run_id, flow_run_name=names.get(run_id))

    gpus = tuple(
        dataclasses.replace(gpu, processes=tuple(mapped(p) for p in gpu.processes))
        for gpu in reading.gpus
    )
    return dataclasses.replace(reading, gpus=gpus)


def _join_gpus(
    workers: tuple[WorkerView, ...], readings: list[GpuReading], peaks: PeakTracker
) -> tuple[WorkerView, ...]:
    gpus_of: dict[str, tuple[GpuSample, ...]] = {}
    for reading in readings:
        for worker in reading.workers:
            gpus_of[worker] = reading.gpus
    limits = {w.name: (w.limit if not w.unprotected else None) for w in workers}
    hosts = {w.name: w.host for w in workers if w.host is not None}
    advice = advice_for_workers(
        {name: gpus for name, gpus in gpus_of.items() if name in limits}, limits, peaks, hosts
    )
    return tuple(
        dataclasses.replace(w, gpus=gpus_of.get(w.name, ()), advice=advice.get(w.name))
        for w in workers
    )


def _join_hosts(
    workers: tuple[WorkerView, ...], hosts: dict[str, HostState], now: float
) -> tuple[WorkerView, ...]:
    """Each worker's inference host; where its state is fresh, the host's queue and slot
    holders are the GPU step's counts: live, where task-run states reach the database
    seconds late and cannot tell waiting from holding."""
    joined = []
    for worker in workers:
        host = hosts.get(worker.name)
        if host is None:
            joined.append(worker)
            continue
        live = not host.stale(now) and host.status not in ("stopped", "failed")
        joined.append(
            dataclasses.replace(
                worker,
                host=host,
                waiting=host.queued if live else worker.waiting,
                inferring=host.inferring if live else worker.inferring,
                counts_from_host=live,
            )
        )
    return tuple(joined)


def _host_steps(
    running: tuple[RunView, ...], workers: tuple[WorkerView, ...]
) -> tuple[RunView, ...]:
    """A run in the GPU step holds a slot of its worker's host, or waits in its queue."""
    holders = {
        holder.flow_run_id
        for worker in workers
        if worker.counts_from_host and worker.host is not None
        for holder in worker.host.holders
    }
    live = {worker.name for worker in workers if worker.counts_from_host}
    return tuple(
        dataclasses.replace(run, step="infer" if run.id in holders else "waiting")
        if run.worker in live and run.step in ("gpu", "infer", "waiting")
        else run
        for run in running
    )
