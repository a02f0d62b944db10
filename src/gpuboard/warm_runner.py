"""`python -m gpuboard.warm_runner`: one runner process of the warm executor, started and
fed by its worker (core/warm/). Not a command for people."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpuboard.warm_runner")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--preload", action="append", default=[], metavar="MODULE")
    parser.add_argument("--max-runs", type=int, default=200)
    parser.add_argument("--max-rss-mb", type=float, default=1024.0)
    args = parser.parse_args(argv)
    from gpuboard.core.warm.runner import RunnerLimits
    from gpuboard.core.warm.runner import main as run

    return run(args.control_fd, args.preload, RunnerLimits(args.max_runs, args.max_rss_mb))


if __name__ == "__main__":
    raise SystemExit(main())
