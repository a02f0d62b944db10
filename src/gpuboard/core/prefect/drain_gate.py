"""`DrainGate`: the part of a gpuboard worker that honours a drain (drain_flags.py).

Mixed into each gpuboard worker type ahead of Prefect's `BaseWorker`. Before each poll for
flow runs the worker asks the server, with one small GET, whether it is drained; drained,
it skips the poll, so it takes no new run, while the runs it already has (Pending or
Running on it) carry on to their end. The pool's other workers poll the same queues and
take the runs it leaves. The flag is read again on every poll: an undrain is picked up
at the next one, and a restarted worker starts drained.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from gpuboard.core.prefect.drain_flags import is_drained

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient


class DrainGate:
    """Skips polling for flow runs while the server says this worker is drained."""

    _drained: bool = False

    if TYPE_CHECKING:
        name: str
        client: PrefectClient
        _logger: logging.Logger | logging.LoggerAdapter[Any]
        _last_polled_time: Any

    @property
    def drained(self) -> bool:
        """As of the last poll."""
        return self._drained

    async def get_and_submit_flow_runs(self) -> list[Any]:
        try:
            drained = await is_drained(self.client, self.name)
        except Exception as exc:
            # The poll itself would fail the same way; keep what was known.
            self._logger.warning("could not read whether %s is drained: %s", self.name, exc)
            drained = self._drained
        if drained != self._drained:
            self._logger.info(
                "worker %s %s",
                self.name,
                "is drained: it takes no new flow runs; those it has finish"
                if drained
                else "is no longer drained: it takes flow runs again",
            )
            self._drained = drained
        if drained:
            # Still a live poller for Prefect's health check: it polled, and chose to take none.
            self._last_polled_time = datetime.now(timezone.utc)
            return []
        result: list[Any] = await super().get_and_submit_flow_runs()  # type: ignore[misc]
        return result
