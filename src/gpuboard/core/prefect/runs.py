"""Creates flow runs of a deployment idempotently and counts runs by state, cheaply."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import DeploymentFlowRunCreate
from prefect.exceptions import ObjectNotFound


class DeploymentMissing(LookupError):
    """The deployment runs are asked of does not exist on the server."""


@dataclass(frozen=True)
class CreatedRun:
    """A flow run asked for with an idempotency key, and whether this call made it."""

    flow_run_id: UUID
    created: bool  # False: a run with that key already existed and was returned instead


async def deployment_id(client: PrefectClient, full_name: str) -> UUID:
    """The id of deployment `flow/deployment`; DeploymentMissing says how to create it."""
    try:
        deployment = await client.read_deployment_by_name(full_name)
    except ObjectNotFound as exc:
        raise DeploymentMissing(
            f"deployment {full_name!r} does not exist on this server: "
            "run `gpuboard up`, or `prefect deploy --all` in the gpuboard checkout"
        ) from exc
    return deployment.id


async def create_run_once(
    client: PrefectClient,
    deployment: UUID,
    *,
    parameters: dict[str, Any],
    idempotency_key: str,
    name: str | None = None,
    tags: list[str] | None = None,
) -> CreatedRun:
    """Create a run of `deployment` unless one with `idempotency_key` exists.

    The client's `create_flow_run_from_deployment` hides whether the run is new; the server
    says it in the status code (201 new, 200 the existing run for that key), so the
    request is sent here directly.
    """
    body = DeploymentFlowRunCreate(
        parameters=parameters,
        idempotency_key=idempotency_key,
        name=name,
        tags=tags or [],
    )
    response = await client.request(
        "POST",
        "/deployments/{id}/create_flow_run",
        path_params={"id": deployment},
        json=body.model_dump(mode="json", exclude_unset=True),
    )
    return CreatedRun(UUID(response.json()["id"]), created=response.status_code == 201)


async def count_runs_by_state(
    client: PrefectClient, *, work_pool: str | None = None, deployment: str | None = None
) -> Counter[str]:
    """Flow runs by state type (SCHEDULED, RUNNING, COMPLETED, ...), in one cheap request.

    One history interval spanning all time gives the counts grouped by state in a single
    query (~11 ms with 700 runs), where reading runs would cost a page per 200 of them.
    """
    # Runs are bucketed by expected start; scheduled runs may lie a while in the future.
    start = datetime(2000, 1, 1, tzinfo=timezone.utc)
    end = datetime.now(timezone.utc) + timedelta(days=366)
    body: dict[str, Any] = {
        "history_start": start.isoformat(),
        "history_end": end.isoformat(),
        "history_interval_seconds": (end - start).total_seconds(),
    }
    if work_pool is not None:
        body["work_pools"] = {"name": {"any_": [work_pool]}}
    if deployment is not None:
        flow_name, _, deployment_name = deployment.partition("/")
        body["flows"] = {"name": {"any_": [flow_name]}}
        body["deployments"] = {"name": {"any_": [deployment_name]}}
    response = await client.request("POST", "/flow_runs/history", json=body)
    counts: Counter[str] = Counter()
    for interval in response.json():
        for state in interval["states"]:
            counts[state["state_type"]] += state["count_runs"]
    return counts
