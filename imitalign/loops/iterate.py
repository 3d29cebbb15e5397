"""Online iterative preference learning (Xiong et al. 2024, METHODS.md §2), multi-step rejection sampling, and
on-policy DIL — one loop of stages that write ordinary files.

    imitalign iterate CONFIG.yaml [--set rounds=2 ...]

The objective is ``max_π E_x[E_{y~π} r(x,y) − η·KL(π(·|x) ‖ π_0(·|x))]``. Round ``t = 1..T``:

    prompts   a fresh slice of the prompt set (``prompts.per_round``; ``fresh: false`` reuses one slice)
    samples   K samples per prompt from π_{t−1} (an ``enhancer`` share may come from π_0 or another
              temperature); exactly K per prompt, sharded exactly under ``accelerate launch``
    scored    the reward source adds ``score`` (K checked first: a sampling/scoring K mismatch is an error)
    pairs     best vs worst (``max_min``), ``max_random`` or ``random``; ties and empty responses dropped and
              counted — or, with ``rejection``, the samples accepted toward π·exp(r/η_t) (SFT form), or pairs
              of accepted samples (RSO form)
    train     the one training loop, any §1 objective (DPO, IPO, DIL-LSIF/UKL/BCE: on-policy DIL) on the new
              pairs — warm-started from π_{t−1} (``start: warm``, default) or from π_0 on the union of all rounds'
              data (``start: retrain_union``, the ICML text) — with the reference fixed at π_0 (``reference:
              initial``, default; ``previous`` uses π_{t−1} and says so loudly: the authors found it unstable)
    eval      samples on held-out prompts scored by the eval reward (the gym's gold r*), win rate against π_0's
              samples (same prompts, seeds and sample indices), KL(π_t ‖ π_0) from samples, length

Every stage writes its files in ``round_<t>/`` atomically; a rerun (after a crash or kill) reuses every
finished stage and starts at the first unfinished one. ``round_0/eval.json`` evaluates π_0. The per-round
table is printed and written to ``report.md`` with ``reward_per_round.png``; ``results.json`` has the numbers.

Departures from the authors' code, on purpose: the reference is π_0 in every round unless asked otherwise
(their code silently used the previous iterate); prompts are sharded with no dropped tail; the scoring stage
checks K instead of dropping rows.

A ``gym`` section builds (or reuses) the gym, its SFT model and offline pairs, and — when ``${gym.rm}`` is
used — a Bradley–Terry reward model trained on those pairs; ``${gym.<name>}`` placeholders anywhere in the
config are replaced by their paths (``sft``, ``online_prompts``, ``eval_prompts``, ``prefs``, ``eval_pairs``,
``rm``, ``tokenizer``, ``root``).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from imitalign import objectives
from imitalign.config import (
    Config,
    ConfigError,
    DataSource,
    ObjectiveConfig,
    RunConfig,
    apply_overrides,
    load_config,
    read_yaml_mapping,
    validate_config,
)
from imitalign.loops.pairs import MODES, SELF_PLAY, demo_lookup, make_pairs, self_play_pairs
from imitalign.loops.rejection import ACCEPTANCE, accept, incremental_etas
from imitalign.loops.scoring import check_samples, read_rows, write_rows
from imitalign.loops.stages import model_fingerprint, read_json, train_or_reuse, write_json
from imitalign.reward.base import RewardConfig, RewardError, RewardSource, load_reward, score_rows

log = logging.getLogger(__name__)


class LoopError(ValueError):
    """A round cannot go on (no pairs, nothing accepted); the message says which round and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class EnhancerConfig(_Strict):
    """A share of each prompt's K samples from another sampler, for exploration (Xiong et al.'s "enhancer")."""

    fraction: float = Field(0.25, gt=0.0, lt=1.0)  # of the K samples; round(fraction·K) ≥ 1 of them
    policy: Literal["initial", "current"] = "initial"  # π_0 or π_{t−1}
    temperature: float | None = None  # default: generate.temperature


class GenerateConfig(_Strict):
    k: int = Field(4, ge=1)  # samples per prompt (≥ 2 to pair samples; self-play pairs each with a demonstration)
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(32, ge=1)
    backend: Literal["transformers", "vllm", "auto"] = "transformers"
    dtype: str = "auto"
    enhancer: EnhancerConfig | None = None


class PromptsConfig(_Strict):
    source: DataSource
    per_round: int = Field(ge=1)
    fresh: bool = True  # a new slice every round; false: the same prompts every round
    shuffle: bool = True  # a seeded permutation of the prompt set before slicing


class PairsConfig(_Strict):
    mode: str = "max_min"
    length_penalty: float = 0.0  # score − α·tokens
    tie_eps: float = Field(1e-6, ge=0.0)
    # self_play (SPIN/GSIL): chosen = the prompt's demonstration from this file, rejected = the policy's sample
    demos: DataSource | None = None

    @model_validator(mode="after")
    def _mode(self) -> PairsConfig:
        if self.mode not in (*MODES, SELF_PLAY):
            raise ValueError(f"pairs.mode must be one of {', '.join((*MODES, SELF_PLAY))}, got {self.mode!r}")
        if (self.mode == SELF_PLAY) != (self.demos is not None):
            raise ValueError("pairs.demos (a demonstration file) goes with pairs.mode self_play, and only with it")
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


class EvalConfig(_Strict):
    prompts: DataSource
    n: int = Field(4, ge=1)
    max_new_tokens: int | None = None  # default: generate.max_new_tokens
    temperature: float = 1.0
    reward: RewardConfig | None = None  # default: the loop's reward
    pairs: str | None = None  # held-out preference pairs: log-likelihood diagnostics
    seed: int = 1234
    batch_size: int = 64


class GymSetup(_Strict):
    plan: Literal["fast", "full"] = "fast"
    root: str = "runs/gym_base"
    seed: int = 0
    rm_epochs: float = 2.0
    rm_lr: float = 1e-3


class IterateConfig(_Strict):
    run: RunConfig = Field(default_factory=RunConfig)
    policy: str  # π_0: a model folder or hub id
    rounds: int = Field(3, ge=1)
    prompts: PromptsConfig | None = None  # required unless offline
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    reward: RewardConfig | None = None  # required unless offline
    offline: DataSource | None = None  # the offline baseline: one round of training on this preference file
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    rejection: RejectionConfig | None = None
    train: PolicyTrainConfig = Field(default_factory=PolicyTrainConfig)
    reference: Literal["initial", "previous"] = "initial"
    start: Literal["warm", "retrain_union"] = "warm"
    eval: EvalConfig | None = None
    gym: GymSetup | None = None

    @model_validator(mode="after")
    def _check(self) -> IterateConfig:
        if self.offline is not None:
            if self.rounds != 1 or self.rejection is not None:
                raise ValueError("offline (training on a fixed preference file) is one round, without rejection")
            if self.eval is None or (self.eval.reward is None and self.reward is None):
                raise ValueError("offline runs need an eval section with a reward (eval.reward)")
        elif self.prompts is None or self.reward is None:
            raise ValueError("prompts and reward are required (unless offline: a fixed preference file)")
        if self.generate.k < 2 and self.pairs.mode != SELF_PLAY:
            raise ValueError(
                f"generate.k must be >= 2 to pair samples (got {self.generate.k}); only self_play "
                "pairing works from one sample per prompt"
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
    """Gym, SFT model and offline pairs (``imitalign.gym.quickstart.prepare_base``), and a Bradley–Terry reward
    model trained on the offline pairs when ``need_rm``; returns the placeholder values."""
    from imitalign.gym.quickstart import FAST, FULL, gym_run_config, prepare_base

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


# ------------------------------------------------------------------------------------------ the loop
@dataclass
class Preflight:
    """What is checked and loaded before the first expensive stage."""

    tokenizer: Any
    n_prompts: int
    reward: RewardSource
    eval_reward: RewardSource | None
    eval_prompts: Any = None  # PromptSet
    eval_pairs: list[dict[str, Any]] = field(default_factory=list)
    side_reward: RewardSource | None = None  # the loop's reward, also reported on eval samples


def _data_section(cfg: IterateConfig) -> dict[str, Any]:
    data = {"chat_template": "auto", "max_length": 1024, **cfg.train.data}
    return data


def _policy_kind(cfg: IterateConfig) -> str:
    return "token" if cfg.rejection is not None and cfg.rejection.form == "sft" else "pair"


def train_config(cfg: IterateConfig, t: int, init_model: str, ref_model: str, data_path: Path, out: Path) -> Config:
    """The ``imitalign train`` config of round ``t``."""
    spec = objectives.get(cfg.train.objective.name)
    fmt = "preference" if spec.kind == "pair" else "demonstration"
    raw: dict[str, Any] = {
        "run": {"output_dir": str(out), "seed": cfg.run.seed * 1000 + t, "name": f"{cfg.run.name or 'iterate'}-r{t}"},
        "model": {**cfg.train.model, "name_or_path": init_model},
        "data": {**_data_section(cfg), "train": {"path": str(data_path), "format": fmt}},
    }
    if cfg.offline is not None:  # the offline file's rows, copied as they are
        raw["data"]["train"].update(format=cfg.offline.format, columns=cfg.offline.columns)
    raw |= {
        "objective": cfg.train.objective.model_dump(),
        "train": dict(cfg.train.train),
    }
    if spec.needs_reference:
        raw["reference"] = {"mode": "copy", **cfg.train.reference, "name_or_path": ref_model}
    return load_config(None, raw=raw)


def _probe(source: RewardSource, prompt: Any) -> None:
    """Score two made-up rows: a reward that fails, returns the wrong count or non-finite values fails here."""
    rows = [{"prompt": prompt, "response": "", "probe": True}, {"prompt": prompt, "response": "a", "probe": True}]
    try:
        score_rows(source, rows)
    except RewardError as e:
        raise RewardError(f"reward check before sampling failed: {e}") from None
    except Exception as e:  # noqa: BLE001 - a user function's own failure, reported as such
        raise RewardError(
            f"reward {source.name!r} failed on a test row before sampling: {type(e).__name__}: {e}"
        ) from e


def preflight(cfg: IterateConfig, say: Callable[[str], None]) -> Preflight:
    """Check everything that can be checked before sampling: the objective and its kind, a training config,
    the prompt file(s), the reward source(s) (built and probed)."""
    from imitalign.config import ModelConfig
    from imitalign.generate.kshot import load_prompt_set
    from imitalign.model.load import load_tokenizer

    spec = objectives.get(cfg.train.objective.name)
    objectives.build(cfg.train.objective.name, cfg.train.objective.options)
    want = _policy_kind(cfg)
    if spec.kind != want:
        what = "SFT on accepted samples (rejection.form sft)" if want == "token" else "training on pairs"
        raise ConfigError(
            f"train.objective {spec.name!r} is of kind {spec.kind!r}, but {what} needs a {want!r} objective "
            f"({'mle' if want == 'token' else 'dpo, ipo, dil_lsif, dil_bce, ...'})"
        )
    train_config(cfg, 1, cfg.policy, cfg.policy, Path("pairs.jsonl"), Path(cfg.run.output_dir) / "check")
    if cfg.generate.enhancer is not None:
        k_e = round(cfg.generate.enhancer.fraction * cfg.generate.k)
        if not 1 <= k_e < cfg.generate.k:
            raise ConfigError(
                f"generate.enhancer.fraction {cfg.generate.enhancer.fraction} of K = {cfg.generate.k} gives "
                f"{k_e} enhancer samples per prompt; it must leave 1..K-1"
            )
    tok = load_tokenizer(ModelConfig(name_or_path=cfg.policy))
    data = _data_section(cfg)
    if cfg.offline is not None:
        return _preflight_offline(cfg, tok, data, say)
    assert cfg.prompts is not None and cfg.reward is not None
    prompt_set = load_prompt_set(
        cfg.prompts.source,
        tok,
        chat_template=data["chat_template"],
        system_prompt=data.get("system_prompt"),
        max_length=data["max_length"],
        max_prompt_length=data.get("max_prompt_length"),
        max_new_tokens=cfg.generate.max_new_tokens,
    )
    reward = load_reward(cfg.reward)
    _probe(reward, prompt_set.prompts[0])
    pf = Preflight(tok, len(prompt_set), reward, None)
    if cfg.eval is not None:
        pf.eval_prompts = load_prompt_set(
            cfg.eval.prompts,
            tok,
            chat_template=data["chat_template"],
            system_prompt=data.get("system_prompt"),
            max_length=data["max_length"],
            max_prompt_length=data.get("max_prompt_length"),
            max_new_tokens=cfg.eval.max_new_tokens or cfg.generate.max_new_tokens,
        )
        if cfg.eval.reward is not None and cfg.eval.reward != cfg.reward:
            pf.eval_reward = load_reward(cfg.eval.reward)
            _probe(pf.eval_reward, pf.eval_prompts.prompts[0])
            pf.side_reward = reward
        else:
            pf.eval_reward = reward
        if cfg.eval.pairs:
            pf.eval_pairs = read_rows(cfg.eval.pairs)
    if cfg.pairs.mode == SELF_PLAY:
        _demos(cfg)  # readable, not empty
    if cfg.reference == "previous" and cfg.pairs.mode != SELF_PLAY:  # (SPIN's own choice: no warning)
        say("WARNING: reference = previous iterate (π_{t-1}), not π_0 — the authors found this less stable")
    say(
        f"{len(prompt_set)} prompts; K = {cfg.generate.k}; reward {reward.name}; {cfg.rounds} rounds of "
        f"{cfg.prompts.per_round} prompts"
    )
    return pf


def _preflight_offline(cfg: IterateConfig, tok: Any, data: dict[str, Any], say: Callable[[str], None]) -> Preflight:
    from imitalign.data.dataset import validate_data
    from imitalign.generate.kshot import load_prompt_set

    assert cfg.offline is not None and cfg.eval is not None
    validate_data(
        load_config(
            None, raw={"model": {"name_or_path": cfg.policy}, "data": {**data, "train": cfg.offline.model_dump()}}
        ).data,
        "preference",
    )
    reward = load_reward(cfg.eval.reward or cfg.reward)  # type: ignore[arg-type]
    pf = Preflight(tok, 0, reward, reward)
    pf.eval_prompts = load_prompt_set(
        cfg.eval.prompts,
        tok,
        chat_template=data["chat_template"],
        system_prompt=data.get("system_prompt"),
        max_length=data["max_length"],
        max_prompt_length=data.get("max_prompt_length"),
        max_new_tokens=cfg.eval.max_new_tokens or cfg.generate.max_new_tokens,
    )
    _probe(reward, pf.eval_prompts.prompts[0])
    if cfg.eval.pairs:
        pf.eval_pairs = read_rows(cfg.eval.pairs)
    say(f"offline: one round on {cfg.offline.path}")
    return pf


def _round_prompts(cfg: IterateConfig, n: int, t: int) -> list[int]:
    import random

    order = list(range(n))
    if cfg.prompts.shuffle:
        random.Random(f"{cfg.run.seed}:prompts").shuffle(order)
    start = (t - 1) * cfg.prompts.per_round if cfg.prompts.fresh else 0
    return [order[(start + i) % n] for i in range(cfg.prompts.per_round)]


class Interrupted(RuntimeError):
    """Raised by an ``on_stage`` hook to stop a run between stages (tests simulate a kill with it)."""


@dataclass
class IterateResult:
    root: Path
    rows: list[dict[str, Any]]
    table: str
    report: Path
    ran: list[tuple[int, str]]  # (round, stage) pairs executed by this call (not reused)


def _load_causal(path: str) -> Any:
    """A causal LM for evaluation, on the GPU when there is one."""
    import torch
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return AutoModelForCausalLM.from_pretrained(path).to(device).eval()


def _evaluate(
    cfg: IterateConfig, pf: Preflight, model_dir: str, pi0: Any, baseline: list[float] | None
) -> dict[str, Any]:
    from imitalign.eval.evaluate import evaluate_model

    assert cfg.eval is not None and pf.eval_reward is not None
    side: list[float] = []

    def reward_fn(rows: list[dict[str, Any]]) -> list[float]:
        if pf.side_reward is not None:
            side.extend(score_rows(pf.side_reward, rows))
        return score_rows(pf.eval_reward, rows)  # type: ignore[arg-type]

    model = _load_causal(model_dir)
    res = evaluate_model(
        model,
        pf.tokenizer,
        pf.eval_prompts.prompts,
        prompt_ids=pf.eval_prompts.prompt_ids,
        reward_fn=reward_fn,
        reference_model=pi0,
        baseline_scores=baseline,
        heldout_pairs=pf.eval_pairs or None,
        n=cfg.eval.n,
        seed=cfg.eval.seed,
        temperature=cfg.eval.temperature,
        max_new_tokens=cfg.eval.max_new_tokens or cfg.generate.max_new_tokens,
        batch_size=cfg.eval.batch_size,
    )
    if side:
        from imitalign.eval.metrics import cluster_mean_se

        m, se = cluster_mean_se(side, res["per_sample"]["prompt_index"])
        res["loop_reward"] = {"mean": m, "se": se}
    return res


def _sample_stage(cfg: IterateConfig, rd: Path, t: int, model: str, pi0: str) -> dict[str, Any]:
    from imitalign.config import ModelConfig
    from imitalign.generate.kshot import generate_k, load_prompt_set
    from imitalign.model.load import load_tokenizer

    g = cfg.generate
    data = _data_section(cfg)
    tok = load_tokenizer(ModelConfig(name_or_path=model))
    prompts = load_prompt_set(
        str(rd / "prompts.jsonl"),
        tok,
        chat_template=data["chat_template"],
        system_prompt=data.get("system_prompt"),
        max_length=data["max_length"],
        max_prompt_length=data.get("max_prompt_length"),
        max_new_tokens=g.max_new_tokens,
    )
    seed = cfg.run.seed * 1000 + t
    common = {
        "top_p": g.top_p,
        "max_new_tokens": g.max_new_tokens,
        "batch_size": g.batch_size,
        "backend": g.backend,
        "dtype": g.dtype,
    }
    if g.enhancer is None:
        st = generate_k(
            model,
            prompts,
            rd / "samples.jsonl",
            k=g.k,
            temperature=g.temperature,
            seed=seed,
            policy=f"pi_{t - 1}",
            **common,
        )
        return {"generation": st.to_dict()}
    k_e = round(g.enhancer.fraction * g.k)
    k_p = g.k - k_e
    enh_model = pi0 if g.enhancer.policy == "initial" else model
    st_p = generate_k(
        model,
        prompts,
        rd / "samples_policy.jsonl",
        k=k_p,
        temperature=g.temperature,
        seed=seed,
        policy=f"pi_{t - 1}",
        **common,
    )
    st_e = generate_k(
        enh_model,
        prompts,
        rd / "samples_enhancer.jsonl",
        k=k_e,
        temperature=g.enhancer.temperature or g.temperature,
        seed=seed + 500_000,
        policy="enhancer",
        **common,
    )
    rows = read_rows(rd / "samples_policy.jsonl")
    for row in read_rows(rd / "samples_enhancer.jsonl"):
        rows.append({**row, "sample_idx": row["sample_idx"] + k_p})
    rows.sort(key=lambda r: (r["prompt_index"], r["sample_idx"]))
    write_rows(rd / "samples.jsonl", rows)
    merged = st_p.to_dict()
    merged.update(tokens=st_p.tokens + st_e.tokens, seconds=st_p.seconds + st_e.seconds, samples=len(rows))
    merged["tokens_per_s"] = merged["tokens"] / merged["seconds"] if merged["seconds"] else 0.0
    merged["enhancer"] = {"k": k_e, "policy": g.enhancer.policy, **st_e.to_dict()}
    return {"generation": merged}


def _select_stage(cfg: IterateConfig, rd: Path, t: int, rows: list[dict[str, Any]]) -> tuple[Path, dict[str, Any]]:
    """Pairs (or accepted samples) of round ``t``: the training file and its stats."""
    seed = cfg.run.seed * 1000 + t
    info: dict[str, Any] = {}
    if cfg.rejection is not None:
        eta = cfg.rejection.step_eta(t)
        accepted, st = accept(rows, eta=eta, method=cfg.rejection.acceptance, seed=seed)
        info["rejection"] = {"eta_target": cfg.rejection.etas[t - 1], "eta_step": eta, **st}
        write_rows(rd / "accepted.jsonl", accepted)
        if not accepted:
            raise LoopError(f"round {t}: no sample was accepted")
        if cfg.rejection.form == "sft":
            out = write_rows(
                rd / "train_data.jsonl",
                [{"prompt": r["prompt"], "response": r["response"], "score": r["score"]} for r in accepted],
            )
            info["train_examples"] = len(accepted)
            return out, info
        rows = accepted
        pairs, pst = make_pairs(rows, mode="max_min", tie_eps=cfg.pairs.tie_eps, seed=seed)
    elif cfg.pairs.mode == SELF_PLAY:  # SPIN / GSIL: demonstration vs own sample
        pairs, pst = self_play_pairs(rows, _demos(cfg), seed=seed)
    else:
        p = cfg.pairs
        pairs, pst = make_pairs(rows, mode=p.mode, length_penalty=p.length_penalty, tie_eps=p.tie_eps, seed=seed)
    info["pairs"] = pst.to_dict()
    if pairs and "chosen_gold" in pairs[0]:
        info["pairs"]["gold_agreement"] = statistics.fmean(float(q["chosen_gold"] > q["rejected_gold"]) for q in pairs)
    if not pairs:
        raise LoopError(f"round {t}: no pairs ({pst.summary()}); raise K or check the reward")
    info["train_examples"] = len(pairs)
    return write_rows(rd / "train_data.jsonl", pairs), info


def _demos(cfg: IterateConfig) -> dict[str, list[str]]:
    """The demonstrations of ``pairs.demos`` by prompt (self-play pairing), read through the data layer (rows with
    an empty response are skipped and counted there)."""
    from imitalign.data.dataset import read_records
    from imitalign.data.records import DemonstrationRecord

    assert cfg.pairs.demos is not None
    records, _ = read_records(cfg.pairs.demos, kind="demonstration")
    rows = [{"prompt": r.prompt, "response": r.response} for r in records if isinstance(r, DemonstrationRecord)]
    if not rows:
        raise LoopError(f"pairs.demos {cfg.pairs.demos.path}: no demonstrations (prompt, response)")
    return demo_lookup(rows)


def _same_run(saved: Any, dumped: dict[str, Any]) -> bool:
    """The saved config is this one (validated with the current schema, so later fields with defaults match)."""
    if saved == dumped:
        return True
    try:
        return parse_iterate_config(saved).model_dump(mode="json") == dumped
    except ConfigError:
        return False


def run_iterate(
    cfg: IterateConfig,
    *,
    on_stage: Callable[[int, str], None] | None = None,
    say: Callable[[str], None] | None = None,
    quiet: bool = True,
) -> IterateResult:
    """Run (or resume) the loop of ``cfg`` (module docstring). ``on_stage(round, stage)`` is called after each
    stage this call executes (raise :class:`Interrupted` in it to stop)."""
    root = Path(cfg.run.output_dir)
    say = say or (lambda m: print(f"[iterate] {m}", flush=True))
    saved = root / "iterate_config.yaml"
    dumped = cfg.model_dump(mode="json")
    if saved.exists() and not _same_run(yaml.safe_load(saved.read_text()), dumped):
        raise ConfigError(
            f"{root} holds a run of a different configuration ({saved}); use a new run.output_dir, or delete it"
        )
    pf = preflight(cfg, say)
    root.mkdir(parents=True, exist_ok=True)
    tmp = saved.with_name(saved.name + ".tmp")
    tmp.write_text(yaml.safe_dump(dumped, sort_keys=False))
    tmp.replace(saved)
    ran: list[tuple[int, str]] = []

    def done(t: int, stage: str) -> None:
        ran.append((t, stage))
        if on_stage is not None:
            on_stage(t, stage)

    pi0 = cfg.policy
    pi0_fp = model_fingerprint(pi0) if Path(pi0).is_dir() else None
    pi0_model = _load_causal(pi0) if cfg.eval is not None else None

    # round 0: π_0 itself
    r0 = root / "round_0"
    baseline = None
    if cfg.eval is not None:
        if not (r0 / "eval.json").exists():
            t0 = time.perf_counter()
            res = _evaluate(cfg, pf, pi0, pi0_model, None)
            res["seconds"] = time.perf_counter() - t0
            write_json(r0 / "eval.json", res)
            done(0, "eval")
        baseline = read_json(r0 / "eval.json")["per_sample"]["score"]

    from imitalign.generate.kshot import RESERVED, load_prompt_set

    data = _data_section(cfg)
    prompt_set = None
    model = pi0
    for t in range(1, cfg.rounds + 1):
        rd = root / f"round_{t}"
        rd.mkdir(parents=True, exist_ok=True)
        if cfg.offline is not None and not (rd / "train_data.jsonl").exists():  # the offline baseline
            from imitalign.data.sources import iter_rows

            rows = [row for _, row in iter_rows(cfg.offline.path, cfg.offline.split, cfg.offline.limit)]
            write_rows(rd / "train_data.jsonl", rows)
            write_json(rd / "selection.json", {"offline": cfg.offline.path, "train_examples": len(rows)})
            done(t, "pairs")
        # prompts
        if cfg.offline is None and not (rd / "prompts.jsonl").exists():
            if prompt_set is None:
                prompt_set = load_prompt_set(
                    cfg.prompts.source,
                    pf.tokenizer,
                    chat_template=data["chat_template"],
                    system_prompt=data.get("system_prompt"),
                    max_length=data["max_length"],
                    max_prompt_length=data.get("max_prompt_length"),
                    max_new_tokens=cfg.generate.max_new_tokens,
                )
            idx = _round_prompts(cfg, len(prompt_set), t)
            write_rows(
                rd / "prompts.jsonl",
                [
                    {
                        **{k: v for k, v in prompt_set.extras[i].items() if k not in RESERVED},
                        "prompt": prompt_set.prompts[i],
                        "source_index": i,
                    }
                    for i in idx
                ],
            )
            done(t, "prompts")
        # samples
        if cfg.offline is None and not (rd / "samples.jsonl").exists():
            info = _sample_stage(cfg, rd, t, model, pi0)
            write_json(rd / "generation.json", info["generation"])
            say(
                f"round {t}: sampled {info['generation']['samples']} responses from π_{t - 1} "
                f"({info['generation']['tokens_per_s']:.0f} tokens/s)"
            )
            done(t, "samples")
        # scored
        if cfg.offline is None and not (rd / "scored.jsonl").exists():
            rows = read_rows(rd / "samples.jsonl")
            check_samples(rows, cfg.generate.k, str(rd / "samples.jsonl"))
            t0 = time.perf_counter()
            scores = score_rows(pf.reward, rows, batch_size=cfg.reward.batch_size * 8)
            seconds = time.perf_counter() - t0
            gold = None
            if (
                cfg.eval is not None
                and cfg.eval.reward is not None
                and cfg.eval.reward.kind == "gold"
                and cfg.reward.kind != "gold"
            ):
                gold = score_rows(pf.eval_reward, rows)  # type: ignore[arg-type]
            out_rows = []
            for i, (row, s) in enumerate(zip(rows, scores, strict=True)):
                row = {**row, "score": s}
                if gold is not None:
                    row["gold"] = gold[i]
                elif cfg.reward.kind == "gold":
                    row["gold"] = s
                out_rows.append(row)
            write_rows(rd / "scored.jsonl", out_rows)
            write_json(
                rd / "scoring.json",
                {
                    "seconds": seconds,
                    "rows": len(rows),
                    "reward": pf.reward.name,
                    "mean_score": statistics.fmean(scores),
                },
            )
            done(t, "scored")
        # pairs / accepted
        if not (rd / "train_data.jsonl").exists():
            _, info = _select_stage(cfg, rd, t, read_rows(rd / "scored.jsonl"))
            write_json(rd / "selection.json", info)
            say(f"round {t}: {info.get('pairs', info.get('rejection'))}")
            done(t, "pairs")
        # train
        if cfg.start == "retrain_union":
            union = [row for s in range(1, t + 1) for row in read_rows(root / f"round_{s}" / "train_data.jsonl")]
            data_path = rd / "union_train_data.jsonl"
            if not data_path.exists():
                write_rows(data_path, union)
            init = pi0
        else:
            data_path, init = rd / "train_data.jsonl", model
        ref = pi0 if cfg.reference == "initial" else model
        tcfg = train_config(cfg, t, init, ref, data_path, rd / "train")
        if not (rd / "training.json").exists():
            t0 = time.perf_counter()
            summary = train_or_reuse(tcfg, say=say, quiet=quiet)
            write_json(
                rd / "training.json",
                {
                    "seconds": time.perf_counter() - t0,
                    "init": init,
                    "reference": ref,
                    "reference_fingerprint": model_fingerprint(ref) if Path(ref).is_dir() else None,
                    "pi0_fingerprint": pi0_fp,
                    "steps": summary["steps"],
                    "train": summary.get("train", {}),
                    "eval": summary.get("eval", {}),
                },
            )
            done(t, "train")
        else:
            summary = train_or_reuse(tcfg, say=say, quiet=quiet)  # reuses the finished run (same config)
        model = summary["model_dir"]
        # eval
        if cfg.eval is not None and not (rd / "eval.json").exists():
            t0 = time.perf_counter()
            res = _evaluate(cfg, pf, model, pi0_model, baseline)
            res["seconds"] = time.perf_counter() - t0
            write_json(rd / "eval.json", res)
            done(t, "eval")
        if cfg.eval is not None:
            g = read_json(rd / "eval.json")["gold_reward"]
            say(f"round {t}: eval reward {g['mean']:.4f} ± {g['se']:.4f}")
    rows = collect_rows(root, cfg.rounds)
    table = round_table(rows)
    report = write_iterate_report(root, cfg, rows, table)
    say("\n" + table)
    return IterateResult(root, rows, table, report, ran)


# ------------------------------------------------------------------------------------------ table, report
def collect_rows(root: Path, rounds: int) -> list[dict[str, Any]]:
    """One dict per round (0 = π_0) from the round folders' JSON files."""
    out = []
    for t in range(0, rounds + 1):
        rd = root / f"round_{t}"
        row: dict[str, Any] = {"round": t}
        if (rd / "eval.json").exists():
            ev = read_json(rd / "eval.json")
            for key in ("gold_reward", "loop_reward", "win_rate_vs_baseline", "kl_to_reference", "length"):
                if key in ev:
                    row[key] = ev[key]
            row["distinct_2"] = ev.get("distinct_2")
            row["eval_seconds"] = ev.get("seconds")
        if (rd / "generation.json").exists():
            gen = read_json(rd / "generation.json")
            row["sample_seconds"], row["tokens_per_s"] = gen["seconds"], gen["tokens_per_s"]
        if (rd / "scoring.json").exists():
            sc = read_json(rd / "scoring.json")
            row["score_seconds"], row["mean_train_score"] = sc["seconds"], sc["mean_score"]
        if (rd / "selection.json").exists():
            sel = read_json(rd / "selection.json")
            row["train_examples"] = sel.get("train_examples")
            if "pairs" in sel:
                row["pairs_dropped"] = sum(sel["pairs"]["dropped"].values())
                row["empty_responses"] = sel["pairs"]["empty_responses"]
                row["gold_agreement"] = sel["pairs"].get("gold_agreement")
            if "rejection" in sel:
                row["accepted"] = sel["rejection"]["accepted"]
        if (rd / "training.json").exists():
            tr = read_json(rd / "training.json")
            row["train_seconds"] = tr["seconds"]
            row["reference_fingerprint"] = tr.get("reference_fingerprint")
            row["pi0_fingerprint"] = tr.get("pi0_fingerprint")
        out.append(row)
    return out


def _ms(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, dict):
        if v.get("mean") is None:
            return "–"
        se = v.get("se")
        return f"{v['mean']:.{digits}f}" + (f" ± {se:.{digits}f}" if se is not None and math.isfinite(se) else "")
    if isinstance(v, float):
        return f"{v:.{digits}f}" if math.isfinite(v) else "–"
    return str(v)


TABLE_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("gold_reward", "eval reward", 3),
    ("loop_reward", "loop reward", 3),
    ("win_rate_vs_baseline", "win vs π_0", 3),
    ("kl_to_reference", "KL(π‖π_0)", 2),
    ("length", "length", 1),
    ("train_examples", "pairs/accepted", 0),
    ("gold_agreement", "pairs agree r*", 2),
    ("sample_seconds", "sample s", 1),
    ("tokens_per_s", "tok/s", 0),
    ("score_seconds", "score s", 2),
    ("train_seconds", "train s", 1),
)
TIMING_COLUMNS = ("sample_seconds", "tokens_per_s", "score_seconds", "train_seconds")


def round_table(rows: list[dict[str, Any]], *, timings: bool = True) -> str:
    """The per-round Markdown table (``timings=False`` leaves out the wall-clock columns)."""
    cols = [c for c in TABLE_COLUMNS if any(c[0] in r for r in rows) and (timings or c[0] not in TIMING_COLUMNS)]
    head = ["round"] + [c[1] for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["round"])]
        for key, _, digits in cols:
            v = r.get(key)
            cells.append(_ms(v, digits) if not isinstance(v, int) or isinstance(v, bool) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_rounds(root: Path, rows: list[dict[str, Any]]) -> str | None:
    pts = [r for r in rows if r.get("gold_reward")]
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("gold_reward", "eval reward"), ("loop_reward", "loop reward (on eval samples)")):
        sel = [r for r in pts if r.get(key)]
        if sel:
            ax.errorbar(
                [r["round"] for r in sel],
                [r[key]["mean"] for r in sel],
                yerr=[r[key]["se"] or 0 for r in sel],
                marker="o",
                capsize=3,
                label=label,
            )
    ax.set_xlabel("round (0 = π_0)")
    ax.set_ylabel("reward (mean ± se over prompts)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(root / "reward_per_round.png", dpi=120)
    plt.close(fig)
    return "reward_per_round.png"


def write_iterate_report(root: Path, cfg: IterateConfig, rows: list[dict[str, Any]], table: str) -> Path:
    plot = plot_rounds(root, rows)
    what = (
        f"rejection sampling ({cfg.rejection.acceptance}, form {cfg.rejection.form}, η = {cfg.rejection.etas})"
        if cfg.rejection
        else f"pairs {cfg.pairs.mode}"
    )
    if cfg.offline is not None:
        what, source = "offline", f"one round on the fixed pairs `{cfg.offline.path}`"
    else:
        assert cfg.prompts is not None and cfg.reward is not None
        source = (
            f"{cfg.rounds} rounds × {cfg.prompts.per_round} prompts × K = {cfg.generate.k}; reward "
            f"`{cfg.reward.display_name()}`"
        )
    ref_ok = all(r.get("reference_fingerprint") == r.get("pi0_fingerprint") for r in rows if r["round"] > 0)
    lines = [
        f"# imitalign iterate: {cfg.run.name or root.name}",
        "",
        f"π_0 = `{cfg.policy}`; {source}; {what}; objective `{cfg.train.objective.name}` "
        f"{cfg.train.objective.options or ''}; start `{cfg.start}`; reference `{cfg.reference}`"
        + (" (π_0 in every round: fingerprints checked)" if cfg.reference == "initial" and ref_ok else ""),
        "",
        table,
        "",
        "Eval reward: mean ± se over eval prompts of the eval reward (the gym's gold r* when configured); loop "
        "reward: the loop's own reward on the same samples. Win rate: paired with π_0's samples (same prompt, "
        "sample index and seed; ties ½). KL from the policy's samples, E[log π − log π_0].",
        "",
    ]
    if plot:
        lines.append(f"![reward per round]({plot})")
    report = root / "report.md"
    report.write_text("\n".join(lines) + "\n")
    write_json(root / "results.json", {"rows": rows, "config": cfg.model_dump(mode="json")})
    return report


# ------------------------------------------------------------------------------------------ across seeds
def summarize_runs(run_dirs: list[str | Path]) -> tuple[str, list[dict[str, Any]]]:
    """Mean ± standard error *over runs* (seeds) of each arm's last round, arms named by ``run.name`` (runs
    of one name are the seeds of one arm). Returns the Markdown table and the per-arm numbers."""
    arms: dict[str, list[dict[str, Any]]] = {}
    for d in run_dirs:
        res = read_json(Path(d) / "results.json")
        name = res["config"]["run"].get("name") or Path(d).name
        arms.setdefault(name, []).append(res)
    keys = (
        ("gold_reward", "eval reward"),
        ("win_rate_vs_baseline", "win vs π_0"),
        ("kl_to_reference", "KL(π‖π_0)"),
        ("length", "length"),
    )
    out = []
    for name, runs in arms.items():
        row: dict[str, Any] = {"arm": name, "seeds": len(runs), "rounds": len(runs[0]["rows"]) - 1}
        for key, _ in keys:
            vals = [r["rows"][-1][key]["mean"] for r in runs if r["rows"][-1].get(key)]
            if vals:
                se = statistics.stdev(vals) / math.sqrt(len(vals)) if len(vals) > 1 else math.nan
                row[key] = {"mean": statistics.fmean(vals), "se": se}
        base = [r["rows"][0]["gold_reward"]["mean"] for r in runs if r["rows"][0].get("gold_reward")]
        if base:
            row["pi0_reward"] = statistics.fmean(base)
        curve = [
            statistics.fmean(r["rows"][t]["gold_reward"]["mean"] for r in runs)
            for t in range(len(runs[0]["rows"]))
            if all(r["rows"][t].get("gold_reward") for r in runs)
        ]
        row["curve"] = curve
        out.append(row)
    head = ["arm", "seeds"] + [h for _, h in keys] + ["eval reward by round (mean over seeds)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in out:
        cells = [row["arm"], str(row["seeds"])] + [_ms(row.get(k)) for k, _ in keys]
        cells.append(" → ".join(f"{c:.3f}" for c in row["curve"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), out
