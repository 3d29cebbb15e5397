"""Configuration of ``imitalign iterate`` / ``imitalign rejection`` (:mod:`imitalign.loops.iterate`): the pydantic
models of a loop config, reading it (YAML + ``--set`` overrides, validated before any work) and resolving its
``${gym.<name>}`` placeholders (which builds, or reuses, the gym pieces they name).
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from imitalign.config import (
    ConfigError,
    DataConfig,
    DataSource,
    ModelConfig,
    ObjectiveConfig,
    ReferenceConfig,
    RunConfig,
    TrainConfig,
    apply_overrides,
    check_section,
    read_yaml_mapping,
    validate_config,
)
from imitalign.loops.launch import LaunchConfig
from imitalign.loops.pairs import DEMO_MODES, MODES
from imitalign.loops.rejection import ACCEPTANCE, incremental_etas
from imitalign.loops.stages import train_or_reuse
from imitalign.reward.base import RewardConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)


class EnhancerConfig(_Strict):
    """A share of each prompt's K samples from another sampler, for exploration (Xiong et al.'s "enhancer")."""

    fraction: float = Field(0.25, gt=0.0, lt=1.0)  # of the K samples; round(fraction·K) ≥ 1 of them
    policy: Literal["initial", "current"] = "initial"  # π_0 or π_{t−1}
    temperature: float | None = Field(None, ge=0.0)  # default: generate.temperature


class GenerateConfig(_Strict):
    k: int = Field(4, ge=1)  # samples per prompt (≥ 2 to pair samples; self-play pairs each with a demonstration)
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(32, ge=1)
    backend: Literal["transformers", "vllm", "auto"] = "transformers"
    dtype: str = "auto"
    tensor_parallel_size: int = Field(1, ge=1)  # vllm: GPUs per engine (a model too large for one GPU)
    enhancer: EnhancerConfig | None = None


class PromptsConfig(_Strict):
    source: DataSource
    per_round: int = Field(ge=1)
    fresh: bool = True  # a new slice every round; false: the same prompts every round
    shuffle: bool = True  # a seeded permutation of the prompt set before slicing


class PairsConfig(_Strict):
    """How a round's training data comes from its samples: pairs by score (``max_min``, ``max_random``,
    ``random``), or from demonstrations (``demos``): ``self_play`` (SPIN/GSIL pairs: the demonstration chosen, the
    policy's sample rejected) and ``own_samples`` (online IQLearn: the demonstrations are the training data and the
    policy's samples feed the TD term as ``data.policy_samples``). The demonstration modes need no reward."""

    mode: str = "max_min"
    length_penalty: float = 0.0  # score − α·tokens
    tie_eps: float = Field(1e-6, ge=0.0)
    demos: DataSource | None = None  # self_play / own_samples: the demonstration file (prompt, response)

    @model_validator(mode="after")
    def _mode(self) -> PairsConfig:
        if self.mode not in (*MODES, *DEMO_MODES):
            raise ValueError(f"pairs.mode must be one of {', '.join((*MODES, *DEMO_MODES))}, got {self.mode!r}")
        if (self.mode in DEMO_MODES) != (self.demos is not None):
            raise ValueError(
                f"pairs.demos (a demonstration file) goes with pairs.mode {' / '.join(DEMO_MODES)}, and only with it"
            )
        return self


class RejectionConfig(_Strict):
    """Multi-step rejection sampling: step t accepts toward π_0·exp(r/η_t) (``imitalign.loops.rejection``)."""

    etas: list[float] = Field(min_length=1)  # η_1 > … > η_N
    acceptance: str = "statistical"  # statistical | best_of_n
    incremental: bool = True
    form: Literal["sft", "rso"] = "sft"

    @model_validator(mode="after")
    def _check(self) -> RejectionConfig:
        if self.acceptance not in ACCEPTANCE:
            raise ValueError(f"rejection.acceptance must be one of {', '.join(ACCEPTANCE)}")
        if self.incremental and self.acceptance == "statistical":
            incremental_etas(self.etas)  # raises on a non-decreasing schedule
        elif any(not e > 0 for e in self.etas):
            raise ValueError("every rejection.etas entry must be > 0")
        if self.form == "rso" and self.acceptance == "best_of_n":
            raise ValueError(
                "rejection.form rso pairs accepted samples; best_of_n accepts one per prompt — use "
                "acceptance statistical (or form sft)"
            )
        return self

    def step_eta(self, t: int) -> float:
        return incremental_etas(self.etas)[t - 1] if self.incremental else self.etas[t - 1]


class PolicyTrainConfig(_Strict):
    """How each round trains: the objective and the sections of an ``imitalign train`` config (model and data
    paths are filled in per round)."""

    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    train: dict[str, Any] = Field(default_factory=dict)  # TrainConfig fields
    data: dict[str, Any] = Field(default_factory=dict)  # chat_template, max_length, eval_fraction, ...
    model: dict[str, Any] = Field(default_factory=dict)  # ModelConfig fields but name_or_path (dtype, lora, ...)
    reference: dict[str, Any] = Field(default_factory=dict)  # ReferenceConfig fields but name_or_path

    @field_validator("train")
    @classmethod
    def _train_fields(cls, v: dict[str, Any]) -> dict[str, Any]:
        """Every field checked as ``imitalign train`` checks it, at config time (not at round 1's training)."""
        check_section(TrainConfig, v, "train")
        return v

    @field_validator("data")
    @classmethod
    def _data_fields(cls, v: dict[str, Any]) -> dict[str, Any]:
        check_section(DataConfig, {"train": {"path": "(per round)"}, **v}, "data")
        return v

    @field_validator("model")
    @classmethod
    def _model_fields(cls, v: dict[str, Any]) -> dict[str, Any]:
        check_section(ModelConfig, {**v, "name_or_path": "(per round)"}, "model")
        return v

    @field_validator("reference")
    @classmethod
    def _reference_fields(cls, v: dict[str, Any]) -> dict[str, Any]:
        check_section(ReferenceConfig, {**v, "name_or_path": "(per round)"}, "reference")
        return v


class EvalConfig(_Strict):
    prompts: DataSource
    n: int = Field(4, ge=1)
    max_new_tokens: int | None = None  # default: generate.max_new_tokens
    temperature: float = Field(1.0, ge=0.0)
    reward: RewardConfig | None = None  # default: the loop's reward
    pairs: str | None = None  # held-out preference pairs: log-likelihood diagnostics
    seed: int = Field(1234, ge=0)
    batch_size: int = Field(64, ge=1)


class GymSetup(_Strict):
    plan: Literal["fast", "full"] = "fast"
    root: str = "runs/gym_base"
    seed: int = Field(0, ge=0)
    rm_epochs: float = Field(2.0, gt=0.0)
    rm_lr: float = Field(1e-3, gt=0.0)


class IterateConfig(_Strict):
    run: RunConfig = Field(default_factory=RunConfig)
    policy: str  # π_0: a model folder or hub id
    rounds: int = Field(3, ge=1)
    prompts: PromptsConfig | None = None  # required unless offline
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    reward: RewardConfig | None = None  # required unless offline or a demonstration pairing (own_samples, self_play)
    offline: DataSource | None = None  # the offline baseline: one round of training on this preference file
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    rejection: RejectionConfig | None = None
    train: PolicyTrainConfig = Field(default_factory=PolicyTrainConfig)
    reference: Literal["initial", "previous"] = "initial"
    start: Literal["warm", "retrain_union"] = "warm"
    eval: EvalConfig | None = None
    gym: GymSetup | None = None
    launch: LaunchConfig = Field(default_factory=LaunchConfig)  # stages run as their own jobs (loops/launch.py)

    @model_validator(mode="after")
    def _check(self) -> IterateConfig:
        if self.offline is not None:
            if self.rounds != 1 or self.rejection is not None:
                raise ValueError("offline (training on a fixed preference file) is one round, without rejection")
            if self.eval is None or (self.eval.reward is None and self.reward is None):
                raise ValueError("offline runs need an eval section with a reward (eval.reward)")
        elif self.prompts is None:
            raise ValueError("prompts are required (unless offline: a fixed preference file)")
        elif self.reward is None and self.pairs.mode not in DEMO_MODES:
            raise ValueError(
                f"a reward is required to pair samples by score (pairs.mode {self.pairs.mode}); only the "
                f"demonstration modes ({', '.join(DEMO_MODES)}) work without one"
            )
        if self.generate.k < 2 and self.pairs.mode not in DEMO_MODES:
            raise ValueError(
                f"generate.k must be >= 2 to pair samples (got {self.generate.k}); only {' and '.join(DEMO_MODES)} "
                "work from one sample per prompt"
            )
        if self.eval is not None and self.eval.reward is None and self.reward is None:
            raise ValueError("eval needs a reward to score its samples: set eval.reward (the loop has no reward)")
        if self.rejection is not None and self.pairs.mode in DEMO_MODES:
            raise ValueError(
                f"rejection selects samples by reward; it does not combine with pairs.mode {self.pairs.mode}"
            )
        if self.rejection is not None and len(self.rejection.etas) != self.rounds:
            raise ValueError(
                f"rejection.etas has {len(self.rejection.etas)} entries for {self.rounds} rounds: give one η per round"
            )
        return self


# ------------------------------------------------------------------------------------------ config I/O
_PLACEHOLDER = re.compile(r"\$\{gym\.([a-z_]+)\}")


def _uses(raw: Any, name: str) -> bool:
    return f"${{gym.{name}}}" in json.dumps(raw)


def _substitute(raw: Any, values: dict[str, str]) -> Any:
    if isinstance(raw, dict):
        return {k: _substitute(v, values) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_substitute(v, values) for v in raw]
    if isinstance(raw, str):

        def sub(m: re.Match[str]) -> str:
            if m.group(1) not in values:
                raise ConfigError(f"unknown placeholder {m.group(0)}; known: {', '.join(sorted(values))}")
            return values[m.group(1)]

        return _PLACEHOLDER.sub(sub, raw)
    return raw


def parse_iterate_config(raw: dict[str, Any], source: str = "<dict>") -> IterateConfig:
    """Validate a config dict (placeholders already substituted) as an :class:`IterateConfig`."""
    return validate_config(IterateConfig, raw, source=source)


def read_iterate_config(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """The raw (placeholder-bearing) config dict of a YAML file with ``--set`` overrides, validated."""
    raw = apply_overrides(read_yaml_mapping(path, "run, policy, prompts, reward, ..."), overrides or [])
    parse_iterate_config(raw, str(path))  # fail on a bad config before any gym or model work
    return raw


def prepare_gym(setup: GymSetup, need_rm: bool, say: Callable[[str], None]) -> dict[str, str]:
    """Gym, SFT model and offline pairs (``imitalign.gym.base.prepare_base``), and a Bradley–Terry reward
    model trained on the offline pairs when ``need_rm``; returns the placeholder values."""
    from imitalign.gym.base import FAST, FULL, gym_run_config, prepare_base

    plan = FAST if setup.plan == "fast" else FULL
    base = prepare_base(Path(setup.root), plan, setup.seed)
    values = {
        "root": str(base.files.root),
        "sft": str(base.sft_dir),
        "online_prompts": str(base.files.online_prompts),
        "eval_prompts": str(base.files.eval_prompts),
        "prefs": str(base.prefs),
        "eval_pairs": str(base.eval_pairs),
        "tokenizer": str(base.files.tokenizer),
    }
    if need_rm:
        rm_cfg = gym_run_config(
            base.work / "reward_model",
            {"name_or_path": str(base.sft_dir)},
            {
                "train": {"path": str(base.prefs), "format": "preference"},
                "eval": {"path": str(base.eval_pairs), "format": "preference"},
            },
            "bradley_terry",
            {},
            {"lr": setup.rm_lr, "epochs": setup.rm_epochs, "batch_size": plan.batch, "eval_every": 20},
            setup.seed,
        )
        summary = train_or_reuse(rm_cfg, say=say)
        say(f"reward model: held-out pairwise accuracy {summary['eval'].get('accuracy', math.nan):.3f}")
        values["rm"] = summary["model_dir"]
    return values


def resolve_config(raw: dict[str, Any], source: str = "<dict>", say: Callable[[str], None] = print) -> IterateConfig:
    """Validate ``raw``; with a ``gym`` section, build the gym pieces and substitute ``${gym.*}``."""
    cfg = parse_iterate_config(raw, source)
    if cfg.gym is not None:
        values = prepare_gym(cfg.gym, _uses(raw, "rm"), say)
        cfg = parse_iterate_config(_substitute(copy.deepcopy(raw), values), source)
    elif _PLACEHOLDER.search(json.dumps(raw)):
        raise ConfigError(f"{source}: ${{gym.*}} placeholders need a gym section")
    return cfg
