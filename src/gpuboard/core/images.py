"""Turns an image id and a source template into verified RGB pixels.

A template names where image `{image_id}` comes from: `sample` renders a synthetic
document offline, `file:///dir/{image_id}.png` reads a file, `https://host/{image_id}.png`
downloads it. Every image, whatever its source, goes through the same Pillow checks, so
a missing, empty, truncated, corrupt or oversized image fails with one clear `ImageError`.
"""

from __future__ import annotations

import io
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx
import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

SAMPLE = "sample"
# `{image_id}` or `{image_id:06d}` (any format spec Python's format() takes for an int).
_PLACEHOLDER = re.compile(r"\{image_id(?::([^{}]*))?\}")
# Formats a document photo or scan comes in. Pillow can open more (EPS even runs
# Ghostscript), which is no business of a worker that reads untrusted files.
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF")
# A download larger than this is refused before it fills the worker's memory.
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
# Statuses worth a retry: the server or a proxy failed, or asked us to come back later.
_TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class ImageError(RuntimeError):
    """Image `image_id` could not be fetched or is not a usable image; says which and why."""

    def __init__(self, image_id: int, cause: str) -> None:
        super().__init__(f"image {image_id}: {cause}")
        self.image_id = image_id
        self.cause = cause

    def __reduce__(self) -> tuple[type[ImageError], tuple[int, str]]:
        # Prefect may pickle a task's exception; rebuild it from both arguments.
        return (type(self), (self.image_id, self.cause))


class SourceError(ValueError):
    """An image source template is malformed; the message shows a valid one."""


@dataclass(frozen=True)
class ImageSource:
    """A validated source template."""

    template: str
    scheme: str  # "sample", "file", "http" or "https"

    def location(self, image_id: int) -> str:
        """Where image `image_id` lives: the template with its placeholder filled in."""
        if self.scheme == SAMPLE:
            return f"{SAMPLE}:{image_id}"
        return _PLACEHOLDER.sub(lambda m: format(image_id, m.group(1) or ""), self.template)


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """One verified image: RGB pixels (height × width × 3, uint8) and where they came from."""

    image_id: int
    location: str
    pixels: np.ndarray = field(repr=False)
    fetch_s: float  # time to get and decode the bytes (the pipeline's download time)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])


def parse_source(template: str) -> ImageSource:
    """Validate `template`; raise SourceError saying what a good one looks like."""
    template = template.strip()
    if template == SAMPLE:
        return ImageSource(template, SAMPLE)
    scheme = urlsplit(template).scheme.lower()
    example = (
        "use 'sample', 'file:///data/images/{image_id}.png' or 'https://host/path/{image_id}.png'"
    )
    if scheme not in ("file", "http", "https"):
        raise SourceError(f"unknown image source {template!r}: {example}")
    placeholders = _PLACEHOLDER.findall(template)
    if not placeholders:
        raise SourceError(f"image source {template!r} has no {{image_id}} placeholder: {example}")
    for spec in placeholders:
        try:
            format(0, spec)
        except ValueError as exc:
            raise SourceError(f"image source {template!r}: bad format {spec!r}: {exc}") from exc
    if scheme == "file" and urlsplit(template).netloc not in ("", "localhost"):
        raise SourceError(f"file source {template!r} names a host; use 'file:///absolute/path'")
    return ImageSource(template, scheme)


def sample_text(image_id: int) -> str:
    """The text printed on sample image `image_id`: a pure function of the id."""
    # 7919 is prime, so the totals wander over all four-digit values as ids go up.
    return f"INV-{image_id:04d} TOTAL {(image_id * 7919) % 10000:04d}"


# Rendering chosen so PP-OCR reads it back exactly (tests check ids 1..12 and large
# ids): one dark line in Pillow's bundled font at 32 px on a white page with margins.
_SAMPLE_FONT_PX = 32
_SAMPLE_MARGIN_PX = 24
_SAMPLE_MIN_SIZE = (480, 120)


def render_sample(image_id: int) -> bytes:
    """Sample image `image_id` as PNG bytes: a white page bearing `sample_text(image_id)`."""
    text = sample_text(image_id)
    font = ImageFont.load_default(size=_SAMPLE_FONT_PX)
    text_width = int(np.ceil(font.getlength(text)))
    width = max(_SAMPLE_MIN_SIZE[0], text_width + 2 * _SAMPLE_MARGIN_PX)
    height = _SAMPLE_MIN_SIZE[1]
    page = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(page).text(
        (_SAMPLE_MARGIN_PX, (height - _SAMPLE_FONT_PX) // 2), text, fill=(20, 20, 20), font=font
    )
    buffer = io.BytesIO()
    page.save(buffer, format="PNG")
    return buffer.getvalue()


def load_image(
    image_id: int,
    source: str | ImageSource = SAMPLE,
    *,
    http_attempts: int = 4,
    http_backoff_s: float = 0.5,
    http_timeout_s: float = 30.0,
) -> LoadedImage:
    """Fetch image `image_id` from `source` and verify it; ImageError when that fails."""
    if image_id < 0:
        raise ImageError(image_id, "image ids are non-negative integers")
    parsed = source if isinstance(source, ImageSource) else parse_source(source)
    location = parsed.location(image_id)
    started = time.perf_counter()
    if parsed.scheme == SAMPLE:
        data = render_sample(image_id)
    elif parsed.scheme == "file":
        data = _read_file(image_id, location)
    else:
        data = download(
            image_id,
            location,
            attempts=http_attempts,
            backoff_s=http_backoff_s,
            timeout_s=http_timeout_s,
        )
    pixels = decode_image(image_id, data)
    return LoadedImage(image_id, location, pixels, time.perf_counter() - started)


def _read_file(image_id: int, url: str) -> bytes:
    path = Path(unquote(urlsplit(url).path))
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageError(image_id, f"file {path} does not exist") from None
    except IsADirectoryError:
        raise ImageError(image_id, f"{path} is a directory, not an image file") from None
    except OSError as exc:
        raise ImageError(image_id, f"cannot read {path}: {exc.strerror or exc}") from exc


def download(
    image_id: int,
    url: str,
    *,
    attempts: int = 4,
    backoff_s: float = 0.5,
    timeout_s: float = 30.0,
) -> bytes:
    """GET `url`, retrying transient failures (timeouts, connection errors, 5xx, 408, 429)
    up to `attempts` times with doubling back-off; any other 4xx fails at once."""
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    with httpx.Client(timeout=timeout_s, follow_redirects=True) as http:
        attempt = 1
        while True:
            try:
                return _get_once(image_id, url, http)
            except _Transient as exc:
                if attempt >= attempts:
                    raise ImageError(
                        image_id, f"download of {url} failed after {attempts} attempts: {exc}"
                    ) from exc
            time.sleep(backoff_s * 2 ** (attempt - 1))
            attempt += 1


class _Transient(Exception):
    """A download failure worth another try."""


def _get_once(image_id: int, url: str, http: httpx.Client) -> bytes:
    try:
        with http.stream("GET", url) as response:
            if response.status_code in _TRANSIENT_STATUSES:
                raise _Transient(f"HTTP {response.status_code}")
            if response.status_code >= 400:
                raise ImageError(image_id, f"download of {url} failed: HTTP {response.status_code}")
            declared = int(response.headers.get("content-length") or 0)
            if declared > MAX_DOWNLOAD_BYTES:
                raise ImageError(image_id, f"{url} is {declared} bytes, over the limit")
            chunks: list[bytes] = []
            received = 0
            for chunk in response.iter_bytes():
                received += len(chunk)
                if received > MAX_DOWNLOAD_BYTES:
                    raise ImageError(image_id, f"{url} is over {MAX_DOWNLOAD_BYTES} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.TransportError as exc:  # timeouts, refused or dropped connections
        raise _Transient(f"{type(exc).__name__}: {exc}") from exc


def decode_image(image_id: int, data: bytes) -> np.ndarray:
    """Verify `data` as an image and return its RGB pixels; ImageError naming the cause."""
    if not data:
        raise ImageError(image_id, "the image is empty (0 bytes)")
    try:
        # verify() checks structure and checksums without decoding; it leaves the image
        # unusable, so a second open decodes the pixels (which catches truncation).
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as probe:
            _check_pixel_count(image_id, probe)
            probe.verify()
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as image:
            image.load()
            return _to_rgb(image_id, ImageOps.exif_transpose(image))
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(image_id, f"refused as a decompression bomb: {exc}") from exc
    except UnidentifiedImageError:
        raise ImageError(
            image_id, f"not an image in a supported format ({', '.join(ALLOWED_FORMATS)})"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow reports truncation and bad checksums as OSError or SyntaxError.
        raise ImageError(image_id, f"corrupt or truncated image: {exc}") from exc


def _check_pixel_count(image_id: int, image: Image.Image) -> None:
    # Pillow only warns between MAX_IMAGE_PIXELS and twice that; a worker must refuse
    # before it decodes, since decoding is what exhausts memory.
    pixels = image.width * image.height
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and pixels > limit:
        raise ImageError(
            image_id,
            f"refused as a decompression bomb: {image.width}x{image.height} = {pixels} "
            f"pixels is over the limit of {limit}",
        )


def _to_rgb(image_id: int, image: Image.Image) -> np.ndarray:
    """Pixels as RGB uint8 whatever the mode: alpha over white, 16-bit and float scaled."""
    try:
        return _convert(image)
    except ValueError as exc:  # a mode Pillow cannot convert, e.g. LAB
        raise ImageError(image_id, f"unsupported colour mode {image.mode}: {exc}") from exc


def _convert(image: Image.Image) -> np.ndarray:
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Text drawn on a transparent page would vanish if the alpha were just dropped.
        rgba = image.convert("RGBA")
        page = Image.new("RGBA", rgba.size, "white")
        return np.asarray(Image.alpha_composite(page, rgba).convert("RGB"))
    if image.mode.startswith("I") or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16"):
            values = values / 257.0  # 16-bit samples: 65535 maps to 255
        else:  # 32-bit int or float: no fixed range, so stretch what is there
            low, high = float(values.min()), float(values.max())
            values = (values - low) * (255.0 / (high - low)) if high > low else values * 0
        grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.asarray(image.convert("RGB"))
