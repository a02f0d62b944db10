"""The flow run's side of the inference host: send one image, get its text back.

Blocking and small on purpose: it runs inside a Prefect task of a flow-run process that
must not import onnxruntime, rapidocr or anything heavy. A host that is starting or
restarting (its socket absent or refusing) is waited for; a host that goes away while
it holds the request raises HostLost, which the flow's GPU step retries.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpuboard.core.host.protocol import (
    HostIdentity,
    HostTimings,
    InferRequest,
    ProtocolError,
    encode_pixels,
    frame,
    recv_frame,
)
from gpuboard.core.inference import InferenceError, OcrResult

SOCKET_ENV = "GPUBOARD_INFERENCE_SOCKET"
# A host restarting loads its model again: seconds on a GPU machine, ~10 s on a loaded CPU.
CONNECT_TIMEOUT_S = 180.0
CONNECT_RETRY_S = 0.25

_Logger = logging.Logger | logging.LoggerAdapter


class HostUnavailable(InferenceError):
    """No inference host answered at the socket for the whole connect timeout."""


class HostLost(InferenceError):
    """The host went away while it held the request (it died or was restarted)."""


class HostSlotError(InferenceError):
    """The host cannot take the GPU slot as configured (missing or disabled GCL)."""


@dataclass(frozen=True)
class HostReply:
    """The text of one image and where its time went."""

    ocr: OcrResult
    timings: HostTimings
    host: HostIdentity
    round_trip_s: float  # from sending to the answer, host time included


def read_via_host(
    socket_path: str | Path,
    image_id: int,
    pixels: np.ndarray,
    *,
    task_run_id: str | None,
    flow_run_id: str | None,
    connect_timeout: float = CONNECT_TIMEOUT_S,
    log: _Logger | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> HostReply:
    """OCR `pixels` (RGB uint8) on the host at `socket_path` under its worker's GPU slot."""
    height, width = int(pixels.shape[0]), int(pixels.shape[1])
    request = InferRequest(
        image_id=image_id,
        height=height,
        width=width,
        task_run_id=task_run_id,
        flow_run_id=flow_run_id,
        client_pid=os.getpid(),
    )
    message = frame(request.header(), encode_pixels(pixels))
    with _connect(Path(socket_path), connect_timeout, log, sleep) as sock:
        started = time.perf_counter()
        try:
            sock.sendall(message)
            header, _ = recv_frame(sock)
        except (ConnectionError, OSError) as exc:
            raise HostLost(
                f"image {image_id}: the inference host at {socket_path} went away while it "
                f"held the request ({exc}); the GPU step is retried"
            ) from None
        except ProtocolError as exc:
            raise InferenceError(
                f"image {image_id}: the inference host answered badly: {exc}"
            ) from None
        round_trip = time.perf_counter() - started
    return _reply(header, round_trip)


def _connect(
    path: Path, timeout: float, log: _Logger | None, sleep: Callable[[float], None]
) -> socket.socket:
    deadline = time.monotonic() + timeout
    said = False
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return sock
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            if time.monotonic() >= deadline:
                raise HostUnavailable(
                    f"no inference host answers at {path} after {timeout:.0f} s ({exc}): is "
                    "`gpuboard worker` running, and does its log say the model loaded?"
                ) from None
            if not said and log is not None:
                log.info("inference host at %s not answering yet (starting?): waiting", path)
                said = True
            sleep(CONNECT_RETRY_S)
        except BaseException:
            sock.close()
            raise


def _reply(header: dict[str, Any], round_trip: float) -> HostReply:
    if not header.get("ok"):
        kind, error = header.get("kind"), str(header.get("error") or "unknown error")
        if kind == "slot":
            raise HostSlotError(error)
        raise InferenceError(error)
    try:
        result = header["result"]
        ocr = OcrResult(
            text=str(result["text"]),
            boxes=tuple(tuple((float(x), float(y)) for x, y in box) for box in result["boxes"]),
            scores=tuple(float(score) for score in result["scores"]),
            model=str(result["model"]),
            provider=str(result["provider"]),
        )
        timings = HostTimings(**{k: float(v) for k, v in header["timings"].items()})
        identity = header["host"]
        host = HostIdentity(
            pid=int(identity["pid"]),
            started_at=float(identity["started_at"]),
            model_load_s=float(identity["model_load_s"]),
            provider=str(identity["provider"]),
            device=str(identity["device"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InferenceError(f"the inference host's answer is incomplete: {exc}") from None
    return HostReply(ocr=ocr, timings=timings, host=host, round_trip_s=round_trip)
