"""Appends each operator action to the audit log: JSON lines under gpuboard's home."""

from __future__ import annotations

import getpass
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gpuboard.core.config import gpuboard_home


def audit_log_path() -> Path:
    return gpuboard_home() / "audit.log"


def operator_name() -> str:
    """Who acts: the login name, as the audit log records it."""
    return _user()


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, e.g. in some containers
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"


def record_action(
    action: str,
    target: str,
    *,
    before: Any = None,
    after: Any = None,
    result: str = "ok",
    path: Path | None = None,
) -> dict[str, Any]:
    """Append one action and return the entry written.

    One `write` of one line on a file opened for appending keeps lines whole when the board
    and the CLI record at the same time.
    """
    entry = {
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "user": _user(),
        "action": action,
        "target": target,
        "before": before,
        "after": after,
        "result": result,
    }
    log_path = path or audit_log_path()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(entry, default=str, sort_keys=True) + "\n"
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    return entry
