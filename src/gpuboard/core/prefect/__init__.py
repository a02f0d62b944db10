"""The Prefect source: every call gpuboard makes to the Prefect API lives in this package."""
