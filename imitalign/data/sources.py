"""Reading rows from where the data lives: files, local ``datasets`` folders, or the hub.

``iter_rows(path, split, limit)`` yields ``(location, row)`` pairs, ``row`` a plain dict and ``location`` a
``"path:N"`` string that the rest of the pipeline quotes in its messages:

- ``.jsonl`` / ``.jsonl.gz``: ``N`` is the 1-based line number (blank lines are skipped but counted);
- ``.json`` (a list of objects, or an object holding one such list, e.g. ``{"data": [...]}``), ``.json.gz``,
  ``.parquet``, ``datasets`` folders and hub datasets: ``N`` is the 0-based row index (``dataset[N]``);
  a ``.json`` file that actually holds JSON Lines is read as JSON Lines (1-based lines).

A local folder is either a ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` output (``split`` picks
the split of a ``DatasetDict``, default ``train``) or a folder of data files (``split`` keeps the files whose
path names the split, e.g. ``train.jsonl`` or ``data/train-00000-of-00001.parquet``; with no split, the
``train`` files when there are any, else all). Anything that is not a local path is taken as a hub dataset id
and loaded with ``datasets.load_dataset`` (which needs network access).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from imitalign.data.jsonl import read_text, utf8_lines
from imitalign.data.records import DataError

FILE_SUFFIXES = (".jsonl.gz", ".json.gz", ".jsonl", ".json", ".parquet")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

Row = dict[str, Any]


def _suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in FILE_SUFFIXES if name.endswith(s)), None)


def _check_row(row: Any, location: str) -> Row:
    if not isinstance(row, dict):
        raise DataError(f"{location}: expected a JSON object (one row), got {type(row).__name__}")
    return row


def _iter_jsonl(path: Path) -> Iterator[tuple[str, Row]]:
    try:
        for lineno, line in utf8_lines(path):  # a byte that is not UTF-8: file, line and column
            if not line.strip():
                continue
            location = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{location}: malformed JSON: {e.msg} (line {lineno}, column {e.colno})") from None
            yield location, _check_row(row, location)
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read the file as JSON Lines: {e}") from None


def _iter_json(path: Path) -> Iterator[tuple[str, Row]]:
    try:
        text = read_text(path)  # a byte that is not UTF-8: file, line and column
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read the file as JSON: {e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        # Many ".json" files are JSON Lines; read them as such (with line numbers) when the first line parses.
        if e.msg == "Extra data" and e.lineno > 1:
            yield from _iter_jsonl(path)
            return
        raise DataError(f"{path}:{e.lineno}: malformed JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    if isinstance(data, dict):
        lists = [k for k, v in data.items() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(
                f"{path}: expected a list of rows (or an object holding exactly one list of rows, like "
                f'{{"data": [...]}}), got an object with keys {sorted(data)[:10]}'
            )
        data = data[lists[0]]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of rows, got {type(data).__name__}")
    for i, row in enumerate(data):
        location = f"{path}:{i}"
        yield location, _check_row(row, location)


def _iter_parquet(path: Path) -> Iterator[tuple[str, Row]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise DataError(f"{path}: cannot read the file as Parquet: {e}") from None
    i = 0
    for batch in pf.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            yield f"{path}:{i}", row
            i += 1


def _iter_file(path: Path) -> Iterator[tuple[str, Row]]:
    suffix = _suffix(path)
    if suffix in (".jsonl", ".jsonl.gz"):
        return _iter_jsonl(path)
    if suffix in (".json", ".json.gz"):
        return _iter_json(path)
    if suffix == ".parquet":
        return _iter_parquet(path)
    raise DataError(f"{path}: unsupported file type (supported: {', '.join(FILE_SUFFIXES)}, or a datasets folder)")


def _iter_dataset(ds: Any, name: str) -> Iterator[tuple[str, Row]]:
    for i, row in enumerate(ds):
        yield f"{name}:{i}", dict(row)


def _iter_saved_dataset(path: Path, split: str | None) -> Iterator[tuple[str, Row]]:
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        split = split or "train"
        if split not in ds:
            raise DataError(f"{path}: no split {split!r} in this dataset folder (splits: {', '.join(ds)})")
        return _iter_dataset(ds[split], f"{path}[{split}]")
    if split is not None and split != "train":
        raise DataError(f"{path}: this dataset folder holds one Dataset, not splits; split {split!r} is not there")
    return _iter_dataset(ds, str(path))


def _split_files(path: Path, split: str | None) -> list[Path]:
    files = sorted(p for p in path.rglob("*") if p.is_file() and _suffix(p) and not p.name.startswith("."))
    if not files:
        raise DataError(f"{path}: the folder holds no data files ({', '.join(FILE_SUFFIXES)}) and no saved dataset")

    def names(p: Path, s: str) -> bool:
        parts = [*p.relative_to(path).parent.parts, p.name.split(".")[0]]
        return any(part == s or re.match(rf"^{re.escape(s)}[-_.]", part) for part in parts)

    if split is None:
        chosen = [p for p in files if names(p, "train")]
        return chosen or files
    chosen = [p for p in files if names(p, split)]
    if not chosen:
        raise DataError(
            f"{path}: no data file for split {split!r} (files: {', '.join(str(p.relative_to(path)) for p in files)})"
        )
    return chosen


def _iter_folder(path: Path, split: str | None) -> Iterator[tuple[str, Row]]:
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        yield from _iter_saved_dataset(path, split)
        return
    for file in _split_files(path, split):
        yield from _iter_file(file)


def _looks_local(path: str) -> bool:
    return (
        _suffix(Path(path)) is not None
        or path.startswith((".", "/", "~"))
        or "\\" in path
        or path.count("/") > 1
        or not _HUB_ID.match(path)
    )


def _iter_hub(path: str, split: str | None) -> Iterator[tuple[str, Row]]:
    import datasets

    split = split or "train"
    try:
        ds = datasets.load_dataset(path, split=split)
    except Exception as e:  # network, missing dataset, missing split ...
        raise DataError(
            f"{path!r} is not a local file or folder, and loading it as a hub dataset (split {split!r}) failed: {e}"
        ) from None
    return _iter_dataset(ds, f"{path}[{split}]")


def iter_rows(path: str, split: str | None = None, limit: int | None = None) -> Iterator[tuple[str, Row]]:
    """Yield ``(location, row)`` for the rows of a file, a local ``datasets`` folder, or a hub dataset id.

    Raises :class:`DataError` for a missing file, an unsupported type, malformed JSON (naming file and line)
    or a row that is not an object. ``limit`` stops after that many rows.
    """
    if limit is not None and limit < 0:
        raise DataError(f"{path}: limit must be >= 0, got {limit}")
    p = Path(path).expanduser()
    if p.is_dir():
        rows = _iter_folder(p, split)
    elif p.is_file():
        rows = _iter_file(p)
    elif _looks_local(path):
        hint = ""
        if p.parent.is_dir():
            near = sorted(q.name for q in p.parent.iterdir() if _suffix(q))[:8]
            hint = f" (data files in {p.parent}: {', '.join(near)})" if near else ""
        raise DataError(f"data file not found: {path}{hint}")
    else:
        rows = _iter_hub(path, split)
    return islice(rows, limit) if limit is not None else rows
