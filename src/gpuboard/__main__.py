"""Lets `python -m gpuboard` behave like the `gpuboard` command."""

from gpuboard.cli import main

raise SystemExit(main())
