"""Evaluation metrics: pure functions of numbers and strings (no model, no I/O).

Every mean comes with its standard error ``se = s / √n`` (``s`` the sample standard deviation, ddof = 1;
``nan`` when ``n < 2``). Texts are split on whitespace into tokens.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Sequence


def mean_se(xs: Sequence[float]) -> tuple[float, float]:
    """``(x̄, s/√n)`` with ``s² = Σ(x − x̄)² / (n − 1)``; ``(nan, nan)`` for no data, se ``nan`` for one point."""
    n = len(xs)
    if n == 0:
        return math.nan, math.nan
    mean = math.fsum(xs) / n
    if n < 2:
        return mean, math.nan
    var = math.fsum((x - mean) ** 2 for x in xs) / (n - 1)
    return mean, math.sqrt(var / n)


def win_indicators(a_scores: Sequence[float], b_scores: Sequence[float]) -> list[float]:
    """Paired ``w_i = 1[a_i > b_i] + ½·1[a_i = b_i]``."""
    if len(a_scores) != len(b_scores):
        raise ValueError(f"paired win rate needs equal lengths, got {len(a_scores)} and {len(b_scores)}")
    return [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(a_scores, b_scores, strict=True)]


def win_rate(a_scores: Sequence[float], b_scores: Sequence[float]) -> tuple[float, float]:
    """Paired win rate of ``a`` over ``b``, ties counting ½: ``mean_se(w)`` of :func:`win_indicators`."""
    return mean_se(win_indicators(a_scores, b_scores))


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Corpus distinct-n (Li et al., 2016): ``|distinct n-grams| / |n-grams|`` over all texts (0 if none)."""
    grams = [g for t in texts for g in _ngrams(t.split(), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def self_bleu(texts: Sequence[str], max_n: int = 4) -> float:
    """Self-BLEU (Zhu et al., 2018): the mean over texts ``i`` of ``BLEU(texts[i]; references = the others)``.

    Per hypothesis ``h`` with references ``R`` (all other texts):

        p_n   = (Σ_g min(c_h(g), max_{r∈R} c_r(g)) + δ_n) / (Σ_g c_h(g) + δ_n)    (clipped n-gram precision)
        BP    = 1 if |h| > ρ else exp(1 − ρ/|h|)     ρ = the reference length closest to |h| (the shorter on ties)
        BLEU  = BP · exp( (1/N) Σ_{n=1..N} log p_n )                                 N = max_n

    with add-one smoothing ``δ_n = 1`` for ``n ≥ 2`` and ``δ_1 = 0`` (Lin & Och, 2004): a hypothesis that
    shares no word with any reference scores exactly 0, identical texts score exactly 1. An empty hypothesis
    scores 0. Higher Self-BLEU = less diverse. Fewer than two texts: ``nan``.

    Cost is linear in the total number of n-grams: ``max_{r≠i} c_r(g)`` is read from the two largest counts
    of ``g`` over all texts.
    """
    m = len(texts)
    if m < 2:
        return math.nan
    tokens = [t.split() for t in texts]
    counts = [[Counter(_ngrams(toks, n)) for n in range(1, max_n + 1)] for toks in tokens]
    # per n and n-gram: the largest count with the text holding it, and the second largest count
    top: list[dict[tuple[str, ...], tuple[int, int, int]]] = [{} for _ in range(max_n)]
    for i, per_n in enumerate(counts):
        for k, counter in enumerate(per_n):
            table = top[k]
            for g, c in counter.items():
                best, owner, second = table.get(g, (0, -1, 0))
                if c > best:
                    table[g] = (c, i, best)
                elif c > second:
                    table[g] = (best, owner, c)
    lengths = sorted(len(t) for t in tokens)
    scores = []
    for i, toks in enumerate(tokens):
        h = len(toks)
        if h == 0:
            scores.append(0.0)
            continue
        log_p = 0.0
        for k in range(max_n):
            total = sum(counts[i][k].values())
            matched = 0
            for g, c in counts[i][k].items():
                best, owner, second = top[k][g]
                matched += min(c, second if owner == i else best)
            delta = 0 if k == 0 else 1
            if matched + delta == 0:
                log_p = -math.inf
                break
            log_p += math.log((matched + delta) / (total + delta))
        if log_p == -math.inf:
            scores.append(0.0)
            continue
        rho = _closest_other_length(lengths, h)
        bp = 1.0 if h > rho else math.exp(1.0 - rho / h)
        scores.append(bp * math.exp(log_p / max_n))
    return math.fsum(scores) / m


def _closest_other_length(sorted_lengths: list[int], h: int) -> int:
    """The length closest to ``h`` among the others' (``sorted_lengths`` includes ``h`` once for itself)."""
    others = list(sorted_lengths)
    del others[bisect.bisect_left(others, h)]
    j = bisect.bisect_left(others, h)
    candidates = [others[x] for x in (j - 1, j) if 0 <= x < len(others)]
    return min(candidates, key=lambda r: (abs(r - h), r))


def mean_token_entropy(entropies: Sequence[Sequence[float]]) -> float:
    """Token-weighted mean of per-step entropies ``H_t = −Σ_v π(v|s_t) log π(v|s_t)`` (nats) over all
    responses: ``Σ_i Σ_t H_{i,t} / Σ_i |y_i|`` (``nan`` if there are no tokens)."""
    total = sum(len(e) for e in entropies)
    return math.fsum(x for e in entropies for x in e) / total if total else math.nan


def kl_estimate(policy_logps: Sequence[float], reference_logps: Sequence[float]) -> tuple[float, float]:
    """Monte-Carlo ``KL(π ‖ π_ref) = E_{y~π}[log π(y|x) − log π_ref(y|x)]`` from samples ``y ~ π``:
    ``mean_se`` of the per-sample sequence log-ratios. Unbiased, but a single sample's ratio can be negative;
    only valid when the samples come from ``π`` itself (temperature 1, no top-p)."""
    if len(policy_logps) != len(reference_logps):
        raise ValueError(f"need one reference log-prob per sample, got {len(policy_logps)} and "
                         f"{len(reference_logps)}")
    return mean_se([p - r for p, r in zip(policy_logps, reference_logps, strict=True)])


def cluster_mean_se(values: Sequence[float], groups: Sequence[int]) -> tuple[float, float]:
    """Mean and standard error with samples clustered by ``groups`` (e.g. the prompt): the mean of the
    group means, with ``se`` over groups. With equal group sizes the mean is the plain mean; the ``se``
    treats prompts, not samples, as the independent units (samples of one prompt are correlated)."""
    if len(values) != len(groups):
        raise ValueError("one group id per value")
    sums: dict[int, list[float]] = {}
    for v, g in zip(values, groups, strict=True):
        sums.setdefault(g, []).append(v)
    return mean_se([math.fsum(vs) / len(vs) for vs in sums.values()])
