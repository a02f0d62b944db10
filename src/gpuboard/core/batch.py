"""Submits a batch of `process-image` runs that a retry can repeat without loss or duplicates.

Every run is created with an idempotency key made of (deployment, batch, image id). The
server returns the existing run for a known key, so submitting the same batch again
creates exactly the runs that are missing and reports the others as already existing.
A submission first reads which runs the batch already has (one filtered read per 200),
then creates the missing ones 100 per request with Prefect's bulk endpoint (one by one
on a server without it).
The batch is named by the operator (`--batch`) or, by default, by its source template:
submitting the same ids from the same source twice is a retry, not new work.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal
from uuid import UUID

import httpx
from prefect.client.orchestration import PrefectClient

from gpuboard.core.audit import record_action
from gpuboard.core.config import DEPLOYMENT_FULL_NAME
from gpuboard.core.images import SAMPLE, SourceError, parse_source
from gpuboard.core.limit_actions import ReadOnlyError
from gpuboard.core.prefect.client import async_client
from gpuboard.core.prefect.runs import (
    BULK_CREATE_MAX,
    BulkCreateUnsupported,
    RunRequest,
    create_run_once,
    create_runs_bulk,
    deployment_id,
    runs_by_idempotency_key,
)

# Bulk requests (100 runs each) in flight. Measured on the embedded SQLite server, 2
# cores, 1,000 runs (bench/batch_create.py): 1 at a time 51 runs/s, 2 at a time 17 runs/s
# with 400 runs still refused after every retry: SQLite takes one writer at a time and
# two bulk transactions make each other fail ("database is locked"). A PostgreSQL server
# may take more (`--concurrency`).
DEFAULT_CONCURRENCY = 1
MAX_CONCURRENCY = 16
# Retries of one run on errors that may pass (server busy, connection lost). Safe: the
# idempotency key makes a retry of an already-created run return that run.
_ATTEMPTS = 3
_RETRY_DELAY_S = 1.0
# Bulk requests: runs per request, and rounds of retries for runs SQLite refused while
# another writer (the event persister's flush) held the lock: waits of 0.2, 0.4, 0.8,
# 1.6, 3.2 s, the first long enough for one flush of the embedded server.
_CHUNK = BULK_CREATE_MAX
_BULK_ATTEMPTS = 6
_BULK_RETRY_DELAY_S = 0.2
_KEY_NAME_MAX = 80
# Tags gpuboard sets itself; an operator's tag may not pose as one.
BATCH_TAG_PREFIX = "batch:"
MAX_TAGS = 20
MAX_TAG_LENGTH = 100

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


def validate_tags(tags: Sequence[str]) -> tuple[str, ...]:
    """The operator's extra tags, stripped, each once; BatchInputError names a bad one."""
    cleaned: list[str] = []
    for raw in tags:
        tag = raw.strip()
        if not tag:
            raise BatchInputError("a tag is empty")
        if len(tag) > MAX_TAG_LENGTH:
            raise BatchInputError(f"tag {tag[:20]!r}... is longer than {MAX_TAG_LENGTH} characters")
        if tag.startswith(BATCH_TAG_PREFIX):
            raise BatchInputError(
                f"tag {tag!r}: tags starting with {BATCH_TAG_PREFIX!r} are gpuboard's own "
                "(name the batch with --batch instead)"
            )
        if tag not in cleaned:
            cleaned.append(tag)
    if len(cleaned) > MAX_TAGS:
        raise BatchInputError(f"at most {MAX_TAGS} tags, not {len(cleaned)}")
    return tuple(cleaned)


def batch_tag(batch: str) -> str:
    """The tag every run of `batch` carries: how the batch's runs are found again."""
    return f"{BATCH_TAG_PREFIX}{batch_token(batch)}"


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
    tags: Sequence[str] = (),
    read_only: bool = False,
) -> BatchReport:
    """Create one run of `deployment` per image id, skipping those the batch already has.

    Each run is tagged `batch:<batch>` and with `tags`. Errors of single runs become
    `failed` outcomes with their reason; only a missing deployment or an unreachable
    server before the first run raise. `read_only` refuses (ReadOnlyError) before any
    request, and the refusal is audited.
    """
    if read_only:
        record_action(
            "batch.submit",
            f"{deployment} batch {(batch or '').strip() or source}",
            after={"requested": len(image_ids)},
            result="refused: read-only",
        )
        raise ReadOnlyError("gpuboard runs read-only: batches cannot be submitted")
    source = validate_source(source)
    extra_tags = validate_tags(tags)
    batch_name = (batch or "").strip() or source
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise BatchInputError(f"concurrency must be between 1 and {MAX_CONCURRENCY}")
    if len(set(image_ids)) != len(image_ids):
        raise BatchInputError("an image id is listed twice")
    run_tags = [batch_tag(batch_name), *extra_tags]

    def request(image_id: int) -> RunRequest:
        return RunRequest(
            parameters={"image_id": image_id, "source": source},
            idempotency_key=idempotency_key(deployment, batch_name, image_id),
            name=f"image-{image_id}",
            tags=run_tags,
        )

    tally = _Tally(len(image_ids), on_progress)
    async with async_client(api_url) as client:
        target = await deployment_id(client, deployment)
        # One cheap read finds what an earlier try of this batch already made, so a
        # retry sends only the missing runs (their keys still guard against a race).
        wanted = {request(i).idempotency_key: i for i in image_ids}
        found = await runs_by_idempotency_key(client, target, batch_tag(batch_name), set(wanted))
        for key, run_id in found.items():
            tally.add(RunOutcome(wanted[key], "existing", run_id))
        missing = [i for i in image_ids if i not in tally.outcomes]
        try:
            await _create_in_bulk(client, target, missing, request, tally, concurrency)
        except BulkCreateUnsupported:
            left = [i for i in missing if i not in tally.outcomes]
            await _create_one_by_one(client, target, left, request, tally, concurrency)

    report = BatchReport(batch_name, deployment, tuple(tally.outcomes[i] for i in image_ids))
    counts = tally.counts
    record_action(
        "batch.submit",
        f"{deployment} batch {batch_name}",
        after={"requested": len(image_ids), **counts},
        result="ok" if report.ok else f"{counts['failed']} failed",
    )
    return report


class _Tally:
    """Outcomes so far, by image id, and the progress callback after each one."""

    def __init__(self, total: int, on_progress: ProgressCallback | None) -> None:
        self.total = total
        self.on_progress = on_progress
        self.outcomes: dict[int, RunOutcome] = {}
        self.counts = {"created": 0, "existing": 0, "failed": 0}

    def add(self, outcome: RunOutcome) -> None:
        self.outcomes[outcome.image_id] = outcome
        self.counts[outcome.status] += 1
        if self.on_progress is not None:
            self.on_progress(
                BatchProgress(len(self.outcomes), self.total, **self.counts, last=outcome)
            )


async def _create_in_bulk(
    client: PrefectClient,
    target: UUID,
    image_ids: list[int],
    request: Callable[[int], RunRequest],
    tally: _Tally,
    concurrency: int,
) -> None:
    """Create the runs BULK_CREATE_MAX at a time; `concurrency` requests in flight.

    A run SQLite refused for the moment ("database is locked", answered per run) and a
    request that failed as a whole for a reason that may pass are tried again; the marker
    makes a retried request still report the runs its lost answer had created.
    """
    submission = uuid.uuid4().hex
    order = {image_id: n for n, image_id in enumerate(image_ids)}
    pending = list(image_ids)
    for attempt in range(1, _BULK_ATTEMPTS + 1):
        retry = await _bulk_round(
            client,
            target,
            pending,
            request,
            tally,
            concurrency=concurrency,
            submission=submission,
            last_try=attempt == _BULK_ATTEMPTS,
        )
        if not retry:
            return
        pending = sorted(retry, key=order.__getitem__)
        await asyncio.sleep(_BULK_RETRY_DELAY_S * 2 ** (attempt - 1))


async def _bulk_round(
    client: PrefectClient,
    target: UUID,
    image_ids: list[int],
    request: Callable[[int], RunRequest],
    tally: _Tally,
    *,
    concurrency: int,
    submission: str,
    last_try: bool,
) -> list[int]:
    """Send `image_ids` once, in chunks; the ids worth another round are returned.

    A request that fails as a whole has already been retried by Prefect's client (busy
    answers, timeouts, a lost connection: about a minute of back-offs, long enough for a
    server restart), so it ends the submission: its runs and those not yet sent are
    reported failed with the reason, for the operator's retry to create.
    """
    retry: list[int] = []
    unsupported: list[BulkCreateUnsupported] = []
    stopped: list[str] = []
    chunks = iter([image_ids[i : i + _CHUNK] for i in range(0, len(image_ids), _CHUNK)])

    async def lane() -> None:
        for chunk in chunks:  # lanes share one iterator: each chunk is taken once
            if unsupported or stopped:
                _fail(
                    chunk, f"not sent, an earlier request failed: {stopped[0]}" if stopped else ""
                )
                continue
            try:
                answers = await create_runs_bulk(
                    client, target, [request(i) for i in chunk], submission=submission
                )
            except BulkCreateUnsupported as exc:
                unsupported.append(exc)  # every lane stops; the caller goes one by one
                return
            except Exception as exc:
                stopped.append(_reason(exc))
                _fail(chunk, stopped[-1])
                continue
            for image_id, answer in zip(chunk, answers, strict=True):
                if answer.flow_run_id is not None:
                    status: Status = "created" if answer.created else "existing"
                    tally.add(RunOutcome(image_id, status, answer.flow_run_id))
                elif answer.transient and not last_try:
                    retry.append(image_id)
                else:
                    tally.add(RunOutcome(image_id, "failed", reason=answer.error))

    def _fail(chunk: list[int], reason: str) -> None:
        if not unsupported:  # with no bulk endpoint the caller sends these one by one
            for image_id in chunk:
                tally.add(RunOutcome(image_id, "failed", reason=reason))

    await asyncio.gather(*(lane() for _ in range(min(concurrency, len(image_ids) or 1))))
    if unsupported:
        raise unsupported[0]
    if stopped:
        _fail(retry, f"not retried, a request failed: {stopped[0]}")
        return []
    return retry


async def _create_one_by_one(
    client: PrefectClient,
    target: UUID,
    image_ids: list[int],
    request: Callable[[int], RunRequest],
    tally: _Tally,
    concurrency: int,
) -> None:
    """For servers without the bulk endpoint: one create per run, `concurrency` at a time."""
    pending = iter(image_ids)

    async def submit_one(image_id: int) -> RunOutcome:
        wanted = request(image_id)
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                run = await create_run_once(
                    client,
                    target,
                    parameters=wanted.parameters,
                    idempotency_key=wanted.idempotency_key,
                    name=wanted.name,
                    tags=wanted.tags,
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
            tally.add(await submit_one(image_id))

    await asyncio.gather(*(lane() for _ in range(min(concurrency, len(image_ids) or 1))))


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
