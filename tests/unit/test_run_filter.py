"""The runs filter's syntax: what each term matches, how terms combine, what is refused."""

from __future__ import annotations

import pytest

from gpuboard.core.batch import batch_token
from gpuboard.core.models import RunView
from gpuboard.core.prefect.snapshot import batch_of
from gpuboard.core.run_filter import RunFilterError, parse_run_filter


def run(state: str = "Scheduled", worker: str | None = None, batch: str | None = None) -> RunView:
    state_type = {"Late": "SCHEDULED", "Crashed": "CRASHED"}.get(state, state.upper())
    return RunView("id", "brave-otter", state_type, state, worker, image_id="42", batch=batch)


def test_the_empty_filter_matches_everything() -> None:
    empty = parse_run_filter("   ")
    assert not empty.active and empty.matches(run())


def test_state_matches_names_and_types_and_queued_means_not_started() -> None:
    assert parse_run_filter("state:late").matches(run("Late"))
    assert parse_run_filter("state:scheduled").matches(run("Late"))  # its type
    assert not parse_run_filter("state:failed").matches(run("Crashed"))
    assert parse_run_filter("state:failed,crashed").matches(run("Crashed"))
    assert parse_run_filter("state:queued").matches(run("Pending"))
    assert not parse_run_filter("state:queued").matches(run("Running"))


def test_terms_combine_and_repeated_keys_are_alternatives() -> None:
    both = parse_run_filter("worker:gpu-1 batch:invoices")
    assert both.matches(run(worker="gpu-1", batch="invoices"))
    assert not both.matches(run(worker="gpu-2", batch="invoices"))
    assert not both.matches(run(worker="gpu-1", batch="receipts"))
    assert not parse_run_filter("worker:gpu-1").matches(run(worker="gpu-10"))  # whole names
    either = parse_run_filter("worker:gpu-1 worker:gpu-2")
    assert either.matches(run(worker="gpu-2"))


def test_free_text_matches_the_name_and_image_id_as_shown() -> None:
    assert parse_run_filter("OTTER").matches(run())
    assert parse_run_filter("#42").matches(run())
    assert parse_run_filter("image:42").matches(run())
    assert not parse_run_filter("image:4").matches(run())
    assert not parse_run_filter("otter #43").matches(run())


def test_a_long_batch_name_matches_its_tag_token() -> None:
    long_name = "x" * 300
    tag_token = batch_of(["other", f"batch:{batch_token(long_name)}"])
    assert parse_run_filter(f"batch:{long_name}").matches(run(batch=tag_token))


@pytest.mark.parametrize(
    ("typed", "says"), [("colour:red", "unknown filter colour"), ("state:", "needs a value")]
)
def test_what_is_not_a_filter_is_refused_with_a_reason(typed: str, says: str) -> None:
    with pytest.raises(RunFilterError, match=says):
        parse_run_filter(typed)
