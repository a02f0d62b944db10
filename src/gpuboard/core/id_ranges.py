"""Parses image-id selections such as `1-20,40,45-50` into an ordered list of unique ids."""

from __future__ import annotations

import re

MAX_IDS = 100_000
MAX_ID = 10**12

_TERM = re.compile(r"^(\d{1,13})(?:\s*-\s*(\d{1,13}))?$")


class IdRangeError(ValueError):
    """An id selection that is not well-formed; the message names the bad part."""


def parse_id_ranges(text: str, max_ids: int = MAX_IDS) -> list[int]:
    """Ids in the order written, each once: `1-3,2,7` gives [1, 2, 3, 7]."""
    if not text.strip():
        raise IdRangeError("no ids given: write ids and ranges such as 1-20,40,45-50")
    ids: list[int] = []
    seen: set[int] = set()
    for raw_term in text.split(","):
        term = raw_term.strip()
        match = _TERM.match(term)
        if not match:
            raise IdRangeError(
                f"{term!r} is not an id or a range: use forms like 7 or 1-20 separated by commas"
            )
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last < first:
            raise IdRangeError(f"range {term!r} runs backwards: write {last}-{first}")
        if last > MAX_ID:
            raise IdRangeError(f"id {last} is too large (at most {MAX_ID})")
        # Checked before expanding so that `1-999999999999` fails at once, not after a minute.
        if last - first + 1 > max_ids:
            raise IdRangeError(f"{term!r} selects more than {max_ids} ids")
        for image_id in range(first, last + 1):
            if image_id not in seen:
                seen.add(image_id)
                ids.append(image_id)
                if len(ids) > max_ids:
                    raise IdRangeError(f"the selection has more than {max_ids} ids")
    return ids


def ids_from_start(start: int, count: int, max_ids: int = MAX_IDS) -> list[int]:
    """`count` consecutive ids from `start`, validated like a typed selection."""
    if not 1 <= count <= max_ids:
        raise IdRangeError(f"count must be between 1 and {max_ids}, not {count}")
    if start < 0 or start + count - 1 > MAX_ID:
        raise IdRangeError(f"ids must lie between 0 and {MAX_ID}")
    return list(range(start, start + count))
