"""Sends one image to an inference host from a process of its own, as a flow run would, so
that a test can kill it at any moment. Prints the reply's essentials as one JSON line.

    python tests/support/host_request.py SOCKET IMAGE_ID [--lines N]

`--lines N` sends a page of N lines of sample text instead of the one-line sample: a
longer inference, to be killed in the middle of.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from gpuboard.core.host.client import read_via_host
from gpuboard.core.images import load_image, sample_text


def page(image_id: int, lines: int) -> np.ndarray:
    font = ImageFont.load_default(size=28)
    image = Image.new("RGB", (900, 40 * lines + 40), "white")
    draw = ImageDraw.Draw(image)
    for line in range(lines):
        draw.text((20, 20 + 40 * line), sample_text(image_id + line), fill="black", font=font)
    return np.asarray(image)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("socket")
    parser.add_argument("image_id", type=int)
    parser.add_argument("--lines", type=int, default=0)
    parser.add_argument("--task-run-id", default=None)
    args = parser.parse_args()
    pixels = (
        page(args.image_id, args.lines)
        if args.lines
        else load_image(args.image_id, "sample").pixels
    )
    print(json.dumps({"sending": args.image_id}), flush=True)
    reply = read_via_host(
        args.socket, args.image_id, pixels, task_run_id=args.task_run_id, flow_run_id=None
    )
    print(
        json.dumps(
            {
                "text": reply.ocr.text,
                "host_pid": reply.host.pid,
                "host_started_at": reply.host.started_at,
                "slot_wait_s": reply.timings.slot_wait_s,
                "inference_s": reply.timings.inference_s,
                "started_at": reply.timings.inference_started_at,
                "ended_at": reply.timings.inference_ended_at,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
