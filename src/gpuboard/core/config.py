"""Names and paths every part of gpuboard agrees on: pool, deployment, GCL names, home folder."""

from __future__ import annotations

import os
import re
from pathlib import Path

DEFAULT_POOL = "ml-pool"
FLOW_NAME = "process-image"
DEPLOYMENT_NAME = "process-image"
DEPLOYMENT_FULL_NAME = f"{FLOW_NAME}/{DEPLOYMENT_NAME}"
GCL_PREFIX = "gpu:"
# The API URL of the embedded stack; used when no Prefect setting names another one.
EMBEDDED_API_URL = "http://127.0.0.1:4200/api"
WORKER_ID_ENV = "WORKER_ID"
# Flow-run heartbeat period of gpuboard workers' runs (Prefect's minimum; its default is
# 180 s): what `gpuboard worker` sets and what the board expects unless told otherwise.
FLOW_HEARTBEAT_S = 30
FLOW_HEARTBEAT_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"


class ConfigError(RuntimeError):
    """A setting is missing or wrong; the message says what to do."""


def gcl_name(worker_id: str) -> str:
    """The name of the Global Concurrency Limit that guards `worker_id`'s GPU."""
    return f"{GCL_PREFIX}{worker_id}"


def worker_of_gcl(name: str) -> str | None:
    """The worker id of a `gpu:<id>` GCL name, None for any other name."""
    return name[len(GCL_PREFIX) :] if name.startswith(GCL_PREFIX) else None


def current_worker_id() -> str:
    """The worker this process runs under, from `WORKER_ID` (set by `gpuboard worker`)."""
    worker_id = os.environ.get(WORKER_ID_ENV, "").strip()
    if not worker_id:
        raise ConfigError(
            f"{WORKER_ID_ENV} is not set: start workers with `gpuboard worker --id <id>` "
            f"so that flow runs know which GPU slot (gcl `{GCL_PREFIX}<id>`) to take"
        )
    return worker_id


def gpuboard_home() -> Path:
    """gpuboard's own folder: `$GPUBOARD_HOME`, else `~/.gpuboard`."""
    return Path(os.environ.get("GPUBOARD_HOME") or Path.home() / ".gpuboard").expanduser()


def results_dir() -> Path:
    """Where `save_results` writes: `$GPUBOARD_RESULTS_DIR`, else `<home>/results`."""
    configured = os.environ.get("GPUBOARD_RESULTS_DIR")
    return Path(configured).expanduser() if configured else gpuboard_home() / "results"


def configured_api_url() -> str:
    """The Prefect API this process talks to: Prefect's own setting, else the embedded one."""
    from prefect.settings import PREFECT_API_URL

    return (PREFECT_API_URL.value() or EMBEDDED_API_URL).rstrip("/")


READ_ONLY_ENV = "GPUBOARD_READ_ONLY"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def read_only_from_env() -> bool:
    """Whether `GPUBOARD_READ_ONLY` asks for read-only mode; ConfigError on a value that is
    neither yes nor no, rather than a guess either way."""
    value = os.environ.get(READ_ONLY_ENV, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(
        f"{READ_ONLY_ENV}={value!r} is neither on nor off: use 1/true/yes or 0/false/no"
    )


_WORKER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,99}$")


def validate_worker_id(text: str) -> str:
    """A worker id as typed, or ConfigError: it names a GCL (`gpu:<id>`) that goes into
    URLs, so only letters, digits and `._@+-` (at most 100), starting with a letter or digit."""
    worker = text.strip()
    if not _WORKER_ID.match(worker):
        raise ConfigError(
            f"{worker!r} is not a worker id: use letters, digits and . _ @ + - "
            "(at most 100, starting with a letter or digit), e.g. gpu-1"
        )
    return worker
