"""Tables and report of ``imitalign iterate`` runs: the per-round rows read back from the round folders, the
Markdown table, the reward-per-round plot, ``report.md`` / ``results.json``, and the summary over seeds.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from imitalign.loops.iterate_config import IterateConfig
from imitalign.loops.stages import read_json, write_json


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


def format_mean_se(v: Any, digits: int = 3) -> str:
    """A cell: ``mean ± se`` of a ``{mean, se}`` dict (se left out when unknown, e.g. one prompt), a number, or –."""
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
            cells.append(format_mean_se(v, digits) if not isinstance(v, int) or isinstance(v, bool) else str(v))
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
        assert cfg.prompts is not None
        reward = (
            f"`{cfg.reward.display_name()}`"
            if cfg.reward is not None
            else f"none (demonstrations `{cfg.pairs.demos.path}`)"
        )  # type: ignore[union-attr]
        source = f"{cfg.rounds} rounds × {cfg.prompts.per_round} prompts × K = {cfg.generate.k}; reward {reward}"
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
        cells = [row["arm"], str(row["seeds"])] + [format_mean_se(row.get(k)) for k, _ in keys]
        cells.append(" → ".join(f"{c:.3f}" for c in row["curve"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), out
