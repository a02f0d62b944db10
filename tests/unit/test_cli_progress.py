"""The CLI's progress line: redrawn in place on a terminal, a few plain lines in a log."""

from __future__ import annotations

import io

from gpuboard.cli_progress import ProgressLine


def test_a_terminal_gets_one_line_redrawn_in_place() -> None:
    stream = io.StringIO()
    line = ProgressLine(stream, interactive=True)
    for done in range(1, 101):
        line.update(done, 100, "created 1")
    line.close()
    text = stream.getvalue()
    assert text.startswith("\r[") and text.endswith("\n") and text.count("\n") == 1
    last = text.rsplit("\r", 1)[1]
    assert last.startswith("[" + "#" * 30 + "] 100/100 created 1 ")


def test_a_log_gets_about_ten_plain_lines_and_the_last_one() -> None:
    stream = io.StringIO()
    line = ProgressLine(stream, interactive=False)
    for done in range(1, 1001):
        line.update(done, 1000, "ok", force=done == 333)
    line.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert lines[-1] == "  1000/1000 ok" and "  333/1000 ok" in lines
    assert 10 <= len(lines) <= 13
