"""Comparison tables and plots of evaluated runs: ``report.md`` + PNGs in a run folder.

Rows are ``evaluate_model`` results (one per method, per seed). With several seeds a metric's cell is the
mean over seeds ± the standard error over seeds (seeds are the independent units); with one seed it is
the evaluation's own mean ± standard error over prompts.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

COLUMNS: tuple[tuple[str, str], ...] = (
    ("gold_reward", "gold r*"),
    ("win_rate_vs_baseline", "win vs SFT"),
    ("win_rate_vs_chosen", "win vs chosen"),
    ("kl_to_reference", "KL(π‖SFT)"),
    ("distinct_2", "distinct-2"),
    ("self_bleu", "self-BLEU"),
    ("token_entropy", "entropy"),
    ("length", "length"),
    ("heldout_logp_chosen", "log π(y_w)"),
    ("heldout_logp_rejected", "log π(y_l)"),
)


def _value(row: dict[str, Any], key: str) -> tuple[float, float] | None:
    v = row.get(key)
    if v is None:
        return None
    if isinstance(v, dict):
        return float(v["mean"]), float(v.get("se", math.nan))
    return float(v), math.nan


def aggregate(per_seed: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per method name: ``{key: (mean, se)}`` over seeds (or the single seed's own se)."""
    names = list(dict.fromkeys(r["name"] for rows in per_seed for r in rows))
    out = []
    for name in names:
        runs = [r for rows in per_seed for r in rows if r["name"] == name]
        agg: dict[str, Any] = {"name": name, "seeds": len(runs)}
        for key, _ in COLUMNS:
            vals = [v for v in (_value(r, key) for r in runs) if v is not None]
            if not vals:
                continue
            if len(vals) == 1:
                agg[key] = vals[0]
            else:
                means = [m for m, _ in vals]
                agg[key] = (statistics.fmean(means), statistics.stdev(means) / math.sqrt(len(means)))
        secs = [r["train_seconds"] for r in runs if "train_seconds" in r]
        if secs:
            agg["train_seconds"] = statistics.fmean(secs)
        ppl = [r["perplexity"] for r in runs if "perplexity" in r]
        if ppl:
            agg["perplexity"] = statistics.fmean(ppl)
        out.append(agg)
    return out


def _cell(v: tuple[float, float] | None) -> str:
    if v is None:
        return "–"
    m, se = (0.0 if abs(x) < 5e-4 else x for x in v)  # no "-0.000"
    return f"{m:.3f}" if math.isnan(se) else f"{m:.3f} ± {se:.3f}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    keys = [k for k, _ in COLUMNS if any(k in r for r in rows)]
    heads = ["method"] + [dict(COLUMNS)[k] for k in keys] + ["train s"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in rows:
        cells = [r["name"]] + [_cell(r.get(k)) for k in keys] + [f"{r.get('train_seconds', math.nan):.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_all(out: Path, rows: list[dict[str, Any]], first_seed: list[dict[str, Any]]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    # 1. gold reward against KL to the SFT model
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for r in rows:
        if "gold_reward" not in r:
            continue
        kl = r.get("kl_to_reference", (0.0, 0.0))
        (y, ye), (x, xe) = r["gold_reward"], kl
        ax.errorbar(x, y, xerr=0 if math.isnan(xe) else xe, yerr=0 if math.isnan(ye) else ye, fmt="o", capsize=3)
        ax.annotate(r["name"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("KL(π ‖ π_SFT) per response (nats, from samples)")
    ax.set_ylabel("gold reward r* (mean ± se)")
    ax.set_title("Gold reward vs KL to the SFT model")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "gold_vs_kl.png", dpi=120)
    plt.close(fig)
    made.append("gold_vs_kl.png")

    # 2. reward and diversity side by side
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    names = [r["name"] for r in rows]
    gold = [r.get("gold_reward", (math.nan, math.nan)) for r in rows]
    axes[0].barh(names, [g[0] for g in gold], xerr=[0 if math.isnan(g[1]) else g[1] for g in gold], capsize=3)
    axes[0].set_xlabel("gold reward r*")
    axes[0].invert_yaxis()
    for key, label in (("distinct_2", "distinct-2"), ("self_bleu", "self-BLEU")):
        vals = [r.get(key, (math.nan, math.nan))[0] for r in rows]
        axes[1].plot(vals, names, "o", label=label)
    axes[1].set_xlabel("diversity (distinct-2 ↑ more diverse, self-BLEU ↓ more diverse)")
    axes[1].invert_yaxis()
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(out / "reward_diversity.png", dpi=120)
    plt.close(fig)
    made.append("reward_diversity.png")

    # 3. likelihood of held-out chosen and rejected responses over training (DIL's claim)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    drew = False
    for r in first_seed:
        if "run_dir" not in r:
            continue
        pts = [m for m in _read_metrics(Path(r["run_dir"])) if "eval/logps/chosen" in m]
        if not pts:
            continue
        steps = [p["step"] for p in pts]
        axes[0].plot(steps, [p["eval/logps/chosen"] for p in pts], label=r["name"])
        axes[1].plot(steps, [p["eval/logps/rejected"] for p in pts], label=r["name"])
        drew = True
    if drew:
        axes[0].set_title("held-out chosen: log π(y_w|x)")
        axes[1].set_title("held-out rejected: log π(y_l|x)")
        for ax in axes:
            ax.set_xlabel("optimiser step")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("sequence log-likelihood (mean)")
        axes[1].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "likelihood_over_training.png", dpi=120)
        made.append("likelihood_over_training.png")
    plt.close(fig)
    return made


def write_report(root: Path, per_seed: list[list[dict[str, Any]]], *, wall_seconds: float, plan_name: str) -> Path:
    rows = aggregate(per_seed)
    table = markdown_table(rows)
    plots = plot_all(root, rows, per_seed[0])
    sft = next((r for r in rows if r["name"] == "SFT"), {})
    n_seeds = len(per_seed)
    scope = (f"mean over {n_seeds} seeds ± standard error over seeds" if n_seeds > 1
             else "one seed: mean ± standard error over prompts")
    lines = [
        "# imitalign quickstart on the gym",
        "",
        f"Plan `{plan_name}`, {n_seeds} seed(s), wall time {wall_seconds / 60:.1f} min. Cells: {scope}.",
        f"SFT held-out perplexity: {sft.get('perplexity', math.nan):.2f} per token.",
        "",
        table,
        "",
        "Win rates are paired (same prompt, same sample index; ties count ½). KL is estimated from the policy's",
        "own samples, E[log π(y|x) − log π_SFT(y|x)]. log π(y_w), log π(y_l): held-out pairs' sequence",
        "log-likelihoods under each final model.",
        "",
        *[f"![{p}]({p})" for p in plots],
        "",
    ]
    report = root / "report.md"
    report.write_text("\n".join(lines))
    (root / "results.json").write_text(json.dumps({"rows": [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in r.items()} for r in rows
    ], "wall_seconds": wall_seconds, "plan": plan_name, "seeds": n_seeds}, indent=2))
    print("\n" + table + "\n", flush=True)
    print(f"report: {report}  (wall time {wall_seconds / 60:.1f} min)", flush=True)
    return report
