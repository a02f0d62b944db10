"""Applies an operator's limit change to a worker's GCL: validated, remembered, audited."""

from __future__ import annotations

from dataclasses import dataclass

from prefect.client.orchestration import PrefectClient

from gpuboard.core.audit import record_action
from gpuboard.core.config import gcl_name
from gpuboard.core.limits import LimitChange, LimitInputError, validate_limit
from gpuboard.core.models import GclState
from gpuboard.core.prefect.gcl import ensure_gcl, read_gcl, set_gcl_limit
from gpuboard.core.prefect.pause_memory import (
    forget_pause,
    limit_before_pause,
    remember_limit_before_pause,
)


class ReadOnlyError(PermissionError):
    """A write was asked of a board or CLI started with --read-only."""


@dataclass(frozen=True)
class LimitOutcome:
    """What a limit change did, with a sentence for the operator."""

    worker: str
    before: int
    after: GclState
    message: str


def _consequence(before: GclState, after: int) -> str:
    name = before.name
    if after == 0:
        return (
            f"{name} paused: {before.active_slots} inference(s) in flight finish, "
            "waiting runs wait (they do not fail) until it is resumed"
        )
    if after < before.active_slots:
        return (
            f"{name} set to {after} while {before.active_slots} slots are in use: the in-flight "
            f"inferences finish; new ones start once fewer than {after} are running"
        )
    if before.limit == 0:
        return f"{name} resumed at {after}"
    return f"{name} set from {before.limit} to {after}"


async def change_worker_limit(
    client: PrefectClient, worker: str, change: LimitChange, *, read_only: bool = False
) -> LimitOutcome:
    """Apply `change` to gcl `gpu:<worker>`; raises LimitInputError / ReadOnlyError with reasons.

    Every attempt, refused ones included, goes to the audit log.
    """
    name = gcl_name(worker)
    action = f"limit.{change.kind}"
    if read_only:
        record_action(action, name, result="refused: read-only")
        raise ReadOnlyError("gpuboard runs read-only: limits cannot be changed")
    current = await read_gcl(client, name)
    if current is None:
        record_action(action, name, result="refused: no such GCL")
        raise LimitInputError(
            f"worker {worker!r} has no GCL {name}: create it with "
            f"`gpuboard worker --id {worker} --gpu-slots N` or from the board"
        )
    try:
        resume_to = await limit_before_pause(client, name) if change.kind == "resume" else None
        new_limit = change.target(current.limit, resume_to=resume_to)
    except LimitInputError as exc:
        record_action(action, name, before=current.limit, result=f"refused: {exc}")
        raise
    if new_limit == 0 and current.limit > 0:
        await remember_limit_before_pause(client, name, current.limit)
    try:
        after = await set_gcl_limit(client, name, new_limit)
    except Exception as exc:
        record_action(action, name, before=current.limit, after=new_limit, result=f"error: {exc}")
        raise
    if new_limit > 0 and current.limit == 0:
        await forget_pause(client, name)
    record_action(action, name, before=current.limit, after=after.limit)
    return LimitOutcome(worker, current.limit, after, _consequence(current, new_limit))


async def create_worker_gcl(
    client: PrefectClient, worker: str, limit: int, *, read_only: bool = False
) -> GclState:
    """Create GCL `gpu:<worker>` with `limit` for a worker that has none; audited.

    An existing GCL is left as it is (LimitInputError says so): changing it is a limit
    change, with its own consequences shown to the operator.
    """
    name = gcl_name(worker)
    if read_only:
        record_action("gcl.create", name, result="refused: read-only")
        raise ReadOnlyError("gpuboard runs read-only: limits cannot be created")
    validate_limit(limit)
    try:
        state, created = await ensure_gcl(client, name, limit)
    except Exception as exc:
        record_action("gcl.create", name, after=limit, result=f"error: {exc}")
        raise
    if not created:
        record_action("gcl.create", name, before=state.limit, result="refused: exists")
        raise LimitInputError(f"{name} exists already (limit {state.limit}): change it instead")
    record_action("gcl.create", name, after=state.limit)
    return state
