"""A warm runner does not keep each finished run's Prefect log and events workers (and
their clients) alive: what it frees after a run is really freed."""

from __future__ import annotations

import gc
import weakref

from prefect.events import emit_event
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker

from gpuboard.core.local_server import LocalServer
from gpuboard.core.warm.runner import forget_stopped_services


def test_a_finished_runs_events_worker_is_freed(prefect_server: LocalServer) -> None:
    # What a flow run does with events: the first emit starts an events worker, which
    # connects to the server; the run's end stops it.
    emit_event(event="gpuboard.test.memory", resource={"prefect.resource.id": "gpuboard.test"})
    events_worker = weakref.ref(EventsWorker.instance())
    EventsWorker.drain_all(timeout=10, at_exit=False)
    APILogWorker.drain_all(timeout=10, at_exit=False)
    gc.collect()
    assert events_worker() is not None, "Prefect no longer keeps stopped services: drop the fix"

    assert forget_stopped_services() >= 1
    gc.collect()
    assert events_worker() is None
    # A new run gets a working events worker again.
    emit_event(event="gpuboard.test.memory", resource={"prefect.resource.id": "gpuboard.test"})
    assert EventsWorker.drain_all(timeout=10, at_exit=False) is not False
