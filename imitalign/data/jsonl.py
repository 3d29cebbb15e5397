"""JSONL files between stages (samples, scored samples, pairs, gym datasets): atomic writes, plain reads.

A file is written to a temporary name beside it (with the process id, so that processes never share one) and
renamed into place, so nothing half-written ever carries the final name.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from imitalign.data.records import DataError


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write rows as JSON lines, atomically (a temporary file renamed into place); creates the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def bad_byte(path: str | Path, data: bytes, e: UnicodeDecodeError, lineno: int = 1) -> DataError:
    """The one-sentence error of a byte that is not UTF-8: file, line, column (of ``data``, which starts at line
    ``lineno``), and the byte."""
    before = data[: e.start]
    line = lineno + before.count(b"\n")
    column = len(before[before.rfind(b"\n") + 1 :].decode("utf-8", errors="replace")) + 1
    return DataError(
        f"{path}:{line}:{column}: byte 0x{data[e.start]:02x} is not UTF-8 (line {line}, column {column}); "
        "save the file as UTF-8"
    )


def utf8_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of every line of a UTF-8 text file (``.gz``: gzip-compressed); a byte that is not
    UTF-8 is a :class:`~imitalign.data.records.DataError` naming file, line and column."""
    path = Path(path)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise bad_byte(path, raw, e, lineno) from None


def read_text(path: str | Path) -> str:
    """A whole UTF-8 text file (``.gz``: gzip-compressed); a bad byte is reported with its line and column."""
    path = Path(path)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad_byte(path, data, e) from None


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a JSONL file (blank lines skipped); a bad byte or line names the file, line and column."""
    rows = []
    for lineno, line in utf8_lines(path):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON: {e.msg} (line {lineno}, column {e.colno})") from None
    return rows
