"""Writes one image's OCR result as JSON into the results folder, atomically.

A rerun of the same image id replaces the earlier file in one step: a reader sees the
old result or the new one, never half of either.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gpuboard.core.config import results_dir
from gpuboard.core.inference import OcrResult


class ResultError(RuntimeError):
    """A result could not be written; says which image and where."""


@dataclass(frozen=True)
class Timings:
    """Where one image's time went. Durations in seconds; `*_at` are epoch seconds."""

    download_s: float
    model_load_s: float  # 0 when this process had already loaded the model
    slot_wait_s: float  # from asking for the GPU slot to holding it (includes pauses)
    inference_s: float
    # Taken inside the GPU slot: the intervals of one worker's images may overlap at
    # most `limit` deep, which is what the integration tests check.
    inference_started_at: float
    inference_ended_at: float
    # Through an inference host: the round trip beyond the host's own time (sending the
    # pixels, the answer back). None where the step ran in the flow-run process.
    transfer_s: float | None = None


def result_path(image_id: int, directory: Path | None = None) -> Path:
    """Where the result of `image_id` is (or will be) written."""
    return (directory or results_dir()) / f"{image_id}.json"


def result_record(
    image_id: int,
    worker: str,
    ocr: OcrResult,
    timings: Timings,
    execution: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON document saved for one image; `execution` says where its GPU step ran."""
    return {
        "image_id": image_id,
        "worker": worker,
        "text": ocr.text,
        "boxes": [[list(corner) for corner in box] for box in ocr.boxes],
        "scores": list(ocr.scores),
        "model": ocr.model,
        "provider": ocr.provider,
        "timings": asdict(timings),
        "execution": execution or {},
    }


def save_result(
    image_id: int,
    worker: str,
    ocr: OcrResult,
    timings: Timings,
    directory: Path | None = None,
    execution: dict[str, Any] | None = None,
) -> Path:
    """Write the result of `image_id` to `<results_dir>/<image_id>.json`; return its path."""
    path = result_path(image_id, directory)
    try:
        write_json_atomically(path, result_record(image_id, worker, ocr, timings, execution))
    except OSError as exc:  # full disk, read-only mount, a file where the folder should be
        raise ResultError(f"image {image_id}: cannot save the result to {path}: {exc}") from exc
    return path


def write_json_atomically(path: Path, document: Any) -> None:
    """Write `document` to `path` through a temporary file in the same folder + os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder: os.replace is atomic only within one file system.
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as temp:
            json.dump(document, temp, indent=2)
            temp.write("\n")
            temp.flush()
            os.fsync(temp.fileno())  # the data is on disk before the name points at it
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
