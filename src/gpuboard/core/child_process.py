"""What every long-lived child of `gpuboard worker` gets between fork and exec."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import sys

_PR_SET_PDEATHSIG = 1


def prepare_child() -> None:
    """Runs in the child between fork and exec (a `preexec_fn`).

    SIGINT back to its default: a process started from a background shell job inherits
    SIGINT *ignored*, and Prefect's worker, which stops by sending itself SIGINT, then
    never stops. On Linux, also ask for SIGTERM when the parent dies, so a `gpuboard
    worker` killed hard leaves no Prefect worker or inference host (holding GPU slots)
    running on its own.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
