"""The pipeline's GPU step: read an image's text under its worker's GPU slot.

Through the worker's inference host where `gpuboard worker` started one (it sets
GPUBOARD_INFERENCE_SOCKET for its flow runs): the host holds the model and takes the slot,
and this process sends pixels. Where there is none (a plain `prefect worker start` with
WORKER_ID set), in this process: the slot first, then the model loaded inside it, so that
GPU memory stays bounded by the GCL on that path too.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from gpuboard.core.host.client import SOCKET_ENV, HostLost, read_via_host
from gpuboard.core.images import LoadedImage
from gpuboard.core.inference import InferenceError, OcrResult
from gpuboard.core.results import Timings

_Logger = logging.Logger | logging.LoggerAdapter


@dataclass(frozen=True)
class StepResult:
    """The text of one image, where its time went, and where it ran."""

    ocr: OcrResult
    timings: Timings
    execution: dict[str, Any]


def read_text(
    image: LoadedImage,
    worker: str,
    *,
    task_run_id: str | None = None,
    flow_run_id: str | None = None,
    log: _Logger | None = None,
) -> StepResult:
    """OCR `image` as worker `worker`'s GPU step."""
    socket_path = os.environ.get(SOCKET_ENV, "").strip()
    if socket_path:
        return _via_host(socket_path, image, task_run_id, flow_run_id, log)
    return _in_process(image, worker)


def _via_host(
    socket_path: str,
    image: LoadedImage,
    task_run_id: str | None,
    flow_run_id: str | None,
    log: _Logger | None,
) -> StepResult:
    reply = read_via_host(
        socket_path,
        image.image_id,
        image.pixels,
        task_run_id=task_run_id,
        flow_run_id=flow_run_id,
        log=log,
    )
    host_time = reply.timings.slot_wait_s + reply.timings.inference_s
    timings = Timings(
        download_s=image.fetch_s,
        model_load_s=0.0,  # loaded once, by the host (its load time is in `execution`)
        slot_wait_s=reply.timings.slot_wait_s,
        inference_s=reply.timings.inference_s,
        inference_started_at=reply.timings.inference_started_at,
        inference_ended_at=reply.timings.inference_ended_at,
        transfer_s=max(0.0, reply.round_trip_s - host_time),
    )
    execution = {
        "mode": "inference-host",
        "host_pid": reply.host.pid,
        "host_started_at": reply.host.started_at,
        "host_model_load_s": reply.host.model_load_s,
        "device": reply.host.device,
    }
    return StepResult(reply.ocr, timings, execution)


def _in_process(image: LoadedImage, worker: str) -> StepResult:
    from gpuboard.core.inference import load_model
    from gpuboard.core.slot import gpu_slot

    with gpu_slot(worker) as slot:
        # Inside the slot: loading puts the model in GPU memory, which the GCL bounds.
        model, model_load_s = load_model()
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
    execution = {"mode": "in-process", "device": model.device}
    return StepResult(ocr, timings, execution)


def flow_process_facts() -> dict[str, Any]:
    """What the flow-run process itself loaded: with a host, never the model stack."""
    return {
        "pid": os.getpid(),
        "onnxruntime_imported": "onnxruntime" in sys.modules,
        "rapidocr_imported": "rapidocr" in sys.modules,
    }


def host_went_away(exc: BaseException | None) -> bool:
    """Whether a failed GPU step is worth retrying: only when its host died under it."""
    return isinstance(exc, HostLost)
