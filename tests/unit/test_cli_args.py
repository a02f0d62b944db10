"""`gpuboard` refuses bad arguments with a message and exit status 2, before any network."""

from __future__ import annotations

import pytest

from gpuboard.cli import build_parser, main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["submit"], "--count"),
        (["submit", "--count", "0"], "between 1 and"),
        (["submit", "--count", "x"], "not a whole number"),
        (["submit", "--count", "3", "--start", "-1"], "0 or more"),
        (["submit", "--count", "3", "--source", "ftp://host/{image_id}.png"], "unknown image"),
        (["submit", "--count", "3", "--source", "file:///one.png"], "placeholder"),
        (["submit", "--count", "3", "--concurrency", "99"], "between 1 and 16"),
        (["worker"], "--id"),
        (["worker", "--id", "gpu 1"], "worker id"),
        (["worker", "--id", "gpu-1", "--runs", "0"], "between 1 and"),
        (["worker", "--id", "gpu-1", "--gpu-slots", "0"], "at least 1"),
        (["up", "--workers", "0"], "between 1 and"),
        (["up", "--refresh", "0"], "seconds"),
        (["--refresh", "abc"], "number of seconds"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_help_names_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for command in ("up", "worker", "submit", "status"):
        assert f"\n    {command} " in out


def test_submit_help_explains_the_batch_identity(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["submit", "--help"])
    text = capsys.readouterr().out
    assert "idempotency key" in text and "new --batch name" in text


def test_defaults() -> None:
    args = build_parser().parse_args(["up"])
    assert (args.workers, args.gpu_slots, args.runs, args.pool) == (2, 2, 10, "ml-pool")
    args = build_parser().parse_args(["submit", "--count", "5"])
    assert (args.start, args.source, args.batch, args.concurrency) == (1, "sample", None, 1)
