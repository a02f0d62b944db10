"""When the board may read less often: what an operator sees of a snapshot, without the
clocks, so that two reads showing the same fleet compare equal.

An open board that nothing happens on still read the API every refresh; measured with
10,000 runs on 2 cores (bench/dashboard_refresh.py): 7.7 % of one core at a 1 s refresh,
4.7 % at 2 s, 1.7 % at 5 s. So after IDLE_AFTER_READS unchanged reads the board reads
every IDLE_READ_EVERY_S (the clock on screen still ticks each refresh); the first change,
or any key, brings the configured refresh back.
"""

from __future__ import annotations

from collections.abc import Hashable

from gpuboard.core.models import Snapshot

IDLE_AFTER_READS = 10
IDLE_READ_EVERY_S = 5.0
# GPU memory moving by less than this is not a change (allocator noise, NVML rounding).
_MEMORY_STEP = 64 * 1024 * 1024


def fingerprint(snapshot: Snapshot) -> Hashable:
    """Everything the board shows that is not a clock: workers, slots and steps, run counts
    and lists, GPU memory (to 64 MiB), errors. Heartbeat and sample ages are left out."""
    workers = tuple(
        (
            w.name,
            w.in_pool,
            w.online,
            w.gcl,
            w.running,
            w.waiting,
            w.downloading,
            w.loading,
            w.inferring,
            w.saving,
            w.advice,
        )
        for w in snapshot.workers
    )
    runs = tuple(
        (r.id, r.state_name, r.worker, r.step)
        for r in snapshot.running + snapshot.next_queued + snapshot.failures
    )
    gpus = tuple(
        (
            reading.host,
            reading.unavailable,
            reading.workers,
            tuple(
                (gpu.key, gpu.memory_used // _MEMORY_STEP, gpu.utilization, len(gpu.processes))
                for gpu in reading.gpus
            ),
        )
        for reading in snapshot.gpu_readings
    )
    errors = tuple((e.source, e.kind, e.message) for e in snapshot.errors)
    return (workers, snapshot.runs, runs, gpus, errors)
