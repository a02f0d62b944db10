"""Image sources and Pillow checks: templates, sample rendering, files, HTTP with retries."""

from __future__ import annotations

import io
import pickle
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image, ImageDraw

from gpuboard.core import images
from gpuboard.core.images import ImageError, SourceError, load_image, parse_source, sample_text


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def file_source(folder: Path) -> str:
    return f"file://{folder}/{{image_id}}.png"


# --- templates -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "scheme"),
    [
        ("sample", "sample"),
        (" sample ", "sample"),
        ("file:///data/{image_id}.png", "file"),
        ("file://localhost/data/img-{image_id:06d}.jpg", "file"),
        ("https://example.org/images/{image_id}.png", "https"),
        ("http://10.0.0.1:8080/get?id={image_id}", "http"),
    ],
)
def test_valid_templates(template: str, scheme: str) -> None:
    assert parse_source(template).scheme == scheme


@pytest.mark.parametrize(
    ("template", "complaint"),
    [
        ("ftp://host/{image_id}.png", "unknown image source"),
        ("s3://bucket/{image_id}.png", "unknown image source"),
        ("/data/{image_id}.png", "unknown image source"),
        ("samples", "unknown image source"),
        ("", "unknown image source"),
        ("https://example.org/images/latest.png", "no {image_id} placeholder"),
        ("file:///data/{id}.png", "no {image_id} placeholder"),
        ("file:///data/{image_id:q}.png", "bad format"),
        ("file://server/data/{image_id}.png", "names a host"),
    ],
)
def test_invalid_templates_say_what_is_wrong(template: str, complaint: str) -> None:
    with pytest.raises(SourceError, match=complaint.replace("{", r"\{").replace("}", r"\}")):
        parse_source(template)


def test_location_fills_the_placeholder_with_its_format() -> None:
    assert parse_source("file:///d/{image_id:06d}.png").location(42) == "file:///d/000042.png"
    assert parse_source("https://h/{image_id}/{image_id}.png").location(7) == "https://h/7/7.png"
    assert parse_source("sample").location(7) == "sample:7"


# --- sample images -------------------------------------------------------------------


def test_sample_text_is_a_pure_function_of_the_id() -> None:
    assert sample_text(42) == sample_text(42) == "INV-0042 TOTAL 2598"
    assert len({sample_text(i) for i in range(200)}) == 200
    assert images.render_sample(9) == images.render_sample(9)


@pytest.mark.parametrize("image_id", [0, 1, 12, 10**12])
def test_sample_renders_a_white_page_with_dark_text(image_id: int) -> None:
    loaded = load_image(image_id, "sample")
    width, height = loaded.size
    assert loaded.pixels.dtype == np.uint8 and loaded.pixels.shape == (height, width, 3)
    assert width >= 480 and height == 120
    assert loaded.pixels[0, 0].tolist() == [255, 255, 255]
    assert loaded.pixels.min() < 60  # the text is there
    assert loaded.location == f"sample:{image_id}" and loaded.fetch_s >= 0


def test_negative_ids_are_refused() -> None:
    with pytest.raises(ImageError, match="image -1: image ids are non-negative"):
        load_image(-1)


# --- files and the Pillow checks ----------------------------------------------------


def test_reads_a_png_file(tmp_path: Path) -> None:
    page = Image.new("RGB", (64, 32), "white")
    ImageDraw.Draw(page).rectangle((10, 10, 20, 20), fill=(255, 0, 0))
    (tmp_path / "5.png").write_bytes(png_bytes(page))
    loaded = load_image(5, file_source(tmp_path))
    assert loaded.size == (64, 32)
    assert loaded.pixels[15, 15].tolist() == [255, 0, 0]
    assert loaded.location == f"file://{tmp_path}/5.png"


def test_reads_a_file_path_with_escaped_characters(tmp_path: Path) -> None:
    folder = tmp_path / "my scans"
    folder.mkdir()
    (folder / "3.png").write_bytes(png_bytes(Image.new("L", (8, 8), 0)))
    assert load_image(3, "file://" + str(folder).replace(" ", "%20") + "/{image_id}.png")


def _broken(good: bytes) -> dict[str, bytes]:
    idat = good.index(b"IDAT")
    flipped = bytearray(good)
    flipped[idat + 8] ^= 0xFF  # inside the compressed data: the chunk CRC no longer holds
    return {
        "empty": b"",
        "truncated": good[: len(good) // 2],
        "corrupt": bytes(flipped),
        "text": b"hello, this is not an image\n" * 10,
        "eps": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
        "png-signature-only": good[:8],
    }


@pytest.mark.parametrize(
    ("kind", "cause"),
    [
        ("empty", "the image is empty \\(0 bytes\\)"),
        ("truncated", "corrupt or truncated"),
        ("corrupt", "corrupt or truncated"),
        ("text", "not an image in a supported format"),
        ("eps", "not an image in a supported format"),
        ("png-signature-only", "corrupt or truncated|not an image"),
    ],
)
def test_bad_files_fail_clearly(tmp_path: Path, kind: str, cause: str) -> None:
    noise = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    (tmp_path / "8.png").write_bytes(_broken(png_bytes(Image.fromarray(noise)))[kind])
    with pytest.raises(ImageError, match=f"^image 8: ({cause})") as raised:
        load_image(8, file_source(tmp_path))
    assert raised.value.image_id == 8


def test_missing_file_and_directory_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"image 404: file .*/404\.png does not exist"):
        load_image(404, file_source(tmp_path))
    (tmp_path / "9.png").mkdir()
    with pytest.raises(ImageError, match=r"image 9: .* is a directory"):
        load_image(9, file_source(tmp_path))


def _png_claiming_size(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header says `width` x `height`: what a bomb looks like at open."""
    good = png_bytes(Image.new("L", (1, 1)))
    ihdr = good.index(b"IHDR")
    body = b"IHDR" + struct.pack(">II", width, height) + good[ihdr + 12 : ihdr + 17]
    return (
        good[: ihdr - 4]
        + good[ihdr - 4 : ihdr]
        + body
        + struct.pack(">I", zlib.crc32(body))
        + good[ihdr + 21 :]
    )


def test_decompression_bombs_are_refused_before_decoding(tmp_path: Path) -> None:
    (tmp_path / "1.png").write_bytes(_png_claiming_size(100_000, 100_000))
    with pytest.raises(ImageError, match="image 1: refused as a decompression bomb"):
        load_image(1, file_source(tmp_path))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_images_just_over_the_pixel_limit_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pillow alone only warns between MAX_IMAGE_PIXELS and twice that.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    (tmp_path / "2.png").write_bytes(png_bytes(Image.new("RGB", (40, 30))))  # 1200 px
    with pytest.raises(ImageError, match=r"image 2: refused as a decompression bomb.*1200"):
        load_image(2, file_source(tmp_path))
    (tmp_path / "3.png").write_bytes(png_bytes(Image.new("RGB", (40, 25))))  # 1000 px: fine
    assert load_image(3, file_source(tmp_path)).size == (40, 25)


def test_image_error_survives_pickling() -> None:
    error = pickle.loads(pickle.dumps(ImageError(3, "broken")))
    assert str(error) == "image 3: broken" and error.image_id == 3 and error.cause == "broken"


# --- odd modes become RGB ----------------------------------------------------------


def _decode(image: Image.Image, fmt: str = "PNG") -> np.ndarray:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return images.decode_image(1, buffer.getvalue())


def test_transparent_page_gets_a_white_background() -> None:
    page = Image.new("RGBA", (20, 10), (0, 0, 0, 0))  # transparent black
    ImageDraw.Draw(page).rectangle((5, 2, 8, 6), fill=(0, 0, 0, 255))
    pixels = _decode(page)
    assert pixels[0, 0].tolist() == [255, 255, 255]  # not black: the text would vanish
    assert pixels[4, 6].tolist() == [0, 0, 0]
    grey_alpha = _decode(page.convert("LA"))
    assert grey_alpha[0, 0].tolist() == [255, 255, 255] and grey_alpha[4, 6].tolist() == [0, 0, 0]


def test_palette_with_transparency_gets_a_white_background() -> None:
    page = Image.new("P", (8, 8), 0)
    page.putpalette([0, 0, 0, 200, 0, 0])
    page.info["transparency"] = 0
    page.putpixel((3, 3), 1)
    pixels = _decode(page)
    assert pixels[0, 0].tolist() == [255, 255, 255] and pixels[3, 3].tolist() == [200, 0, 0]


@pytest.mark.parametrize(
    ("mode", "fill", "expected"),
    [
        ("1", 1, [255, 255, 255]),
        ("L", 128, [128, 128, 128]),
        ("P", 0, None),
        ("I;16", 65535, [255, 255, 255]),
        ("I;16", 257 * 100, [100, 100, 100]),
        ("I", 70000, None),
        ("F", 0.5, None),
        ("CMYK", (0, 0, 0, 0), [255, 255, 255]),
        ("YCbCr", (255, 128, 128), [255, 255, 255]),
    ],
)
def test_odd_modes_become_rgb(mode: str, fill: object, expected: list[int] | None) -> None:
    image = Image.new(mode, (6, 4), fill)  # type: ignore[arg-type]
    fmt = "TIFF" if mode in ("I", "F", "CMYK", "YCbCr") else "PNG"
    pixels = _decode(image, fmt)
    assert pixels.shape == (4, 6, 3) and pixels.dtype == np.uint8
    if expected is not None:
        assert np.abs(pixels[0, 0].astype(int) - expected).max() <= 1


def test_sixteen_bit_gradient_keeps_its_range() -> None:
    ramp = np.linspace(0, 65535, 16, dtype=np.uint16).reshape(2, 8)
    pixels = _decode(Image.fromarray(ramp))  # uint16: mode I;16
    assert pixels[0, 0, 0] == 0 and pixels[1, 7, 0] == 255


def test_exif_orientation_is_applied() -> None:
    tall = Image.new("RGB", (10, 20), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    buffer = io.BytesIO()
    tall.save(buffer, format="JPEG", exif=exif)
    assert images.decode_image(1, buffer.getvalue()).shape[:2] == (10, 20)


# --- HTTP ----------------------------------------------------------------------------


class _Scripted(BaseHTTPRequestHandler):
    """Answers each path with the next (status, body, delay) of its script; counts requests."""

    scripts: ClassVar[dict[str, list[tuple[int, bytes, float]]]] = {}
    hits: ClassVar[dict[str, int]] = {}

    def do_GET(self) -> None:
        self.hits[self.path] = self.hits.get(self.path, 0) + 1
        script = self.scripts.get(self.path, [(404, b"", 0.0)])
        status, body, delay = script[0] if len(script) == 1 else script.pop(0)
        time.sleep(delay)
        try:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[tuple[str, type[_Scripted]]]:
    handler = type("Handler", (_Scripted,), {"scripts": {}, "hits": {}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def test_http_download(http_server: tuple[str, type[_Scripted]]) -> None:
    base, handler = http_server
    handler.scripts["/img/6.png"] = [(200, png_bytes(Image.new("RGB", (30, 20), "red")), 0)]
    loaded = load_image(6, f"{base}/img/{{image_id}}.png", http_backoff_s=0.01)
    assert loaded.size == (30, 20) and loaded.pixels[0, 0].tolist() == [255, 0, 0]


@pytest.mark.parametrize("transient", [500, 502, 503, 504, 408, 429])
def test_http_retries_transient_statuses(
    http_server: tuple[str, type[_Scripted]], transient: int
) -> None:
    base, handler = http_server
    good = png_bytes(Image.new("RGB", (4, 4)))
    handler.scripts["/1.png"] = [(transient, b"busy", 0), (transient, b"busy", 0), (200, good, 0)]
    assert load_image(1, f"{base}/{{image_id}}.png", http_backoff_s=0.01).size == (4, 4)
    assert handler.hits["/1.png"] == 3


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410])
def test_http_client_errors_fail_at_once(
    http_server: tuple[str, type[_Scripted]], status: int
) -> None:
    base, handler = http_server
    handler.scripts["/2.png"] = [(status, b"no", 0)]
    with pytest.raises(ImageError, match=f"image 2: download of .*/2.png failed: HTTP {status}"):
        load_image(2, f"{base}/{{image_id}}.png", http_backoff_s=0.01)
    assert handler.hits["/2.png"] == 1


def test_http_gives_up_after_bounded_attempts(http_server: tuple[str, type[_Scripted]]) -> None:
    base, handler = http_server
    handler.scripts["/3.png"] = [(503, b"down", 0)]
    started = time.monotonic()
    with pytest.raises(ImageError, match=r"image 3: .* failed after 3 attempts: HTTP 503"):
        load_image(3, f"{base}/{{image_id}}.png", http_attempts=3, http_backoff_s=0.1)
    assert handler.hits["/3.png"] == 3
    assert time.monotonic() - started >= 0.1 + 0.2  # doubling back-off between attempts


def test_http_retries_timeouts(http_server: tuple[str, type[_Scripted]]) -> None:
    base, handler = http_server
    good = png_bytes(Image.new("RGB", (4, 4)))
    handler.scripts["/4.png"] = [(200, good, 1.0), (200, good, 0)]
    loaded = load_image(4, f"{base}/{{image_id}}.png", http_timeout_s=0.3, http_backoff_s=0.01)
    assert loaded.size == (4, 4) and handler.hits["/4.png"] == 2


def test_http_connection_refused_is_retried_then_reported() -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ImageError, match=r"image 5: download .* after 2 attempts: ConnectError"):
        load_image(5, f"http://127.0.0.1:{port}/{{image_id}}", http_attempts=2, http_backoff_s=0)


def test_http_bad_body_fails_like_a_bad_file(http_server: tuple[str, type[_Scripted]]) -> None:
    base, handler = http_server
    handler.scripts["/7.png"] = [(200, b"<html>not found</html>", 0)]
    with pytest.raises(ImageError, match="image 7: not an image"):
        load_image(7, f"{base}/{{image_id}}.png", http_backoff_s=0.01)


def test_http_oversized_download_is_refused(
    http_server: tuple[str, type[_Scripted]], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, handler = http_server
    monkeypatch.setattr(images, "MAX_DOWNLOAD_BYTES", 100)
    handler.scripts["/8.png"] = [(200, b"x" * 500, 0)]
    with pytest.raises(ImageError, match=r"image 8: .* 500 bytes, over the limit"):
        load_image(8, f"{base}/{{image_id}}.png", http_backoff_s=0.01)
    assert handler.hits["/8.png"] == 1
