"""Scoring sample files: add a ``score`` column with a reward source, keeping every other column.

    imitalign score SAMPLES.jsonl --reward reward.yaml [--k 4] --out scored.jsonl

When ``k`` is given, the file must hold exactly ``k`` samples of every prompt (``prompt_index`` ``0..P-1``,
``sample_idx`` ``0..k-1``) — checked *before* the reward runs, so a sampling K that differs from the scoring K
is an error, not a silent loss of rows (the public code of the paper dropped every row on that).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from imitalign.data.jsonl import write_jsonl
from imitalign.generate.kshot import check_k
from imitalign.reward.base import RewardSource, score_rows


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """JSONL rows (blank lines skipped); a line that is not a JSON object is a ``ValueError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"samples file not found: {path}")
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON: {e}") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def write_rows(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write JSONL atomically (:func:`imitalign.data.jsonl.write_jsonl`)."""
    return write_jsonl(path, rows)


def check_samples(rows: Sequence[dict[str, Any]], k: int | None, where: str = "samples") -> None:
    """Rows have ``prompt`` and ``response``; with ``k``, exactly ``k`` samples per prompt index."""
    if not rows:
        raise ValueError(f"{where}: no samples")
    for i, row in enumerate(rows):
        if "prompt" not in row or "response" not in row:
            raise ValueError(f"{where}: row {i + 1} needs 'prompt' and 'response' (has {', '.join(row)})")
    if k is not None:
        if any("prompt_index" not in r or "sample_idx" not in r for r in rows):
            raise ValueError(f"{where}: checking K = {k} needs 'prompt_index' and 'sample_idx' in every row")
        n_prompts = len({int(r["prompt_index"]) for r in rows})
        if len(rows) != n_prompts * k:
            raise ValueError(
                f"{where}: {len(rows)} samples for {n_prompts} prompts is not K = {k} per prompt (sampling and "
                f"scoring must use the same K; this file has {len(rows) / n_prompts:.2f} per prompt)"
            )
        check_k(rows, n_prompts, k, where)


def score_samples(
    rows: Sequence[dict[str, Any]],
    source: RewardSource,
    *,
    k: int | None = None,
    batch_size: int | None = None,
    column: str = "score",
) -> list[dict[str, Any]]:
    """``rows`` with ``column`` set to the source's (checked) score; other columns kept."""
    check_samples(rows, k)
    scores = score_rows(source, list(rows), batch_size=batch_size)
    return [{**row, column: s} for row, s in zip(rows, scores, strict=True)]


def score_sharded(
    source: RewardSource,
    rows: Sequence[dict[str, Any]],
    *,
    batch_size: int | None = None,
    after_shard: Callable[[], None] | None = None,
) -> list[float]:
    """:func:`~imitalign.reward.base.score_rows` over the processes of the current ``accelerate`` state: process
    ``r`` of ``W`` scores rows ``r, r + W, ...`` (with its own copy of the source, on its own device), and every
    process gets all the scores in row order. One process: ``score_rows``. ``after_shard`` runs once this process's
    rows are scored (a fault-injection point)."""
    from imitalign.generate.kshot import shard
    from imitalign.processes import process_state

    state = process_state()
    mine = shard(len(rows), state.num_processes, state.process_index)
    scores = score_rows(source, [rows[i] for i in mine], batch_size=batch_size)
    if after_shard is not None:
        after_shard()
    if state.num_processes == 1:
        return scores
    from accelerate.utils import gather_object

    out: list[float | None] = [None] * len(rows)
    for i, s in gather_object(list(zip(mine, scores, strict=True))):
        out[i] = s
    if any(s is None for s in out):
        raise RuntimeError(f"scoring over {state.num_processes} processes lost rows")
    return out  # type: ignore[return-value]


def score_file(
    path: str | Path,
    out: str | Path,
    source: RewardSource,
    *,
    k: int | None = None,
    batch_size: int | None = None,
    column: str = "score",
) -> Path:
    """Read ``path``, score it (:func:`score_samples`) and write ``out`` atomically."""
    rows = read_rows(path)
    check_samples(rows, k, str(path))
    return write_rows(out, score_samples(rows, source, k=k, batch_size=batch_size, column=column))
