"""Remembers, on the server, the limit a GCL had before it was paused, so any board resumes it.

Kept in a Prefect Variable rather than a local file: the operator who resumes may sit at
another machine than the one who paused.
"""

from __future__ import annotations

import re

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import VariableCreate, VariableUpdate

_UNSAFE = re.compile(r"[^a-z0-9_-]")


def _variable_name(gcl_name: str) -> str:
    # Variable names allow only letters, digits, dashes and underscores.
    return "gpuboard-paused-" + _UNSAFE.sub("_", gcl_name.lower())


async def remember_limit_before_pause(client: PrefectClient, gcl_name: str, limit: int) -> None:
    name = _variable_name(gcl_name)
    if await client.read_variable_by_name(name) is None:
        await client.create_variable(VariableCreate(name=name, value=limit))
    else:
        await client.update_variable(VariableUpdate(name=name, value=limit))


async def limit_before_pause(client: PrefectClient, gcl_name: str) -> int | None:
    variable = await client.read_variable_by_name(_variable_name(gcl_name))
    value = variable.value if variable is not None else None
    return value if isinstance(value, int) and value > 0 else None


async def forget_pause(client: PrefectClient, gcl_name: str) -> None:
    if await client.read_variable_by_name(_variable_name(gcl_name)) is not None:
        await client.delete_variable_by_name(_variable_name(gcl_name))
