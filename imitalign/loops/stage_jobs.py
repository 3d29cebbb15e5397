"""The stages of ``imitalign iterate`` that can run as their own launched job — generation, scoring, training —
one body each, run the same way in the orchestrator's process (no ``launch`` entry) and in a job:

    accelerate launch --num_processes 8 -m imitalign.cli iterate-stage RUN/iterate_config.yaml \\
        --stage generate --round 2 --model RUN/round_1/train/model

A job reads the run's saved config (``iterate_config.yaml``, written by the orchestrator, without its ``launch``
section) and the round's files, and writes the stage's files; every body is correct under any number of
processes (generation and scoring sharded, training data-parallel or sharded by the accelerate config).

    generate   round_t/prompts.jsonl          → samples.jsonl, generation.json
    score      round_t/samples.jsonl          → scored.jsonl, scoring.json
    train      round_t/train_data.jsonl (+ the init and reference models) → round_t/train/ (summary.json, model/)
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from imitalign.loops.launch import fault_after_first_checkpoint, fault_point
from imitalign.loops.scoring import check_samples, read_rows, score_sharded, write_rows
from imitalign.loops.stages import train_or_reuse, write_json
from imitalign.processes import is_main
from imitalign.reward.base import RewardSource, load_reward

CONFIG_NAME = "iterate_config.yaml"  # the run's config, as the orchestrator saved it


def stage_command(config: Path, stage: str, t: int, **paths: str | None) -> list[str]:
    """The ``imitalign`` arguments of a stage job (``paths``: model, init, reference, data)."""
    cmd = ["iterate-stage", str(config), "--stage", stage, "--round", str(t)]
    for name, value in paths.items():
        if value is not None:
            cmd += [f"--{name}", str(value)]
    return cmd


# ------------------------------------------------------------------------------------------ generate
def generate_stage(cfg: Any, rd: Path, t: int, model: str, pi0: str, say: Callable[[str], None]) -> None:
    """``samples.jsonl`` (every process samples its shard) and, on the main process, ``generation.json``."""
    from imitalign.loops.iterate_stages import sample_stage

    info = sample_stage(cfg, rd, t, model, pi0)
    if is_main():
        write_json(rd / "generation.json", info["generation"])
        say(
            f"round {t}: sampled {info['generation']['samples']} responses from π_{t - 1} "
            f"({info['generation']['tokens_per_s']:.0f} tokens/s)"
        )


# ------------------------------------------------------------------------------------------ score
def gold_column_source(cfg: Any, eval_reward: RewardSource | None) -> RewardSource | None:
    """The source of the ``gold`` column logged next to the samples when the loop's reward is not the gym's gold
    reward but the evaluation's is (None otherwise: no column, or the loop's own scores)."""
    loop_gold = cfg.reward is not None and cfg.reward.kind == "gold"
    eval_gold = cfg.eval is not None and cfg.eval.reward is not None and cfg.eval.reward.kind == "gold"
    return eval_reward if eval_gold and not loop_gold else None


def score_sources(cfg: Any) -> tuple[RewardSource | None, RewardSource | None]:
    """A job's reward sources: the loop's reward (None for demonstration pairings) and the gold-column source."""
    reward = None if cfg.reward is None else load_reward(cfg.reward)
    eval_reward = None
    if cfg.eval is not None and cfg.eval.reward is not None:
        eval_reward = reward if cfg.eval.reward == cfg.reward else load_reward(cfg.eval.reward)
    return reward, gold_column_source(cfg, eval_reward)


def score_stage(cfg: Any, reward: RewardSource | None, gold_source: RewardSource | None, rd: Path, t: int) -> None:
    """``scored.jsonl`` (the samples with ``score`` and, on the gym, ``gold``) and ``scoring.json``; the rows are
    scored over all processes (:func:`~imitalign.loops.scoring.score_sharded`), the main process writes."""
    rows = read_rows(rd / "samples.jsonl")
    check_samples(rows, cfg.generate.k, str(rd / "samples.jsonl"))
    t0 = time.perf_counter()
    fault = lambda: fault_point("score", t)  # noqa: E731
    scores = None
    if reward is not None:
        scores = score_sharded(reward, rows, batch_size=cfg.reward.batch_size * 8, after_shard=fault)
    seconds = time.perf_counter() - t0
    gold = None if gold_source is None else score_sharded(gold_source, rows)
    loop_gold = cfg.reward is not None and cfg.reward.kind == "gold"
    if not is_main():
        return
    out_rows = []
    for i, row in enumerate(rows):
        if scores is not None:
            row = {**row, "score": scores[i]}
        if gold is not None:
            row["gold"] = gold[i]
        elif loop_gold:
            row["gold"] = scores[i]  # type: ignore[index]
        out_rows.append(row)
    write_rows(rd / "scored.jsonl", out_rows)
    write_json(
        rd / "scoring.json",
        {
            "seconds": seconds,
            "rows": len(rows),
            "reward": None if reward is None else reward.name,
            "mean_score": None if scores is None else statistics.fmean(scores),
        },
    )


# ------------------------------------------------------------------------------------------ train
def train_stage_job(
    cfg: Any, rd: Path, t: int, init: str, reference: str, data: str, say: Callable[[str], None]
) -> dict[str, Any]:
    """The round's training run (the config of :func:`imitalign.loops.iterate.train_config`), reused when finished
    and resumed from its newest checkpoint of the same config when a job was killed half-way."""
    from imitalign.loops.iterate_preflight import train_config

    tcfg = train_config(cfg, t, init, reference, Path(data), rd / "train")
    fault_after_first_checkpoint(t)
    return train_or_reuse(tcfg, say=say, quiet=not is_main(), resume=True)


# ------------------------------------------------------------------------------------------ the job
def run_stage(
    config: str | Path, stage: str, t: int, *, model: str | None = None, init: str | None = None,
    reference: str | None = None, data: str | None = None,
) -> None:
    """A stage job's body (``imitalign iterate-stage``): the stage of round ``t`` of the run whose saved config is
    ``config``, in the processes of this job."""
    from imitalign.config import ConfigError
    from imitalign.loops.iterate_config import parse_iterate_config

    cfg = parse_iterate_config(yaml.safe_load(Path(config).read_text()), str(config))
    rd = Path(cfg.run.output_dir) / f"round_{t}"
    say = (lambda m: print(f"[iterate-stage] {m}", flush=True)) if is_main() else (lambda m: None)

    def need(name: str, value: str | None) -> str:
        if value is None:
            raise ConfigError(f"iterate-stage --stage {stage} needs --{name}")
        return value

    if stage == "generate":
        generate_stage(cfg, rd, t, need("model", model), cfg.policy, say)
    elif stage == "score":
        reward, gold = score_sources(cfg)
        score_stage(cfg, reward, gold, rd, t)
    elif stage == "train":
        paths = need("init", init), need("reference", reference), need("data", data)
        summary = train_stage_job(cfg, rd, t, *paths, say)
        say(f"round {t}: trained {summary['steps']} steps → {summary['model_dir']}")
    else:
        raise ConfigError(f"iterate-stage: unknown stage {stage!r} (generate, score, train)")
