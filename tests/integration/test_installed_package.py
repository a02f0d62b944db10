"""Installed, not checked out: the wheel alone runs `gpuboard up` and a batch to the end.

The wheel is built from the checkout's sources and installed, without its dependencies, in
a fresh virtual environment; a .pth line then lets that environment import the test
environment's dependencies (prefect, rapidocr, ...), so nothing is downloaded. Never its
gpuboard: an editable install's path sits in a .pth file of that folder, and a folder named
by a .pth line has its own .pth files skipped. From an empty folder outside the checkout,
with no GPUBOARD_PROJECT_DIR and no PYTHONPATH, the installed `gpuboard up --headless`
starts a server, deploys process-image and starts a worker, and `gpuboard submit --count 3`
runs 3 images: everything a GPU host would do after `pip install gpuboard`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import site
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.client.schemas.objects import StateType

from gpuboard.core.images import sample_text
from gpuboard.core.prefect.client import async_client
from support.seeding import free_port
from support.stack import Children, processes_with_env, wait_for_final_states

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CHECKOUT = Path(__file__).resolve().parents[2]
RUNS = 3
MARKER_ENV = "GPUBOARD_TEST_STACK"
# What would make the checkout's gpuboard importable, or point gpuboard at the checkout.
CHECKOUT_POINTERS = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "GPUBOARD_PROJECT_DIR")


def build_wheel(out: Path) -> Path:
    """The wheel of the checkout's sources, built in a copy (the build leaves build/ and
    *.egg-info beside the sources: not in the checkout)."""
    source = out / "source"
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    shutil.copytree(CHECKOUT / "src", source / "src", ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(CHECKOUT / name, source / name)
    dist = out / "dist"
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist)]
    subprocess.run([*command, str(source)], check=True, timeout=300)
    (wheel,) = dist.glob("gpuboard-*.whl")
    return wheel


def install_in_fresh_venv(wheel: Path, venv: Path) -> Path:
    """A new virtual environment with the wheel installed; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    # This environment's pip installs into that one: the new one needs no pip of its own.
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q"]
    subprocess.run([*install, "--no-deps", "--no-index", str(wheel)], check=True, timeout=300)
    # Only now the dependencies: pip above must not see the test environment's gpuboard.
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(purelib) / "test-dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


def clean_env(venv: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CHECKOUT_POINTERS}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


def wait_for_line(log: Path, text: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        if process.poll() is not None:
            break
        time.sleep(0.5)
    raise AssertionError(f"no {text!r} from gpuboard up:\n{log.read_text()[-4000:]}")


@pytest.fixture
def marker() -> Iterator[str]:
    """Carried by every process the installed `up` starts; any left after the test is killed."""
    value = f"installed-{uuid.uuid4().hex[:8]}"
    yield value
    for pid in processes_with_env(MARKER_ENV, value):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_the_installed_wheel_runs_up_and_a_batch_outside_the_checkout(
    tmp_path: Path, marker: str, children: Children
) -> None:
    started = time.monotonic()
    venv = tmp_path / "venv"
    python = install_in_fresh_venv(build_wheel(tmp_path / "wheel"), venv)
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    api_url = f"http://127.0.0.1:{free_port()}/api"
    home = tmp_path / "home"
    env = clean_env(venv, PREFECT_API_URL=api_url, GPUBOARD_HOME=str(home))
    env[MARKER_ENV] = marker

    where = subprocess.run(
        [str(python), "-c", "import gpuboard.flows.process_image as m; print(m.__file__)"],
        cwd=empty,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(venv), where  # the wheel's gpuboard, not the checkout's

    up_log = tmp_path / "up.log"
    command = [str(venv / "bin" / "gpuboard"), "up", "--headless", "--refresh", "1"]
    up = children.start([*command, "--workers", "1"], env, up_log, cwd=empty)
    wait_for_line(up_log, "workers 1/1 online", up, timeout=300)
    assert f"from {venv}" in up_log.read_text()  # deployed from the installed package

    submit = subprocess.run(
        [str(venv / "bin" / "gpuboard"), "submit", "--count", str(RUNS), "--api-url", api_url],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert submit.returncode == 0, submit.stdout + submit.stderr

    async def read_runs() -> dict[int, uuid.UUID]:
        async with async_client(api_url) as client:
            runs = await client.read_flow_runs()
        return {int(run.parameters["image_id"]): run.id for run in runs}

    runs = asyncio.run(read_runs())
    assert sorted(runs) == list(range(1, RUNS + 1))
    states = asyncio.run(wait_for_final_states(api_url, list(runs.values()), timeout=240))
    assert set(states.values()) == {StateType.COMPLETED}, up_log.read_text()[-4000:]
    for image_id in runs:
        record = json.loads((home / "results" / f"{image_id}.json").read_text())
        assert record["text"] == sample_text(image_id)

    up.send_signal(signal.SIGINT)  # Ctrl-C
    assert up.wait(timeout=90) == 0
    assert processes_with_env(MARKER_ENV, marker) == set()
    assert list(empty.iterdir()) == []  # nothing written where it was started
    print(f"wheel to {RUNS} completed runs in {time.monotonic() - started:.0f}s")
