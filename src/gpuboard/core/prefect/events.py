"""Emits gpuboard's own Prefect events, reads the latest one per resource back, and follows
them live on Prefect's events websocket."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from prefect.client.orchestration import PrefectClient
from prefect.events.filters import (
    EventFilter,
    EventNameFilter,
    EventOccurredFilter,
    EventOrder,
    EventResourceFilter,
)
from prefect.types import DateTime

# The most events one `/events/filter` page returns (the server's interactive page size).
PAGE_SIZE = 50


@dataclass(frozen=True)
class ReceivedEvent:
    """What the board needs of an event: which resource, when, and its payload."""

    resource_id: str
    occurred: datetime
    payload: dict[str, Any]


async def emit_event(
    client: PrefectClient,
    name: str,
    resource: dict[str, str],
    payload: dict[str, Any],
    occurred: datetime,
) -> None:
    """Record one event with a plain `POST /events`.

    Chosen over Prefect's websocket emitter: one short request per sample needs no
    background connection to keep alive in the worker, and a failure surfaces here.
    """
    event = {
        "id": str(uuid.uuid4()),
        "occurred": occurred.isoformat(),
        "event": name,
        "resource": resource,
        "related": [],
        "payload": payload,
    }
    response = await client.request("POST", "/events", json=[event])
    response.raise_for_status()


async def read_latest_per_resource(
    client: PrefectClient, name: str, resource_prefix: str, since: datetime
) -> list[ReceivedEvent]:
    """The newest event called `name` of each resource whose id starts with `resource_prefix`.

    One request: the server's `distinct` resource filter keeps the newest row per resource.
    At most PAGE_SIZE resources come back, newest first.
    """
    page = await client.read_events(
        filter=EventFilter(
            occurred=EventOccurredFilter(since=cast(DateTime, since)),
            event=EventNameFilter(name=[name]),
            resource=EventResourceFilter(id_prefix=[resource_prefix], distinct=True),
            order=EventOrder.DESC,
        ),
        limit=PAGE_SIZE,
    )
    return [
        ReceivedEvent(
            resource_id=event.resource.id, occurred=event.occurred, payload=dict(event.payload)
        )
        for event in page.events
    ]


async def follow_events(
    api_url: str, name: str, on_connected: Callable[[], None] = lambda: None
) -> AsyncIterator[ReceivedEvent]:
    """Events called `name` as the server receives them, on its events websocket
    (`/events/out`): seconds before the event persister makes them readable through
    `/events/filter`. Starts with the last minute's (Prefect's backfill). Raises when the
    connection cannot be made or is lost beyond Prefect's own few reconnection attempts.
    """
    from prefect.events.clients import PrefectEventSubscriber

    subscriber = PrefectEventSubscriber(
        api_url=api_url,
        filter=EventFilter(event=EventNameFilter(name=[name])),
        reconnection_attempts=2,
        reconnect_on_clean_close=True,
    )
    async with subscriber:
        on_connected()
        async for event in subscriber:
            yield ReceivedEvent(
                resource_id=event.resource.id, occurred=event.occurred, payload=dict(event.payload)
            )


async def read_recent(
    client: PrefectClient, name: str, since: datetime, limit: int = PAGE_SIZE
) -> list[ReceivedEvent]:
    """The newest `limit` events called `name` since `since`, newest first (one request)."""
    page = await client.read_events(
        filter=EventFilter(
            occurred=EventOccurredFilter(since=cast(DateTime, since)),
            event=EventNameFilter(name=[name]),
            order=EventOrder.DESC,
        ),
        limit=limit,
    )
    return [
        ReceivedEvent(
            resource_id=event.resource.id, occurred=event.occurred, payload=dict(event.payload)
        )
        for event in page.events
    ]
