"""The flow ships in the package; the checkout's entrypoints still lead to it."""

from __future__ import annotations

from pathlib import Path

import yaml
from prefect.flows import load_flow_from_entrypoint

import gpuboard.flows.process_image as packaged
from gpuboard.core.config import FLOW_NAME
from gpuboard.core.project import packaged_project_dir
from gpuboard.core.warm.worker import DEFAULT_PRELOAD

CHECKOUT = Path(__file__).resolve().parents[2]
PACKAGED_ENTRYPOINT = "gpuboard.flows.process_image.process_image"


def _deployment(prefect_file: Path) -> dict[str, object]:
    (deployment,) = yaml.safe_load(prefect_file.read_text())["deployments"]
    assert isinstance(deployment, dict)
    return deployment


def test_the_deployment_names_the_packaged_flow_by_module_path_with_no_pull_step() -> None:
    prefect_file = packaged_project_dir() / "prefect.yaml"
    config = yaml.safe_load(prefect_file.read_text())
    # An empty list: null would make `prefect deploy` add a step into the deployer's folder.
    assert config["pull"] == []
    assert _deployment(prefect_file)["entrypoint"] == PACKAGED_ENTRYPOINT
    flow = load_flow_from_entrypoint(PACKAGED_ENTRYPOINT)
    assert flow is packaged.process_image and flow.name == FLOW_NAME


def test_the_checkouts_prefect_yaml_is_the_packaged_one() -> None:
    assert (CHECKOUT / "prefect.yaml").resolve() == (packaged_project_dir() / "prefect.yaml")


def test_the_checkouts_flow_file_is_the_packaged_flow() -> None:
    """Deployments made before the move name `flows/process_image.py:process_image`."""
    by_path = load_flow_from_entrypoint(str(CHECKOUT / "flows" / "process_image.py:process_image"))
    assert by_path is packaged.process_image


def test_warm_runners_preload_the_flows_module() -> None:
    assert PACKAGED_ENTRYPOINT.rsplit(".", 1)[0] in DEFAULT_PRELOAD
