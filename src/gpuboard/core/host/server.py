"""The inference host: loads the OCR model once and serves a worker's flow runs over a Unix
socket, each request under a GPU slot its queue takes from Prefect for it.

A request is one connection: the image goes in, the text or an error comes back. While a
request waits or works, the host watches its connection: a client that goes away (its
flow-run process was killed) leaves the queue at once, or, if it already holds its slot,
gives the slot back as soon as its inference ends (an ONNX run cannot be cut short). The
host tells its supervisor, over a pipe, every lease it takes and returns (so that they can
be released the moment the host dies) and its state, for the board.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from gpuboard.core.config import gcl_name
from gpuboard.core.host.gpu_memory import HostGpuMemory
from gpuboard.core.host.protocol import (
    HostIdentity,
    HostTimings,
    InferRequest,
    ProtocolError,
    decode_pixels,
    frame,
    read_frame,
)
from gpuboard.core.host.slot_queue import LEASE_SECONDS, Grant, SlotQueue, SlotUnusable
from gpuboard.core.host.state import HostState, HostStatus, SlotHolder
from gpuboard.core.inference import InferenceError, ModelSettings, OcrModel
from gpuboard.core.prefect.client import async_client
from gpuboard.core.prefect.poll_client import NoRetries

log = logging.getLogger(__name__)

# Inferences at once are bounded by the GCL, not here; this only caps the threads.
MAX_INFERENCE_THREADS = 64
LATENCY_WINDOW = 200  # the p50/p95 the host reports are over its last this many inferences
STATE_REPORT_EVERY_S = 0.2  # state changes are coalesced to one report per this long
STOP_GRACE_S = 30.0  # on SIGTERM, in-flight inferences get this long to finish


@dataclass(frozen=True)
class HostOptions:
    """What one host serves and how it loads its model."""

    worker_id: str
    socket_path: Path
    api_url: str
    model: ModelSettings
    lease_seconds: float = LEASE_SECONDS


Report = Callable[[dict[str, Any]], None]


class InferenceHost:
    """Serves one worker's requests; `serve()` runs it until `stop()`."""

    def __init__(
        self,
        options: HostOptions,
        report: Report = lambda _message: None,
        *,
        load_model: Callable[[ModelSettings, Callable[[], None]], OcrModel] | None = None,
        gpu_memory: HostGpuMemory | None = None,
    ) -> None:
        self.options = options
        self._report = report
        self._load_model = load_model or _load
        self._memory = gpu_memory or HostGpuMemory(options.model.gpu_index)
        self._status: HostStatus = "starting"
        self._model: OcrModel | None = None
        self._identity: HostIdentity | None = None
        self._queue: SlotQueue | None = None
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._in_flight = 0
        self._served = 0
        self._failed = 0
        self._error: str | None = None
        self._stopping = asyncio.Event()
        self._requests: set[asyncio.Task[None]] = set()
        self._background: set[asyncio.Future[None]] = set()  # slot releases in flight
        self._threads = ThreadPoolExecutor(MAX_INFERENCE_THREADS, thread_name_prefix="inference")
        self._report_pending = False
        self._reported_leases: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- life -------------------------------------------------------------------------

    async def serve(self) -> None:
        """Load the model, then answer requests until `stop()`; raises if it cannot load."""
        self._loop = asyncio.get_running_loop()
        self._set_status("loading")
        started = time.perf_counter()
        try:
            self._model = await asyncio.to_thread(
                self._load_model, self.options.model, self._memory.mark_model_loaded
            )
        except Exception as exc:
            self._error = f"cannot load the OCR model: {exc}"
            self._set_status("failed")
            raise
        load_s = time.perf_counter() - started
        self._identity = HostIdentity(
            pid=os.getpid(),
            started_at=time.time(),
            model_load_s=load_s,
            provider=self._model.provider,
            device=self._model.device,
        )
        if self._memory.model_bytes is None:
            self._memory.mark_model_loaded()  # the loader did not call back
        log.info(
            "model %s loaded on %s (%s) in %.2f s; serving worker %s on %s",
            self._model.name,
            self._model.device,
            self._model.provider,
            load_s,
            self.options.worker_id,
            self.options.socket_path,
        )
        async with async_client(self.options.api_url) as client:
            self._queue = SlotQueue(
                client,
                gcl_name(self.options.worker_id),
                worker=self.options.worker_id,
                lease_seconds=self.options.lease_seconds,
                on_change=self._state_changed,
            )
            dispatcher = asyncio.create_task(self._queue.run(), name="slot-dispatcher")
            server = await _unix_server(self._handle, self.options.socket_path)
            self._set_status("ready")
            try:
                await self._stopping.wait()
            finally:
                server.close()
                # The line first: requests still waiting are dropped (their clients see
                # the host go and their GPU step is retried on the next host), then those
                # holding a slot finish.
                dispatcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await dispatcher
                await self._drain()
                await self._queue.close()
                with contextlib.suppress(FileNotFoundError):
                    self.options.socket_path.unlink()
                self._set_status("stopped")
        self._threads.shutdown(wait=False)
        self._memory.close()

    def stop(self) -> None:
        """Stop taking requests; those holding a slot finish. Safe from a signal handler."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)

    async def _drain(self) -> None:
        """Let the requests holding a slot finish, then the slot releases they started."""
        for waiting in (self._requests, self._background):
            pending = [task for task in waiting if not task.done()]
            if pending:
                _, late = await asyncio.wait(pending, timeout=STOP_GRACE_S)
                for task in late:
                    task.cancel()

    # -- one request --------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._requests.add(task)
        try:
            reply = await self._serve_request(reader)
            if reply is not None:
                writer.write(frame(reply))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client left; its slot, if any, is already back
        finally:
            self._requests.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_request(self, reader: asyncio.StreamReader) -> dict[str, Any] | None:
        """The reply to one request, or None when its client left before it."""
        try:
            header, payload = await read_frame(reader)
            request = InferRequest.from_header(header)
            pixels = decode_pixels(request, payload)
        except ProtocolError as exc:
            return _failure("bad-request", str(exc))
        assert self._queue is not None and self._model is not None
        gone = asyncio.ensure_future(reader.read(1))  # b"" once the client closes
        taking = asyncio.ensure_future(
            self._queue.take(
                request.image_id, _uuid(request.task_run_id), _uuid(request.flow_run_id)
            )
        )
        try:
            await asyncio.wait({gone, taking}, return_when=asyncio.FIRST_COMPLETED)
            if not taking.done():  # the client left while waiting in line
                taking.cancel()
                with contextlib.suppress(asyncio.CancelledError, SlotUnusable):
                    await taking
                return None
            if taking.cancelled():  # the host is stopping: drop the connection
                return None
            try:
                grant = taking.result()
            except SlotUnusable as exc:
                self._failed += 1
                return _failure("slot", str(exc))
            if gone.done():  # granted just as the client left: give the slot back now
                await self._queue.give_back(grant)
                return None
            return await self._infer(request, pixels, grant)
        finally:
            gone.cancel()

    async def _infer(self, request: InferRequest, pixels: Any, grant: Grant) -> dict[str, Any]:
        assert self._queue is not None and self._model is not None
        self._in_flight += 1
        started_at, started = time.time(), time.perf_counter()
        try:
            loop = asyncio.get_running_loop()
            ocr = await loop.run_in_executor(self._threads, self._model.read, pixels)
        except Exception as exc:
            self._failed += 1
            return _failure("inference", f"image {request.image_id}: OCR failed: {exc}")
        finally:
            inference_s, ended_at = time.perf_counter() - started, time.time()
            in_flight, self._in_flight = self._in_flight, self._in_flight - 1
            # The slot goes back while the answer is written: neither waits for the other.
            self._in_background(self._after_inference(grant, in_flight))
        self._served += 1
        self._latencies.append(inference_s)
        self._state_changed()
        assert self._identity is not None
        timings = HostTimings(
            slot_wait_s=grant.wait_s,
            inference_s=inference_s,
            inference_started_at=started_at,
            inference_ended_at=ended_at,
        )
        return {
            "ok": True,
            "result": asdict(ocr),
            "timings": asdict(timings),
            "host": asdict(self._identity),
        }

    async def _after_inference(self, grant: Grant, in_flight: int) -> None:
        assert self._queue is not None
        await self._queue.give_back(grant)
        await asyncio.to_thread(self._memory.observe, in_flight)

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- what the supervisor hears ---------------------------------------------------------

    def state(self) -> HostState:
        """What this host is doing now (the supervisor adds restarts and model loads)."""
        queue = self._queue.state if self._queue is not None else None
        latencies = sorted(self._latencies)
        model = self._model
        return HostState(
            worker=self.options.worker_id,
            status=self._status,
            updated_at=time.time(),
            host=socket.gethostname(),
            pid=os.getpid(),
            provider=model.provider if model else None,
            device=model.device if model else None,
            model=model.name if model else None,
            load_s=self._identity.model_load_s if self._identity else None,
            queued=queue.queued if queue else 0,
            paused=queue.paused if queue else False,
            holders=tuple(_slot_holder(h) for h in queue.holders) if queue else (),
            served=self._served,
            failed=self._failed,
            inference_p50_s=_quantile(latencies, 0.5),
            inference_p95_s=_quantile(latencies, 0.95),
            threads=self.options.model.threads,
            gpu_memory_model=self._memory.model_bytes,
            gpu_memory_peak_per_inference=self._memory.peak_per_inference,
            gpu_memory_limit=self.options.model.gpu_memory_limit,
            error=self._error or (queue.error if queue else None),
        )

    def _set_status(self, status: HostStatus) -> None:
        self._status = status
        self._report({"type": "state", "state": _state_payload(self.state())})

    def _state_changed(self) -> None:
        """Coalesce: one report per STATE_REPORT_EVERY_S however many changes. Leases are
        reported at once, apart (the supervisor needs them even if the host dies now)."""
        queue = self._queue
        if queue is not None:
            held = {str(holder.lease_id) for holder in queue.state.holders}
            if held != self._reported_leases:
                self._reported_leases = held
                self._report({"type": "leases", "held": sorted(held)})
        if self._report_pending or self._loop is None:
            return
        self._report_pending = True

        def flush() -> None:
            self._report_pending = False
            self._report({"type": "state", "state": _state_payload(self.state())})

        self._loop.call_later(STATE_REPORT_EVERY_S, flush)


def _load(settings: ModelSettings, sessions_created: Callable[[], None]) -> OcrModel:
    try:
        return OcrModel.create(settings=settings, sessions_created=sessions_created)
    except InferenceError:
        raise
    except Exception as exc:
        raise InferenceError(f"cannot load the OCR model: {exc}") from exc


async def _unix_server(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any], path: Path
) -> asyncio.AbstractServer:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a socket file a dead host left behind
    server = await asyncio.start_unix_server(handle, path=str(path), limit=1 << 20)
    os.chmod(path, 0o600)  # only this user's flow runs
    return server


def _failure(kind: str, message: str) -> dict[str, Any]:
    return {"ok": False, "kind": kind, "error": message}


def _slot_holder(holder: Any) -> SlotHolder:
    return SlotHolder(
        lease_id=str(holder.lease_id),
        image_id=holder.image_id,
        task_run_id=None if holder.task_run_id is None else str(holder.task_run_id),
        flow_run_id=None if holder.flow_run_id is None else str(holder.flow_run_id),
        held_since=holder.held_since,
    )


def _state_payload(state: HostState) -> dict[str, Any]:
    from gpuboard.core.host.state import state_to_payload

    return state_to_payload(state)


def _quantile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[round(q * 100) - 1]


def _uuid(value: str | None) -> UUID | None:
    try:
        return None if value is None else UUID(value)
    except ValueError:
        return None


# -- the process ------------------------------------------------------------------------


class PipeReport:
    """Writes the host's reports as JSON lines to the supervisor's pipe (file descriptor)."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd
        self._lock = threading.Lock()

    def __call__(self, message: dict[str, Any]) -> None:
        if self._fd is None:
            return
        line = (json.dumps(message) + "\n").encode()
        with self._lock:
            try:
                os.write(self._fd, line)
            except OSError:
                self._fd = None  # the supervisor is gone; PDEATHSIG will stop us


def run_host(options: HostOptions, status_fd: int | None) -> int:
    """Run a host until SIGTERM/SIGINT; 0 after a clean stop, 1 when the model cannot load."""
    import signal

    host = InferenceHost(options, PipeReport(status_fd))

    async def main() -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, host.stop)
        with NoRetries()():  # the queue handles a busy server itself, in milliseconds
            try:
                await host.serve()
            except InferenceError as exc:
                log.error("%s", exc)
                return 1
        return 0

    return asyncio.run(main())
