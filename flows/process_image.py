"""The `process-image` flow, for entrypoints that name this file
(`flows/process_image.py:process_image`): deployments made from a checkout before the flow
moved into the package, and scripts that load it by path.

The flow lives in `gpuboard.flows.process_image`, the module that gpuboard's deployment
names, so an installed package is all a worker needs; this file only re-exports it.
"""

from gpuboard.flows.process_image import (
    download_image,
    process_image,
    report_timings,
    run_ml_model,
    save_results,
)

__all__ = ["download_image", "process_image", "report_timings", "run_ml_model", "save_results"]
