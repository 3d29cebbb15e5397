"""The quickstart: every offline method of the toolkit on the gym, compared on the gold reward.

    imitalign quickstart [--fast] [--seeds 3] [--out runs/quickstart]

1. build the gym (cached by its config's fingerprint);
2. SFT: pretrain a tiny Llama from scratch on the base process's demonstrations (MLE = forward KL);
3. sample two responses per preference prompt from the SFT model, label them by Bradley–Terry on r*;
4. from the SFT model, train DPO, IPO and DIL-LSIF/UKL/BCE on those pairs, and MLE and IQLearn on the
   expert demonstrations;
5. evaluate every model on held-out prompts (gold reward, win rates, KL to SFT, diversity, length, held-out
   likelihoods), print one table and write ``report.md`` with plots.

Steps 1–3 are :func:`imitalign.gym.base.prepare_base`. Every stage goes through the public pieces — ``imitalign
train`` configs (saved in each run folder), the sampler, the evaluator — and writes ordinary files. A stage whose
outputs exist for the same configuration is reused, so a rerun after an interruption redoes nothing finished.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imitalign.gym.base import FAST, FULL, Plan, gym_run_config, load_model, prepare_base
from imitalign.gym.build import gold_rewards, read_jsonl
from imitalign.loops.stages import train_or_reuse


@dataclass(frozen=True)
class Method:
    name: str
    objective: str
    data: str  # "prefs" or "expert"
    options: dict[str, Any] = field(default_factory=dict)
    lr: float | None = None
    train: dict[str, Any] = field(default_factory=dict)  # more train options, e.g. {"mixed_precision": "bf16"}
    folder: str | None = None  # run folder under the seed's work folder (default: the objective's name)


METHODS: tuple[Method, ...] = (
    Method("DPO", "dpo", "prefs", {"beta": 0.1}),
    Method("IPO", "ipo", "prefs", {"beta": 0.1}),
    Method("DIL-LSIF", "dil_lsif", "prefs", {}),
    Method("DIL-UKL", "dil_ukl", "prefs", {}),
    Method("DIL-BCE", "dil_bce", "prefs", {}),
    Method("MLE (expert demos)", "mle", "expert", {}),
    Method("IQLearn (expert demos)", "iqlearn", "expert", {"lam": 0.1}),
)


def _say(msg: str) -> None:
    print(f"[quickstart] {msg}", flush=True)


def evaluate_run(
    name: str, model_dir: Path, sft_model: Any, prompts: list[str], eval_pairs: list[dict], plan: Plan, seed: int,
    baseline: list[float] | None,
) -> dict[str, Any]:
    from imitalign.eval.evaluate import evaluate_model

    model, tok = load_model(model_dir)
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

    sft_model, _ = load_model(sft_dir)
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
            work / (m.folder or m.objective), {"name_or_path": str(sft_dir)}, data, m.objective, m.options,
            {"lr": lr, "epochs": epochs, "batch_size": plan.batch, "eval_every": 10, **m.train}, seed,
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
