"""The `process-image` flow: fetch an image, read its text under the worker's GPU slot, save it.

A thin layer over gpuboard.core. The GPU step goes to the worker's inference host, which
holds the model and takes the worker's GPU slot for it; this process never loads the
model. Without a host (a plain Prefect worker) the step loads the model itself, inside
the slot. Download and save overlap freely with other runs on the worker.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import Task, flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.context import FlowRunContext, TaskRunContext
from prefect.states import State

from gpuboard.core.config import FLOW_NAME, current_worker_id
from gpuboard.core.images import LoadedImage, load_image, parse_source
from gpuboard.core.ocr_step import StepResult, flow_process_facts, host_went_away, read_text
from gpuboard.core.results import save_result
from gpuboard.core.run_timings import RunTimings, executor_here, measure_flow_run, publish

# Pixels pass between tasks in memory: every task has no cache policy (hashing
# megapixels per task is waste) and no persisted result (a pickle on disk per image).


@task(name="download_image", cache_policy=NO_CACHE, persist_result=False)
def download_image(image_id: int, source: str) -> LoadedImage:
    """Fetch and verify image `image_id`; ImageError names the id and the cause."""
    return load_image(image_id, source)


def _retry_if_host_lost(_task: Task[Any, Any], _run: TaskRun, state: State[Any]) -> bool:
    """Retry the GPU step only when the inference host died under it: a bad image or a
    missing GCL fails the same way again."""
    try:
        error = state.result(raise_on_failure=False)
    except Exception:
        return False
    return host_went_away(error if isinstance(error, BaseException) else None)


@task(
    name="run_ml_model",
    cache_policy=NO_CACHE,
    persist_result=False,
    retries=2,
    retry_delay_seconds=1,
    retry_condition_fn=_retry_if_host_lost,
)
def run_ml_model(image: LoadedImage, worker: str) -> StepResult:
    """OCR the image under this worker's GPU slot; only the inference holds the slot."""
    task_run = TaskRunContext.get()
    flow_run = FlowRunContext.get()
    return read_text(
        image,
        worker,
        task_run_id=str(task_run.task_run.id) if task_run else None,
        flow_run_id=str(flow_run.flow_run.id) if flow_run and flow_run.flow_run else None,
        log=get_run_logger(),
    )


@task(name="save_results", cache_policy=NO_CACHE, persist_result=False)
def save_results(image_id: int, worker: str, step: StepResult) -> str:
    """Write the JSON result atomically; return its path."""
    execution = {**step.execution, "flow_process": flow_process_facts()}
    return str(save_result(image_id, worker, step.ocr, step.timings, execution=execution))


def report_timings(
    worker: str, step: StepResult, save_s: float, body_started: float, image_id: int
) -> None:
    """Publish where this image's time went (gpuboard.run.timings), for the board. A report:
    it never fails the run."""
    try:
        queued_s, startup_s = measure_flow_run(body_started)
        flow_run = FlowRunContext.get()
        run_id = str(flow_run.flow_run.id) if flow_run and flow_run.flow_run else ""
        publish(
            RunTimings(
                flow_run_id=run_id,
                worker=worker,
                executor=executor_here(),
                ended_at=time.time(),
                queued_s=queued_s,
                startup_s=startup_s,
                download_s=step.timings.download_s,
                slot_wait_s=step.timings.slot_wait_s,
                inference_s=step.timings.inference_s,
                save_s=save_s,
                inference_started_at=step.timings.inference_started_at,
                inference_ended_at=step.timings.inference_ended_at,
                image_id=str(image_id),
            )
        )
    except Exception as exc:
        get_run_logger().warning("could not publish this run's timings: %s", exc)


@flow(name=FLOW_NAME, persist_result=False)
def process_image(image_id: int, source: str = "sample") -> str:
    """Read the text of image `image_id` from `source` and return the result file's path."""
    body_started = time.time()
    # Both checks fail the run before any work when the worker or the source is misconfigured.
    worker = current_worker_id()
    parse_source(source)
    image = download_image(image_id, source)
    step = run_ml_model(image, worker)
    saving = time.perf_counter()
    path = save_results(image_id, worker, step)
    report_timings(worker, step, time.perf_counter() - saving, body_started, image_id)
    timings = step.timings
    get_run_logger().info(
        "image %s: %r on %s via %s (model load %.2fs, slot wait %.2fs, inference %.2fs)",
        image_id,
        step.ocr.text,
        step.ocr.provider,
        step.execution.get("mode"),
        timings.model_load_s,
        timings.slot_wait_s,
        timings.inference_s,
    )
    return path
