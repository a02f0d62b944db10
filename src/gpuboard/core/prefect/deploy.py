"""Deploys `process-image` from the project's prefect.yaml, the way an operator would.

It runs `prefect deploy` in the project folder (core/project.py: the one shipped in the
package) rather than rebuilding the deployment in Python, so prefect.yaml stays the one
description of the deployment (module-path entrypoint, no pull step, pool) and `gpuboard up`
and a hand-run `prefect deploy --all` give the same result.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gpuboard.core.config import DEPLOYMENT_NAME


class DeployError(RuntimeError):
    """`prefect deploy` failed; the message carries the end of its output."""


def deploy_process_image(
    project_dir: Path, api_url: str, *, pool: str | None = None, timeout: float = 180.0
) -> None:
    """Create or update the deployment `process-image/process-image` on `api_url`.

    `pool` overrides prefect.yaml's work pool (`ml-pool`). The pool must exist already
    (`prefect deploy` refuses a missing pool).
    """
    command = [
        sys.executable,
        "-m",
        "prefect",
        "--no-prompt",
        "deploy",
        # Only ours by name: `--all` would also deploy anything else a user added.
        "--name",
        DEPLOYMENT_NAME,
        *(["--pool", pool] if pool else []),
    ]
    env = {**os.environ, "PREFECT_API_URL": api_url}
    try:
        done = subprocess.run(
            command,
            cwd=project_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise DeployError(f"`prefect deploy` did not finish within {timeout:.0f}s") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-25:])
        raise DeployError(f"`prefect deploy` in {project_dir} failed ({done.returncode}):\n{tail}")
