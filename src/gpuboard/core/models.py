"""Frozen dataclasses that carry gpuboard's data between sources, actions and views."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from gpuboard.core.host.state import HostState
from gpuboard.core.run_timings import TimeSplit
from gpuboard.core.warm.state import ExecutorState


@dataclass(frozen=True)
class GclState:
    """One Global Concurrency Limit as the server holds it."""

    name: str
    limit: int
    active_slots: int
    active: bool

    @property
    def paused(self) -> bool:
        """Limit 0 is gpuboard's *pause*: the GPU step waits instead of running."""
        return self.active and self.limit == 0


# ---------------------------------------------------------------------------------------
# The dashboard's snapshot: everything one refresh knows, as immutable values. Sources
# build it, the TUI and `gpuboard status` only read it.
# ---------------------------------------------------------------------------------------

# How old a published GPU reading may be before the board marks it stale: a few missed
# publications (every 5 s) plus the server's event-persister flush (up to 5 s).
GPU_READING_STALE_AFTER = 30.0

# Where a running flow run is. "gpu" is the GPU step when the board cannot tell whether
# the run holds its slot ("infer") or waits for one ("waiting"); "load" is loading the
# model, where the flow does it in a task of its own.
Step = Literal["download", "load", "gpu", "infer", "waiting", "save"]
ErrorKind = Literal["unreachable", "error", "unavailable"]
# A drained worker takes no new flow runs: DRAINING while it still has some, then DRAINED.
DrainState = Literal["DRAINING", "DRAINED"]


@dataclass(frozen=True)
class SourceError:
    """A source that failed this refresh, carried as a value so the screen can say so."""

    source: str  # "prefect", "nvml" or "gpu-events"
    message: str
    kind: ErrorKind = "error"


@dataclass(frozen=True)
class GpuProcess:
    """One process holding memory on a GPU, mapped to its flow run where the PID tells."""

    pid: int
    memory_used: int | None  # bytes; None where NVML cannot tell (some containers, MIG)
    flow_run_id: str | None = None
    flow_run_name: str | None = None
    host_of: str | None = None  # the worker whose inference host this process is

    @property
    def is_inference(self) -> bool:
        """A flow-run process on a GPU: without an inference host, each one holds its own
        model and runs its inference (the one GPU step)."""
        return self.flow_run_id is not None


@dataclass(frozen=True)
class GpuSample:
    """One GPU as NVML reported it at `sampled_at` on machine `host`."""

    host: str
    index: int
    uuid: str
    name: str
    memory_used: int  # bytes
    memory_total: int  # bytes
    utilization: int | None  # percent of time a kernel ran; None where not supported
    processes: tuple[GpuProcess, ...]
    sampled_at: float  # epoch seconds

    @property
    def key(self) -> str:
        """Identifies this GPU across samples and machines."""
        return f"{self.host}/{self.uuid or self.index}"

    @property
    def memory_fraction(self) -> float:
        return self.memory_used / self.memory_total if self.memory_total else 0.0


@dataclass(frozen=True)
class GpuReading:
    """One machine's NVML read: its GPUs, or why it has none to show."""

    host: str
    sampled_at: float
    gpus: tuple[GpuSample, ...] = ()
    unavailable: str | None = None  # "NVML not available: <reason>"
    # The gpuboard workers that published this reading; empty for the board's own read.
    workers: tuple[str, ...] = ()
    local: bool = False  # read by this process rather than received from a worker
    # The PID namespace of the process that read it ("" where unknown): a worker's runs'
    # PIDs mean something to the board only where it is the board's own.
    pid_namespace: str = ""
    # Of `workers`, those whose runs' processes the board can see (same host and PID
    # namespace): set on the board's own reading by merge_readings.
    workers_sharing_pids: tuple[str, ...] = ()

    def age(self, now: float) -> float:
        return max(0.0, now - self.sampled_at)

    def stale(self, now: float) -> bool:
        return not self.local and self.age(now) > GPU_READING_STALE_AFTER


@dataclass(frozen=True)
class LimitAdvice:
    """How many inferences fit in a GPU's memory, next to the limit that lets them run."""

    gpu_key: str
    peak_per_inference: int  # bytes: the most one inference process has held
    usable_memory: int  # bytes: GPU memory minus what non-inference processes hold
    fits: int  # inferences that fit at that peak
    limit: int | None  # the sum of the limits of the workers sharing this GPU
    sharing_workers: tuple[str, ...] = ()

    @property
    def over_limit(self) -> bool:
        """limit × peak exceeds the memory there is: the GPU step can run out of memory."""
        return self.limit is not None and self.limit * self.peak_per_inference > self.usable_memory


@dataclass(frozen=True)
class WorkerView:
    """One worker of the pool (or one `gpu:*` GCL whose worker is gone), as the board shows it."""

    name: str
    in_pool: bool  # False: a `gpu:<name>` GCL exists but the pool has no such worker
    online: bool
    heartbeat_age: float | None  # seconds since its last heartbeat
    gcl: GclState | None
    running: int = 0  # its flow runs in state Running
    waiting: int = 0  # inference steps started but waiting for a GPU slot
    downloading: int = 0
    loading: int = 0  # loading the model (a `load_model` task), before asking for a slot
    inferring: int = 0
    saving: int = 0
    gpus: tuple[GpuSample, ...] = ()
    advice: LimitAdvice | None = None
    counts_capped: bool = False  # more runs than one refresh reads: step counts are a floor
    host: HostState | None = None  # its inference host, as it last published itself
    # `waiting` and `inferring` are the host's live queue and slot holders (else counted
    # from task-run states, which cannot tell waiting from holding).
    counts_from_host: bool = False
    executor: ExecutorState | None = None  # its warm runners; None: a process per run
    drained: bool = False  # takes no new flow runs (core/drain.py)
    pending: int = 0  # its flow runs in state Pending, among the queued runs read
    run_limit: int | None = None  # flow runs at once (`--runs`), where the worker published it

    @property
    def drain_state(self) -> DrainState | None:
        """DRAINING while a drained worker still has flow runs, DRAINED once it has none."""
        if not self.drained:
            return None
        return "DRAINING" if self.runs_in_hand else "DRAINED"

    @property
    def runs_in_hand(self) -> int:
        """The flow runs it has taken and not finished: Running or Pending on it, or its
        warm runners' busy count where larger (a warm run can start and end between two
        reads of the runs, and its runners say so within seconds)."""
        busy = self.executor.busy if self.executor is not None else 0
        return max(self.running + self.pending, busy)

    @property
    def unprotected(self) -> bool:
        """No GCL, or a disabled one: its GPU step would run unlimited."""
        return self.gcl is None or not self.gcl.active

    @property
    def paused(self) -> bool:
        return self.gcl is not None and self.gcl.paused

    @property
    def limit(self) -> int | None:
        return self.gcl.limit if self.gcl is not None else None

    @property
    def active_slots(self) -> int | None:
        return self.gcl.active_slots if self.gcl is not None else None


@dataclass(frozen=True)
class RunCounts:
    """Flow runs of the pool by state: queued and running now, finished in the last hour."""

    scheduled: int = 0
    late: int = 0
    pending: int = 0
    running: int = 0
    completed: int = 0  # ended within `window_seconds`
    failed: int = 0  # Failed or Crashed, ended within `window_seconds`
    crashed: int = 0  # the Crashed part of `failed`
    window_seconds: int = 3600

    @property
    def queued(self) -> int:
        return self.scheduled + self.late + self.pending


@dataclass(frozen=True)
class RunView:
    """One flow run in a list of the board: next queued, running, or failed."""

    id: str
    name: str
    state_type: str  # "RUNNING", "SCHEDULED", …
    state_name: str  # "Running", "Late", "Crashed", …
    worker: str | None = None
    step: Step | None = None  # where a running run is now
    image_id: str | None = None
    expected_start_time: float | None = None  # epoch seconds
    start_time: float | None = None
    end_time: float | None = None
    message: str | None = None  # the state message, for failures
    work_queue: str | None = None  # the pool's queue it is in
    step_since: float | None = None  # when its current step (task run) started
    # Why a queued or slot-waiting run waits, in words (core/why.py), and the reason's code.
    wait_reason: str | None = None
    wait_code: str | None = None
    # The batch it was submitted in: its `batch:<token>` tag's token (core/batch.py);
    # None for a run gpuboard did not submit.
    batch: str | None = None

    def elapsed(self, now: float) -> float | None:
        return None if self.start_time is None else max(0.0, now - self.start_time)


@dataclass(frozen=True)
class RefreshCost:
    """What one read of the Prefect API cost: requests made and wall time."""

    api_calls: int = 0
    api_ms: float = 0.0


@dataclass(frozen=True)
class Snapshot:
    """Everything one refresh of the board knows, taken at `taken_at`.

    When the Prefect API fails, the last good Prefect data stays in here, `prefect_read_at`
    says how old it is and `errors` says why: the screen keeps showing it, marked stale.
    """

    pool: str
    api_url: str
    taken_at: float
    prefect_read_at: float | None = None
    workers: tuple[WorkerView, ...] = ()
    runs: RunCounts | None = None
    running: tuple[RunView, ...] = ()
    next_queued: tuple[RunView, ...] = ()
    failures: tuple[RunView, ...] = ()
    pool_paused: bool = False
    paused_queues: tuple[str, ...] = ()  # the pool's queues that are paused
    gpu_readings: tuple[GpuReading, ...] = ()
    # Where recent runs' time went, per worker (medians of the runs' own reports).
    time_splits: tuple[TimeSplit, ...] = ()
    # While the runs panel filters: the pool's runs the filter matches, read for it (newest
    # first, at most one page); None when no filter is set or it could not be read.
    matching: tuple[RunView, ...] | None = None
    errors: tuple[SourceError, ...] = ()
    cost: RefreshCost = field(default_factory=RefreshCost)

    @property
    def connected(self) -> bool:
        return not any(e.source == "prefect" and e.kind == "unreachable" for e in self.errors)

    @property
    def prefect_ok(self) -> bool:
        return not any(e.source == "prefect" for e in self.errors)

    @property
    def stale(self) -> bool:
        """The Prefect part is older than this refresh (or was never read)."""
        return self.prefect_read_at is None or self.prefect_read_at < self.taken_at

    def prefect_age(self) -> float | None:
        return None if self.prefect_read_at is None else self.taken_at - self.prefect_read_at

    def worker(self, name: str) -> WorkerView | None:
        return next((w for w in self.workers if w.name == name), None)
