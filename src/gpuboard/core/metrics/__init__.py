"""Prometheus metrics of what the board knows (`gpuboard metrics`)."""
