"""Tables and the plot of ``bench_online.py`` (pure functions of the arms' results).

A result is ``{"name", "kind", "points": [...], "load_before", "load_after", ...}``; a point is a checkpoint
``{"queries", "seconds", "cpu_seconds", "gold_reward": {"mean", "se"}, "kl_to_reference", "distinct_2", ...}``,
the first one π_0 (0 queries, 0 s). "Gold at x" is the last evaluated checkpoint at or before x (a step function:
no interpolation), so an arm is never credited with a value it had not reached by then.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def at(points: list[dict[str, Any]], axis: str, x: float) -> dict[str, Any]:
    """The last checkpoint with ``point[axis] <= x`` (π_0's when none)."""
    best = points[0]
    for p in points:
        if p[axis] <= x + 1e-9:
            best = p
    return best


def first_reaching(points: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """The first checkpoint (after π_0) whose mean gold reward is at least ``target``."""
    for p in points[1:]:
        if p["gold_reward"]["mean"] >= target:
            return p
    return None


def _ms(v: dict[str, Any] | None, d: int = 3) -> str:
    if not v or v.get("mean") is None:
        return "–"
    se = v.get("se")
    return f"{v['mean']:.{d}f}" + ("" if se is None else f" ± {se:.{d}f}")


def is_peer(result: dict[str, Any]) -> bool:
    return result["kind"] not in ("iterate", "pi0")


CLOCKS = {"cpu_seconds": "CPU s", "seconds": "wall s"}


def main_table(results: list[dict[str, Any]], pi0: dict[str, Any], clock: str = "cpu_seconds") -> str:
    s_eq = min(r["points"][-1][clock] for r in results)
    q_eq = min(r["points"][-1]["queries"] for r in results)
    head = (f"| arm | queries | train CPU s (wall s) | load | final gold | KL(π‖π_0) | dist-2 | win vs π_0 | "
            f"gold @ {s_eq:.0f} {CLOCKS[clock]} | gold @ {q_eq} queries |")
    lines = [head, "|" + "---|" * 10]
    p0 = pi0["points"][0]
    lines.append(f"| π_0 (SFT) | 0 | 0 | – | {_ms(p0['gold_reward'])} | 0 | {p0['distinct_2']:.3f} | – | "
                 f"{_ms(p0['gold_reward'])} | {_ms(p0['gold_reward'])} |")
    for r in results:
        last = r["points"][-1]
        load = f"{r['load_before']:.1f}→{r['load_after']:.1f}"
        lines.append(
            f"| {r['name']} | {last['queries']} | {last['cpu_seconds']:.0f} ({last['seconds']:.0f}) | {load} | "
            f"{_ms(last['gold_reward'])} | {_ms(last.get('kl_to_reference'), 2)} | {last['distinct_2']:.3f} | "
            f"{_ms(last.get('win_rate_vs_baseline'))} | {_ms(at(r['points'], clock, s_eq)['gold_reward'])} | "
            f"{_ms(at(r['points'], 'queries', q_eq)['gold_reward'])} |"
        )
    return "\n".join(lines)


def ratio_table(results: list[dict[str, Any]], clock: str = "cpu_seconds") -> str:
    """Per imitalign arm and TRL peer: seconds (and queries) the imitalign arm needs to first reach the peer's
    final mean gold reward, over the peer's seconds (queries) to its final checkpoint. < 1: imitalign faster."""
    peers = [r for r in results if is_peer(r)]
    ours = [r for r in results if not is_peer(r)]
    if not peers or not ours:
        return ""
    lines = ["| imitalign arm | " + " | ".join(f"vs {p['name']} (final {p['points'][-1]['gold_reward']['mean']:.3f})"
                                             for p in peers) + " |",
             "|---|" + "---|" * len(peers)]
    for a in ours:
        cells = []
        for p in peers:
            plast = p["points"][-1]
            hit = first_reaching(a["points"], plast["gold_reward"]["mean"])
            if hit is None:
                cells.append(f"not reached (best {max(q['gold_reward']['mean'] for q in a['points']):.3f})")
            else:
                s = hit[clock] / plast[clock] if plast[clock] else math.inf
                q = hit["queries"] / plast["queries"] if plast["queries"] else math.inf
                cells.append(f"×{s:.2f} time, ×{q:.2f} queries")
        lines.append(f"| {a['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_tables(results: list[dict[str, Any]], pi0: dict[str, Any], clock: str = "cpu_seconds") -> str:
    parts = [main_table(results, pi0, clock)]
    ratios = ratio_table(results, clock)
    if ratios:
        parts += ["", f"{CLOCKS[clock]} and queries imitalign needs to reach each peer's final gold reward, as a "
                      "ratio to the peer's own:", "", ratios]
    return "\n".join(parts)


def plot_curves(results: list[dict[str, Any]], path: Path, clock: str = "cpu_seconds") -> Path:
    """Gold reward (mean ± se) against training seconds and against reward queries, one line per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for r in results:
        style = "--" if is_peer(r) else "-"
        ys = [p["gold_reward"]["mean"] for p in r["points"]]
        es = [p["gold_reward"]["se"] or 0.0 for p in r["points"]]
        for ax, axis in zip(axes, (clock, "queries"), strict=True):
            ax.errorbar([p[axis] for p in r["points"]], ys, yerr=es, linestyle=style, marker="o", markersize=3,
                        capsize=2, label=r["name"])
    axes[0].set_xlabel(f"training {CLOCKS[clock]} (eval excluded)")
    axes[1].set_xlabel("reward queries (rows scored by r*)")
    axes[0].set_ylabel("held-out gold reward r* (mean ± se over prompts)")
    axes[1].legend(fontsize=7, loc="lower right")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle("imitalign iterate (solid) vs TRL online trainers (dashed), gym, π_0 = SFT")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
