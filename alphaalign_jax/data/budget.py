"""The prompt token budget, checked for every record when the data is loaded.

A prompt longer than the sampler's budget would otherwise stop a run only at the step
that draws it, and a resumed run at the same step again. Checking all of them up front
names every offender (``file:line``, id, length) and the config field that sets the
budget, or, when lenient, leaves them out and says how many.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from alphaalign_jax.data.records import PromptRecord

log = logging.getLogger(__name__)


class PromptTooLong(ValueError):
    """Records whose prompt does not fit the token budget."""


def _line_numbers(path: Path) -> dict[str, int]:
    """Record id -> line of a JSONL file (only read to locate offenders)."""
    lines = {}
    for number, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        try:
            lines.setdefault(json.loads(raw)["id"], number)
        except (ValueError, KeyError, TypeError):
            continue
    return lines


def fit_prompt_budget(
    records: Sequence[PromptRecord],
    lengths: Sequence[int],
    limit: int,
    *,
    origin: str | os.PathLike[str],
    field: str,
    lenient: bool = False,
) -> list[int]:
    """Indices of the records whose prompt (``lengths``: tokens as the policy sees it,
    template and system prompt included) fits in ``limit``.

    Args:
      origin: the JSONL file the records came from, to name ``file:line``.
      field: the config field or flag that sets ``limit``, named in the error.
      lenient: skip and count over-long records instead of failing.

    Raises:
      PromptTooLong: some record is over the limit and not ``lenient``.
    """
    over = [i for i, n in enumerate(lengths) if n > limit]
    if not over:
        return list(range(len(records)))
    origin = Path(origin)
    lines = _line_numbers(origin) if origin.is_file() else {}
    where = [f"{origin}:{lines.get(records[i].id, '?')} ({records[i].id}, {lengths[i]} tokens)"
             for i in over]
    summary = (f"{len(over)} of {len(records)} prompts are longer than {field}={limit} tokens "
               f"(longest {max(lengths[i] for i in over)}): " + "; ".join(where[:5])
               + (f"; and {len(over) - 5} more" if len(over) > 5 else ""))
    if not lenient:
        raise PromptTooLong(summary + f". Raise {field}, or skip them with lenient loading.")
    log.warning("skipping %s", summary)
    skipped = set(over)
    return [i for i in range(len(records)) if i not in skipped]
