"""What a worker's executor is doing, as published for the board: `gpuboard.executor.state`
on the worker's resource, by the warm executor (process workers publish none)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

EVENT_NAME = "gpuboard.executor.state"
RESOURCE_PREFIX = "gpuboard.worker."
STALE_AFTER_S = 45.0  # published every 10 s and on change


@dataclass(frozen=True)
class ExecutorState:
    """A worker's warm runners at `updated_at`."""

    worker: str
    executor: str  # "warm"
    updated_at: float
    size: int
    busy: int
    idle: int
    starting: int  # being started: after a recycle, a death or a cancel
    runs: int
    recycled: int
    replaced: int

    def to_payload(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> ExecutorState:
        """KeyError/TypeError/ValueError when `payload` is not one."""
        return cls(
            worker=str(payload["worker"]),
            executor=str(payload["executor"]),
            updated_at=float(payload["updated_at"]),
            **{
                key: int(payload[key])
                for key in ("size", "busy", "idle", "starting", "runs", "recycled", "replaced")
            },
        )

    def stale(self, now: float) -> bool:
        return now - self.updated_at > STALE_AFTER_S
