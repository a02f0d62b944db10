"""Re-queues a failed or crashed flow run on the server, the way Prefect's UI "Retry" does.

The UI proposes a Scheduled state named AwaitingRetry (not forced) to the same flow run:
the server lets a run of a deployment leave Failed or Crashed that way, a worker of its
pool picks it up again (Pending, Submitting, Running) as the same flow run. The audit, the
read-only guard and the report live in gpuboard.core.retry; this module is only the
Prefect side: which runs a batch has, and the state change itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas import OrchestrationResult
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.exceptions import ObjectNotFound
from prefect.states import AwaitingRetry

from gpuboard.core.prefect.cancelling import failure_reason
from gpuboard.core.prefect.runs import filtered_runs

RetryStatus = Literal["requeued", "skipped", "failed"]
RETRY_STATUSES: tuple[RetryStatus, ...] = ("requeued", "skipped", "failed")
AWAITING_RETRY = "AwaitingRetry"
RETRY_MESSAGE = "retried by gpuboard"


@dataclass(frozen=True)
class RetryOutcome:
    """What retrying one run did; `reason` says why it was skipped or failed."""

    flow_run_id: UUID
    name: str
    status: RetryStatus
    state_before: str  # the state name it had when it was read ("Failed", "Crashed", ...)
    reason: str | None = None


def requeued_already(state_name: str, state_type: str, run_count: int) -> str | None:
    """Why a run of the batch counts as re-queued already, or None.

    AwaitingRetry waits for a worker; a Pending run that ran before (run_count >= 1) is
    one its worker is starting; a Running one on its second run or later runs again (a
    worker's states after a retry: AwaitingRetry, Pending, Submitting, Running).
    """
    if state_name == AWAITING_RETRY:
        return "already re-queued, waiting for a worker (AwaitingRetry)"
    if state_type == StateType.PENDING.value and run_count >= 1:
        return f"already re-queued, its worker is starting it ({state_name})"
    if state_type == StateType.RUNNING.value and run_count >= 2:
        return f"already re-queued, running again ({state_name})"
    return None


async def runs_tagged(
    client: PrefectClient,
    tag: str,
    *,
    state_types: frozenset[StateType] | None = None,
    pool: str | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Every flow run carrying `tag` (optionally only in `state_types`, of `pool`), oldest
    first, as JSON rows."""
    runs: dict[str, Any] = {"tags": {"all_": [tag]}}
    if state_types is not None:
        runs["state"] = {"type": {"any_": sorted(t.value for t in state_types)}}
    body: dict[str, Any] = {"flow_runs": runs, "sort": "EXPECTED_START_TIME_ASC"}
    if pool is not None:
        body["work_pools"] = {"name": {"any_": [pool]}}
    async for row in filtered_runs(client, body):
        yield row


async def runs_in_states(
    client: PrefectClient, state_types: frozenset[StateType], *, pool: str | None = None
) -> AsyncIterator[dict[str, Any]]:
    """Every flow run in `state_types` (of `pool`), newest first, as JSON rows."""
    body: dict[str, Any] = {
        "flow_runs": {"state": {"type": {"any_": sorted(t.value for t in state_types)}}},
        "sort": "EXPECTED_START_TIME_DESC",
    }
    if pool is not None:
        body["work_pools"] = {"name": {"any_": [pool]}}
    async for row in filtered_runs(client, body):
        yield row


class DeploymentCheck:
    """Whether a deployment still exists, asked once per deployment per retry."""

    def __init__(self, client: PrefectClient) -> None:
        self.client = client
        self.known: dict[UUID, bool] = {}

    async def exists(self, deployment_id: UUID) -> bool:
        if deployment_id not in self.known:
            try:
                await self.client.read_deployment(deployment_id)
                self.known[deployment_id] = True
            except ObjectNotFound:
                self.known[deployment_id] = False
        return self.known[deployment_id]


async def requeue_if_failed(
    client: PrefectClient,
    flow_run_id: UUID,
    wanted: frozenset[StateType],
    deployments: DeploymentCheck,
) -> RetryOutcome:
    """Move `flow_run_id` to AwaitingRetry if it is still in one of `wanted`.

    The run is read again right before: one that changed since the batch was listed (a
    retry from elsewhere, a worker that finished it) is skipped with what it is now.
    """
    try:
        run: FlowRun = await client.read_flow_run(flow_run_id)
    except ObjectNotFound:
        return RetryOutcome(flow_run_id, "", "skipped", "", "the flow run was deleted")
    except Exception as exc:
        return RetryOutcome(flow_run_id, "", "failed", "", failure_reason(exc))
    state = run.state
    shown = (state.name if state is not None else None) or "no state"
    if state is None or state.type not in wanted:
        already = requeued_already(shown, state.type.value, run.run_count) if state else None
        why = already or f"not failed any more: it is {shown}"
        return RetryOutcome(flow_run_id, run.name, "skipped", shown, why)
    if run.deployment_id is None:
        # Prefect empties a run's deployment when the deployment is deleted, and refuses
        # to reschedule a run without one: nothing would know how to run it.
        return RetryOutcome(
            flow_run_id, run.name, "skipped", shown, "its deployment is gone (or it never had one)"
        )
    try:
        if not await deployments.exists(run.deployment_id):
            gone = f"its deployment {run.deployment_id} is gone"
            return RetryOutcome(flow_run_id, run.name, "skipped", shown, gone)
        result: OrchestrationResult[Any] = await client.set_flow_run_state(
            flow_run_id, AwaitingRetry(message=RETRY_MESSAGE), force=False
        )
    except Exception as exc:
        return RetryOutcome(flow_run_id, run.name, "failed", shown, failure_reason(exc))
    if result.state is not None and result.state.name == AWAITING_RETRY:
        return RetryOutcome(flow_run_id, run.name, "requeued", shown)
    why = getattr(result.details, "reason", None) or f"server answered {result.status.value}"
    return RetryOutcome(flow_run_id, run.name, "failed", shown, why)
