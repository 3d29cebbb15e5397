"""Best-of-N curves per reward source, plain and style-shifted demonstrations: ``imitalign afd gym-bon``."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imitalign.data.jsonl import read_jsonl
from imitalign.experiments.common import (
    DEFAULT_STYLES,
    PLAN,
    Base,
    GymPlan,
    afd_config,
    as_mean_se,
    base,
    cell,
    over_seeds,
    sampling,
    say,
    styles_suffix,
)
from imitalign.gym.task import DEMO_VARIANTS, STYLE, ascending_share
from imitalign.loops.afd import run_afd
from imitalign.loops.bon import BonConfig, plot_curves, run_bon
from imitalign.loops.stages import write_json


def style_share(row: dict[str, Any]) -> dict[str, float]:
    """Share of a response's words that are style words (the gold reward ignores them)."""
    words = str(row["response"]).split()
    return {"style_share": sum(w in STYLE for w in words) / len(words) if words else 0.0}


def order_share(row: dict[str, Any]) -> dict[str, float]:
    """:func:`style_share` and the sorted style's measure: the share of adjacent content-word pairs in alphabetical
    order (:func:`imitalign.gym.task.ascending_share`; 1 for the sorted demonstrations, ½ by chance)."""
    return {**style_share(row), "order_share": ascending_share(str(row["response"]))}



def bon_config(b: Base, plan: GymPlan, style: str, rewards: list[dict[str, Any]], sft: str) -> BonConfig:
    return BonConfig.model_validate(
        {
            "model": sft,
            "prompts": {"path": str(b.files.eval_prompts), "format": "prompt"},
            "rewards": [*rewards, {"kind": "gold", "name": "gold (oracle)"}],
            "n_max": plan.n_max,
            "baseline_n": 4,
            "seed": b.seed + 77,
            "sampling": sampling(plan).model_dump(),
            "chat_template": "none",
            "max_length": plan.max_length,
            "output_dir": str(b.work / f"bon_{style}"),
        }
    )


def _class_shares(summary_dir: Path) -> dict[str, dict[str, float]]:
    """Style and order share (:func:`order_share`, mean over rows) of an AfD run's three classes: the
    demonstrations, π_init's and π_SFT's samples on the demonstration prompts (``classes/*.jsonl``)."""
    out = {}
    classes = (("demonstrations", "demos"), ("π_init samples", "init_samples"), ("π_SFT samples", "sft_samples"))
    for name, file in classes:
        rows = [order_share(r) for r in read_jsonl(summary_dir / "classes" / f"{file}.jsonl")]
        out[name] = {k: statistics.fmean(r[k] for r in rows) for k in rows[0]}
    return out


def style_sensitivity(summary: dict[str, Any], summary_dir: Path, style: str) -> dict[str, dict[str, float]]:
    """Can each discriminator see the ``style`` (a :data:`DEMO_VARIANTS` transform)? For π_SFT's samples on the
    demonstration prompts (``classes/sft_samples.jsonl``, non-empty): the mean change of the logit when a sample is
    restyled, ``mean(r(x, f(y)) − r(x, y))``, that change over the sd of ``r(x, y)``, and the share of samples whose
    logit rises."""
    from imitalign.reward import load_reward

    transform = DEMO_VARIANTS[style]
    rows = [r for r in read_jsonl(summary_dir / "classes" / "sft_samples.jsonl") if str(r["response"]).strip()]
    raw = [{"prompt": r["prompt"], "response": r["response"]} for r in rows]
    styled = [{"prompt": r["prompt"], "response": transform(r["response"])} for r in rows]
    out = {}
    for mode, info in summary["modes"].items():
        src = load_reward(
            {
                "kind": "discriminator",
                "path": info["model_dir"],
                "chat_template": "none",
                "max_length": int(summary.get("max_length", 96)),
            }
        )
        a, b = src.score(raw), src.score(styled)
        diffs = [y - x for x, y in zip(a, b, strict=True)]
        out[mode] = {
            "logit change": statistics.fmean(diffs),
            "change / sd": statistics.fmean(diffs) / statistics.stdev(a),
            "share rising": sum(d > 0 for d in diffs) / len(diffs),
        }
    return out


def exp_bon(root: str | Path, plan: GymPlan = PLAN, seeds: int = 1, styles: Sequence[str] = DEFAULT_STYLES) -> str:
    """Best-of-N curves per reward source (init-SFT, init-demo, SFT-demo discriminators, the closed form, the
    oracle), with and without the style shift, over ``seeds`` seeds. Styles beyond the default (the sorted order
    style) add the order share of the picks and of the AfD classes, and write ``afd_bon_<styles>.{md,png,json}``."""
    per: dict[str, list[list[dict[str, Any]]]] = {s: [] for s in styles}
    accuracy: dict[str, dict[str, list[float]]] = {s: {} for s in styles}
    shares: dict[str, list[dict[str, dict[str, float]]]] = {s: [] for s in styles if s in DEMO_VARIANTS}
    sensitivity: dict[str, list[dict[str, dict[str, float]]]] = {s: [] for s in shares}
    metrics = ("gold", "win_rate", "style_share") + (("order_share",) if shares else ())
    t0 = time.perf_counter()
    for seed in range(seeds):
        b = base(root, plan, seed)
        for style in styles:
            say(f"seed {seed}, {style} demonstrations: AfD reward models")
            summary = run_afd(afd_config(b, plan, style))
            for mode, info in summary["modes"].items():
                acc = info.get("eval", {}).get("accuracy")
                if acc is not None:
                    accuracy[style].setdefault(mode, []).append(acc)
            if style in shares:
                afd_dir = Path(afd_config(b, plan, style).output_dir)
                shares[style].append(_class_shares(afd_dir))
                sensitivity[style].append(style_sensitivity({**summary, "max_length": plan.max_length}, afd_dir, style))
            say(f"seed {seed}, {style}: best-of-N sweep")
            extra = order_share if shares else style_share  # the default styles' outputs stay as they were
            res = run_bon(bon_config(b, plan, style, summary["rewards"], summary["sft_model"]), extra=extra)
            per[style].append(res["results"])
    panels = _aggregate_panels(per)
    out = Path(root)
    suffix = styles_suffix(styles)
    plot_curves(panels, out / f"afd_bon{suffix}.png", metrics=metrics)
    lines = [
        f"Seeds: {seeds} (cells: mean over seeds ± se over seeds; one seed: ± se over prompts). "
        f"N_max = {plan.n_max}, {plan.gym.n_eval_prompts} held-out prompts. "
        f"Wall {(time.perf_counter() - t0) / 60:.1f} min.",
        "",
    ]
    text = "\n".join(lines + _curve_tables(panels, metrics) + _afd_tables(accuracy, shares, sensitivity))
    (out / f"afd_bon{suffix}.md").write_text(text + "\n")
    write_json(
        out / f"afd_bon{suffix}.json",
        {
            "panels": {
                k: [{kk: (list(vv) if isinstance(vv, tuple) else vv) for kk, vv in r.items()} for r in v]
                for k, v in panels.items()
            },
            "accuracy": accuracy,
            "seeds": seeds,
            **({"class_shares": shares, "style_sensitivity": sensitivity} if shares else {}),
        },
    )
    print(text)
    return text


def _aggregate_panels(per: dict[str, list[list[dict[str, Any]]]]) -> dict[str, list[dict[str, Any]]]:
    """Each style's best-of-N rows (source, N) over seeds: mean over seeds ± se over seeds."""
    panels: dict[str, list[dict[str, Any]]] = {}
    for style, runs in per.items():
        agg = []
        for r0 in runs[0]:
            same = [next(r for r in run if r["source"] == r0["source"] and r["n"] == r0["n"]) for run in runs]
            row = {"source": r0["source"], "n": r0["n"]}
            for key in ("gold", "win_rate", "proxy", "length", "style_share", "order_share"):
                if key in r0:
                    row[key] = over_seeds([as_mean_se(r[key]) for r in same])
            agg.append(row)
        panels[f"{style} demos"] = agg
    return panels


def _curve_tables(panels: dict[str, list[dict[str, Any]]], metrics: Sequence[str]) -> list[str]:
    """One Markdown table per panel and metric: a row per reward source, a column per N."""
    lines: list[str] = []
    for style, agg in panels.items():
        ns = sorted({r["n"] for r in agg})
        for metric in metrics:
            if metric not in agg[0]:
                continue
            lines += [
                f"**{style}: {metric}**",
                "",
                "| source | " + " | ".join(f"N={n}" for n in ns) + " |",
                "|---|" + "---|" * len(ns),
            ]
            for name in dict.fromkeys(r["source"] for r in agg):
                by = {r["n"]: r for r in agg if r["source"] == name}
                lines.append(f"| {name} | " + " | ".join(cell(by[n][metric]) for n in ns) + " |")
            lines.append("")
    return lines


def _afd_tables(
    accuracy: dict[str, dict[str, list[float]]],
    shares: dict[str, list[dict[str, dict[str, float]]]],
    sensitivity: dict[str, list[dict[str, dict[str, float]]]],
) -> list[str]:
    """The discriminators' held-out accuracy; with a variant style, the classes' style/order shares and whether
    each discriminator sees the style."""
    acc_lines = [
        "**held-out discriminator accuracy** (mean over seeds)",
        "",
        "| demos | mode | accuracy |",
        "|---|---|---|",
    ]
    for style, modes in accuracy.items():
        for mode, accs in modes.items():
            acc_lines.append(f"| {style} | {mode} | {statistics.fmean(accs):.3f} |")
    for style, runs in shares.items():
        acc_lines += [
            "",
            f"**{style} demos: style and order share of the AfD classes** (mean over seeds ± se over seeds)",
            "",
            "| class | style share | order share |",
            "|---|---|---|",
        ]
        for name in runs[0]:
            cells = [cell(over_seeds([(r[name][k], math.nan) for r in runs])) for k in ("style_share", "order_share")]
            acc_lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for style, runs in sensitivity.items():
        keys = list(next(iter(runs[0].values())))
        acc_lines += [
            "",
            f"**{style} demos: can the discriminators see the style?** π_SFT's samples on the demonstration prompts, "
            f"each scored as sampled and restyled ({style}); mean over seeds ± se over seeds",
            "",
            "| discriminator | " + " | ".join(keys) + " |",
            "|---|" + "---|" * len(keys),
        ]
        for mode in runs[0]:
            cells = [cell(over_seeds([(r[mode][k], math.nan) for r in runs])) for k in keys]
            acc_lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return acc_lines

