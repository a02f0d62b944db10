"""The runs panel's k9s-style filter: parses what the operator typed after `/` and tells
which runs match.

Terms are separated by spaces. `state:failed`, `worker:gpu-1`, `batch:NAME` (and
`image:42`) narrow by one field; a comma gives alternatives (`state:failed,crashed`).
Anything else is free text, matched (case-insensitive, as a substring) against the run's
name and image id. Every term must match; repeating a key ORs its values like a comma.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpuboard.core.batch import batch_token
from gpuboard.core.models import RunView

KEYS = ("state", "worker", "batch", "image")
# `state:queued` is what the board calls queued: not started yet, whatever the state.
STATE_ALIASES = {"queued": ("scheduled", "late", "pending")}


class RunFilterError(ValueError):
    """What the operator typed is not a filter; the message says what would be."""


@dataclass(frozen=True)
class RunFilter:
    """One parsed filter; the empty filter matches every run."""

    text: tuple[str, ...] = ()  # lower-cased free words
    states: tuple[str, ...] = ()  # lower-cased state names or types (aliases expanded)
    workers: tuple[str, ...] = ()
    batches: tuple[str, ...] = ()  # batch tokens, as RunView.batch holds them
    images: tuple[str, ...] = ()
    source: str = ""  # what was typed, normalised, for the panel's title

    @property
    def active(self) -> bool:
        return bool(self.text or self.states or self.workers or self.batches or self.images)

    def matches(self, run: RunView) -> bool:
        if self.states and not (
            run.state_name.lower() in self.states or run.state_type.lower() in self.states
        ):
            return False
        if self.workers and run.worker not in self.workers:
            return False
        if self.batches and run.batch not in self.batches:
            return False
        if self.images and run.image_id not in self.images:
            return False
        # As the panel shows it: `name #42`.
        haystack = f"{run.name} #{run.image_id or ''}".lower()
        return all(word in haystack for word in self.text)


def parse_run_filter(typed: str) -> RunFilter:
    """The filter `typed` says; RunFilterError names a term it cannot read."""
    text: list[str] = []
    fields: dict[str, list[str]] = {key: [] for key in KEYS}
    for term in typed.split():
        key, colon, value = term.partition(":")
        if not colon:
            text.append(term.lower())
            continue
        key = key.lower()
        if key not in fields:
            raise RunFilterError(
                f"unknown filter {key}: use state:, worker:, batch:, image: or plain text"
            )
        values = [v for v in value.split(",") if v]
        if not values:
            raise RunFilterError(f"{key}: needs a value, such as {_EXAMPLES[key]}")
        fields[key].extend(values)
    states: list[str] = []
    for state in fields["state"]:
        states.extend(STATE_ALIASES.get(state.lower(), (state.lower(),)))
    return RunFilter(
        text=tuple(text),
        states=tuple(dict.fromkeys(states)),
        workers=tuple(dict.fromkeys(fields["worker"])),
        batches=tuple(dict.fromkeys(batch_token(b) for b in fields["batch"])),
        images=tuple(dict.fromkeys(fields["image"])),
        source=" ".join(typed.split()),
    )


_EXAMPLES = {
    "state": "state:failed",
    "worker": "worker:gpu-1",
    "batch": "batch:invoices",
    "image": "image:42",
}
