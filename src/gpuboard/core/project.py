"""Finds the gpuboard project folder: the one with `prefect.yaml` and `flows/`."""

from __future__ import annotations

import os
from pathlib import Path

import gpuboard
from gpuboard.core.config import ConfigError

PROJECT_DIR_ENV = "GPUBOARD_PROJECT_DIR"
FLOW_FILE = Path("flows") / "process_image.py"


def is_project_dir(path: Path) -> bool:
    """True when `path` holds gpuboard's `prefect.yaml` and its flow file."""
    return (path / "prefect.yaml").is_file() and (path / FLOW_FILE).is_file()


def find_project_dir(cwd: Path | None = None) -> Path:
    """The project folder: `$GPUBOARD_PROJECT_DIR`, else the current folder, else the checkout
    this package is installed from (an editable install); ConfigError when none fits.

    The flow runs read their code from this folder (prefect.yaml's pull step), so a wrong
    guess would fail every run later: we rather fail now, saying what we looked at.
    """
    configured = os.environ.get(PROJECT_DIR_ENV, "").strip()
    if configured:
        path = Path(configured).expanduser().resolve()
        if not is_project_dir(path):
            raise ConfigError(
                f"{PROJECT_DIR_ENV}={configured} has no prefect.yaml and {FLOW_FILE}: "
                "point it at the gpuboard checkout"
            )
        return path
    here = (cwd or Path.cwd()).resolve()
    # src/gpuboard/__init__.py -> the checkout root, for `pip install -e .`
    package_root = Path(gpuboard.__file__).resolve().parent.parent.parent
    for candidate in (here, package_root):
        if is_project_dir(candidate):
            return candidate
    raise ConfigError(
        f"cannot find the gpuboard project (prefect.yaml and {FLOW_FILE}) in {here} "
        f"or {package_root}: run from the gpuboard checkout or set {PROJECT_DIR_ENV}"
    )
