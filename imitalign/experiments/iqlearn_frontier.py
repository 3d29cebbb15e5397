"""IQLearn's λ frontier on the gym, with the semi-online and online (own samples) arms:
``imitalign iqlearn gym-frontier``."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imitalign.data.jsonl import read_jsonl, write_jsonl
from imitalign.experiments.common import (
    PLAN,
    Base,
    GymPlan,
    as_mean_se,
    base,
    cached_eval,
    cell,
    evaluate,
    over_seeds,
    sampling,
    say,
    train_stage,
    write_demo_rows,
)
from imitalign.loops.afd import run_config
from imitalign.loops.stages import write_json


def sample_prompts(model: str, prompts_file: Path, n: int, seed: int, plan: GymPlan) -> list[dict[str, Any]]:
    """``n`` sample rows per prompt of ``prompts_file`` (any row format) from ``model``."""
    from imitalign.config import DataSource, ModelConfig
    from imitalign.generate.kshot import load_prompt_set
    from imitalign.loops.bon import draw
    from imitalign.model.load import load_tokenizer

    ps = load_prompt_set(
        DataSource(path=str(prompts_file)),
        load_tokenizer(ModelConfig(name_or_path=model)),
        chat_template="none",
        max_length=plan.max_length,
        max_new_tokens=plan.max_new_tokens,
    )
    return draw(model, ps.prompts, ps.prompt_ids, n, seed, sampling(plan))



def ms_per_step(run_dir: Path) -> float:
    """Wall milliseconds per optimiser step between the first and the last logged training step."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    pts = [(r["step"], r["time"]) for r in rows if "train/loss" in r and "time" in r]
    if len(pts) < 2:
        return math.nan
    (s0, t0), (s1, t1) = pts[0], pts[-1]
    return 1000.0 * (t1 - t0) / max(s1 - s0, 1)


def exp_iqlearn(
    root: str | Path,
    plan: GymPlan = PLAN,
    seeds: int = 1,
    lams: Sequence[float] = (0.0, 0.1, 0.3, 1.0),
    alphas: Sequence[float] = (0.2,),
    mle_temperatures: Sequence[float] = (1.25, 1.5),
) -> str:
    """IQLearn on the expert demonstrations from π_init: for each λ (λ = 0 runs objective ``mle``) and, at the
    second λ, each online α — semi-online (own samples: one π_init sample per demonstration prompt, drawn once) and
    online (:func:`online_iqlearn`: one sample per demonstration prompt re-drawn from the current policy before
    every epoch, through ``imitalign iterate`` with ``pairs.mode: own_samples``) — gold reward, Self-BLEU,
    distinct-1/2, entropy, ms per optimiser step, and the Spearman correlation of the recovered reward
    Σ_t log π + V(s_t) − γV(s_{t+1}) with gold on a pool of π_init samples of the held-out prompts. MLE sampled at
    higher temperatures (``mle_temperatures``) traces MLE's own reward/diversity trade-off to compare with."""

    variants: list[tuple[str, float, float, float, bool]] = [
        (f"λ={lam:g}" + (" (MLE)" if lam == 0 else ""), lam, 0.0, 1.0, False) for lam in lams
    ]
    lam_online = lams[1] if len(lams) > 1 else lams[0]
    for a in (a for a in alphas if a > 0):
        variants.append((f"λ={lam_online:g}, α={a:g} (semi-online: π_init samples)", lam_online, a, 1.0, False))
        variants.append((f"λ={lam_online:g}, α={a:g} (online: re-sampled every epoch)", lam_online, a, 1.0, True))
    variants += [(f"λ=0 (MLE), sampled at T={t:g}", 0.0, 0.0, t, False) for t in mle_temperatures]
    per: dict[str, list[dict[str, Any]]] = {}
    for seed in range(seeds):
        _iqlearn_seed(root, plan, seed, variants, per)
    keys = [
        ("gold", "gold r*"),
        ("self_bleu", "self-BLEU ↓"),
        ("distinct_2", "distinct-2 ↑"),
        ("entropy", "entropy"),
        ("length", "length"),
        ("ms_per_step", "ms/step"),
        ("rho_pooled", "ρ(r̂, r*) pooled"),
        ("rho_within", "ρ within prompt"),
    ]
    agg = {label: {k: over_seeds([r[k] for r in runs]) for k, _ in keys} for label, runs in per.items()}
    lines = [
        f"Seeds: {seeds}. IQLearn from π_init on {plan.gym.n_expert} expert demonstrations "
        f"({plan.sft.epochs:g} epochs, lr {plan.sft.lr:g}); ρ: Spearman of the recovered reward (γ = 1) with "
        "r* on 8 π_init samples of each held-out prompt (the same for every sampling temperature of a model).",
        "",
        "| variant | " + " | ".join(h for _, h in keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for label, vals in agg.items():
        lines.append(
            f"| {label} | "
            + " | ".join(cell(vals[k]) if k != "ms_per_step" else f"{vals[k][0]:.1f}" for k, _ in keys)
            + " |"
        )
    text = "\n".join(lines)
    out = Path(root)
    (out / "iqlearn_frontier.md").write_text(text + "\n")
    write_json(out / "iqlearn_frontier.json", {k: {kk: list(vv) for kk, vv in v.items()} for k, v in agg.items()})
    _plot_frontier(agg, out / "iqlearn_frontier.png")
    print(text)
    return text


def _iqlearn_seed(
    root: str | Path, plan: GymPlan, seed: int, variants: list[tuple[str, float, float, float, bool]],
    per: dict[str, list[dict[str, Any]]],
) -> None:
    """Seed ``seed``'s frontier rows, appended to ``per[label]``: π_init's own samples and the sample pool drawn
    once, then each variant (label, λ, α, sampling temperature, online) trained, evaluated and scored."""
    b = base(root, plan, seed)
    work = b.work / "iqlearn"
    demos = read_jsonl(b.files.expert)
    own_path = work / "own_samples_init.jsonl"
    if not own_path.is_file():  # the policy's own samples at the start: one π_init sample per demo prompt
        own = sample_prompts(b.init, b.files.expert, 1, seed + 31, plan)
        write_demo_rows(own_path, [r for r in own if r["response"].strip()])
    pool_path = work / "pool.jsonl"
    if not pool_path.is_file():  # 8 π_init samples per held-out prompt, with their gold reward
        from imitalign.gym.build import gold_rewards

        pool = sample_prompts(b.init, b.files.eval_prompts, 8, seed + 41, plan)
        for r, g in zip(pool, gold_rewards(pool), strict=True):
            r["gold"] = g
        write_jsonl(pool_path, pool)
    pool = read_jsonl(pool_path)
    for label, lam, alpha, temp, online in variants:
        if online:
            tag = f"lam{lam:g}_a{alpha:g}_online"
            model, run_dir = online_iqlearn(work / tag, b, plan, seed, lam, alpha)
            res = cached_eval(work / f"eval_{tag}.json", model, lambda m=model, b=b: evaluate(m, b, plan))
            per.setdefault(label, []).append(_frontier_row(res, run_dir, model, pool, plan, len(demos)))
            continue
        data: dict[str, Any] = {
            "train": {"path": str(b.files.expert), "format": "demonstration"},
            "eval_fraction": 0.05,
        }
        if alpha > 0:
            data["policy_samples"] = {"path": str(own_path), "format": "demonstration"}
        objective = "mle" if lam == 0 else "iqlearn"
        options = {} if lam == 0 else {"lam": lam, "alpha": alpha}
        tag = "mle" if lam == 0 else f"lam{lam:g}_a{alpha:g}"
        model = train_stage(work / tag, b.init, data, objective, plan.sft, seed, plan, options=options)
        suffix = "" if temp == 1.0 else f"_T{temp:g}"
        res = cached_eval(
            work / f"eval_{tag}{suffix}.json",
            model,
            lambda m=model, b=b, t=temp: evaluate(m, b, plan, temperature=t),
        )
        per.setdefault(label, []).append(_frontier_row(res, work / tag, model, pool, plan, len(demos)))

def online_iqlearn(out: Path, b: Base, plan: GymPlan, seed: int, lam: float, alpha: float) -> tuple[str, Path]:
    """Fully online IQLearn from π_init: ``plan.sft.epochs`` rounds of ``imitalign iterate`` (``pairs.mode:
    own_samples``), each sampling one response per demonstration prompt from the current policy and training one
    epoch of iqlearn(λ, α) on all demonstrations with those samples in the TD term (warm start; each round's
    learning-rate schedule starts again). Returns the final model and its last training run's folder."""
    from imitalign.loops.iterate import parse_iterate_config, run_iterate

    rounds = max(1, round(plan.sft.epochs))
    demos = str(b.files.expert)
    spec = plan.sft.model_copy(update={"epochs": plan.sft.epochs / rounds})
    data = {"train": {"path": demos, "format": "demonstration"}, "eval_fraction": 0.05}
    options = {"lam": lam, "alpha": alpha}
    # the train section the other arms get (run_config), with one epoch per round
    one_run = run_config(out, {"name_or_path": b.init}, data, "iqlearn", spec, seed, chat_template="none",
                         max_length=plan.max_length, options=options)
    cfg = parse_iterate_config(
        {
            "run": {"output_dir": str(out), "seed": seed},
            "policy": b.init,
            "rounds": rounds,
            "prompts": {"source": {"path": demos}, "per_round": len(read_jsonl(b.files.expert)), "fresh": False},
            "generate": {"k": 1, "max_new_tokens": plan.max_new_tokens, "batch_size": plan.sample_batch},
            "pairs": {"mode": "own_samples", "demos": {"path": demos}},
            "train": {
                "objective": {"name": "iqlearn", "options": options},
                "train": one_run.train.model_dump(mode="json", exclude_defaults=True),
                "data": {"chat_template": "none", "max_length": plan.max_length, "eval_fraction": 0.05},
            },
        }
    )
    res = run_iterate(cfg, say=say)
    last = Path(res.root) / f"round_{rounds}" / "train"
    return str(last / "model"), last


def _frontier_row(
    res: dict[str, Any], run_dir: Path, model: str, pool: list[dict[str, Any]], plan: GymPlan, n_demos: int
) -> dict[str, Any]:
    """One model's cells of the IQLearn frontier table: its evaluation, training cost per step, and the rank
    correlation of its recovered reward with gold on the pool of π_init samples."""
    from imitalign.reward import load_reward
    from imitalign.reward.iq_reward import spearman, within_group_spearman

    src = load_reward({"kind": "iqlearn", "path": model, "chat_template": "none", "max_length": plan.max_length})
    r_hat = src.score([{"prompt": r["prompt"], "response": r["response"]} for r in pool])
    gold = [r["gold"] for r in pool]
    rho_w = within_group_spearman(r_hat, gold, [r["prompt_index"] for r in pool])
    return {
        "gold": as_mean_se(res["gold_reward"]),
        "self_bleu": as_mean_se(res["self_bleu"]),
        "distinct_1": (res["distinct_1"], math.nan),
        "distinct_2": (res["distinct_2"], math.nan),
        "entropy": (res["token_entropy"], math.nan),
        "length": as_mean_se(res["length"]),
        "ms_per_step": (ms_per_step(run_dir), math.nan),
        "rho_pooled": (spearman(r_hat, gold), math.nan),
        "rho_within": (rho_w[0], rho_w[1]),
        "demos": n_demos,
    }


def _plot_frontier(agg: dict[str, dict[str, tuple[float, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    for label, v in agg.items():
        for ax, key in ((axes[0], "self_bleu"), (axes[1], "distinct_2")):
            (x, xe), (y, ye) = v[key], v["gold"]
            ax.errorbar(x, y, xerr=0 if math.isnan(xe) else xe, yerr=0 if math.isnan(ye) else ye, fmt="o", capsize=3)
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    axes[0].set_xlabel("Self-BLEU among a prompt's samples (lower = more diverse)")
    axes[1].set_xlabel("distinct-2 (higher = more diverse)")
    for ax in axes[:2]:
        ax.set_ylabel("gold reward r*")
        ax.grid(alpha=0.3)
    labels = list(agg)
    axes[2].barh(labels, [agg[k]["ms_per_step"][0] for k in labels])
    axes[2].set_xlabel("training ms per optimiser step")
    axes[2].invert_yaxis()
    fig.suptitle("IQLearn λ sweep on the gym (λ = 0: MLE)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
