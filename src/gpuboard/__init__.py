"""gpuboard: a terminal dashboard and operator console for Prefect 3 GPU workers."""

__version__ = "0.1.0"
