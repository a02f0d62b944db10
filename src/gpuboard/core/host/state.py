"""What a worker's inference host is doing, as one frozen value and its event payload.

The host reports it to its supervisor (`gpuboard worker`), which adds what only it knows
(restarts, model loads) and publishes it as Prefect event `gpuboard.host.state`; the board
and `gpuboard status` read it back. It is the live truth about the GPU step: the queue
and the slot holders change the moment a request does, while task-run states reach the
database seconds late.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

HostStatus = Literal["starting", "loading", "ready", "restarting", "failed", "stopped"]
PAYLOAD_VERSION = 1
# Published at least this often while nothing changes, so that a board can tell a live
# host from one whose worker died: older than HOST_STATE_STALE_AFTER is not trusted.
HEARTBEAT_S = 5.0
HOST_STATE_STALE_AFTER = 20.0


@dataclass(frozen=True)
class SlotHolder:
    """One request holding a GPU slot of the worker, named as Prefect's lease holder."""

    lease_id: str
    image_id: int | None
    task_run_id: str | None
    flow_run_id: str | None
    held_since: float  # epoch seconds

    def held_for(self, now: float) -> float:
        return max(0.0, now - self.held_since)


@dataclass(frozen=True)
class HostState:
    """One worker's inference host at `updated_at`."""

    worker: str
    status: HostStatus
    updated_at: float  # epoch seconds
    host: str = ""  # the machine's name
    pid: int | None = None
    provider: str | None = None  # "CPUExecutionProvider", "CUDAExecutionProvider"
    device: str | None = None  # "cpu", "cuda:0"
    model: str | None = None
    load_s: float | None = None  # the current model's load time
    model_loads: int = 0  # since its supervisor started: 1 + restarts that got that far
    restarts: int = 0
    queued: int = 0  # requests waiting for a slot
    paused: bool = False  # the GCL's limit is 0: the queue is held
    holders: tuple[SlotHolder, ...] = ()
    served: int = 0  # inferences answered since the host started
    failed: int = 0  # requests answered with an error since the host started
    inference_p50_s: float | None = None
    inference_p95_s: float | None = None
    threads: int | None = None  # ONNX Runtime intra-op threads
    gpu_memory_model: int | None = None  # bytes the host held on its GPU once loaded
    gpu_memory_peak_per_inference: int | None = None  # bytes; measured, see host/memory.py
    gpu_memory_limit: int | None = None  # the ONNX Runtime arena cap, bytes; None: none
    error: str | None = None  # why it failed or restarts, or the server trouble it meets
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def inferring(self) -> int:
        return len(self.holders)

    def age(self, now: float) -> float:
        return max(0.0, now - self.updated_at)

    def stale(self, now: float) -> bool:
        return self.age(now) > HOST_STATE_STALE_AFTER

    def with_changes(self, **changes: Any) -> HostState:
        return replace(self, **changes)


def state_to_payload(state: HostState) -> dict[str, Any]:
    """Plain JSON for an event payload or the supervisor's pipe."""
    payload = asdict(state)
    payload["version"] = PAYLOAD_VERSION
    payload["holders"] = [asdict(holder) for holder in state.holders]
    return payload


def state_from_payload(payload: dict[str, Any]) -> HostState:
    """The state a payload carries; KeyError/TypeError/ValueError when it is not one."""
    if payload.get("version") != PAYLOAD_VERSION:
        raise ValueError(f"host state payload version {payload.get('version')!r}")
    known = {name for name in HostState.__dataclass_fields__}
    values = {key: value for key, value in payload.items() if key in known}
    values["holders"] = tuple(
        SlotHolder(
            lease_id=str(holder["lease_id"]),
            image_id=None if holder.get("image_id") is None else int(holder["image_id"]),
            task_run_id=holder.get("task_run_id"),
            flow_run_id=holder.get("flow_run_id"),
            held_since=float(holder["held_since"]),
        )
        for holder in payload.get("holders", [])
    )
    state = HostState(**values)
    if not isinstance(state.worker, str) or not state.worker:
        raise ValueError("host state without a worker")
    return state
