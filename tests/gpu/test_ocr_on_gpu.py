"""OCR on a real NVIDIA GPU: the CUDA execution provider is chosen and really used."""

from __future__ import annotations

import pytest

from gpuboard.core import inference
from gpuboard.core.images import load_image, sample_text

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(inference.nvidia_gpu_count() == 0, reason="needs an NVIDIA driver"),
]


def test_cuda_is_used_where_a_gpu_and_its_libraries_are() -> None:
    assert inference.cuda_usable(), "a GPU is present but CUDA or cuDNN libraries are not"
    model, _ = inference.load_model()
    assert model.provider == inference.CUDA_PROVIDER
    for image_id in (1, 42, 10**9):
        assert model.read(load_image(image_id).pixels).text == sample_text(image_id)
