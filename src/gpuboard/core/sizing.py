"""How many flow runs a worker runs at once by default, and how many threads its inference
host gives ONNX Runtime, from the machine's cores.

Each flow run is its own process that imports Prefect and the model stack (~1-2 CPU
seconds) before it reaches its GPU step. Runs beyond the GPU slots are worth having: they
download and load while the GPU is busy, so a slot never waits for a run to arrive. Too
many and their start-ups starve the CPU the GPU step needs. Measured (bench/RESULTS.md,
2 cores, 2 workers, limit 2): 10 runs per worker left slots waiting for runs still
starting (process start to flow body p50 17-23 s; 4.5x the ideal makespan, timeouts);
3 per worker finished all 40 runs (3.6x, bounded by the 2 cores).
"""

from __future__ import annotations

import os
import re

# The most a default gives, whatever the cores: past this the server's SQLite writes,
# not the CPU, bound a single worker (see DESIGN.md).
MAX_DEFAULT_RUNS = 16


def default_runs_per_worker(gpu_slots: int, workers: int = 1, cores: int | None = None) -> int:
    """The GPU slots plus one run per two cores that each worker has to itself (at least
    one): 3 for 2 workers with 2 slots on 2 cores, 10 for 1 worker with 2 slots on 16."""
    cores = cores or os.cpu_count() or 1
    spare = max(1, cores // (2 * max(1, workers)))
    return max(1, min(MAX_DEFAULT_RUNS, gpu_slots + spare))


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS says)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def inference_threads_per_worker(workers: int = 1, cores: int | None = None) -> int:
    """ONNX Runtime intra-op threads for each of `workers` inference hosts on one machine:
    a share of the cores each, rather than every host (and, before the host, every flow-run
    process) bringing a pool as large as the machine to the same cores."""
    return max(1, (cores or usable_cores()) // max(1, workers))


_LARGEST_SIZE = float(1 << 60)
_SIZE_UNITS = {"": 1, "B": 1, "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}
_SIZE_UNITS.update({"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40})
_SIZE_UNITS.update({"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12})


def parse_size(text: str) -> int:
    """'8GiB', '512 MiB', '1.5G', '2000000000' as bytes; ValueError naming the text."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text)
    if match is None:
        raise ValueError(f"{text!r} is not a size such as 8GiB or 512MiB")
    number, unit = match.groups()
    if unit.upper() not in _SIZE_UNITS:
        raise ValueError(f"{text!r}: unknown unit {unit!r} (use B, KiB, MiB, GiB, TiB)")
    size = float(number) * _SIZE_UNITS[unit.upper()]
    if not 0 < size < _LARGEST_SIZE:
        raise ValueError(f"{text!r}: a size must be above 0 and below 1 EiB")
    return int(size)
