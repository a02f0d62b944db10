"""Frozen dataclasses that carry gpuboard's data between sources, actions and views."""

from __future__ import annotations

from dataclasses import dataclass


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
