"""Property tests over what users type and what sources deliver: any image source template,
any bytes as an image, any worker id. Each either works or fails with gpuboard's own error
and a message; no other exception escapes (a traceback on the board or in a run's log)."""

from __future__ import annotations

import io
import os
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from gpuboard.core.config import ConfigError, gcl_name, validate_worker_id
from gpuboard.core.images import ImageError, SourceError, decode_image, parse_source
from gpuboard.core.worker import WorkerInputError
from gpuboard.core.worker import validate_worker_id as worker_validate_worker_id

SETTINGS = settings(
    max_examples=int(os.environ.get("GPUBOARD_PROPERTY_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _png(width: int, height: int, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


VALID = [_png(3, 2, "RGB"), _png(1, 1, "L"), _png(4, 4, "RGBA"), _png(2, 5, "I;16")]


@st.composite
def damaged_images(draw: st.DrawFn) -> bytes:
    """A valid PNG cut short, with bytes flipped, or with junk spliced in."""
    data = bytearray(draw(st.sampled_from(VALID)))
    how = draw(st.sampled_from(["truncate", "flip", "splice"]))
    if how == "truncate":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    if how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            at = draw(st.integers(0, len(data) - 1))
            data[at] ^= draw(st.integers(1, 255))
        return bytes(data)
    at = draw(st.integers(0, len(data)))
    return bytes(data[:at]) + draw(st.binary(min_size=1, max_size=64)) + bytes(data[at:])


@SETTINGS
@given(st.one_of(st.binary(max_size=256), damaged_images()))
def test_any_bytes_decode_to_rgb_pixels_or_an_image_error(data: bytes) -> None:
    try:
        pixels = decode_image(7, data)
    except ImageError as exc:
        assert exc.image_id == 7 and str(exc).startswith("image 7: ")
        return
    assert isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8
    assert pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.size > 0


@pytest.mark.parametrize("data", VALID)
def test_the_undamaged_images_decode(data: bytes) -> None:
    assert decode_image(1, data).shape[2] == 3


TEMPLATE_PARTS = st.sampled_from(
    [
        "sample",
        "file://",
        "file:///",
        "http://",
        "https://",
        "ftp://",
        "host",
        "/data/",
        "{image_id}",
        "{image_id:05d}",
        "{image_id:x}",
        "{image_id:q}",
        "{image_id:}",
        "{",
        "}",
        ".png",
        "?a=1",
        "#",
        " ",
        "%",
        "localhost",
        "\x00",
        "é",
    ]
)


@SETTINGS
@given(st.one_of(st.text(max_size=40), st.lists(TEMPLATE_PARTS, max_size=6).map("".join)))
def test_any_template_is_a_source_or_a_source_error(template: str) -> None:
    try:
        source = parse_source(template)
    except SourceError as exc:
        assert str(exc)
        return
    # A source it accepts places every id somewhere of its own, the same id always the
    # same place: two images never read from one location.
    places = [source.location(image_id) for image_id in (0, 7, 123456)]
    assert places == [source.location(image_id) for image_id in (0, 7, 123456)]
    assert len(set(places)) == 3


@SETTINGS
@given(st.text(max_size=120))
def test_any_worker_id_is_valid_or_refused_alike_by_cli_and_worker(text: str) -> None:
    try:
        worker = validate_worker_id(text)
    except ConfigError as exc:
        assert "is not a worker id" in str(exc)
        with pytest.raises(WorkerInputError):
            worker_validate_worker_id(text)
        return
    assert worker_validate_worker_id(text) == worker
    # What it names is safe in a URL path and a Prefect worker name.
    assert re.fullmatch(r"gpu:[A-Za-z0-9][A-Za-z0-9._@+-]*", gcl_name(worker))
