"""Submits a batch of `process-image` runs that a retry can repeat without loss or duplicates.

Every run is created with an idempotency key made of (deployment, batch, image id). The
server returns the existing run for a known key, so submitting the same batch again
creates exactly the runs that are missing and reports the others as already existing.
The batch is named by the operator (`--batch`) or, by default, by its source template:
submitting the same ids from the same source twice is a retry, not new work.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal
from uuid import UUID

import httpx

from gpuboard.core.audit import record_action
from gpuboard.core.config import DEPLOYMENT_FULL_NAME
from gpuboard.core.images import SAMPLE, SourceError, parse_source
from gpuboard.core.prefect.client import async_client
from gpuboard.core.prefect.runs import create_run_once, deployment_id

# Measured on the embedded SQLite server, 2 busy cores, 30-60 runs per try, repeated tries:
# 1 at a time 1.4-10.0 runs/s (the best in 6 of 10 side-by-side tries), 2 at a time
# 1.1-9.8, 3-4 at a time 1.2-6.3, 8 at a time 0.9-5.5. Creates queue on SQLite's single
# write lock; a "database is locked" answers 503 and the client backs off for seconds, so
# more lanes mostly add back-offs. A PostgreSQL server takes more (`--concurrency`).
DEFAULT_CONCURRENCY = 1
MAX_CONCURRENCY = 16
# Retries of one run on errors that may pass (server busy, connection lost). Safe: the
# idempotency key makes a retry of an already-created run return that run.
_ATTEMPTS = 3
_RETRY_DELAY_S = 1.0
_KEY_NAME_MAX = 80

Status = Literal["created", "existing", "failed"]


class BatchInputError(ValueError):
    """A batch that cannot be submitted as asked; the message says why."""


@dataclass(frozen=True)
class RunOutcome:
    """What submitting one image id did."""

    image_id: int
    status: Status
    flow_run_id: UUID | None = None
    reason: str | None = None  # why it failed


@dataclass(frozen=True)
class BatchProgress:
    """Running totals, given to the progress callback after every image id."""

    done: int
    total: int
    created: int
    existing: int
    failed: int
    last: RunOutcome


@dataclass(frozen=True)
class BatchReport:
    """The exact result of one submission, one outcome per image id in id order."""

    batch: str
    deployment: str
    outcomes: tuple[RunOutcome, ...]

    def ids(self, status: Status) -> list[int]:
        return [o.image_id for o in self.outcomes if o.status == status]

    @property
    def created(self) -> list[int]:
        return self.ids("created")

    @property
    def existing(self) -> list[int]:
        return self.ids("existing")

    @property
    def failed(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def flow_run_ids(self) -> list[UUID]:
        """The runs of this batch on the server, new and existing."""
        return [o.flow_run_id for o in self.outcomes if o.flow_run_id is not None]


ProgressCallback = Callable[[BatchProgress], None]


def validate_source(source: str) -> str:
    """`sample`, or a template with `{image_id}` (`file:///data/{image_id}.png`, `https://…`).

    Checked here with the flow's own parser, so a bad template fails the submit instead
    of every run of the batch.
    """
    try:
        return parse_source(source).template
    except SourceError as exc:
        raise BatchInputError(str(exc)) from None


def batch_token(batch: str) -> str:
    """The batch's part of idempotency keys and tags: the name, or a digest of a long one."""
    if len(batch) <= _KEY_NAME_MAX:
        return batch
    return "sha256-" + hashlib.sha256(batch.encode()).hexdigest()[:24]


def idempotency_key(deployment: str, batch: str, image_id: int) -> str:
    """The key of image `image_id` in `batch`; Prefect keys are unique per flow, so the
    deployment is part of it."""
    return f"gpuboard:{deployment}:{batch_token(batch)}:{image_id}"


async def submit_batch(
    image_ids: Sequence[int],
    *,
    source: str = SAMPLE,
    batch: str | None = None,
    api_url: str | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    on_progress: ProgressCallback | None = None,
    deployment: str = DEPLOYMENT_FULL_NAME,
) -> BatchReport:
    """Create one run of `deployment` per image id, skipping those the batch already has.

    Errors of single runs become `failed` outcomes with their reason; only a missing
    deployment or an unreachable server before the first run raise.
    """
    source = validate_source(source)
    batch_name = (batch or "").strip() or source
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise BatchInputError(f"concurrency must be between 1 and {MAX_CONCURRENCY}")
    if len(set(image_ids)) != len(image_ids):
        raise BatchInputError("an image id is listed twice")
    outcomes: dict[int, RunOutcome] = {}
    counts = {"created": 0, "existing": 0, "failed": 0}
    pending = iter(image_ids)

    async with async_client(api_url) as client:
        target = await deployment_id(client, deployment)

        async def submit_one(image_id: int) -> RunOutcome:
            for attempt in range(1, _ATTEMPTS + 1):
                try:
                    run = await create_run_once(
                        client,
                        target,
                        parameters={"image_id": image_id, "source": source},
                        idempotency_key=idempotency_key(deployment, batch_name, image_id),
                        name=f"image-{image_id}",
                        tags=[f"batch:{batch_token(batch_name)}"],
                    )
                except Exception as exc:
                    if attempt < _ATTEMPTS and _may_pass(exc):
                        await asyncio.sleep(_RETRY_DELAY_S * attempt)
                        continue
                    return RunOutcome(image_id, "failed", reason=_reason(exc))
                status: Status = "created" if run.created else "existing"
                return RunOutcome(image_id, status, run.flow_run_id)
            raise AssertionError("unreachable")  # the loop always returns

        async def lane() -> None:
            for image_id in pending:  # lanes share one iterator: each id is taken once
                outcome = await submit_one(image_id)
                outcomes[image_id] = outcome
                counts[outcome.status] += 1
                if on_progress is not None:
                    on_progress(
                        BatchProgress(len(outcomes), len(image_ids), **counts, last=outcome)
                    )

        await asyncio.gather(*(lane() for _ in range(min(concurrency, len(image_ids)))))

    report = BatchReport(batch_name, deployment, tuple(outcomes[i] for i in image_ids))
    record_action(
        "batch.submit",
        f"{deployment} batch {batch_name}",
        after={"requested": len(image_ids), **counts},
        result="ok" if report.ok else f"{counts['failed']} failed",
    )
    return report


def _may_pass(exc: Exception) -> bool:
    """Errors worth another try: the server busy or overloaded, the connection lost."""
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code in (408, 429) or exc.response.status_code >= 500
    return isinstance(exc, httpx.TransportError)


def _reason(exc: Exception) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        try:
            detail = exc.response.json().get("detail")
        except ValueError:
            detail = exc.response.text[:200]
        return f"HTTP {exc.response.status_code}: {detail}"
    return f"{type(exc).__name__}: {exc}"


def compact_ids(ids: Sequence[int]) -> str:
    """`[1, 2, 3, 7, 9, 10]` as `1-3,7,9-10`: a report stays one line for big batches."""
    parts: list[str] = []
    ordered = sorted(ids)
    index = 0
    while index < len(ordered):
        end = index
        while end + 1 < len(ordered) and ordered[end + 1] == ordered[end] + 1:
            end += 1
        first, last = ordered[index], ordered[end]
        parts.append(str(first) if first == last else f"{first}-{last}")
        index = end + 1
    return ",".join(parts)


def format_report(report: BatchReport) -> str:
    """The report `gpuboard submit` prints: counts and ids of each outcome, every failure."""
    created, existing, failed = report.created, report.existing, report.failed
    lines = [
        f"batch {report.batch!r} of {report.deployment}: {len(report.outcomes)} ids",
        f"created:  {len(created)}" + (f"  ids {compact_ids(created)}" if created else ""),
        f"existing: {len(existing)}"
        + (f"  ids {compact_ids(existing)}" if existing else "")
        + ("  (submitted before: skipped)" if existing else ""),
        f"failed:   {len(failed)}"
        + (f"  ids {compact_ids([o.image_id for o in failed])}" if failed else ""),
    ]
    lines.extend(f"  id {o.image_id}: {o.reason}" for o in failed)
    if failed:
        lines.append("run the same command again to retry the failed ids; the others are skipped")
    return "\n".join(lines)
