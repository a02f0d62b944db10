"""A real inference host (its own process, the real OCR model) under its real supervisor,
against a real Prefect server: requests served within the GCL's limit, pause and resize
without reload, the plain `concurrency()` way sharing the slots, and the kill cases: a
client killed while waiting or while its inference runs, and the host itself killed."""

from __future__ import annotations

import contextvars
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
)
from prefect.concurrency.sync import concurrency

from gpuboard.core.config import gcl_name
from gpuboard.core.host.client import HostReply, HostSlotError, read_via_host
from gpuboard.core.host.supervisor import HostConfig, HostSupervisor, default_socket_path
from gpuboard.core.images import load_image, sample_text
from gpuboard.core.inference import ModelSettings
from gpuboard.core.local_server import LocalServer
from gpuboard.core.prefect.client import sync_client
from gpuboard.core.prefect.slots import read_gcl_now
from support.intervals import max_overlap

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

REQUEST_SCRIPT = Path(__file__).resolve().parents[1] / "support" / "host_request.py"
LIMIT = 2


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until `condition()` held; fails the test after `timeout`."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout:.0f} s"
        time.sleep(0.02)
    return time.monotonic() - started


class Host:
    """One worker's GCL and its supervised inference host."""

    def __init__(self, api_url: str) -> None:
        self.worker = f"host-{uuid.uuid4().hex[:8]}"
        self.gcl = gcl_name(self.worker)
        with sync_client() as client:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=self.gcl, limit=LIMIT)
            )
        self.socket = default_socket_path(self.worker, api_url)
        self.lines: list[str] = []
        self.supervisor = HostSupervisor(
            HostConfig(self.worker, api_url, self.socket, ModelSettings(threads=2)),
            say=self.lines.append,
        ).start()
        self.wait_ready()

    def wait_ready(self) -> None:
        wait_for(lambda: self.supervisor.state.status == "ready", 120, "host ready")

    def set_limit(self, limit: int) -> None:
        with sync_client() as client:
            client.update_global_concurrency_limit(
                self.gcl, GlobalConcurrencyLimitUpdate(limit=limit)
            )

    def active_slots(self) -> int:
        state = read_gcl_now(self.gcl)
        assert state is not None
        return state.active_slots

    def read(self, image_id: int) -> HostReply:
        pixels = load_image(image_id, "sample").pixels
        return read_via_host(self.socket, image_id, pixels, task_run_id=None, flow_run_id=None)

    def client_process(self, image_id: int, lines: int = 0) -> subprocess.Popen[str]:
        command = [sys.executable, str(REQUEST_SCRIPT), str(self.socket), str(image_id)]
        if lines:
            command += ["--lines", str(lines)]
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert process.stdout is not None
        assert "sending" in process.stdout.readline()  # imports done, about to send
        return process


@pytest.fixture(scope="module")
def host(prefect_server: LocalServer) -> Iterator[Host]:
    started = Host(prefect_server.api_url)
    try:
        yield started
    finally:
        started.supervisor.stop()


@pytest.fixture(autouse=True)
def limit_back_to_default(host: Host) -> Iterator[None]:
    yield
    host.set_limit(LIMIT)


class SlotSampler(threading.Thread):
    """Reads the GCL's active slots on the server every 50 ms until stopped."""

    def __init__(self, host: Host) -> None:
        super().__init__(daemon=True)
        self.host, self.most, self._stop_event = host, 0, threading.Event()
        self._context = contextvars.copy_context()
        self.start()

    def run(self) -> None:
        self._context.run(self._sample)

    def _sample(self) -> None:
        while not self._stop_event.is_set():
            self.most = max(self.most, self.host.active_slots())
            time.sleep(0.05)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.most


def in_threads(count: int, target: Callable[[int], Any]) -> list[Any]:
    results: list[Any] = [None] * count

    def run(index: int) -> None:
        try:
            results[index] = target(index)
        except BaseException as exc:
            results[index] = exc

    threads = [
        threading.Thread(target=contextvars.copy_context().run, args=(run, i)) for i in range(count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


def test_concurrent_requests_are_served_within_the_limit_by_one_model(host: Host) -> None:
    sampler = SlotSampler(host)
    replies = in_threads(8, lambda i: host.read(i + 1))
    most_on_server = sampler.stop()
    assert all(isinstance(reply, HostReply) for reply in replies), replies
    assert [reply.ocr.text for reply in replies] == [sample_text(i + 1) for i in range(8)]
    assert most_on_server <= LIMIT
    spans = [(r.timings.inference_started_at, r.timings.inference_ended_at) for r in replies]
    assert max_overlap(spans) <= LIMIT
    assert max(reply.timings.slot_wait_s for reply in replies) > 0.05  # some really waited
    # One model, loaded once, served them all.
    assert {(reply.host.pid, reply.host.started_at) for reply in replies} == {
        (host.supervisor.pid, replies[0].host.started_at)
    }
    assert host.supervisor.model_loads == 1
    assert host.active_slots() == 0


def test_the_host_state_says_what_it_serves(host: Host) -> None:
    served = host.supervisor.state.served
    assert host.read(90).ocr.text == sample_text(90)
    # Reported coalesced (every 0.2 s at most): the count arrives just after the answer.
    wait_for(lambda: host.supervisor.state.served > served, 5, "the served count reported")
    state = host.supervisor.state
    assert state.status == "ready" and state.worker == host.worker
    assert state.provider == "CPUExecutionProvider" and state.device == "cpu"
    assert state.model == "PP-OCRv6_det_small+PP-OCRv6_rec_small"
    assert state.inference_p50_s is not None
    assert state.threads == 2
    assert json.loads(json.dumps(state.extra)) == {}


def test_pause_holds_requests_and_resume_serves_them_without_reload(host: Host) -> None:
    pid = host.supervisor.pid
    host.set_limit(0)
    result: list[Any] = []
    waiter = threading.Thread(
        target=contextvars.copy_context().run, args=(lambda: result.append(host.read(21)),)
    )
    waiter.start()
    wait_for(lambda: host.supervisor.state.paused, 10, "host reports paused")
    assert host.supervisor.state.queued == 1
    time.sleep(1.0)
    assert not result and host.active_slots() == 0
    host.set_limit(1)
    waiter.join(30)
    assert result and result[0].ocr.text == sample_text(21)
    assert result[0].timings.slot_wait_s >= 1.0
    assert host.supervisor.pid == pid  # no reload
    wait_for(lambda: not host.supervisor.state.paused, 5, "host reports resumed")


def test_plain_concurrency_users_share_the_slots_with_the_host(host: Host) -> None:
    """The seed's way (`concurrency("gpu:<id>")` in the flow's own process) and the host's
    requests take slots of the same GCL: never more than the limit between them."""
    sampler = SlotSampler(host)

    def plain(_: int) -> str:
        with concurrency(host.gcl, occupy=1, strict=True, lease_duration=60):
            time.sleep(0.4)
        return "done"

    def mixed(index: int) -> Any:
        return plain(index) if index % 2 else host.read(index + 30)

    results = in_threads(8, mixed)
    assert sampler.stop() <= LIMIT
    assert all(not isinstance(result, BaseException) for result in results), results
    assert host.active_slots() == 0


def test_a_client_killed_while_waiting_leaves_the_line(host: Host) -> None:
    host.set_limit(1)
    with sync_client() as client:
        # Someone else holds the only slot: the client below has to wait.
        response = client.request(
            "POST",
            "/v2/concurrency_limits/increment-with-lease",
            json={"names": [host.gcl], "slots": 1, "mode": "concurrency", "lease_duration": 60},
        )
    lease_id = response.json()["lease_id"]
    time.sleep(0.5)  # the host's state is reported coalesced: let earlier requests' land
    served = host.supervisor.state.served
    client_process = host.client_process(41)
    wait_for(lambda: host.supervisor.state.queued == 1, 20, "client queued")
    client_process.send_signal(signal.SIGKILL)
    client_process.wait()
    wait_for(lambda: host.supervisor.state.queued == 0, 10, "dead client out of the line")
    with sync_client() as client:
        client.request(
            "POST", "/v2/concurrency_limits/decrement-with-lease", json={"lease_id": lease_id}
        )
    time.sleep(1.0)
    assert host.active_slots() == 0  # the freed slot went to nobody
    assert host.supervisor.state.served == served


@pytest.mark.parametrize("kill_after_s", [0.0, 0.4], ids=["just-granted", "mid-inference"])
def test_a_client_killed_holding_a_slot_gives_it_back_when_its_inference_ends(
    host: Host, kill_after_s: float
) -> None:
    client_process = host.client_process(50, lines=60)  # a ~1.5 s inference
    wait_for(lambda: host.active_slots() == 1, 20, "client holds a slot")
    time.sleep(kill_after_s)
    killed = time.monotonic()
    client_process.send_signal(signal.SIGKILL)
    client_process.wait()
    freed_after = wait_for(lambda: host.active_slots() == 0, 30, "slot freed")
    # Without the host's watch on the connection it would stay held until the lease expired
    # (60 s); with it, when the inference that cannot be cut short ends.
    print(f"slot freed {freed_after:.2f} s after the client was killed")
    assert time.monotonic() - killed < 30
    assert host.read(51).ocr.text == sample_text(51)  # and the host serves on


def test_a_killed_host_is_restarted_and_the_slots_it_held_are_released(host: Host) -> None:
    first_pid = host.supervisor.pid
    assert first_pid is not None
    clients = [host.client_process(60 + i, lines=60) for i in range(2)]
    wait_for(lambda: host.active_slots() == LIMIT, 20, "both slots held")
    os.kill(first_pid, signal.SIGKILL)
    killed = time.monotonic()
    freed_after = wait_for(lambda: host.active_slots() == 0, 15, "dead host's slots released")
    print(f"slots of the killed host freed after {freed_after:.2f} s")
    for client_process in clients:
        _, stderr = client_process.communicate(timeout=30)
        assert client_process.returncode != 0
        assert "went away while it held the request" in stderr  # HostLost: retried by the flow
    host.wait_ready()
    assert host.supervisor.pid not in (None, first_pid)
    assert host.supervisor.restarts == 1 and host.supervisor.model_loads == 2
    assert any("was killed by SIGKILL" in line and "released" in line for line in host.lines)
    assert host.read(70).ocr.text == sample_text(70)
    assert time.monotonic() - killed < 120


def test_a_missing_gcl_fails_the_request_with_how_to_fix_it(host: Host) -> None:
    with sync_client() as client:
        client.delete_global_concurrency_limit_by_name(host.gcl)
    try:
        with pytest.raises(HostSlotError, match=f"gpuboard worker --id {host.worker}"):
            host.read(80)
    finally:
        with sync_client() as client:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=host.gcl, limit=LIMIT)
            )
