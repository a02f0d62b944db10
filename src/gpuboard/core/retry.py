"""Runs the failed and crashed runs of a batch again (`gpuboard retry`, `R` on the board).

Each run of the batch that is Failed or Crashed is re-queued as itself (the same flow run
id, moved to AwaitingRetry as Prefect's UI "Retry" does), so a worker of its pool runs it
again. Retrying is idempotent: a re-queued run is no longer Failed or Crashed, so a second
retry skips it and says so. The report names every run tried or found re-queued already,
and counts the batch's other runs by state. Each call is recorded in the audit log.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from uuid import UUID

from prefect.client.schemas.objects import StateType

from gpuboard.core.audit import record_action
from gpuboard.core.batch import BATCH_TAG_PREFIX, batch_tag
from gpuboard.core.limit_actions import ReadOnlyError
from gpuboard.core.prefect.cancelling import failure_reason
from gpuboard.core.prefect.client import async_client
from gpuboard.core.prefect.retrying import (
    RETRY_STATUSES,
    DeploymentCheck,
    RetryOutcome,
    requeue_if_failed,
    requeued_already,
    runs_in_states,
    runs_tagged,
)

__all__ = [
    "DEFAULT_RETRY_STATES",
    "BatchFailures",
    "RetryInputError",
    "RetryOutcome",
    "RetryReport",
    "batches_to_retry",
    "format_retry_report",
    "parse_retry_states",
    "retry_batch",
]

# What `--state` may name, and the state type each means.
RETRYABLE_STATES: dict[str, StateType] = {"failed": StateType.FAILED, "crashed": StateType.CRASHED}
DEFAULT_RETRY_STATES: tuple[str, ...] = ("failed", "crashed")
RetryProgress = Callable[[int, int], None]


class RetryInputError(ValueError):
    """A retry that cannot be done as asked (bad --state, empty batch name)."""


def parse_retry_states(text: str) -> tuple[str, ...]:
    """`failed,crashed` (any order, any case) as ("failed", "crashed"); each once."""
    names: list[str] = []
    for part in text.split(","):
        name = part.strip().lower()
        if name not in RETRYABLE_STATES:
            raise RetryInputError(
                f"--state {part.strip()!r}: say failed, crashed or failed,crashed"
            )
        if name not in names:
            names.append(name)
    return tuple(names)


@dataclass(frozen=True)
class RetryReport:
    """The exact result of one retry of a batch.

    `outcomes`: one per run that was Failed/Crashed when listed, or found re-queued
    already; `others`: the batch's remaining runs counted by state name.
    """

    batch: str
    states: tuple[str, ...]
    outcomes: tuple[RetryOutcome, ...]
    others: dict[str, int] = field(default_factory=dict)

    def with_status(self, status: str) -> list[RetryOutcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def requeued(self) -> list[RetryOutcome]:
        return self.with_status("requeued")

    @property
    def skipped(self) -> list[RetryOutcome]:
        return self.with_status("skipped")

    @property
    def failed(self) -> list[RetryOutcome]:
        return self.with_status("failed")

    @property
    def total_runs(self) -> int:
        return len(self.outcomes) + sum(self.others.values())

    @property
    def ok(self) -> bool:
        return not self.failed


async def retry_batch(
    batch: str,
    *,
    states: Sequence[str] = DEFAULT_RETRY_STATES,
    api_url: str | None = None,
    read_only: bool = False,
    on_progress: RetryProgress | None = None,
) -> RetryReport:
    """Re-queue the runs of `batch` that are in `states` (failed, crashed); see the module.

    `read_only` refuses (ReadOnlyError) before any request, and the refusal is audited.
    An unknown batch gives a report with no runs (`total_runs == 0`).
    """
    name = batch.strip()
    target = f"batch {name}"
    if read_only:
        record_action("batch.retry", target, result="refused: read-only")
        raise ReadOnlyError("gpuboard runs read-only: runs cannot be retried")
    if not name:
        raise RetryInputError("say which batch: --batch NAME")
    wanted_names = tuple(parse_retry_states(",".join(states))) if states else DEFAULT_RETRY_STATES
    wanted = frozenset(RETRYABLE_STATES[s] for s in wanted_names)
    outcomes: list[RetryOutcome] = []
    others: Counter[str] = Counter()
    to_retry: list[tuple[UUID, str]] = []
    before: Counter[str] = Counter()
    try:
        async with async_client(api_url) as client:
            async for row in runs_tagged(client, batch_tag(name)):
                state = row.get("state") or {}
                state_name = state.get("name") or "no state"
                state_type = state.get("type") or ""
                run_id = UUID(row["id"])
                if state_type in {t.value for t in wanted}:
                    to_retry.append((run_id, state_name))
                    before[state_name] += 1
                    continue
                already = requeued_already(state_name, state_type, int(row.get("run_count") or 0))
                if already is not None:
                    outcomes.append(
                        RetryOutcome(run_id, row.get("name") or "", "skipped", state_name, already)
                    )
                else:
                    others[state_name] += 1
            deployments = DeploymentCheck(client)
            for run_id, _ in to_retry:
                outcomes.append(await requeue_if_failed(client, run_id, wanted, deployments))
                if on_progress is not None:
                    on_progress(len(outcomes), len(to_retry))
    except Exception as exc:
        record_action(
            "batch.retry",
            target,
            before=dict(before),
            after=_counts(outcomes),
            result=f"error: {failure_reason(exc)}",
        )
        raise
    report = RetryReport(name, wanted_names, tuple(outcomes), dict(others))
    counts = _counts(outcomes)
    record_action(
        "batch.retry",
        target,
        before={"states": list(wanted_names), **before},
        after=counts,
        result="ok" if report.ok else f"{counts['failed']} failed",
    )
    return report


def _counts(outcomes: Sequence[RetryOutcome]) -> dict[str, int]:
    return {s: sum(o.status == s for o in outcomes) for s in RETRY_STATUSES}


@dataclass(frozen=True)
class BatchFailures:
    """A batch with runs to retry: how many are Failed and how many Crashed."""

    batch: str
    failed: int
    crashed: int

    @property
    def total(self) -> int:
        return self.failed + self.crashed


async def batches_to_retry(
    *, api_url: str | None = None, pool: str | None = None
) -> list[BatchFailures]:
    """The batches (of `pool`) that have Failed or Crashed runs, most such runs first.

    Found from the `batch:` tag every submitted run carries; a run without one is no
    batch's and not listed.
    """
    counts: dict[str, Counter[str]] = {}
    async with async_client(api_url) as client:
        async for row in runs_in_states(client, frozenset(RETRYABLE_STATES.values()), pool=pool):
            state_type = str((row.get("state") or {}).get("type"))
            for tag in row.get("tags") or ():
                if tag.startswith(BATCH_TAG_PREFIX):
                    counts.setdefault(tag[len(BATCH_TAG_PREFIX) :], Counter())[state_type] += 1
    found = [
        BatchFailures(batch, c[StateType.FAILED.value], c[StateType.CRASHED.value])
        for batch, c in counts.items()
    ]
    return sorted(found, key=lambda b: (-b.total, b.batch))


def format_retry_report(report: RetryReport) -> str:
    """The report `gpuboard retry` prints and the board shows: one line per run."""
    states = ",".join(report.states)
    if report.total_runs == 0:
        return f"batch {report.batch!r}: no runs on this server (is the name right?)"
    lines = [
        f"batch {report.batch!r}: {report.total_runs} runs; retrying those {states}",
        f"re-queued: {len(report.requeued)}",
        *(f"  {_who(o)}  was {o.state_before}" for o in report.requeued),
        f"skipped:   {len(report.skipped)}",
        *(f"  {_who(o)}  {o.reason}" for o in report.skipped),
    ]
    if report.failed:
        lines.append(f"failed:    {len(report.failed)}")
        lines.extend(f"  {_who(o)}  {o.reason}" for o in report.failed)
    if report.others:
        rest = ", ".join(f"{n} {state}" for state, n in sorted(report.others.items()))
        lines.append(f"not retried (not {states}): {rest}")
    return "\n".join(lines)


def _who(outcome: RetryOutcome) -> str:
    return f"{outcome.name} ({outcome.flow_run_id})" if outcome.name else str(outcome.flow_run_id)
