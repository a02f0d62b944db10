"""`gpuboard` refuses bad arguments with a message and exit status 2, before any network."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuboard.cli import build_parser, main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["submit"], "--count N"),
        (["submit", "--ids", "1-3", "--count", "3"], "not both"),
        (["submit", "--ids", "1-3", "--start", "4"], "not both"),
        (["submit", "--ids", "5-1"], "backwards"),
        (["submit", "--ids", "1-3,x"], "not an id or a range"),
        (["submit", "--ids", ""], "no ids given"),
        (["submit", "--ids", "1-200000"], "more than 100000"),
        (["submit", "--count", "100001"], "between 1 and 100000"),
        (["submit", "--count", "3", "--tag", " "], "tag may not be empty"),
        (["submit", "--count", "3", "--tag", "batch:x"], "gpuboard's own"),
        (["cancel"], "RUN_ID"),
        (["cancel", "not-a-uuid"], "not a flow run id"),
        (["cancel", "--queued", "0b9c6f5e-1d2c-4c36-9a53-3f0b0e6f7a10"], "RUN_ID, or --queued"),
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
        (["worker", "--id", "gpu-1", "--gpu-index", "-1"], "0 or more"),
        (["worker", "--id", "gpu-1", "--inference-threads", "0"], "between 1 and"),
        (["worker", "--id", "gpu-1", "--gpu-memory-limit", "8 parsecs"], "unknown unit"),
        (["worker", "--id", "gpu-1", "--gpu-memory-limit", "lots"], "not a size"),
        (["worker", "--id", "gpu-1", "--gpu-memory-limit", "0GiB"], "above 0"),
        (["up", "--workers", "0"], "between 1 and"),
        (["up", "--refresh", "0"], "seconds"),
        (["--refresh", "abc"], "number of seconds"),
        (["frobnicate"], "invalid choice"),
        (["metrics", "--port", "0"], "1-65535"),
        (["metrics", "--port", "http"], "not a port number"),
        (["metrics", "--interval", "0"], "seconds"),
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
    for command in ("up", "worker", "submit", "cancel", "limit", "status", "metrics"):
        assert f"\n    {command} " in out


def test_submit_help_explains_the_batch_identity(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["submit", "--help"])
    text = capsys.readouterr().out
    assert "idempotency key" in text and "new --batch name" in text


def test_defaults() -> None:
    args = build_parser().parse_args(["up"])
    # --runs unset: sized from the cores where the stack starts (core/sizing.py).
    assert (args.workers, args.gpu_slots, args.runs, args.pool) == (2, 2, None, "ml-pool")
    args = build_parser().parse_args(["submit", "--count", "5"])
    assert (args.start, args.source, args.batch, args.concurrency) == (None, "sample", None, None)
    assert (args.ids, args.tags, args.read_only) == (None, [], False)
    args = build_parser().parse_args(["submit", "--ids", "1-3", "--tag", "a", "--tag", "b"])
    assert (args.ids, args.tags) == ("1-3", ["a", "b"])
    args = build_parser().parse_args(["worker", "--id", "gpu-1"])
    assert (args.gpu_index, args.inference_threads, args.gpu_memory_limit, args.cpu) == (
        0,
        None,
        None,
        False,
    )
    args = build_parser().parse_args(
        ["worker", "--id", "gpu-2", "--gpu-index", "1", "--gpu-memory-limit", "1.5GiB"]
    )
    assert (args.gpu_index, args.gpu_memory_limit) == (1, int(1.5 * 2**30))


@pytest.mark.parametrize(
    "argv",
    [
        ["--read-only", "submit", "--count", "2"],
        ["submit", "--count", "2", "--read-only"],
        ["--read-only", "cancel", "--queued", "--yes"],
        ["cancel", "0b9c6f5e-1d2c-4c36-9a53-3f0b0e6f7a10", "--read-only"],
        ["--read-only", "limit", "gpu-1", "+1"],
    ],
)
def test_read_only_refuses_every_write_without_reaching_a_server(
    argv: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Port 9 (discard) has no Prefect API: had anything been sent, the error would differ.
    code = main([*argv, "--api-url", "http://127.0.0.1:9/api"])
    assert code == 1
    err = capsys.readouterr().err
    assert "read-only: refused" in err and "cannot reach" not in err
    audit = (tmp_path / "gpuboard-home" / "audit.log").read_text()
    assert '"result": "refused: read-only"' in audit


def test_read_only_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GPUBOARD_READ_ONLY", "1")
    assert main(["submit", "--count", "2", "--api-url", "http://127.0.0.1:9/api"]) == 1
    assert "read-only: refused" in capsys.readouterr().err
    monkeypatch.setenv("GPUBOARD_READ_ONLY", "perhaps")
    with pytest.raises(SystemExit) as exited:
        main(["submit", "--count", "2"])
    assert exited.value.code == 2
    assert "GPUBOARD_READ_ONLY" in capsys.readouterr().err


def test_metrics_on_a_port_in_use_exits_1_with_a_message(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        status = main(["metrics", "--port", port, "--api-url", "http://127.0.0.1:9/api"])
    assert status == 1
    assert "Address already in use" in capsys.readouterr().err
