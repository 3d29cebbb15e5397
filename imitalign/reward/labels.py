"""0/1 labels of labelled rows, for objectives of kind ``classifier`` (a discriminator, ``discriminator_bce``).

A labelled-rows dataset is a demonstration-format file, ``{"prompt", "response", "label"}``, with ``label`` in
{0, 1, true, false} (1 = positive, e.g. a π_SFT sample or a demonstration; 0 = negative, e.g. a π_init
sample). The parser keeps the column in ``record.extra["label"]``; :func:`read_labels` reads it for every
record of the train (and eval) sources, keyed by the record's ``source`` ("path:line"), which the
tokenised examples keep — so the labels follow the examples through the eval hold-out and truncation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from imitalign.config import DataConfig
from imitalign.data.dataset import ParsedData
from imitalign.data.records import DataError, Record

LABEL_COLUMN = "label"


def parse_label(value: Any, where: str) -> float:
    """``value`` as 0.0 or 1.0; anything else is a :class:`DataError` naming ``where``."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and value in (0, 1):
        return float(value)
    if isinstance(value, str) and value.strip().lower() in ("0", "1", "true", "false"):
        return float(value.strip().lower() in ("1", "true"))
    raise DataError(f"{where}: field {LABEL_COLUMN!r} must be 0 or 1 (or true/false), got {value!r}")


def _labels_of(records: Sequence[Record]) -> dict[str, float]:
    out: dict[str, float] = {}
    for rec in records:
        if LABEL_COLUMN not in rec.extra:
            raise DataError(
                f"{rec.source}: a classifier objective needs a {LABEL_COLUMN!r} column (0 or 1) in every row; "
                f"this row has {', '.join(sorted(rec.extra)) or 'no other columns'}"
            )
        out[rec.source] = parse_label(rec.extra[LABEL_COLUMN], rec.source)
    return out


def read_labels(data_cfg: DataConfig, parsed: ParsedData) -> dict[str, float]:
    """``{source: label}`` for every record of ``data.train`` and ``data.eval``, from the records ``parsed``
    (:func:`~imitalign.data.dataset.parse_data`, before any model loads) already holds. Raises :class:`DataError`
    on a missing or invalid label, or when the training rows have only one class."""
    train = _labels_of(parsed.train)
    if len(set(train.values())) < 2:
        raise DataError(
            f"{data_cfg.train.path}: every training row has label {next(iter(train.values()), '?')}; a classifier "
            "needs both positives (1) and negatives (0)"
        )
    return {**train, **_labels_of(parsed.eval)}
