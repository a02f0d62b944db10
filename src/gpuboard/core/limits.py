"""Parses and validates GPU-slot limit changes: `3`, `+1`, `-1`, `pause`, `resume`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

MIN_LIMIT = 0  # 0 is *pause*: the GPU step waits instead of running
MAX_LIMIT = 10_000

_SIGNED = re.compile(r"^[+-]\d{1,6}$")
_PLAIN = re.compile(r"^\d{1,6}$")


class LimitInputError(ValueError):
    """A limit change that cannot be applied; the message says why."""


@dataclass(frozen=True)
class LimitChange:
    """What an operator asked for, before it meets the current limit."""

    kind: Literal["set", "delta", "pause", "resume"]
    value: int = 0

    def target(self, current: int, resume_to: int | None = None) -> int:
        """The new limit given the `current` one; `resume_to` is the limit held before a pause."""
        if self.kind == "set":
            new = self.value
        elif self.kind == "delta":
            new = current + self.value
        elif self.kind == "pause":
            new = 0
        else:
            if current > 0:
                raise LimitInputError(f"not paused: the limit is already {current}")
            new = resume_to if resume_to and resume_to > 0 else 1
        return validate_limit(new)


def validate_limit(limit: int) -> int:
    """Return `limit` when it lies in 0..10000, else raise with the allowed range."""
    if not MIN_LIMIT <= limit <= MAX_LIMIT:
        raise LimitInputError(
            f"a limit must be between {MIN_LIMIT} and {MAX_LIMIT} (0 pauses), not {limit}"
        )
    return limit


def parse_limit_change(text: str) -> LimitChange:
    """Parse what an operator typed: an integer, `+N`, `-N`, `pause` or `resume`."""
    cleaned = text.strip().lower()
    if cleaned in ("pause", "resume"):
        return LimitChange(kind="pause" if cleaned == "pause" else "resume")
    if _PLAIN.match(cleaned):
        return LimitChange(kind="set", value=validate_limit(int(cleaned)))
    if _SIGNED.match(cleaned):
        delta = int(cleaned)
        if delta == 0:
            raise LimitInputError("a change of 0 changes nothing: give +N or -N with N > 0")
        return LimitChange(kind="delta", value=delta)
    raise LimitInputError(
        f"{text.strip()!r} is not a limit: give a whole number 0–{MAX_LIMIT}, +N, -N, "
        "`pause` or `resume`"
    )
