"""A worker whose label write is refused by the server still runs the flow run."""

from __future__ import annotations

import uuid

import pytest
from prefect.workers.process import ProcessWorker

from gpuboard.core.local_server import LocalServer
from gpuboard.core.prefect import run_labels
from gpuboard.core.prefect.client import async_client
from gpuboard.core.prefect.pool import ensure_work_pool
from gpuboard.core.prefect.run_labels import PatientLabels


class _Worker(PatientLabels, ProcessWorker):
    type = "gpuboard-labels-test"  # not "process": Prefect registers worker types by name


async def test_a_refused_label_write_does_not_fail_the_submission(
    prefect_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run_labels, "LABEL_RETRY_DELAY_S", 0.0)
    pool = f"labels-{uuid.uuid4().hex[:6]}"
    async with async_client(prefect_server.api_url) as client:
        await ensure_work_pool(client, pool)
    async with _Worker(work_pool_name=pool, name="labeller") as worker:
        await worker.sync_with_backend()
        missing_run = uuid.uuid4()  # the server answers 404 to labelling it
        with pytest.raises(Exception):  # noqa: B017 (stock Prefect: the submission fails)
            await ProcessWorker._give_worker_labels_to_flow_run(worker, missing_run)
        await worker._give_worker_labels_to_flow_run(missing_run)  # logged, not raised
