"""AfD's training-free reward (Sun & van der Schaar, 2024; METHODS.md §3): the closed-form optimum of the init-SFT
discriminator,

    r(x, y) = log π_SFT(y|x) − log π_init(y|x)            (summed over response tokens, EOS included)
    r(x, y) = (log π_SFT(y|x) − log π_init(y|x)) / |y|    (``length_normalize``: per response token)

A discriminator ``D = σ(z)`` trained with binary cross-entropy on samples of π_SFT (label 1) against samples of
π_init (label 0), with balanced classes, is optimal at ``D* = π_SFT / (π_SFT + π_init)``, whose logit is exactly
the log-ratio above: this source is what the init-SFT discriminator would learn with unlimited capacity and data.

Reward kind ``closed_form`` (:func:`imitalign.reward.load_reward`): ``path`` = π_SFT, ``reference`` = π_init (both
causal-LM folders or hub ids), ``length_normalize``, ``beta`` (a scale, default 1). It is the ``implicit`` kind
with β = 1 and π_init as the reference; the scoring (data-layer tokenisation, length-sorted batches, the log-prob
engine) is that kind's, so the two can never drift apart. Passing a sequence-classifier folder (a reward model or a
discriminator) is an error, not a silently different reward.
"""

from __future__ import annotations

import json
from pathlib import Path

from imitalign.reward.base import RewardConfig, RewardError, register_reward_kind
from imitalign.reward.models import ImplicitReward


def architectures(path: str | None) -> list[str] | None:
    """``architectures`` of the ``config.json`` in a local model folder (None for a hub id or no config)."""
    if not path:
        return None
    config = Path(path) / "config.json"
    if not config.is_file():
        return None
    try:
        return list(json.loads(config.read_text()).get("architectures") or [])
    except (OSError, ValueError):
        return None


def require_causal_lm(path: str | None, role: str, kind: str) -> None:
    """A :class:`RewardError` when the local folder ``path`` holds a sequence classifier, not a causal LM."""
    arch = architectures(path)
    if arch and not any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in arch):
        raise RewardError(
            f"reward kind {kind!r}: {role} {path} is a {', '.join(arch)}, not a causal language model "
            "(a reward model or discriminator folder? use kind 'discriminator' or 'classifier' for those)"
        )


class ClosedFormReward(ImplicitReward):
    """``r(x, y) = β·(log π_SFT(y|x) − log π_init(y|x))`` (÷ |y| with ``length_normalize``), β = 1 by default."""


def build_closed_form(cfg: RewardConfig) -> ClosedFormReward:
    """The ``closed_form`` reward kind: ``path`` = π_SFT, ``reference`` = π_init."""
    if not cfg.path or not cfg.reference:
        raise RewardError("reward kind 'closed_form' needs reward.path (π_SFT) and reward.reference (π_init)")
    require_causal_lm(cfg.path, "reward.path (π_SFT)", "closed_form")
    require_causal_lm(cfg.reference, "reward.reference (π_init)", "closed_form")
    return ClosedFormReward(cfg)


register_reward_kind("closed_form", build_closed_form)
