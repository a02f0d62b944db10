"""A trivial flow for bench/interpreter_start.py: three tasks that return at once.

Nothing in it takes time, so a flow run's cost is the cost of starting it: the
interpreter(s), `import prefect`, the engine, the pull step, the flow load. At the top of
its body the flow writes one JSON record into the folder named by `BENCH_OUT` (nothing
when unset): when the body started, when its process started (from /proc), its pid and
parent, its working directory, its command line and the worker's `WORKER_ID`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.runtime import flow_run

OUT_ENV = "BENCH_OUT"


def process_started_at(pid: int | str = "self") -> float:
    """Epoch seconds when process `pid` started (fork time; an exec keeps it), from /proc.

    Boot time is taken as now - /proc/uptime (10 ms), not /proc/stat's btime: that one is
    whole seconds, up to 1 s off, which every process start would inherit.
    """
    stat = Path(f"/proc/{pid}/stat").read_text()
    start_ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: starttime
    boot = time.time() - float(Path("/proc/uptime").read_text().split()[0])
    return boot + start_ticks / os.sysconf("SC_CLK_TCK")


def _cmdline(pid: int | str) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def write_record(folder: Path, record: dict[str, Any]) -> None:
    """Write `record` as `<flow run id>.json` in `folder`, atomically (write, then rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{record['flow_run_id']}.json"
    partial = final.with_suffix(".part")
    partial.write_text(json.dumps(record))
    partial.replace(final)


@task(persist_result=False)
def first() -> int:
    return 1


@task(persist_result=False)
def second() -> int:
    return 2


@task(persist_result=False)
def third() -> int:
    return 3


@flow(name="bench-trivial", persist_result=False)
def trivial(index: int = 0) -> int:
    body = time.time()
    out = os.environ.get(OUT_ENV)
    if out:
        write_record(
            Path(out),
            {
                "flow_run_id": str(flow_run.get_id()),
                "index": index,
                "body": body,
                "process_started_at": process_started_at(),
                "pid": os.getpid(),
                "ppid": os.getppid(),
                "parent_cmdline": _cmdline(os.getppid()),
                "cmdline": _cmdline("self"),
                "cwd": os.getcwd(),
                "worker_id": os.environ.get("WORKER_ID"),
                "module_file": __file__,
                "sys_path_0": sys.path[0] if sys.path else None,
            },
        )
    return first() + second() + third()
