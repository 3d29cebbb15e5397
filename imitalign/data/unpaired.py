"""Unpaired feedback: rows with one response and a desirable/undesirable label (the KTO layout).

- **For unpaired objectives** (kind ``unpaired``): labelled rows are used as they are; preference pairs are
  broken into their two halves (chosen → desirable, rejected → undesirable), each keeping the pair's prompt.
- **For demonstration objectives** (``mle`` …): only the desirable rows are trained on; the undesirable ones
  are dropped and counted (``SplitReport.undesirable_dropped``, a note in the report and the preview).
- **KTO's reference point** needs, for each example, a response to *another* prompt: :func:`assign_kl`
  gives example ``i`` the response of example ``π(i)`` for a seeded cyclic order ``π`` of the split, moved on
  past examples that share ``i``'s prompt, so that the mismatched pair and its reference log-prob are fixed
  (precomputable) and the same in every epoch. The mismatched response is cut to fit ``max_length`` after
  the prompt; it is never trained on and never counted as truncation.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from imitalign.data.records import DataError, DemonstrationRecord, PreferenceRecord, Record, UnpairedRecord
from imitalign.data.tokenize import TokenizedUnpaired


def as_unpaired(records: Sequence[Record], path: str, fmt: str, notes: list[str]) -> list[Record]:
    """Records for an unpaired objective (see the module docstring); other rows are an error."""
    out: list[Record] = []
    halves = 0
    for r in records:
        if isinstance(r, UnpairedRecord):
            out.append(r)
        elif isinstance(r, PreferenceRecord):
            out.append(UnpairedRecord(r.prompt, r.chosen, True, f"{r.source} chosen", r.extra))
            out.append(UnpairedRecord(r.prompt, r.rejected, False, f"{r.source} rejected", r.extra))
            halves += 1
        else:
            raise DataError(
                f"{path}: rows in format {fmt!r} have no desirable/undesirable label, but this run trains on unpaired "
                "feedback (a response and a boolean label; map a label column with columns: {label: my_column}), "
                "or on preference pairs broken into halves"
            )
    if halves:
        notes.append(
            f"{halves} preference pairs broken into {2 * halves} unpaired rows (chosen desirable, rejected not)"
        )
    labels = {r.label for r in out if isinstance(r, UnpairedRecord)}
    if len(labels) < 2:
        which = "desirable" if True in labels else "undesirable"
        raise DataError(f"{path}: every row is {which}; unpaired objectives need desirable and undesirable rows")
    return out


def desirable_only(records: Sequence[Record], notes: list[str]) -> tuple[list[Record], int]:
    """Demonstrations from labelled rows: the desirable ones; returns them and how many were dropped."""
    out: list[Record] = []
    dropped = 0
    for r in records:
        if isinstance(r, UnpairedRecord):
            if not r.label:
                dropped += 1
                continue
            r = DemonstrationRecord(r.prompt, r.response, r.source, r.extra)
        out.append(r)
    if dropped:
        notes.append(
            f"{dropped} undesirable rows (label false) dropped: a demonstration objective trains on the "
            f"{len(out)} desirable rows only"
        )
    return out, dropped


def assign_kl(examples: list[TokenizedUnpaired], max_length: int, seed: int = 0) -> None:
    """Give every example a response of another prompt as ``kl_ids`` (in place; see the module docstring)."""
    n = len(examples)
    if n == 0:
        return
    order = list(range(n))
    random.Random(seed).shuffle(order)
    for k, i in enumerate(order):
        j = order[(k + 1) % n]
        for step in range(2, n + 1):  # past rows sharing the prompt (a broken pair's other half, …)
            if examples[j].prompt_ids != examples[i].prompt_ids:
                break
            j = order[(k + step) % n]
        room = max(max_length - len(examples[i].prompt_ids), 1)
        examples[i].kl_ids = examples[j].response_ids[:room]
