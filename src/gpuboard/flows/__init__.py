"""The Prefect flows gpuboard deploys, shipped in the package with their `prefect.yaml`.

Deployments name them by module path (`gpuboard.flows.process_image.process_image`), so a
worker needs the installed package and nothing else: no checkout, no pull step.
"""
