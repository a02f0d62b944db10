"""Property tests: whatever an operator types after `gpuboard submit|limit|cancel`, the CLI
answers with a result or a message and an exit status, never a traceback, and with the
API pointed at a closed port nothing could reach a server anyway.

Also the settings read from the environment: GPUBOARD_READ_ONLY takes yes/no words and
rejects anything else with exit 2, and the batch dialog's field checker never raises
anything but its own input error.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuboard.cli import main
from gpuboard.core.batch import BatchInputError
from gpuboard.tui.screens.batch_dialog import plan_batch

CLOSED_API = "http://127.0.0.1:9/api"  # port 9 (discard) is closed here: refused at once

# Words operators type, plus noise: flags of every subcommand, numbers, ranges, junk.
TOKENS = st.one_of(
    st.sampled_from(
        [
            "--count",
            "--start",
            "--ids",
            "--source",
            "--tag",
            "--batch",
            "--concurrency",
            "--queued",
            "--yes",
            "--pool",
            "--read-only",
            "pause",
            "resume",
            "+1",
            "-1",
            "0",
            "3",
            "10001",
            "-5",
            "1-20,40",
            "5-2",
            "x",
            "",
            "sample",
            "{image_id}",
            "file:///d/{image_id}.png",
            "gpu-1",
            "--",
            "-h",
        ]
    ),
    st.text(max_size=12),
)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    command=st.sampled_from(["submit", "limit", "cancel"]),
    words=st.lists(TOKENS, max_size=6),
)
def test_cli_answers_any_arguments_with_a_status(
    command: str, words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    if "-h" in words or "--help" in words:
        words = [w for w in words if w not in ("-h", "--help")]
    argv = [command, *words, "--api-url", CLOSED_API]
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse: bad arguments
        assert exc.code == 2, (argv, exc.code)
        assert "error:" in capsys.readouterr().err
        return
    assert status in (0, 1, 2), argv
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err


@given(value=st.text(max_size=8))
def test_read_only_setting_is_yes_no_or_refused(value: str) -> None:
    import os

    from gpuboard.core.config import ConfigError, read_only_from_env

    previous = os.environ.get("GPUBOARD_READ_ONLY")
    try:
        os.environ["GPUBOARD_READ_ONLY"] = value.replace("\x00", "")
        try:
            result = read_only_from_env()
        except ConfigError as exc:
            assert "GPUBOARD_READ_ONLY" in str(exc)
        else:
            normal = value.replace("\x00", "").strip().lower()
            assert result == (normal in ("1", "true", "yes", "on"))
    finally:
        if previous is None:
            os.environ.pop("GPUBOARD_READ_ONLY", None)
        else:
            os.environ["GPUBOARD_READ_ONLY"] = previous


@given(fields=st.tuples(*[st.one_of(TOKENS, st.text(max_size=20))] * 6))
def test_batch_dialog_fields_are_accepted_or_refused_with_a_reason(
    fields: tuple[str, str, str, str, str, str],
) -> None:
    try:
        plan = plan_batch(*fields)
    except BatchInputError as exc:
        assert str(exc)
        return
    assert 1 <= len(plan.image_ids) <= 100_000
    assert len(set(plan.image_ids)) == len(plan.image_ids)
    assert "{image_id" in plan.source or plan.source == "sample"
