"""The built-in reward kinds (see :mod:`imitalign.reward.base` for the table): ``gold`` and ``function`` here,
the model-based ``bradley_terry``, ``classifier`` and ``implicit`` in :mod:`imitalign.reward.models`."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from imitalign.reward.base import RewardConfig, RewardError, register_reward_kind


class GoldReward:
    """The gym's gold reward r*(x, y) ∈ [0, 1] (``imitalign.gym.task.gold_reward``)."""

    name = "gold"

    def score(self, rows: list[dict[str, Any]]) -> list[float]:
        from imitalign.gym.build import gold_rewards

        return gold_rewards(rows)


def import_function(spec: str) -> Callable[..., Any]:
    """The callable named by ``"package.module:function"`` (``function`` may be dotted: ``Class.method``)."""
    if not isinstance(spec, str) or ":" not in spec:
        raise RewardError(f"reward function {spec!r}: expected 'package.module:function'")
    module_name, attr = spec.split(":", 1)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's to see
        raise RewardError(
            f"reward function {spec!r}: cannot import module {module_name!r}: {type(e).__name__}: {e}"
        ) from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise RewardError(f"reward function {spec!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise RewardError(f"reward function {spec!r} is a {type(obj).__name__}, not callable")
    return obj


class FunctionReward:
    """A user function (a verifier, a rule): ``fn(rows: list[dict]) -> list[float]``, with ``options`` passed
    as keyword arguments."""

    def __init__(self, spec: str, options: dict[str, Any] | None = None, name: str | None = None) -> None:
        self.fn = import_function(spec)
        self.options = dict(options or {})
        self.name = name or spec

    def score(self, rows: list[dict[str, Any]]) -> list[float]:
        out = self.fn(rows, **self.options)
        if hasattr(out, "tolist"):
            out = out.tolist()
        if not isinstance(out, list | tuple):
            raise RewardError(
                f"reward function {self.name!r} returned a {type(out).__name__}; it must return a "
                f"list of floats, one per row ({len(rows)} rows)"
            )
        return list(out)


def _gold(cfg: RewardConfig) -> GoldReward:
    return GoldReward()


def _function(cfg: RewardConfig) -> FunctionReward:
    if not cfg.function:
        raise RewardError("reward kind 'function' needs reward.function: 'package.module:function'")
    return FunctionReward(cfg.function, cfg.options, cfg.name)


register_reward_kind("gold", _gold)
register_reward_kind("function", _function)
