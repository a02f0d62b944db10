"""Real OCR with the PP-OCR ONNX models: the sample images read back exactly."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gpuboard.core import inference
from gpuboard.core.images import load_image, sample_text
from gpuboard.core.inference import InferenceError, OcrModel, OcrResult, load_model


@pytest.fixture(scope="module")
def model() -> OcrModel:
    return load_model()[0]


# 1..12 as a batch would submit them, then ids whose text grows past the page's minimum
# width (the page widens with its text).
@pytest.mark.parametrize("image_id", [*range(1, 13), 999, 12345, 10**6, 10**9, 10**12])
def test_sample_images_read_back_exactly(model: OcrModel, image_id: int) -> None:
    result = model.read(load_image(image_id).pixels)
    assert result.text == sample_text(image_id)
    assert len(result.boxes) == len(result.scores) >= 1
    assert all(len(box) == 4 for box in result.boxes)
    assert all(0.5 <= score <= 1.0 for score in result.scores)


def test_model_is_loaded_once_per_process(model: OcrModel) -> None:
    again, load_s = load_model()
    assert again is model and load_s == 0.0


def test_result_names_the_model_and_the_provider_really_used(model: OcrModel) -> None:
    result = model.read(load_image(3).pixels)
    assert result.model == "PP-OCRv6_det_small+PP-OCRv6_rec_small"
    expected = "CUDAExecutionProvider" if inference.cuda_usable() else "CPUExecutionProvider"
    assert result.provider == model.provider == expected
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.text = "edited"  # type: ignore[misc]


def test_no_cuda_is_asked_for_without_an_nvidia_gpu() -> None:
    if inference.nvidia_gpu_count() > 0:
        pytest.skip("this machine has an NVIDIA GPU")
    assert inference.cuda_usable() is False


def test_a_blank_page_reads_as_no_text(model: OcrModel) -> None:
    blank = np.full((120, 480, 3), 255, dtype=np.uint8)
    assert model.read(blank) == OcrResult("", (), (), model.name, model.provider)


def test_read_rejects_pixels_that_are_not_rgb_uint8(model: OcrModel) -> None:
    with pytest.raises(InferenceError, match="expected RGB uint8"):
        model.read(np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(InferenceError, match="expected RGB uint8"):
        model.read(np.zeros((10, 10, 3), dtype=np.float32))
