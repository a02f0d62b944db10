"""Messages the board's widgets and workers exchange."""

from __future__ import annotations

from textual.message import Message

from gpuboard.core.models import Snapshot


class SnapshotReady(Message):
    """A source produced a new snapshot; only the newest one queued is worth rendering."""

    def __init__(self, snapshot: Snapshot) -> None:
        super().__init__()
        self.snapshot = snapshot

    def can_replace(self, message: Message) -> bool:
        # A slow screen skips straight to the latest data instead of replaying the past.
        return isinstance(message, SnapshotReady)
