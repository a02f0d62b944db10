"""The Textual dashboard: renders snapshots from gpuboard.core; holds no Prefect logic."""
