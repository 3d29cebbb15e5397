"""The quickstart: every offline method of the toolkit on the gym, compared on the gold reward.

    imitalign quickstart [--fast] [--seeds 3] [--out runs/quickstart]

1. build the gym (cached by its config's fingerprint);
2. SFT: pretrain a tiny Llama from scratch on the base process's demonstrations (MLE = forward KL);
3. sample two responses per preference prompt from the SFT model, label them by Bradley–Terry on r*;
4. from the SFT model, train DPO, IPO and DIL-LSIF/UKL/BCE on those pairs, and MLE and IQLearn on the
   expert demonstrations;
5. evaluate every model on held-out prompts (gold reward, win rates, KL to SFT, diversity, length, held-out
   likelihoods), print one table and write ``report.md`` with plots.

Every stage goes through the public pieces — ``imitalign train`` configs (saved in each run folder), the
sampler, the evaluator — and writes ordinary files. A stage whose outputs exist for the same configuration
is reused, so a rerun after an interruption redoes nothing finished.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from imitalign.config import Config, load_config
from imitalign.gym.build import (
    GymConfig,
    build_gym,
    gold_rewards,
    gym_dir,
    make_preference_pairs,
    read_jsonl,
    write_jsonl,
)
from imitalign.gym.tokenizer import tiny_llama_config
from imitalign.loops.stages import train_or_reuse


@dataclass(frozen=True)
class Method:
    name: str
    objective: str
    data: str  # "prefs" or "expert"
    options: dict[str, Any] = field(default_factory=dict)
    lr: float | None = None


METHODS: tuple[Method, ...] = (
    Method("DPO", "dpo", "prefs", {"beta": 0.1}),
    Method("IPO", "ipo", "prefs", {"beta": 0.1}),
    Method("DIL-LSIF", "dil_lsif", "prefs", {}),
    Method("DIL-UKL", "dil_ukl", "prefs", {}),
    Method("DIL-BCE", "dil_bce", "prefs", {}),
    Method("MLE (expert demos)", "mle", "expert", {}),
    Method("IQLearn (expert demos)", "iqlearn", "expert", {"lam": 0.1}),
)


@dataclass(frozen=True)
class Plan:
    """Sizes and hyper-parameters of a quickstart; ``FULL`` (≤ 15 min on 2 cores) and ``FAST`` (CI)."""

    gym: GymConfig
    model: dict[str, Any]
    sft_epochs: float
    sft_lr: float
    sft_batch: int
    pref_lr: float
    pref_epochs: float
    demo_lr: float
    demo_epochs: float
    batch: int
    eval_n: int
    max_new_tokens: int = 32


FULL = Plan(
    gym=GymConfig(n_sft=20_000, n_expert=2_000, n_pref_prompts=2_000, n_eval_prompts=128),
    model=tiny_llama_config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4),
    sft_epochs=3,
    sft_lr=3e-3,
    sft_batch=64,
    pref_lr=1e-3,
    pref_epochs=2,
    demo_lr=1e-3,
    demo_epochs=2,
    batch=16,
    eval_n=4,
)
FAST = Plan(
    gym=GymConfig(n_sft=6_000, n_expert=600, n_pref_prompts=800, n_eval_prompts=64),
    model=tiny_llama_config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4),
    sft_epochs=2,
    sft_lr=3e-3,
    sft_batch=64,
    pref_lr=5e-4,
    pref_epochs=2,
    demo_lr=5e-4,
    demo_epochs=2,
    batch=16,
    eval_n=4,
)
# Tiny models run fastest on one intra-op thread (measured: sampling 4x faster than with 2 threads on a
# loaded 2-core machine); the quickstart pins it.
THREADS = 1


def _say(msg: str) -> None:
    print(f"[quickstart] {msg}", flush=True)


def gym_run_config(
    out: Path, model: dict[str, Any], data: dict[str, Any], objective: str, options: dict, train_kw: dict, seed: int
) -> Config:
    """The run config of one training stage on the gym (also used by the AfD and online loops): output in
    ``out``, plain-text rendering at ``max_length`` 96 unless ``data`` says otherwise, cosine schedule with
    10 % warm-up, gradient clipping 1.0, ``THREADS`` intra-op threads; ``train_kw`` overrides the train section."""
    raw = {
        "run": {"output_dir": str(out), "seed": seed},
        "model": model,
        "data": {"chat_template": "none", "max_length": 96, **data},
        "objective": {"name": objective, "options": options},
        "train": {"schedule": "cosine", "warmup_ratio": 0.1, "log_every": 10, "max_grad_norm": 1.0,
                  "num_threads": THREADS, **train_kw},
    }
    return load_config(None, raw=raw)


def _load(model_dir: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)


def sample_pairs(sft_dir: Path, prompts: list[str], out: Path, seed: int, plan: Plan, n: int = 2) -> Path:
    """Two SFT samples per prompt, labelled by Bradley–Terry on r* (the gym's phase 2)."""
    if out.exists():
        return out
    from imitalign.generate.sampler import encode_prompts, sample, sample_rows

    model, tok = _load(sft_dir)
    samples = sample(model, tok, encode_prompts(tok, prompts), n=n, seed=seed, max_new_tokens=plan.max_new_tokens,
                     batch_size=64, progress=True)
    rows = sample_rows(prompts, samples)
    write_jsonl(out.with_name(out.stem + "_samples.jsonl"), rows)
    pairs = make_preference_pairs(rows, seed=seed, bt_temperature=plan.gym.bt_temperature,
                                  label_noise=plan.gym.label_noise)
    write_jsonl(out, pairs)
    return out


def evaluate_run(
    name: str, model_dir: Path, sft_model: Any, prompts: list[str], eval_pairs: list[dict], plan: Plan, seed: int,
    baseline: list[float] | None,
) -> dict[str, Any]:
    from imitalign.eval.evaluate import evaluate_model

    model, tok = _load(model_dir)
    chosen = {p["prompt"]: p["chosen_gold"] for p in eval_pairs}
    chosen_scores = [chosen.get(p, math.nan) for p in prompts]
    res = evaluate_model(
        model, tok, prompts, reward_fn=gold_rewards, reference_model=sft_model, baseline_scores=baseline,
        chosen_scores=chosen_scores if all(not math.isnan(c) for c in chosen_scores) else None,
        heldout_pairs=eval_pairs, n=plan.eval_n, seed=seed + 1000, max_new_tokens=plan.max_new_tokens,
        batch_size=64,
    )
    res["name"] = name
    return res


@dataclass(frozen=True)
class GymBase:
    """What every gym experiment starts from: the gym files, the SFT model π_SFT (= π_0 of the online loops),
    preference pairs of SFT samples labelled by Bradley–Terry on r*, and held-out eval pairs."""

    files: Any  # GymFiles
    work: Path
    sft_dir: Path
    sft_summary: dict[str, Any]
    sft_seconds: float
    prefs: Path
    eval_pairs: Path


def prepare_base(root: Path, plan: Plan, seed: int) -> GymBase:
    """Build (or reuse) the gym, the SFT model and the offline pairs of ``seed`` under ``root``."""
    torch.set_num_threads(THREADS)
    gym_cfg = plan.gym.model_copy(update={"seed": 0})
    files = build_gym(gym_cfg, gym_dir(root / "gym", gym_cfg))
    _say(f"gym at {files.root} ({json.loads(files.manifest.read_text())['counts']})")
    work = root / f"seed{seed}"
    model_from_config = {"config": plan.model, "tokenizer": str(files.tokenizer)}

    t = time.perf_counter()
    sft_cfg = gym_run_config(
        work / "sft", model_from_config,
        {"train": {"path": str(files.sft), "format": "demonstration"}, "eval_fraction": 0.05},
        "mle", {}, {"lr": plan.sft_lr, "epochs": plan.sft_epochs, "batch_size": plan.sft_batch}, seed,
    )
    sft_summary = train_or_reuse(sft_cfg)
    sft_dir = Path(sft_cfg.run.output_dir) / "model"
    sft_seconds = time.perf_counter() - t
    pref_prompts = [r["prompt"] for r in read_jsonl(files.pref_prompts)]
    eval_prompts = [r["prompt"] for r in read_jsonl(files.eval_prompts)]
    prefs = sample_pairs(sft_dir, pref_prompts, work / "data" / "prefs.jsonl", seed, plan)
    eval_pairs_path = sample_pairs(sft_dir, eval_prompts, work / "data" / "eval_pairs.jsonl", seed + 500, plan)
    return GymBase(files, work, sft_dir, sft_summary, sft_seconds, prefs, eval_pairs_path)


def run_seed(root: Path, plan: Plan, seed: int, methods: tuple[Method, ...]) -> list[dict[str, Any]]:
    base = prepare_base(root, plan, seed)
    files, work, sft_dir, sft_summary = base.files, base.work, base.sft_dir, base.sft_summary
    prefs, eval_pairs_path = base.prefs, base.eval_pairs
    timings = {"SFT": base.sft_seconds}
    ppl = math.exp(sft_summary["eval"]["nll"])
    _say(f"SFT held-out perplexity {ppl:.2f} per token (uniform: {plan.model['vocab_size']})")

    eval_prompts = [r["prompt"] for r in read_jsonl(files.eval_prompts)]
    eval_pairs = read_jsonl(eval_pairs_path)
    pairs = read_jsonl(prefs)
    agree = statistics.fmean(p["chosen_gold"] >= p["rejected_gold"] for p in pairs)
    _say(f"{len(pairs)} preference pairs from SFT samples ({agree:.0%} agree with r*), {len(eval_pairs)} eval pairs")

    sft_model, _ = _load(sft_dir)
    rows = [evaluate_run("SFT", sft_dir, sft_model, eval_prompts, eval_pairs, plan, seed, None)]
    rows[0]["perplexity"] = ppl
    rows[0]["train_seconds"] = timings["SFT"]
    baseline = rows[0]["per_sample"]["score"]
    for m in methods:
        t = time.perf_counter()
        data = (
            {"train": {"path": str(prefs), "format": "preference"}, "eval": {"path": str(eval_pairs_path),
                                                                              "format": "preference"}}
            if m.data == "prefs"
            else {"train": {"path": str(files.expert), "format": "demonstration"}, "eval_fraction": 0.05}
        )
        lr = m.lr or (plan.pref_lr if m.data == "prefs" else plan.demo_lr)
        epochs = plan.pref_epochs if m.data == "prefs" else plan.demo_epochs
        cfg = gym_run_config(
            work / m.objective, {"name_or_path": str(sft_dir)}, data, m.objective, m.options,
            {"lr": lr, "epochs": epochs, "batch_size": plan.batch, "eval_every": 10}, seed,
        )
        summary = train_or_reuse(cfg)
        res = evaluate_run(m.name, Path(summary["model_dir"]), sft_model, eval_prompts, eval_pairs, plan, seed,
                           baseline)
        res["train_seconds"] = time.perf_counter() - t
        res["objective"] = m.objective
        res["run_dir"] = cfg.run.output_dir
        rows.append(res)
        _say(f"{m.name}: gold {res['gold_reward']['mean']:.3f} ± {res['gold_reward']['se']:.3f}, "
             f"win vs SFT {res['win_rate_vs_baseline']['mean']:.3f}")
    (work / "results.json").write_text(json.dumps(rows, indent=2))
    return rows


def run_quickstart(
    out: str | Path = "runs/quickstart", *, fast: bool = False, seeds: int = 1,
    methods: tuple[Method, ...] = METHODS, plan: Plan | None = None,
) -> Path:
    from imitalign.eval.report import write_report

    t0 = time.perf_counter()
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    name = "custom" if plan is not None else "fast" if fast else "full"
    plan = plan or (FAST if fast else FULL)
    per_seed = [run_seed(root, plan, seed, methods) for seed in range(seeds)]
    report = write_report(root, per_seed, wall_seconds=time.perf_counter() - t0, plan_name=name)
    return report
