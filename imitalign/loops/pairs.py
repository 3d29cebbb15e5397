"""Preference pairs from scored samples (METHODS.md §2), in the core's preference format.

Samples are grouped by prompt (``prompt_index``, else the prompt itself). Within a prompt, empty responses
(blank text) are dropped first and counted; each remaining sample ``y_j`` gets the pairing score

    s_j = r(x, y_j) − α · |y_j|            (α = ``length_penalty``, |y| = ``n_tokens``, else word count)

and one pair per prompt is formed:

- ``max_min`` (default, the papers'): chosen = argmax s, rejected = argmin s;
- ``max_random``: chosen = argmax s, rejected = a uniformly drawn other sample;
- ``random``: two distinct samples drawn uniformly, the higher-scoring one chosen.

A pair whose scores differ by at most ε (``tie_eps``) is a tie and is dropped; under ``max_min`` that is a
prompt whose samples all score alike (``all_tied``). A prompt left with fewer than two samples gives no pair
(``too_few``). Argmax/argmin ties resolve to the lowest ``sample_idx``; draws use
``random.Random("<seed>:<prompt key>")``, so pairs do not depend on the order of the rows.

Output rows: ``{"prompt", "chosen", "rejected", "chosen_score", "rejected_score", "prompt_index",
"chosen_sample_idx", "rejected_sample_idx"}`` plus, when the samples have them, ``"chosen_<c>"`` /
``"rejected_<c>"`` for the columns in ``carry`` (e.g. the gym's ``gold``).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

PairMode = Literal["max_min", "max_random", "random"]
MODES: tuple[str, ...] = ("max_min", "max_random", "random")


@dataclass
class PairStats:
    """Counts of a pairing: prompts seen, pairs kept, prompts dropped by reason, empty responses dropped."""

    prompts: int = 0
    samples: int = 0
    pairs: int = 0
    empty_responses: int = 0
    dropped: Counter[str] = field(default_factory=Counter)  # tie, all_tied, too_few

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompts": self.prompts,
            "samples": self.samples,
            "pairs": self.pairs,
            "empty_responses": self.empty_responses,
            "dropped": dict(self.dropped),
        }

    def summary(self) -> str:
        drops = ", ".join(f"{n} {k}" for k, n in sorted(self.dropped.items())) or "none"
        return (
            f"{self.pairs} pairs from {self.prompts} prompts ({self.samples} samples); prompts dropped: {drops}; "
            f"empty responses dropped: {self.empty_responses}"
        )


def _key(row: dict[str, Any]) -> Any:
    if "prompt_index" in row:
        return int(row["prompt_index"])
    prompt = row["prompt"]
    return prompt if isinstance(prompt, str) else repr(prompt)


def _length(row: dict[str, Any]) -> float:
    if "n_tokens" in row:
        return float(row["n_tokens"])
    return float(len(str(row["response"]).split()))


def group_by_prompt(rows: Sequence[dict[str, Any]]) -> dict[Any, list[dict[str, Any]]]:
    """Rows grouped by prompt (first-seen order), each group sorted by ``sample_idx`` when present."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(_key(row), []).append(row)
    for g in groups.values():
        g.sort(key=lambda r: r.get("sample_idx", 0))
    return groups


def make_pairs(
    rows: Sequence[dict[str, Any]],
    *,
    mode: str = "max_min",
    length_penalty: float = 0.0,
    tie_eps: float = 0.0,
    seed: int = 0,
    carry: Sequence[str] = ("gold",),
) -> tuple[list[dict[str, Any]], PairStats]:
    """One pair per prompt from scored sample rows (``{"prompt", "response", "score", ...}``; module
    docstring). Returns ``(pairs, stats)``. Raises ``ValueError`` for an unknown mode or a row without a
    ``score``."""
    if mode not in MODES:
        raise ValueError(f"unknown pairing mode {mode!r}; known: {', '.join(MODES)}")
    if tie_eps < 0:
        raise ValueError(f"tie_eps must be >= 0, got {tie_eps}")
    stats = PairStats()
    pairs: list[dict[str, Any]] = []
    for key, group in group_by_prompt(rows).items():
        stats.prompts += 1
        stats.samples += len(group)
        kept = []
        for row in group:
            if "score" not in row:
                raise ValueError(f"sample of prompt {key!r} has no 'score' column: score the samples first")
            if not str(row["response"]).strip():
                stats.empty_responses += 1
                continue
            kept.append(row)
        if len(kept) < 2:
            stats.dropped["too_few"] += 1
            continue
        s = [float(r["score"]) - length_penalty * _length(r) for r in kept]
        rng = random.Random(f"{seed}:{key}")
        best = max(range(len(kept)), key=lambda i: (s[i], -i))
        if mode == "max_min":
            other = min(range(len(kept)), key=lambda i: (s[i], i))
            if s[best] - s[other] <= tie_eps:
                stats.dropped["all_tied"] += 1
                continue
            w, l = best, other
        elif mode == "max_random":
            other = rng.choice([i for i in range(len(kept)) if i != best])
            if s[best] - s[other] <= tie_eps:
                stats.dropped["tie"] += 1
                continue
            w, l = best, other
        else:
            i, j = rng.sample(range(len(kept)), 2)
            if abs(s[i] - s[j]) <= tie_eps:
                stats.dropped["tie"] += 1
                continue
            w, l = (i, j) if s[i] > s[j] else (j, i)
        cw, cl = kept[w], kept[l]
        pair = {
            "prompt": cw["prompt"],
            "chosen": cw["response"],
            "rejected": cl["response"],
            "chosen_score": float(cw["score"]),
            "rejected_score": float(cl["score"]),
            "prompt_index": cw.get("prompt_index", key),
            "chosen_sample_idx": cw.get("sample_idx"),
            "rejected_sample_idx": cl.get("sample_idx"),
        }
        for c in carry:
            if c in cw and c in cl:
                pair[f"chosen_{c}"], pair[f"rejected_{c}"] = cw[c], cl[c]
        pairs.append(pair)
    stats.pairs = len(pairs)
    return pairs, stats


# ------------------------------------------------------------------------------------------ self-play
SELF_PLAY = "self_play"


def prompt_key(prompt: Any) -> str:
    """A hashable key of a prompt (a string, or a message list compared by content)."""
    single = isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], dict)
    if single and prompt[0].get("role") == "user":
        prompt = prompt[0].get("content", "")
    return prompt if isinstance(prompt, str) else repr(prompt)


def demo_lookup(demos: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """Demonstrations ``{"prompt", "response"}`` by prompt (:func:`prompt_key`); a prompt may have several."""
    out: dict[str, list[str]] = {}
    for row in demos:
        out.setdefault(prompt_key(row["prompt"]), []).append(row["response"])
    return out


def self_play_pairs(
    rows: Sequence[dict[str, Any]], demos: dict[str, list[str]], *, seed: int = 0, carry: Sequence[str] = ("gold",)
) -> tuple[list[dict[str, Any]], PairStats]:
    """Self-play pairs on demonstrations (SPIN, Chen et al. 2024; GSIL, Xiao et al. 2024): for every sample
    ``y' ~ π_t`` of a prompt ``x`` with a demonstration ``y`` (METHODS.md §3),

        chosen = y (the demonstration),   rejected = y' (the policy's own sample)

    — no reward is involved. A prompt with several demonstrations uses one drawn with
    ``random.Random("<seed>:<prompt>")``. Dropped and counted: empty own samples (``empty_responses``), samples
    equal to the demonstration (``tie``: nothing left to learn from them), prompts without a demonstration
    (``no_demo``). Rows: ``{"prompt", "chosen", "rejected", "prompt_index", "rejected_sample_idx"}`` plus
    ``"rejected_score"`` and ``"rejected_<c>"`` for the columns of ``carry`` the samples have."""
    stats = PairStats()
    pairs: list[dict[str, Any]] = []
    for key, group in group_by_prompt(rows).items():
        stats.prompts += 1
        stats.samples += len(group)
        pk = prompt_key(group[0]["prompt"])
        options = demos.get(pk)
        if not options:
            stats.dropped["no_demo"] += 1
            continue
        demo = options[0] if len(options) == 1 else random.Random(f"{seed}:{pk}").choice(options)
        for row in group:
            own = str(row["response"])
            if not own.strip():
                stats.empty_responses += 1
                continue
            if own.strip() == demo.strip():
                stats.dropped["tie"] += 1
                continue
            pair = {
                "prompt": row["prompt"],
                "chosen": demo,
                "rejected": own,
                "prompt_index": row.get("prompt_index", key),
                "rejected_sample_idx": row.get("sample_idx"),
            }
            if "score" in row:
                pair["rejected_score"] = float(row["score"])
            for c in carry:
                if c in row:
                    pair[f"rejected_{c}"] = row[c]
            pairs.append(pair)
    stats.pairs = len(pairs)
    return pairs, stats


# ------------------------------------------------------------------------------------------ own samples (online IQ)
OWN_SAMPLES = "own_samples"
DEMO_MODES: tuple[str, ...] = (SELF_PLAY, OWN_SAMPLES)  # the pairings that take demonstrations and need no reward


def own_sample_data(
    rows: Sequence[dict[str, Any]], demos: dict[str, list[str]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Online IQLearn's data of one round (METHODS.md §4): the demonstrations of the round's prompts (the
    likelihood term and the expert share 1 − α of the TD term) and the policy's own samples of the same prompts
    (the share α of the TD term), both ``{"prompt", "response"}``; each distinct prompt's demonstrations come once,
    even when the prompt was drawn more than once. No reward is involved. Dropped and counted:
    empty own samples (``empty_responses``) and prompts without a demonstration (``no_demo``: neither their
    samples nor anything else of them is used)."""
    demo_rows: list[dict[str, Any]] = []
    own_rows: list[dict[str, Any]] = []
    stats: dict[str, Any] = {"prompts": 0, "samples": 0, "empty_responses": 0, "dropped": {}}
    seen: set[str] = set()
    for _, group in group_by_prompt(rows).items():
        stats["prompts"] += 1
        stats["samples"] += len(group)
        key = prompt_key(group[0]["prompt"])
        options = demos.get(key)
        if not options:
            stats["dropped"]["no_demo"] = stats["dropped"].get("no_demo", 0) + 1
            continue
        prompt = group[0]["prompt"]
        if key not in seen:  # a prompt drawn twice in a round (it is in the file twice) adds its demos once
            seen.add(key)
            demo_rows += [{"prompt": prompt, "response": d} for d in options]
        for row in group:
            if not str(row["response"]).strip():
                stats["empty_responses"] += 1
                continue
            own_rows.append({"prompt": prompt, "response": row["response"], "prompt_index": row.get("prompt_index")})
    stats |= {"demonstrations": len(demo_rows), "own_samples": len(own_rows)}
    return demo_rows, own_rows, stats
