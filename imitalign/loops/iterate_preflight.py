"""What ``imitalign iterate`` checks and loads before its first expensive stage (:func:`preflight`), and the
pieces of the config the stages share: the ``train.data`` rendering, each round's ``imitalign train`` config
(:func:`train_config`), the prompt sets, the demonstrations of a self-play pairing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imitalign import objectives
from imitalign.config import Config, ConfigError, load_config
from imitalign.loops.iterate_config import IterateConfig
from imitalign.loops.pairs import DEMO_MODES, OWN_SAMPLES, SELF_PLAY, demo_lookup
from imitalign.loops.scoring import read_rows
from imitalign.processes import process_count
from imitalign.reward.base import RewardError, RewardSource, load_reward, score_rows


class LoopError(ValueError):
    """A round cannot go on (no pairs, nothing accepted); the message says which round and why."""


@dataclass
class Preflight:
    """What is checked and loaded before the first expensive stage."""

    tokenizer: Any
    n_prompts: int
    reward: RewardSource | None  # None: a demonstration pairing without a reward
    eval_reward: RewardSource | None
    eval_prompts: Any = None  # PromptSet
    eval_pairs: list[dict[str, Any]] = field(default_factory=list)
    side_reward: RewardSource | None = None  # the loop's reward, also reported on eval samples


def data_section(cfg: IterateConfig) -> dict[str, Any]:
    data = {"chat_template": "auto", "max_length": 1024, **cfg.train.data}
    return data


def _policy_kind(cfg: IterateConfig) -> str:
    sft = cfg.rejection is not None and cfg.rejection.form == "sft"
    return "token" if sft or cfg.pairs.mode == OWN_SAMPLES else "pair"


def policy_samples_path(data_path: Path) -> Path:
    """The own samples that go with a round's training file (``pairs.mode: own_samples``)."""
    return data_path.with_name(data_path.name.replace("train_data", "policy_samples"))


def train_config(cfg: IterateConfig, t: int, init_model: str, ref_model: str, data_path: Path, out: Path) -> Config:
    """The ``imitalign train`` config of round ``t``."""
    spec = objectives.get(cfg.train.objective.name)
    fmt = "preference" if spec.kind == "pair" else "demonstration"
    raw: dict[str, Any] = {
        "run": {"output_dir": str(out), "seed": cfg.run.seed * 1000 + t, "name": f"{cfg.run.name or 'iterate'}-r{t}"},
        "model": {**cfg.train.model, "name_or_path": init_model},
        "data": {**data_section(cfg), "train": {"path": str(data_path), "format": fmt}},
    }
    if cfg.pairs.mode == OWN_SAMPLES:  # online IQLearn: the policy's own samples feed the TD term
        raw["data"]["policy_samples"] = {"path": str(policy_samples_path(data_path)), "format": "demonstration"}
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


def load_prompts(source: Any, tok: Any, data: dict[str, Any], max_new_tokens: int) -> Any:
    """A prompt file rendered as the policy is trained (the ``train.data`` rendering), leaving room for
    ``max_new_tokens`` (a :class:`imitalign.generate.kshot.PromptSet`)."""
    from imitalign.generate.kshot import load_prompt_set

    return load_prompt_set(
        source,
        tok,
        chat_template=data["chat_template"],
        system_prompt=data.get("system_prompt"),
        max_length=data["max_length"],
        max_prompt_length=data.get("max_prompt_length"),
        max_new_tokens=max_new_tokens,
    )


def _eval_prompt_set(cfg: IterateConfig, tok: Any, data: dict[str, Any]) -> Any:
    assert cfg.eval is not None
    return load_prompts(cfg.eval.prompts, tok, data, cfg.eval.max_new_tokens or cfg.generate.max_new_tokens)


def preflight(cfg: IterateConfig, say: Callable[[str], None]) -> Preflight:
    """Check everything that can be checked before sampling: the objective and its kind, a training config,
    the prompt file(s), the reward source(s) (built and probed)."""
    from imitalign.config import ModelConfig
    from imitalign.model.load import load_tokenizer

    spec = objectives.get(cfg.train.objective.name)
    objectives.build(cfg.train.objective.name, cfg.train.objective.options)
    want = _policy_kind(cfg)
    if spec.kind != want:
        if cfg.pairs.mode == OWN_SAMPLES:
            what, names = "pairs.mode own_samples (online IQLearn)", "iqlearn with options.alpha > 0"
        elif want == "token":
            what, names = "SFT on accepted samples (rejection.form sft)", "mle"
        else:
            what, names = "training on pairs", "dpo, ipo, dil_lsif, dil_bce, ..."
        raise ConfigError(
            f"train.objective {spec.name!r} is of kind {spec.kind!r}, but {what} needs a {want!r} objective ({names})"
        )
    if cfg.pairs.mode == OWN_SAMPLES:
        alpha = {**spec.defaults, **cfg.train.objective.options}.get("alpha", 0.0)
        if not (isinstance(alpha, int | float) and alpha > 0):
            raise ConfigError(
                f"pairs.mode own_samples feeds the policy's samples into the TD term of iqlearn, weighted by "
                f"train.objective.options.alpha, which is {alpha!r} here (objective {spec.name!r}); set alpha in "
                "(0, 1] (alpha = 0 ignores the samples: offline IQLearn, which imitalign train runs directly)"
            )
    train_config(cfg, 1, cfg.policy, cfg.policy, Path("pairs.jsonl"), Path(cfg.run.output_dir) / "check")
    if cfg.generate.enhancer is not None:
        k_e = round(cfg.generate.enhancer.fraction * cfg.generate.k)
        if not 1 <= k_e < cfg.generate.k:
            raise ConfigError(
                f"generate.enhancer.fraction {cfg.generate.enhancer.fraction} of K = {cfg.generate.k} gives "
                f"{k_e} enhancer samples per prompt; it must leave 1..K-1"
            )
    if cfg.offline is None:
        from imitalign.generate.kshot import resolve_backend

        try:
            resolve_backend(cfg.generate.backend, process_count())
        except ValueError as e:
            raise ConfigError(str(e)) from None
    tok = load_tokenizer(ModelConfig(name_or_path=cfg.policy))
    data = data_section(cfg)
    if cfg.offline is not None:
        return _preflight_offline(cfg, tok, data, say)
    assert cfg.prompts is not None
    prompt_set = load_prompts(cfg.prompts.source, tok, data, cfg.generate.max_new_tokens)
    reward = None if cfg.reward is None else load_reward(cfg.reward)  # None: a demonstration mode
    if reward is not None:
        _probe(reward, prompt_set.prompts[0])
    pf = Preflight(tok, len(prompt_set), reward, None)
    if cfg.eval is not None:
        pf.eval_prompts = _eval_prompt_set(cfg, tok, data)
        if len(pf.eval_prompts) < 2:
            say(f"WARNING: eval has {len(pf.eval_prompts)} usable prompt(s): no standard error can be given")
        if cfg.eval.reward is not None and cfg.eval.reward != cfg.reward:
            pf.eval_reward = load_reward(cfg.eval.reward)
            _probe(pf.eval_reward, pf.eval_prompts.prompts[0])
            pf.side_reward = reward
        else:
            pf.eval_reward = reward
        if cfg.eval.pairs:
            pf.eval_pairs = read_rows(cfg.eval.pairs)
    if cfg.pairs.mode in DEMO_MODES:
        demos(cfg)  # readable, not empty
    if cfg.reference == "previous" and cfg.pairs.mode != SELF_PLAY:  # (SPIN's own choice: no warning)
        say("WARNING: reference = previous iterate (π_{t-1}), not π_0 — the authors found this less stable")
    say(
        f"{len(prompt_set)} prompts; K = {cfg.generate.k}; reward {reward.name if reward else 'none'}; "
        f"{cfg.rounds} rounds of "
        f"{cfg.prompts.per_round} prompts"
    )
    return pf


def _preflight_offline(cfg: IterateConfig, tok: Any, data: dict[str, Any], say: Callable[[str], None]) -> Preflight:
    from imitalign.data.dataset import validate_data

    assert cfg.offline is not None and cfg.eval is not None
    validate_data(
        load_config(
            None, raw={"model": {"name_or_path": cfg.policy}, "data": {**data, "train": cfg.offline.model_dump()}}
        ).data,
        "preference",
    )
    reward = load_reward(cfg.eval.reward or cfg.reward)  # type: ignore[arg-type]
    pf = Preflight(tok, 0, reward, reward)
    pf.eval_prompts = _eval_prompt_set(cfg, tok, data)
    _probe(reward, pf.eval_prompts.prompts[0])
    if cfg.eval.pairs:
        pf.eval_pairs = read_rows(cfg.eval.pairs)
    say(f"offline: one round on {cfg.offline.path}")
    return pf


def demos(cfg: IterateConfig) -> dict[str, list[str]]:
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
