"""Prefect's `concurrency()` that also publishes the lease it holds (see leases.py), so that
if the holder dies, a reclaimer can find that one lease and release it within seconds.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from uuid import UUID

from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.concurrency.context import ConcurrencyContext
from prefect.concurrency.sync import concurrency
from prefect.context import FlowRunContext, TaskRunContext

from gpuboard.core.prefect.client import sync_client
from gpuboard.core.prefect.leases import LeaseRecord, publish_record, withdraw_record
from gpuboard.core.process_identity import this_process

log = logging.getLogger(__name__)


@contextmanager
def recorded_concurrency(
    name: str,
    *,
    occupy: int = 1,
    lease_duration: float,
    strict: bool,
    holder: ConcurrencyLeaseHolder | None,
    raise_on_lease_renewal_failure: bool | None = None,
    max_retries: int | None = None,
) -> Iterator[UUID | None]:
    """Hold `occupy` slots of GCL `name` like `concurrency()`; yields the lease id.

    The record is written in the background while the caller already works (a slow
    server must not keep the GPU idle), and deleted after the slot is released. If the
    process dies before the record is written, the slot is back when the lease expires
    (`lease_duration`), as without a record. Publishing never fails the caller.
    """
    publisher: _Publisher | None = None
    try:
        # A ConcurrencyContext of our own: Prefect appends each lease it grants to the
        # innermost one the moment it is granted, and `concurrency()` does not return
        # the lease id otherwise. Ours holds just this lease; on exit it also releases
        # it, should the normal release have been interrupted.
        with (
            ConcurrencyContext() as granted,
            concurrency(
                name,
                occupy=occupy,
                lease_duration=lease_duration,
                strict=strict,
                holder=holder,
                raise_on_lease_renewal_failure=raise_on_lease_renewal_failure,
                max_retries=max_retries,  # 0: a full GCL raises at once (423) instead of waiting
            ),
        ):
            lease_id = granted.cleanup_lease_ids[-1] if granted.cleanup_lease_ids else None
            if lease_id is not None:
                publisher = _Publisher(_record(lease_id, name, holder))
                publisher.start()
            yield lease_id
    finally:
        # The slot is released by now: withdrawing the record costs no GPU time.
        if publisher is not None:
            publisher.withdraw()


def _record(lease_id: UUID, gcl: str, holder: ConcurrencyLeaseHolder | None) -> LeaseRecord:
    task_run = TaskRunContext.get()
    flow_run = FlowRunContext.get()
    flow_run_id: UUID | None = None
    if task_run is not None:
        flow_run_id = task_run.task_run.flow_run_id
    elif flow_run is not None and flow_run.flow_run is not None:
        flow_run_id = flow_run.flow_run.id
    return LeaseRecord(
        lease_id=lease_id,
        gcl=gcl,
        task_run_id=holder.id if holder is not None and holder.type == "task_run" else None,
        flow_run_id=flow_run_id,
        acquired_at=time.time(),
        process=this_process(),
    )


class _Publisher:
    """Writes one lease record on a thread; withdraws it once written."""

    def __init__(self, record: LeaseRecord) -> None:
        self.record = record
        self._published = False
        # The caller's context: the same Prefect settings (API URL, auth) and run logger.
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._publish,), name="gpuboard-lease-record", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def withdraw(self) -> None:
        self._thread.join()  # withdrawing before the write lands would leave the record
        if not self._published:
            return
        try:
            with sync_client() as client:
                withdraw_record(client, self.record.lease_id)
        except Exception as exc:
            # A leftover record is harmless: a reclaimer finds its holder finished, finds
            # the lease already released, and deletes the record.
            log.warning("could not delete lease record of %s: %s", self.record.gcl, exc)

    def _publish(self) -> None:
        try:
            with sync_client() as client:
                publish_record(client, self.record)
            self._published = True
        except Exception as exc:
            log.warning(
                "could not publish the lease of GPU slot %s (%s): should this process die "
                "holding it, the slot comes back only when its lease expires",
                self.record.gcl,
                exc,
            )
