"""`PatientLabels`: a worker labels the flow runs it takes, without crashing them when the
server cannot answer that write.

Prefect's `BaseWorker` labels each run it submits (`prefect.worker.name`, the pool) before
it proposes Submitting; when that write fails, the worker reports the run Crashed and
never runs it. On a busy SQLite server the label write can meet "database is locked"
(503) past the client's retries: 2 of 1,000 soak runs were crashed that way on a loaded
2-core machine. The labels only say where the run went (the board reads them), so a run
is worth more than its labels: the write is tried once more, then the run goes ahead
unlabelled, with a warning in the worker's log.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any
from uuid import UUID

LABEL_RETRY_DELAY_S = 2.0


class PatientLabels:
    """Mixed in ahead of Prefect's `BaseWorker`."""

    if TYPE_CHECKING:
        _logger: logging.Logger | logging.LoggerAdapter[Any]

    async def _give_worker_labels_to_flow_run(self, flow_run_id: UUID) -> None:
        for attempt in range(2):
            try:
                await super()._give_worker_labels_to_flow_run(flow_run_id)  # type: ignore[misc]
                return
            except Exception as exc:
                if attempt == 0:
                    await asyncio.sleep(LABEL_RETRY_DELAY_S)
                    continue
                self._logger.warning(
                    "flow run %s runs without this worker's labels: the server did not take "
                    "them (%s)",
                    flow_run_id,
                    exc,
                )
