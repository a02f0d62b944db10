"""Reads the text of an image with the PP-OCR ONNX models shipped in `rapidocr`.

The model is loaded on the CUDA execution provider only where onnxruntime offers it *and*
an NVIDIA GPU with its libraries is present, and reports the provider its ONNX sessions
really run on. The inference host loads it once per worker with `ModelSettings` (which
GPU, how many threads, the arena cap); `load_model()` is the once-per-process cache of
the host-less way (a plain Prefect worker).
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"

# PaddleOCR's settings for documents: scale the longest side down to 960 px, never up.
# rapidocr's default ("min" side to 736 px) blows a 480x120 receipt up to 2944x736 and
# takes ten times longer on a CPU for the same text.
_RAPIDOCR_PARAMS: dict[str, Any] = {
    "Global.log_level": "error",
    "Global.use_cls": False,  # documents arrive upright; the angle classifier costs time
    "Det.limit_type": "max",
    "Det.limit_side_len": 960,
}

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSettings:
    """How and where the model is loaded."""

    use_cuda: bool | None = None  # None: where a usable CUDA GPU is present
    gpu_index: int = 0  # the CUDA device, in PCI bus order (NVML's numbering)
    # ONNX Runtime intra-op threads per session; None: its default (every core). Several
    # hosts on one machine each get their share rather than all of it.
    threads: int | None = None
    # Cap on the CUDA arena in bytes (ONNX Runtime's `gpu_mem_limit`); None: no cap.
    gpu_memory_limit: int | None = None

    def rapidocr_params(self, use_cuda: bool) -> dict[str, Any]:
        params: dict[str, Any] = {
            **_RAPIDOCR_PARAMS,
            "EngineConfig.onnxruntime.use_cuda": use_cuda,
            "EngineConfig.onnxruntime.cuda_ep_cfg.device_id": self.gpu_index,
            # Grow the arena by what is asked, not to the next power of two: the memory a
            # host holds is then what its inferences needed, which the advisor reads.
            "EngineConfig.onnxruntime.cuda_ep_cfg.arena_extend_strategy": "kSameAsRequested",
        }
        if self.gpu_memory_limit is not None:
            params["EngineConfig.onnxruntime.cuda_ep_cfg.gpu_mem_limit"] = self.gpu_memory_limit
        if self.threads is not None:
            params["EngineConfig.onnxruntime.intra_op_num_threads"] = self.threads
            # One request's graph runs its operators in sequence; concurrency comes from
            # concurrent requests, each on the intra-op pool.
            params["EngineConfig.onnxruntime.inter_op_num_threads"] = 1
        return params


class InferenceError(RuntimeError):
    """The OCR model could not be loaded or failed on an image."""


@dataclass(frozen=True)
class OcrResult:
    """The text read from one image, line by line in reading order."""

    text: str  # the lines joined by single spaces
    boxes: tuple[tuple[tuple[float, float], ...], ...]  # four (x, y) corners per line
    scores: tuple[float, ...]  # recognition confidence per line, 0..1
    model: str
    provider: str


class OcrModel:
    """A loaded PP-OCR detector and recognizer.

    `read()` may be called from several threads at once: ONNX Runtime sessions allow
    concurrent runs, and the state rapidocr keeps per call is the same for every call.
    """

    def __init__(self, engine: Any, name: str, provider: str, device: str = "cpu") -> None:
        self._engine = engine
        self.name = name
        self.provider = provider
        self.device = device

    @classmethod
    def create(
        cls,
        use_cuda: bool | None = None,
        *,
        settings: ModelSettings | None = None,
        sessions_created: Callable[[], None] | None = None,
    ) -> OcrModel:
        """Build and warm up the engine; `use_cuda=None` decides from the machine.

        `sessions_created` is called once the ONNX sessions exist and before the warm-up
        read (the host measures the model's GPU memory there).
        """
        from rapidocr import RapidOCR  # heavy import (cv2, omegaconf): only when needed

        settings = settings or ModelSettings(use_cuda=use_cuda)
        wanted = settings.use_cuda if use_cuda is None else use_cuda
        wanted_cuda = cuda_usable(settings.gpu_index) if wanted is None else wanted
        engine = RapidOCR(params=settings.rapidocr_params(wanted_cuda))
        if sessions_created is not None:
            # rapidocr creates its ONNX sessions on first use. Its own lazy loaders make
            # them now, without a read (private names: where a later rapidocr lacks them,
            # the sessions come with the warm-up and the model's memory includes one read).
            for load in ("_load_det_model", "_load_rec_model"):
                getattr(engine, load, lambda: None)()
            sessions_created()
        # The first run of a session allocates its buffers: read a tiny rendered word now
        # so that "model load" holds all of that and inference times are steady from the
        # first image.
        warm = _engine_read(engine, _warm_up_image())
        if not warm.txts:
            raise InferenceError("OCR warm-up read no text: the model is not working")
        det, rec = engine.text_det, engine.text_rec
        if det is None or rec is None:
            raise InferenceError("rapidocr did not create its detector and recognizer")
        sessions = (det.session.session, rec.session.session)
        providers = {session.get_providers()[0] for session in sessions}
        name = "+".join(_model_name(session) for session in sessions)
        device = f"cuda:{settings.gpu_index}" if providers == {CUDA_PROVIDER} else "cpu"
        return cls(engine, name, "+".join(sorted(providers)), device)

    def read(self, pixels: np.ndarray) -> OcrResult:
        """OCR an RGB uint8 image (height × width × 3)."""
        if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
            raise InferenceError(f"expected RGB uint8 pixels, got {pixels.dtype}{pixels.shape}")
        output = _engine_read(self._engine, pixels)
        # No text found comes back as an empty output, or as a bare detection result
        # (boxes without text) when recognition dropped every box: both mean no lines.
        lines = tuple(getattr(output, "txts", None) or ())
        boxes = output.boxes.tolist() if lines else []
        return OcrResult(
            text=" ".join(lines),
            boxes=tuple(tuple((float(x), float(y)) for x, y in box) for box in boxes),
            scores=tuple(float(score) for score in output.scores) if lines else (),
            model=self.name,
            provider=self.provider,
        )


def _engine_read(engine: Any, rgb: np.ndarray) -> Any:
    # rapidocr takes a 3-channel array as BGR (OpenCV's order).
    return engine(np.ascontiguousarray(rgb[:, :, ::-1]))


def _model_name(session: Any) -> str:
    path = getattr(session, "_model_path", None)  # set by onnxruntime for file models
    return Path(path).stem if path else "PP-OCR"


def _warm_up_image() -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (160, 48), "white")
    ImageDraw.Draw(image).text((8, 8), "WARM 42", fill="black", font=ImageFont.load_default(28))
    return np.asarray(image)


_cache_lock = threading.Lock()
_cached: OcrModel | None = None


def load_model() -> tuple[OcrModel, float]:
    """This process's OCR model and the seconds this call spent loading it (0 when cached)."""
    global _cached
    with _cache_lock:
        if _cached is not None:
            return _cached, 0.0
        started = time.perf_counter()
        try:
            model = OcrModel.create()
        except InferenceError:
            raise
        except Exception as exc:
            raise InferenceError(f"cannot load the OCR model: {exc}") from exc
        _cached = model
        return model, time.perf_counter() - started


def cuda_usable(gpu_index: int = 0) -> bool:
    """True when onnxruntime offers CUDA and NVIDIA GPU `gpu_index` with its libraries is here.

    onnxruntime-gpu lists CUDA even on machines without a GPU and, asked for it there,
    logs an ERROR and runs on the CPU anyway (DESIGN.md), so both are checked first.
    """
    import onnxruntime

    if CUDA_PROVIDER not in onnxruntime.get_available_providers():
        return False
    count = nvidia_gpu_count()
    if count <= gpu_index:
        if count:
            _log.warning(
                "GPU %d asked for, but this machine has %d GPU(s): OCR runs on the CPU",
                gpu_index,
                count,
            )
        return False
    try:
        # Loads CUDA and cuDNN from pip's nvidia-* packages when those are installed.
        onnxruntime.preload_dlls()
        # The CUDA provider library links cuBLAS, cudart and the driver: loading it
        # proves they are all found. cuDNN is opened later, by name.
        capi = Path(onnxruntime.__file__).parent / "capi"
        ctypes.CDLL(str(capi / "libonnxruntime_providers_cuda.so"))
        ctypes.CDLL("libcudnn.so.9")  # the cuDNN major onnxruntime-gpu 1.31 is built for
    except OSError as exc:
        _log.warning("an NVIDIA GPU is present but CUDA is unusable, OCR runs on CPU: %s", exc)
        return False
    return True


def nvidia_gpu_count() -> int:
    """How many NVIDIA GPUs the driver reports; 0 without a driver."""
    try:
        import pynvml
    except ImportError:
        return 0
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return 0
    try:
        return int(pynvml.nvmlDeviceGetCount())
    except pynvml.NVMLError:
        return 0
    finally:
        pynvml.nvmlShutdown()
