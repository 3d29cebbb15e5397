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

This module holds the loop (preflight, stages, rounds); the config models and their reading are in
:mod:`imitalign.loops.iterate_config`, the tables and report in :mod:`imitalign.loops.iterate_report` (their
public names are importable from here too).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from imitalign import objectives
from imitalign.config import Config, ConfigError, apply_overrides, load_config
from imitalign.loops.iterate_config import (
    EnhancerConfig,
    EvalConfig,
    GenerateConfig,
    GymSetup,
    IterateConfig,
    PairsConfig,
    PolicyTrainConfig,
    PromptsConfig,
    RejectionConfig,
    parse_iterate_config,
    prepare_gym,
    read_iterate_config,
    resolve_config,
)
from imitalign.loops.iterate_report import (
    TABLE_COLUMNS,
    TIMING_COLUMNS,
    collect_rows,
    format_mean_se,
    plot_rounds,
    round_table,
    summarize_runs,
    write_iterate_report,
)
from imitalign.loops.launch import fault_point, run_stage_job
from imitalign.loops.pairs import (
    DEMO_MODES,
    OWN_SAMPLES,
    SELF_PLAY,
    demo_lookup,
    make_pairs,
    own_sample_data,
    self_play_pairs,
)
from imitalign.loops.rejection import accept
from imitalign.loops.scoring import read_rows, write_rows
from imitalign.loops.stage_jobs import CONFIG_NAME, generate_stage, gold_column_source, score_stage, stage_command
from imitalign.loops.stages import model_fingerprint, read_json, seal_stage, stage_todo, train_or_reuse, write_json
from imitalign.manifest import MODEL_MANIFEST
from imitalign.processes import is_main, on_main, process_count
from imitalign.reward.base import RewardError, RewardSource, load_reward, score_rows

log = logging.getLogger(__name__)

__all__ = [  # the config models and the report live in iterate_config.py / iterate_report.py; importable here
    "TABLE_COLUMNS",
    "TIMING_COLUMNS",
    "EnhancerConfig",
    "EvalConfig",
    "GenerateConfig",
    "GymSetup",
    "Interrupted",
    "IterateConfig",
    "IterateResult",
    "LoopError",
    "PairsConfig",
    "PolicyTrainConfig",
    "Preflight",
    "PromptsConfig",
    "RejectionConfig",
    "collect_rows",
    "parse_iterate_config",
    "plot_rounds",
    "preflight",
    "prepare_gym",
    "read_iterate_config",
    "resolve_config",
    "iterate",
    "round_table",
    "run_iterate",
    "summarize_runs",
    "train_config",
    "write_iterate_report",
]


class LoopError(ValueError):
    """A round cannot go on (no pairs, nothing accepted); the message says which round and why."""


# ------------------------------------------------------------------------------------------ the loop
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


def _data_section(cfg: IterateConfig) -> dict[str, Any]:
    data = {"chat_template": "auto", "max_length": 1024, **cfg.train.data}
    return data


def _policy_kind(cfg: IterateConfig) -> str:
    sft = cfg.rejection is not None and cfg.rejection.form == "sft"
    return "token" if sft or cfg.pairs.mode == OWN_SAMPLES else "pair"


def _policy_samples_path(data_path: Path) -> Path:
    """The own samples that go with a round's training file (``pairs.mode: own_samples``)."""
    return data_path.with_name(data_path.name.replace("train_data", "policy_samples"))


def train_config(cfg: IterateConfig, t: int, init_model: str, ref_model: str, data_path: Path, out: Path) -> Config:
    """The ``imitalign train`` config of round ``t``."""
    spec = objectives.get(cfg.train.objective.name)
    fmt = "preference" if spec.kind == "pair" else "demonstration"
    raw: dict[str, Any] = {
        "run": {"output_dir": str(out), "seed": cfg.run.seed * 1000 + t, "name": f"{cfg.run.name or 'iterate'}-r{t}"},
        "model": {**cfg.train.model, "name_or_path": init_model},
        "data": {**_data_section(cfg), "train": {"path": str(data_path), "format": fmt}},
    }
    if cfg.pairs.mode == OWN_SAMPLES:  # online IQLearn: the policy's own samples feed the TD term
        raw["data"]["policy_samples"] = {"path": str(_policy_samples_path(data_path)), "format": "demonstration"}
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


def _prompt_set(source: Any, tok: Any, data: dict[str, Any], max_new_tokens: int) -> Any:
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
    return _prompt_set(cfg.eval.prompts, tok, data, cfg.eval.max_new_tokens or cfg.generate.max_new_tokens)


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
    data = _data_section(cfg)
    if cfg.offline is not None:
        return _preflight_offline(cfg, tok, data, say)
    assert cfg.prompts is not None
    prompt_set = _prompt_set(cfg.prompts.source, tok, data, cfg.generate.max_new_tokens)
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
        _demos(cfg)  # readable, not empty
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
        "tensor_parallel_size": g.tensor_parallel_size,
        "after_shard": lambda: fault_point("generate", t),
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
    if not is_main():  # the main process merges the two files
        return {}
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
    elif cfg.pairs.mode == OWN_SAMPLES:  # online IQLearn: demonstrations + the policy's own samples (TD term)
        demo_rows, own_rows, ost = own_sample_data(rows, _demos(cfg))
        info["own_samples"] = ost
        if not demo_rows or not own_rows:
            raise LoopError(f"round {t}: nothing to train on ({ost}); check that pairs.demos has these prompts")
        write_rows(_policy_samples_path(rd / "train_data.jsonl"), own_rows)
        info["train_examples"] = len(demo_rows)
        return write_rows(rd / "train_data.jsonl", demo_rows), info
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
        return parse_iterate_config(saved).model_dump(mode="json", exclude={"launch"}) == dumped
    except ConfigError:
        return False


def _eval_stage(
    cfg: IterateConfig, pf: Preflight, model_dir: str, pi0: Any, baseline: list[float] | None, rd: Path
) -> None:
    t0 = time.perf_counter()
    res = _evaluate(cfg, pf, model_dir, pi0, baseline)
    res["seconds"] = time.perf_counter() - t0
    write_json(rd / "eval.json", res)


def _offline_stage(cfg: IterateConfig, rd: Path) -> None:
    """The offline baseline's training file: the fixed preference file's rows, copied as they are."""
    from imitalign.data.sources import iter_rows

    assert cfg.offline is not None
    rows = [row for _, row in iter_rows(cfg.offline.path, cfg.offline.split, cfg.offline.limit)]
    write_rows(rd / "train_data.jsonl", rows)
    write_json(rd / "selection.json", {"offline": cfg.offline.path, "train_examples": len(rows)})


def _score_stage(cfg: IterateConfig, pf: Preflight, rd: Path, t: int) -> None:
    """``scored.jsonl`` and ``scoring.json`` (:func:`imitalign.loops.stage_jobs.score_stage`; every process
    scores its shard, the main process writes)."""
    score_stage(cfg, pf.reward, gold_column_source(cfg, pf.eval_reward), rd, t)


def _prompts_stage(cfg: IterateConfig, pf: Preflight, rd: Path, t: int, prompt_set: Any) -> Any:
    """``prompts.jsonl``: the round's slice of the prompt set (loaded once, returned for the next rounds)."""
    from imitalign.generate.kshot import RESERVED, load_prompt_set

    assert cfg.prompts is not None
    if prompt_set is None:
        data = _data_section(cfg)
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
    return prompt_set


def iterate(
    config: str | Path | dict[str, Any], overrides: list[str] | None = None, *, quiet: bool = True
) -> IterateResult:
    """Run (or resume) the loop of a YAML config file (or its dict), with ``--set``-style ``overrides``: what
    ``imitalign iterate CONFIG`` does (a ``gym`` section builds its gym pieces first)."""
    if isinstance(config, dict):
        raw, source = apply_overrides(dict(config), overrides or []), "<dict>"
    else:
        raw, source = read_iterate_config(config, overrides or []), str(config)
    return run_iterate(resolve_config(raw, source), quiet=quiet)


def run_iterate(
    cfg: IterateConfig,
    *,
    on_stage: Callable[[int, str], None] | None = None,
    say: Callable[[str], None] | None = None,
    quiet: bool = True,
) -> IterateResult:
    """Run (or resume) the loop of ``cfg`` (module docstring). ``on_stage(round, stage)`` is called after each
    stage this call executes (raise :class:`Interrupted` in it to stop).

    Under ``accelerate launch`` every process runs this function: the main process decides which stages are
    finished and writes every file (prompts, scores, pairs, evaluations, report) while the others wait; sampling
    is sharded over the processes (exactly K per prompt) and training is data-parallel through the one loop."""
    root = Path(cfg.run.output_dir)
    main = is_main()
    _say = say or (lambda m: print(f"[iterate] {m}", flush=True))
    say = _say if main else (lambda m: None)
    dumped = cfg.model_dump(mode="json", exclude={"launch"})  # (how stages are launched is not what they compute)
    if cfg.launch.any() and process_count() > 1:
        raise ConfigError(
            "launch: runs stages as their own jobs from one orchestrating process; run imitalign iterate itself "
            "without accelerate launch"
        )
    _check_same_run(root, dumped)
    pf = preflight(cfg, say)
    on_main(lambda: _save_config(root, dumped))
    run = _Run(cfg, pf, root, say, quiet, main, on_stage)
    pi0 = cfg.policy
    run.pi0_fp = on_main(lambda: model_fingerprint(pi0) if Path(pi0).is_dir() else None)  # (main process only)
    if cfg.eval is not None and main and not cfg.launch.any():  # (launched stages need the GPUs: loaded per eval)
        run.pi0_model = _load_causal(pi0)

    # round 0: π_0 itself
    r0 = root / "round_0"
    baseline = None
    if cfg.eval is not None:
        if run.todo(r0, 0, "eval", [r0 / "eval.json"]):
            on_main(lambda: run.evaluate(pi0, None, r0))
            run.done(0, "eval")
        baseline = read_json(r0 / "eval.json")["per_sample"]["score"]

    prompt_set = None
    model = pi0
    for t in range(1, cfg.rounds + 1):
        rd = root / f"round_{t}"
        on_main(lambda rd=rd: rd.mkdir(parents=True, exist_ok=True))
        prompt_set = _data_stages(run, rd, t, model, prompt_set)
        model = _train_stage(run, rd, t, model)
        if cfg.eval is not None and run.todo(rd, t, "eval", [rd / "eval.json"], run.model_input(model)):
            on_main(lambda rd=rd, model=model: run.evaluate(model, baseline, rd))
            run.done(t, "eval")
        if cfg.eval is not None:
            g = read_json(rd / "eval.json")["gold_reward"]
            say(f"round {t}: eval reward {format_mean_se(g, 4)}")
    rows = collect_rows(root, cfg.rounds)
    table = round_table(rows)
    on_main(lambda: write_iterate_report(root, cfg, rows, table))
    say("\n" + table)
    return IterateResult(root, rows, table, root / "report.md", run.ran)


@dataclass
class _Run:
    """What the stages of one :func:`run_iterate` call share; ``done`` records a stage this call executed."""

    cfg: IterateConfig
    pf: Preflight
    root: Path
    say: Callable[[str], None]
    quiet: bool
    main: bool
    on_stage: Callable[[int, str], None] | None
    ran: list[tuple[int, str]] = field(default_factory=list)
    pi0_fp: str | None = None  # π_0's weights fingerprint (main process only)
    pi0_model: Any = None  # π_0 loaded for the KL of the evaluations (main process, with an eval section)

    pending: dict[tuple[int, str], tuple] = field(default_factory=dict)  # stages to seal when done

    def todo(
        self, rd: Path, t: int, stage: str, outputs: list[Path], inputs: Sequence[Path] = (),
        optional: Sequence[Path] = (),
    ) -> bool:
        """Whether stage ``stage`` of round ``t`` still has to run: its manifest is missing or does not match its
        files and ``inputs`` (the run says so when files were there); ``done`` seals it (``outputs``, those of
        ``optional`` that exist, ``inputs``)."""
        if not stage_todo(rd, stage, inputs, self.say, outputs):
            return False
        self.pending[(t, stage)] = (rd, outputs, inputs, optional)
        return True

    def model_input(self, model: str) -> list[Path]:
        """A trained model as a stage input: its folder's manifest (π_0, given by the user, is not recorded)."""
        return [] if model == self.cfg.policy else [Path(model) / MODEL_MANIFEST]

    def done(self, t: int, stage: str) -> None:
        if (t, stage) in self.pending:
            rd, outputs, inputs, optional = self.pending.pop((t, stage))
            seal_stage(rd, stage, outputs, inputs, optional=optional)
        self.ran.append((t, stage))
        if self.on_stage is not None:
            self.on_stage(t, stage)

    def evaluate(self, model_dir: str, baseline: list[float] | None, rd: Path) -> None:
        """``eval.json`` of ``model_dir``; π_0 is the one kept loaded, or (stages launched as jobs, which need the
        GPUs in between) loaded for this evaluation only."""
        pi0 = self.pi0_model if self.pi0_model is not None else _load_causal(self.cfg.policy)
        _eval_stage(self.cfg, self.pf, model_dir, pi0, baseline, rd)

    def job(self, stage: str, t: int, **paths: str | None) -> bool:
        """Run ``stage`` of round ``t`` as its own launched job when the config's ``launch`` names it."""
        spec = self.cfg.launch.of(stage)
        if spec is None:
            return False
        run_stage_job(spec, stage, t, stage_command(self.root / CONFIG_NAME, stage, t, **paths), self.say)
        return True


def _check_same_run(root: Path, dumped: dict[str, Any]) -> None:
    saved = root / CONFIG_NAME
    if saved.exists() and not _same_run(yaml.safe_load(saved.read_text()), dumped):
        raise ConfigError(
            f"{root} holds a run of a different configuration ({saved}); use a new run.output_dir, or delete it"
        )


def _save_config(root: Path, dumped: dict[str, Any]) -> None:
    saved = root / CONFIG_NAME
    root.mkdir(parents=True, exist_ok=True)
    tmp = saved.with_name(saved.name + ".tmp")
    tmp.write_text(yaml.safe_dump(dumped, sort_keys=False))
    tmp.replace(saved)


def _data_stages(run: _Run, rd: Path, t: int, model: str, prompt_set: Any) -> Any:
    """Round ``t``'s training data: the offline baseline's, or prompts → samples of π_{t-1} → scores; then the
    pairs (or accepted samples). Returns the prompt set (loaded once, reused by later rounds)."""
    cfg, pf, say = run.cfg, run.pf, run.say
    selected = [rd / "train_data.jsonl", rd / "selection.json"]
    if cfg.offline is not None and run.todo(rd, t, "pairs", selected):  # the offline baseline
        on_main(lambda: _offline_stage(cfg, rd))
        run.done(t, "pairs")
    if cfg.offline is None:
        if run.todo(rd, t, "prompts", [rd / "prompts.jsonl"]):
            prompt_set = on_main(lambda ps=prompt_set: _prompts_stage(cfg, pf, rd, t, ps))
            run.done(t, "prompts")
        samples = [rd / "samples.jsonl", rd / "generation.json"]
        if run.todo(rd, t, "samples", samples, [rd / "prompts.jsonl", *run.model_input(model)]):  # every process
            # (of the job) samples its shard of the prompts
            if not run.job("generate", t, model=model):
                generate_stage(cfg, rd, t, model, cfg.policy, say)
            run.done(t, "samples")
        if run.todo(rd, t, "scored", [rd / "scored.jsonl", rd / "scoring.json"], [rd / "samples.jsonl"]):
            # every process (of the job) scores its shard of the samples
            if not run.job("score", t):
                _score_stage(cfg, pf, rd, t)
            run.done(t, "scored")
    optional = [rd / "accepted.jsonl", rd / "policy_samples.jsonl"]
    if cfg.offline is None and run.todo(rd, t, "pairs", selected, [rd / "scored.jsonl"], optional):  # or accepted

        def select() -> None:
            _, info = _select_stage(cfg, rd, t, read_rows(rd / "scored.jsonl"))
            write_json(rd / "selection.json", info)
            say(f"round {t}: {info.get('pairs', info.get('own_samples', info.get('rejection')))}")

        on_main(select)
        run.done(t, "pairs")
    return prompt_set


def _train_stage(run: _Run, rd: Path, t: int, model: str) -> str:
    """Round ``t``'s training (warm start from π_{t-1}, or from π_0 on the union of all rounds' data); returns
    π_t's model folder."""
    cfg, pi0 = run.cfg, run.cfg.policy
    if cfg.start == "retrain_union":
        data_path = rd / "union_train_data.jsonl"
        own = cfg.pairs.mode == OWN_SAMPLES

        def union() -> None:
            for name in ("train_data.jsonl", "policy_samples.jsonl") if own else ("train_data.jsonl",):
                # (rewritten every time: a round's file redone is in the union too; same rows, same file)
                rows = [row for s in range(1, t + 1) for row in read_rows(run.root / f"round_{s}" / name)]
                write_rows(rd / f"union_{name}", rows)

        on_main(union)
        init = pi0
    else:
        data_path, init = rd / "train_data.jsonl", model
    ref = pi0 if cfg.reference == "initial" else model
    tcfg = train_config(cfg, t, init, ref, data_path, rd / "train")
    names = ("train_data.jsonl", "policy_samples.jsonl") if cfg.pairs.mode == OWN_SAMPLES else ("train_data.jsonl",)
    rounds = range(1, t + 1) if cfg.start == "retrain_union" else (t,)
    inputs = [run.root / f"round_{s}" / n for s in rounds for n in names]
    inputs += run.model_input(init) + run.model_input(ref)
    if not run.todo(rd, t, "train", [rd / "training.json", rd / "train" / "model"], inputs):
        return train_or_reuse(tcfg, say=run.say, quiet=run.quiet)["model_dir"]  # reuses the finished run
    t0 = time.perf_counter()
    if run.job("train", t, init=init, reference=ref, data=str(data_path)):
        summary = read_json(Path(tcfg.run.output_dir) / "summary.json")
    else:
        summary = train_or_reuse(tcfg, say=run.say, quiet=run.quiet or not run.main)
    seconds = time.perf_counter() - t0

    def trained() -> None:
        record = {
            "seconds": seconds,
            "init": init,
            "reference": ref,
            "reference_fingerprint": model_fingerprint(ref) if Path(ref).is_dir() else None,
            "pi0_fingerprint": run.pi0_fp,
            "steps": summary["steps"],
            "train": summary.get("train", {}),
            "eval": summary.get("eval", {}),
        }
        write_json(rd / "training.json", record)

    on_main(trained)
    run.done(t, "train")
    return summary["model_dir"]
