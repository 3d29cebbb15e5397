"""Reward sources (``base``: the interface, registry and checks; ``builtin``/``models``: the built-in kinds)."""

from imitalign.reward.base import (
    PLUGIN_MODULES,
    RewardConfig,
    RewardError,
    RewardSource,
    check_scores,
    load_reward,
    register_reward_kind,
    reward_kinds,
    score_rows,
)

__all__ = [
    "PLUGIN_MODULES",
    "RewardConfig",
    "RewardError",
    "RewardSource",
    "check_scores",
    "load_reward",
    "register_reward_kind",
    "reward_kinds",
    "score_rows",
]
