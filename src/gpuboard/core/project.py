"""Finds the Prefect project gpuboard deploys: the folder that holds its `prefect.yaml`.

The project ships in the package (`gpuboard/flows/`: prefect.yaml and the flows it names by
module path), so `gpuboard up` deploys the same thing from a checkout and from an install.
"""

from __future__ import annotations

import os
from pathlib import Path

import gpuboard.flows
from gpuboard.core.config import ConfigError

PROJECT_DIR_ENV = "GPUBOARD_PROJECT_DIR"
PREFECT_FILE = "prefect.yaml"


def packaged_project_dir() -> Path:
    """The project inside the installed package (in a checkout, `src/gpuboard/flows/`)."""
    return Path(gpuboard.flows.__file__).resolve().parent


def is_project_dir(path: Path) -> bool:
    """True when `path` holds a `prefect.yaml`."""
    return (path / PREFECT_FILE).is_file()


def find_project_dir() -> Path:
    """`$GPUBOARD_PROJECT_DIR` where set (a prefect.yaml of one's own, e.g. with other job
    variables), else the project shipped in the package; ConfigError when the setting
    names a folder without a prefect.yaml.

    The current folder is not looked at: the flow runs import the installed package's
    flows, so the deployment comes from the same installation, wherever gpuboard runs.
    """
    configured = os.environ.get(PROJECT_DIR_ENV, "").strip()
    if not configured:
        return packaged_project_dir()
    path = Path(configured).expanduser().resolve()
    if not is_project_dir(path):
        raise ConfigError(
            f"{PROJECT_DIR_ENV}={configured} has no {PREFECT_FILE}: point it at a folder "
            f"with one, or unset it to deploy the one in the package ({packaged_project_dir()})"
        )
    return path
