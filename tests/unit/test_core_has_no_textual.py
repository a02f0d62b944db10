"""gpuboard.core stays free of Textual: `status`, the CLI and flows must not pay for it."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import importlib, pkgutil, sys
import gpuboard.core as core
names = [m.name for m in pkgutil.walk_packages(core.__path__, prefix="gpuboard.core.")]
for name in names:
    importlib.import_module(name)
loaded = sorted(m for m in sys.modules if m == "textual" or m.startswith("textual."))
print(len(names), loaded)
"""


def test_importing_every_core_module_does_not_import_textual() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr
    count, loaded = result.stdout.strip().split(" ", 1)
    assert int(count) >= 10  # it did walk the package
    assert loaded == "[]", f"gpuboard.core imported Textual: {loaded}"
