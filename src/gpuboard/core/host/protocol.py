"""The wire format between flow runs and their worker's inference host.

One request and one reply per connection, each a frame: a 4-byte big-endian length, a
JSON header of that length, then `header["payload_bytes"]` raw bytes (the pixels of a
request; none in a reply). Raw pixels rather than an encoded image: the flow run has
already decoded and verified the image, and decoding again in the host would put that
CPU on the one process every image goes through. A Unix socket copies a 4 MB image in
about a millisecond (the client reports the round trip beyond the host's own time).
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

PROTOCOL_VERSION = 1
_LENGTH = struct.Struct(">I")
# A header is a few hundred bytes; anything near this is not a gpuboard peer.
MAX_HEADER_BYTES = 1 << 20
# The largest image `images.py` accepts is 40 megapixels: 120 MB of RGB.
MAX_PAYLOAD_BYTES = 128 << 20


class ProtocolError(RuntimeError):
    """The peer sent something that is not a gpuboard frame."""


@dataclass(frozen=True)
class InferRequest:
    """One image to read, and whom the GPU slot taken for it is held for."""

    image_id: int
    height: int
    width: int
    task_run_id: str | None  # the lease's holder on the server
    flow_run_id: str | None
    client_pid: int

    def header(self) -> dict[str, Any]:
        return {
            "version": PROTOCOL_VERSION,
            "op": "infer",
            **asdict(self),
            "payload_bytes": self.height * self.width * 3,
        }

    @classmethod
    def from_header(cls, header: dict[str, Any]) -> InferRequest:
        if header.get("version") != PROTOCOL_VERSION or header.get("op") != "infer":
            raise ProtocolError(f"not an inference request of version {PROTOCOL_VERSION}")
        try:
            request = cls(
                image_id=int(header["image_id"]),
                height=int(header["height"]),
                width=int(header["width"]),
                task_run_id=_optional_str(header.get("task_run_id")),
                flow_run_id=_optional_str(header.get("flow_run_id")),
                client_pid=int(header.get("client_pid") or 0),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed inference request: {exc}") from None
        if header.get("payload_bytes") != request.height * request.width * 3:
            raise ProtocolError("payload size does not match height x width x 3")
        return request


@dataclass(frozen=True)
class HostTimings:
    """What the host measured for one request. Durations in seconds; `*_at` epoch seconds."""

    slot_wait_s: float  # from the request's arrival to holding its slot (queue and pauses)
    inference_s: float
    inference_started_at: float  # inside the slot
    inference_ended_at: float


@dataclass(frozen=True)
class HostIdentity:
    """Which host process served a request: one `started_at` per model load."""

    pid: int
    started_at: float
    model_load_s: float
    provider: str
    device: str


def encode_pixels(pixels: np.ndarray) -> bytes:
    """The payload of an RGB uint8 image (height x width x 3)."""
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ProtocolError(f"expected RGB uint8 pixels, got {pixels.dtype}{pixels.shape}")
    return np.ascontiguousarray(pixels).tobytes()


def decode_pixels(request: InferRequest, payload: bytes) -> np.ndarray:
    return np.frombuffer(payload, dtype=np.uint8).reshape(request.height, request.width, 3)


def frame(header: dict[str, Any], payload: bytes = b"") -> bytes:
    """One frame: length, JSON header, payload (its size is put in the header)."""
    body = json.dumps({**header, "payload_bytes": len(payload)}).encode()
    return _LENGTH.pack(len(body)) + body + payload


async def read_frame(reader: asyncio.StreamReader) -> tuple[dict[str, Any], bytes]:
    """Read one frame; IncompleteReadError when the peer closed before sending it all."""
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    header = _parse_header(await reader.readexactly(_check_header_length(length)))
    payload = await reader.readexactly(_payload_length(header))
    return header, payload


def recv_frame(sock: socket.socket) -> tuple[dict[str, Any], bytes]:
    """The blocking twin of `read_frame`; ConnectionError when the peer closed first."""
    (length,) = _LENGTH.unpack(_recv_exactly(sock, _LENGTH.size))
    header = _parse_header(_recv_exactly(sock, _check_header_length(length)))
    return header, _recv_exactly(sock, _payload_length(header))


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view = memoryview(buffer)
    received = 0
    while received < size:
        count = sock.recv_into(view[received:])
        if count == 0:
            raise ConnectionError("the inference host closed the connection")
        received += count
    return bytes(buffer)


def _check_header_length(length: int) -> int:
    if not 0 < length <= MAX_HEADER_BYTES:
        raise ProtocolError(f"frame header of {length} bytes")
    return length


def _parse_header(raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise ProtocolError(f"frame header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("frame header is not a JSON object")
    return header


def _payload_length(header: dict[str, Any]) -> int:
    size = header.get("payload_bytes", 0)
    if not isinstance(size, int) or not 0 <= size <= MAX_PAYLOAD_BYTES:
        raise ProtocolError(f"payload of {size!r} bytes")
    return size


def _optional_str(value: object) -> str | None:
    return None if value in (None, "") else str(value)
