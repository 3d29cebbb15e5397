"""Rejection sampling toward π·exp(r/η) (METHODS.md §2, the offline variant; Liu et al. 2023, RSO).

Acceptance. Among the ``n`` samples ``y_1..y_n ~ π(·|x)`` of one prompt, with rewards ``r_j``, sample ``j`` is
kept with probability

    a_j = exp((r_j − max_k r_k) / η)                                   (statistical rejection sampling)

so the best sample is always kept and the kept samples are distributed ∝ π(y|x)·exp(r(x,y)/η) (the max only
rescales, the factor exp(−max r/η) is the envelope constant M of rejection sampling with proposal π).
η → ∞ keeps everything; η → 0 keeps only each prompt's best (ties: every sample at the max). ``best_of_n``
keeps exactly the best sample of each prompt (lowest ``sample_idx`` on ties), the η → 0 limit.

Multi-step. ``π_0 → π_0·e^{r/η_1} → … → π_0·e^{r/η_N}`` with ``η_1 > … > η_N = η``: step ``i`` samples from
``π_{i−1} ≈ π_0·e^{r/η_{i−1}}`` and, to land on ``π_0·e^{r/η_i}``, accepts with the *incremental*
temperature

    1/η'_i = 1/η_i − 1/η_{i−1}       (1/η_0 = 0, so η'_1 = η_1)

(``incremental: true``, the default; ``false`` accepts with η_i itself, which compounds the tilts to
π_0·e^{r·Σ_{k≤i} 1/η_k}). The accepted samples are then fitted: SFT (``mle``) on them, or — the RSO form — a
preference objective on pairs of accepted samples (best vs worst accepted).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

from imitalign.loops.pairs import group_by_prompt

ACCEPTANCE = ("statistical", "best_of_n")


def acceptance_probs(scores: Sequence[float], eta: float) -> list[float]:
    """``exp((r_j − max r) / η)`` for each score (``η = inf`` → all 1; ``η = 0`` → 1 at the max, else 0)."""
    if not scores:
        return []
    if eta < 0 or math.isnan(eta):
        raise ValueError(f"eta must be >= 0, got {eta}")
    top = max(scores)
    if eta == 0:
        return [1.0 if s == top else 0.0 for s in scores]
    if math.isinf(eta):
        return [1.0] * len(scores)
    return [math.exp((s - top) / eta) for s in scores]


def incremental_etas(etas: Sequence[float]) -> list[float]:
    """Acceptance temperatures η'_i with 1/η'_i = 1/η_i − 1/η_{i−1} (module docstring). ``etas`` must be
    strictly decreasing and positive (``inf`` allowed first)."""
    out, prev_inv = [], 0.0
    for i, eta in enumerate(etas):
        if not eta > 0:
            raise ValueError(f"every eta must be > 0, got {eta} at step {i + 1}")
        inv = 1.0 / eta
        if inv <= prev_inv:
            raise ValueError(f"etas must strictly decrease (η_1 > … > η_N), got {list(etas)}")
        out.append(1.0 / (inv - prev_inv))
        prev_inv = inv
    return out


def accept(
    rows: Sequence[dict[str, Any]], *, eta: float, method: str = "statistical", seed: int = 0
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """The accepted rows (with ``accept_prob``) and stats ``{"prompts", "samples", "accepted",
    "mean_accept_prob"}``. ``statistical`` draws ``U_j < a_j`` with ``random.Random("<seed>:<prompt>")``;
    ``best_of_n`` keeps each prompt's best. Empty responses are never accepted."""
    if method not in ACCEPTANCE:
        raise ValueError(f"unknown acceptance {method!r}; known: {', '.join(ACCEPTANCE)}")
    kept: list[dict[str, Any]] = []
    probs_all: list[float] = []
    groups = group_by_prompt(rows)
    for key, group in groups.items():
        group = [r for r in group if str(r["response"]).strip()]
        if not group:
            continue
        scores = [float(r["score"]) for r in group]
        if method == "best_of_n":
            best = max(range(len(group)), key=lambda i: (scores[i], -i))
            probs = [1.0 if i == best else 0.0 for i in range(len(group))]
        else:
            probs = acceptance_probs(scores, eta)
        rng = random.Random(f"{seed}:{key}")
        for row, p in zip(group, probs, strict=True):
            u = rng.random()
            probs_all.append(p)
            if p >= 1.0 or u < p:
                kept.append({**row, "accept_prob": p})
    stats = {
        "prompts": float(len(groups)),
        "samples": float(len(rows)),
        "accepted": float(len(kept)),
        "mean_accept_prob": sum(probs_all) / len(probs_all) if probs_all else 0.0,
    }
    return kept, stats
