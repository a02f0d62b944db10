"""The `process-image` flow: fetch an image, read its text under the worker's GPU slot, save it.

A thin layer over gpuboard.core. Only the inference runs inside `gpu_slot()`: the
download, the model load and the save overlap freely with other runs on the worker.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from gpuboard.core.config import FLOW_NAME, current_worker_id
from gpuboard.core.images import LoadedImage, load_image, parse_source
from gpuboard.core.inference import InferenceError, OcrResult, load_model
from gpuboard.core.results import Timings, save_result
from gpuboard.core.slot import gpu_slot

# Pixels pass between tasks in memory: every task has no cache policy (hashing
# megapixels per task is waste) and no persisted result (a pickle on disk per image).


@task(name="download_image", cache_policy=NO_CACHE, persist_result=False)
def download_image(image_id: int, source: str) -> LoadedImage:
    """Fetch and verify image `image_id`; ImageError names the id and the cause."""
    return load_image(image_id, source)


@task(name="load_model", cache_policy=NO_CACHE, persist_result=False)
def prepare_model() -> float:
    """Load this process's OCR model before the GPU slot is asked for; return the seconds spent.

    A task of its own so the board tells loading (CPU-bound, minutes-free) from waiting for a
    slot; the model stays cached in the process for `run_ml_model`.
    """
    return load_model()[1]


@task(name="run_ml_model", cache_policy=NO_CACHE, persist_result=False)
def run_ml_model(image: LoadedImage, worker: str, model_load_s: float) -> tuple[OcrResult, Timings]:
    """OCR the image inside this worker's GPU slot; only the inference holds the slot."""
    model, _ = load_model()  # cached by prepare_model in this process
    with gpu_slot(worker) as slot:
        started_at, started = time.time(), time.perf_counter()
        try:
            ocr = model.read(image.pixels)
        except Exception as exc:
            raise InferenceError(f"image {image.image_id}: OCR failed: {exc}") from exc
        inference_s, ended_at = time.perf_counter() - started, time.time()
    timings = Timings(
        download_s=image.fetch_s,
        model_load_s=model_load_s,
        slot_wait_s=slot.wait_s,
        inference_s=inference_s,
        inference_started_at=started_at,
        inference_ended_at=ended_at,
    )
    return ocr, timings


@task(name="save_results", cache_policy=NO_CACHE, persist_result=False)
def save_results(image_id: int, worker: str, ocr: OcrResult, timings: Timings) -> str:
    """Write the JSON result atomically; return its path."""
    return str(save_result(image_id, worker, ocr, timings))


@flow(name=FLOW_NAME, persist_result=False)
def process_image(image_id: int, source: str = "sample") -> str:
    """Read the text of image `image_id` from `source` and return the result file's path."""
    # Both checks fail the run before any work when the worker or the source is misconfigured.
    worker = current_worker_id()
    parse_source(source)
    image = download_image(image_id, source)
    model_load_s = prepare_model()
    ocr, timings = run_ml_model(image, worker, model_load_s)
    path = save_results(image_id, worker, ocr, timings)
    get_run_logger().info(
        "image %s: %r on %s (model load %.2fs, slot wait %.2fs, inference %.2fs)",
        image_id,
        ocr.text,
        ocr.provider,
        timings.model_load_s,
        timings.slot_wait_s,
        timings.inference_s,
    )
    return path
