"""The audit log keeps one whole JSON line per action."""

from __future__ import annotations

import json
from pathlib import Path

from gpuboard.core.audit import audit_log_path, record_action


def test_actions_are_appended_as_json_lines(isolated_home: Path) -> None:
    record_action("limit.set", "gpu:gpu-1", before=2, after=3)
    record_action("limit.set", "gpu:gpu-1", before=3, after=0, result="error: boom")
    lines = audit_log_path().read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    assert [e["after"] for e in entries] == [3, 0]
    assert entries[1]["result"] == "error: boom"
    assert set(entries[0]) == {"time", "user", "action", "target", "before", "after", "result"}
    assert audit_log_path().parent == isolated_home
