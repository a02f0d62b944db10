"""Publishes a worker's inference-host state as Prefect events, for boards anywhere.

Event `gpuboard.host.state` on the worker's resource (`gpuboard.worker.<id>`, as its GPU
samples): at once when the state changes (at most one every PUBLISH_MIN_GAP_S) and every
HEARTBEAT_S while it does not, so that a board can tell a live host from a dead worker.
A board on Prefect's events websocket sees each one as it is published, not when the
server's event persister has written it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from datetime import datetime, timezone
from typing import Any

from gpuboard.core.host.state import HEARTBEAT_S, HostState, state_from_payload, state_to_payload
from gpuboard.core.prefect.events import emit_event, read_latest_per_resource
from gpuboard.core.prefect.poll_client import NoRetries, poll_client

EVENT_NAME = "gpuboard.host.state"
RESOURCE_PREFIX = "gpuboard.worker."
PUBLISH_MIN_GAP_S = 0.5

log = logging.getLogger(__name__)


async def publish_state(client: Any, state: HostState) -> None:
    await emit_event(
        client,
        EVENT_NAME,
        resource={
            "prefect.resource.id": f"{RESOURCE_PREFIX}{state.worker}",
            "prefect.resource.name": state.worker,
            "gpuboard.host": state.host,
        },
        payload=state_to_payload(state),
        occurred=datetime.fromtimestamp(state.updated_at, tz=timezone.utc),
    )


async def read_published_states(client: Any, since: datetime) -> list[HostState]:
    """The newest host state each worker published since `since` (one request)."""
    states = []
    for event in await read_latest_per_resource(client, EVENT_NAME, RESOURCE_PREFIX, since):
        state = state_from_event_payload(event.payload)
        if state is not None:
            states.append(state)
    return states


def state_from_event_payload(payload: dict[str, Any]) -> HostState | None:
    try:
        return state_from_payload(payload)
    except (KeyError, TypeError, ValueError) as exc:
        # A payload from another gpuboard version must not hide everyone else's.
        log.debug("skipping host state: %s", exc)
        return None


class HostStatePublisher:
    """Publishes the newest state given to `update()` from a daemon thread of its own."""

    def __init__(self, api_url: str, *, heartbeat_s: float = HEARTBEAT_S) -> None:
        self.api_url = api_url
        self.heartbeat_s = heartbeat_s
        self.published = 0
        self._state: HostState | None = None
        self._changed = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def update(self, state: HostState) -> None:
        with self._lock:
            self._state = state
        self._changed.set()

    def start(self) -> HostStatePublisher:
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._loop()), name="gpuboard-host-state", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Publish the last state once more (a stopped host says so), then stop."""
        self._stop.set()
        self._changed.set()
        if self._thread is not None:
            self._thread.join(timeout)

    async def _loop(self) -> None:
        failing = False
        with NoRetries()():
            async with poll_client(self.api_url) as client:
                while True:
                    stopping = self._stop.is_set()
                    self._changed.clear()
                    with self._lock:
                        state = self._state
                    if state is not None:
                        # Stamped when published: an unchanged state re-sent as a heartbeat
                        # is as fresh as the host it speaks for.
                        state = state.with_changes(updated_at=time.time())
                        try:
                            await publish_state(client, state)
                        except Exception as exc:
                            if not failing:
                                log.warning(
                                    "cannot publish host state to %s: %s",
                                    self.api_url,
                                    str(exc) or type(exc).__name__,
                                )
                            failing = True
                        else:
                            failing = False
                            self.published += 1
                    if stopping:
                        return
                    await asyncio.sleep(PUBLISH_MIN_GAP_S)
                    await asyncio.to_thread(self._changed.wait, self.heartbeat_s)
