"""`python -m gpuboard.inference_host`: the inference host process that `gpuboard worker`
starts and supervises (not a command for people; see core/host/)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gpuboard.inference_host")
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--socket", required=True, type=Path)
    parser.add_argument("--api-url", required=True)
    parser.add_argument("--gpu-index", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--gpu-memory-limit", type=int, default=None, help="bytes")
    parser.add_argument("--cpu", action="store_true", help="never use CUDA")
    parser.add_argument("--status-fd", type=int, default=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The CUDA device numbering NVML uses (PCI bus order), so --gpu-index means one GPU to
    # the model and to the memory readings alike. Set before onnxruntime loads CUDA.
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    logging.basicConfig(
        # GPUBOARD_HOST_LOG_LEVEL=DEBUG logs every slot request and its answer.
        level=os.environ.get("GPUBOARD_HOST_LOG_LEVEL", "INFO").upper(),
        stream=sys.stderr,
        format=f"%(asctime)s host {args.worker_id} %(levelname)s %(message)s",
    )
    # One line per slot request and release is noise in the worker's log.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from gpuboard.core.host.server import HostOptions, run_host
    from gpuboard.core.inference import ModelSettings

    options = HostOptions(
        worker_id=args.worker_id,
        socket_path=args.socket,
        api_url=args.api_url,
        model=ModelSettings(
            use_cuda=False if args.cpu else None,
            gpu_index=args.gpu_index,
            threads=args.threads,
            gpu_memory_limit=args.gpu_memory_limit,
        ),
    )
    return run_host(options, args.status_fd)


if __name__ == "__main__":
    raise SystemExit(main())
