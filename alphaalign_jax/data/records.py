"""Prompt records and their JSONL format: ``{"prompt", "label", "source", "id"}``.

Prompts carry only a binary label, as in the method. Loading is strict by
default: a bad row stops with an error naming ``file:line``. Lenient loading
skips bad rows but counts and logs every one of them; nothing is dropped
silently. Lines that are empty or only whitespace are not rows and are passed
over (a trailing newline must not count as a bad row).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

LABELS = ("harmful", "benign")
FIELDS = ("prompt", "label", "source", "id")

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A bad row in a prompt file, located as ``path:line``."""

    def __init__(self, path: str | os.PathLike[str], line: int, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}")
        self.path = str(path)
        self.line = line
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class PromptRecord:
    """One prompt with its binary label, the set it came from, and a unique id."""

    prompt: str
    label: str
    source: str
    id: str

    def __post_init__(self) -> None:
        problem = _record_problem(dataclasses.asdict(self))
        if problem:
            raise ValueError(problem)

    def to_json(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def _record_problem(row: Any) -> str | None:
    """Why a parsed row is not a valid record, or None."""
    if not isinstance(row, dict):
        return f"not an object: the row is a JSON {type(row).__name__}"
    for name in FIELDS:
        if name not in row:
            return f"missing field: {name!r}"
    for name in FIELDS:
        value = row[name]
        if not isinstance(value, str):
            return f"not a string: field {name!r} is {type(value).__name__}"
        if not value.strip():
            return f"empty field: {name!r}"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"invalid Unicode: field {name!r} has a lone surrogate"
    if row["label"] not in LABELS:
        return f"invalid label: {row['label']!r} is not one of {LABELS}"
    return None


@dataclasses.dataclass(frozen=True)
class SkippedRow:
    """A row that lenient loading left out, and why."""

    line: int
    reason: str


@dataclasses.dataclass(frozen=True)
class JsonlLoad:
    """The records of a file and the rows skipped (only ever non-empty when lenient)."""

    path: str
    records: list[PromptRecord]
    skipped: list[SkippedRow]

    def skipped_by_reason(self) -> dict[str, int]:
        """Skip counts keyed by the kind of problem (the reason up to its first colon)."""
        return dict(Counter(row.reason.split(":")[0] for row in self.skipped))


def _parse_line(raw: bytes) -> PromptRecord:
    """One JSONL line to a record; ValueError says what is wrong with it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"invalid UTF-8: bad byte at offset {err.start}") from None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"invalid JSON: {err.msg} at column {err.colno}") from None
    problem = _record_problem(row)
    if problem:
        raise ValueError(problem)
    return PromptRecord(**{name: row[name] for name in FIELDS})


def read_jsonl(path: str | os.PathLike[str], lenient: bool = False) -> JsonlLoad:
    """Parse a prompt file, with the report of skipped rows.

    Bad rows: invalid UTF-8, invalid JSON, not an object, a missing,
    non-string or blank field (an empty prompt among them), a label other than
    "harmful"/"benign", and an id already used on an earlier line. Fields
    beyond the four are ignored. Each reason reads ``"<kind>: <detail>"``.

    Raises:
      DataError: on the first bad row, unless ``lenient``.
    """
    data = Path(path).read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark is not part of row 1
        data = data[3:]
    records: list[PromptRecord] = []
    skipped: list[SkippedRow] = []
    first_line_of: dict[str, int] = {}
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            record = _parse_line(raw)
            if record.id in first_line_of:
                raise ValueError(f"duplicate id: {record.id!r} (first on line {first_line_of[record.id]})")
        except ValueError as err:
            if not lenient:
                raise DataError(path, number, str(err)) from None
            skipped.append(SkippedRow(number, str(err)))
            continue
        first_line_of[record.id] = number
        records.append(record)
    return JsonlLoad(str(path), records, skipped)


def load_jsonl(path: str | os.PathLike[str], lenient: bool = False) -> list[PromptRecord]:
    """The records of a prompt file; with ``lenient``, bad rows are skipped and
    logged (a warning with the count per reason and the first few ``file:line``).
    Use ``read_jsonl`` to get the skip report as data.
    """
    loaded = read_jsonl(path, lenient)
    if loaded.skipped:
        first = ", ".join(f"{path}:{row.line} ({row.reason})" for row in loaded.skipped[:3])
        log.warning(
            "skipped %d bad row(s) of %s, by reason %s; first: %s",
            len(loaded.skipped), path, loaded.skipped_by_reason(), first,
        )
    return loaded.records


def write_jsonl(path: str | os.PathLike[str], records: Iterable[PromptRecord]) -> int:
    """Write records as UTF-8 JSONL, atomically (a crash never leaves half a file).

    Returns the number of records written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for record in records:
            f.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")
            count += 1
    os.replace(tmp, path)
    return count
