"""How many flow runs a worker runs at once by default, from the machine's cores.

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

# The most a default gives, whatever the cores: past this the server's SQLite writes,
# not the CPU, bound a single worker (see DESIGN.md).
MAX_DEFAULT_RUNS = 16


def default_runs_per_worker(gpu_slots: int, workers: int = 1, cores: int | None = None) -> int:
    """The GPU slots plus one run per two cores that each worker has to itself (at least
    one): 3 for 2 workers with 2 slots on 2 cores, 10 for 1 worker with 2 slots on 16."""
    cores = cores or os.cpu_count() or 1
    spare = max(1, cores // (2 * max(1, workers)))
    return max(1, min(MAX_DEFAULT_RUNS, gpu_slots + spare))
