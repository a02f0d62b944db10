"""Which process runs `gpuboard worker --id X`, published as a Prefect Variable, so that the
next start of X can tell at once whether the previous one is dead.

A killed worker keeps counting "online" in Prefect for a few heartbeats (~25 s with
gpuboard's settings): without this record a quick restart (systemd, a supervisor) could
not tell its predecessor's runs from a live twin's, and left them Pending for minutes.
"""

from __future__ import annotations

import contextlib
import hashlib

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import VariableCreate
from prefect.exceptions import ObjectNotFound

from gpuboard.core.process_identity import ProcessIdentity

RECORD_TAG = "gpuboard-worker"


def variable_name(worker_id: str) -> str:
    """Variable names are lowercase letters, digits, `-` and `_`; worker ids are wider."""
    return f"gpuboard-worker-{hashlib.sha256(worker_id.encode()).hexdigest()[:20]}"


async def publish_worker_process(
    client: PrefectClient, worker_id: str, process: ProcessIdentity, *, run_limit: int | None = None
) -> None:
    """Record `process` as the one running worker `worker_id` (replacing any record), with
    its flow-run limit (`--runs`), which the server does not otherwise know: the board
    says from it whether the worker is full (core/why.py)."""
    await forget_worker_process(client, worker_id)
    await client.create_variable(
        VariableCreate(
            name=variable_name(worker_id),
            value={
                "worker": worker_id,
                "host": process.host,
                "pid": process.pid,
                "pid_namespace": process.pid_namespace,
                "start_ticks": process.start_ticks,
                "runs": run_limit,
            },
            tags=[RECORD_TAG],
        )
    )


async def read_worker_process(client: PrefectClient, worker_id: str) -> ProcessIdentity | None:
    """The process last recorded for `worker_id`; None when none is (or it does not parse)."""
    variable = await client.read_variable_by_name(variable_name(worker_id))
    value = variable.value if variable is not None else None
    if not isinstance(value, dict) or value.get("worker") != worker_id:
        return None
    try:
        ticks = value.get("start_ticks")
        return ProcessIdentity(
            host=str(value["host"]),
            pid=int(value["pid"]),
            pid_namespace=str(value.get("pid_namespace") or ""),
            start_ticks=None if ticks is None else int(ticks),
        )
    except (KeyError, TypeError, ValueError):
        return None


async def forget_worker_process(client: PrefectClient, worker_id: str) -> None:
    with contextlib.suppress(ObjectNotFound):
        await client.delete_variable_by_name(variable_name(worker_id))
