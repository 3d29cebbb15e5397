"""AfD discriminator reward models (Sun & van der Schaar, 2024; METHODS.md §3).

A discriminator ``D(y|x) = σ(z(x, y))`` is a sequence classifier (:class:`imitalign.model.score.ScoreModel`) trained
through the one training loop with objective ``discriminator_bce`` on labelled rows (1 = positive class, 0 =
negative); its reward is the logit,

    r(x, y) = log D(y|x) − log(1 − D(y|x)) = z(x, y).

Which samples are the classes decides whether the reward can be trusted:

==============  =========================  ==================================
mode            positives (label 1)        negatives (label 0)
==============  =========================  ==================================
``init_sft``    samples of π_SFT           samples of π_init   (proposed)
``init_demo``   demonstrations             samples of π_init
``sft_demo``    demonstrations             samples of π_SFT
==============  =========================  ==================================

(:mod:`imitalign.loops.afd` builds the classes, writes them as files and trains.) The trainer writes
``afd.json`` into the discriminator's model folder (``{"reward": "discriminator", "mode", "positives",
"negatives", ...}``).

Reward kind ``discriminator`` (:func:`imitalign.reward.load_reward`, ``path`` = the model folder): the ``classifier``
kind's scoring, with a check that the folder *is* a discriminator — a causal LM (a policy), or a Bradley–Terry reward
model, is refused with a message naming the right kind instead of being scored by a randomly initialised head.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from imitalign.reward.base import RewardConfig, RewardError, register_reward_kind
from imitalign.reward.closed_form import architectures
from imitalign.reward.models import SequenceClassifierReward

MODES: dict[str, tuple[str, str]] = {
    "init_sft": ("sft", "init"),
    "init_demo": ("demo", "init"),
    "sft_demo": ("demo", "sft"),
}
"""mode → (positive class, negative class); ``sft``/``init``: samples of π_SFT/π_init, ``demo``: demonstrations."""

META_FILE = "afd.json"


def trained_objective(path: str | Path) -> str | None:
    """The objective a model folder was trained with, from the run's ``config.yaml`` beside it (the trainer saves
    ``<run>/model`` and ``<run>/config.yaml``), or None when unknown."""
    config = Path(path).parent / "config.yaml"
    if not config.is_file():
        return None
    try:
        raw: Any = yaml.safe_load(config.read_text())
        return raw.get("objective", {}).get("name") if isinstance(raw, dict) else None
    except (OSError, yaml.YAMLError):
        return None


def discriminator_meta(path: str | Path) -> dict[str, Any] | None:
    """``afd.json`` of a discriminator folder, or None."""
    meta = Path(path) / META_FILE
    return json.loads(meta.read_text()) if meta.is_file() else None


def check_discriminator_folder(path: str) -> None:
    """A :class:`RewardError` unless the local folder ``path`` is a sequence classifier trained with
    ``discriminator_bce`` (hub ids and folders without the run's config are accepted on their architecture)."""
    arch = architectures(path)
    if arch is None:
        if Path(path).exists() and not (Path(path) / "config.json").is_file():
            raise RewardError(f"reward kind 'discriminator': {path} has no config.json (not a model folder)")
        return
    if not any(a.endswith("ForSequenceClassification") for a in arch):
        raise RewardError(
            f"reward kind 'discriminator': {path} is a {', '.join(arch)} (a policy), not a discriminator; "
            "train one with `imitalign afd classes` / objective discriminator_bce, or score a policy pair with "
            "kind 'closed_form'"
        )
    objective = trained_objective(path)
    if objective is not None and objective != "discriminator_bce" and discriminator_meta(path) is None:
        hint = " (use kind 'bradley_terry')" if objective == "bradley_terry" else ""
        raise RewardError(
            f"reward kind 'discriminator': {path} was trained with objective {objective!r}, not discriminator_bce{hint}"
        )


class DiscriminatorReward(SequenceClassifierReward):
    """``r(x, y) = z(x, y) = log D − log(1 − D)`` of an AfD discriminator; ``meta`` is its ``afd.json``."""

    def __init__(self, cfg: RewardConfig) -> None:
        super().__init__(cfg)
        self.meta = discriminator_meta(cfg.path) if cfg.path else None


def build_discriminator(cfg: RewardConfig) -> DiscriminatorReward:
    """The ``discriminator`` reward kind (module docstring)."""
    if not cfg.path:
        raise RewardError("reward kind 'discriminator' needs reward.path (the discriminator's model folder)")
    check_discriminator_folder(cfg.path)
    return DiscriminatorReward(cfg)


register_reward_kind("discriminator", build_discriminator)
