"""The tables ``bench_dpo.py`` prints: one row per variant, the median of its repeated runs (issue 16).

Every figure of a row comes from the same run (the one with the median tokens/s); ``runs`` lists the tokens/s of
all its runs, in the order they ran, so that the spread a shared machine adds is visible. Ratios are taken
between rows of the same invocation (interleaved runs), never across invocations.
"""

from __future__ import annotations

from typing import Any


def cpu_flags() -> str:
    """The SIMD flags that decide fp32 vs bf16 speed on a CPU (``/proc/cpuinfo``)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return "unknown"
    keep = [x for x in flags if x.startswith(("avx512", "amx")) or x in ("avx2", "fma")]
    has_bf16 = any(x in flags for x in ("avx512_bf16", "amx_bf16"))
    return " ".join(sorted(keep)) + ("" if has_bf16 else "  (no avx512_bf16 / amx_bf16: bf16 matmuls are emulated)")


def median_run(runs: list[dict[str, Any]], tokens: int) -> dict[str, Any]:
    ok = sorted((r for r in runs if "error" not in r), key=lambda r: tokens / r["epoch_s"])
    return ok[len(ok) // 2] if ok else runs[0]


def _train_s(name: str, r: dict[str, Any]) -> float:
    return r["epoch_s"] if name == "trl_ref" else r["epoch_s"] - r["ref_s"]


def above_floor(r: dict[str, Any], key: str = "rss_gb") -> float | None:
    """Peak RSS above the floor: the RSS after imports plus fp32 weights, gradients and AdamW's two moments."""
    v = r.get(key)
    return None if v is None else v - r["rss_base_gb"] - r["floor_gb"]


def fmt_table(setting: str, runs: dict[str, list[dict[str, Any]]], tokens: int) -> str:
    rows = {name: median_run(rs, tokens) for name, rs in runs.items()}
    good = {n: r for n, r in rows.items() if "error" not in r}
    plain, trl = good.get("plain"), good.get("trl_ref")
    lines = [
        f"setting {setting}: {tokens} real tokens per epoch (prompt + response, both sequences of every pair)",
        "| variant | real tok/s | ×plain | ×TRL-ref | train-phase tok/s (×plain) | epoch s (ref pass) | cpu s "
        "| peak RSS GB (×TRL-ref) | above floor GB (×TRL-ref) | ref-pass / train peak above floor GB | load 1-min "
        "| runs tok/s | pad frac |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error'][:80]} |" + " |" * 11)
            continue
        tps = tokens / r["epoch_s"]
        ttps = tokens / _train_s(name, r)
        x_plain = f"{tps / (tokens / plain['epoch_s']):.2f}" if plain else "-"
        x_trl = f"{tps / (tokens / trl['epoch_s']):.2f}" if trl else "-"
        xt_plain = f" ({ttps / (tokens / _train_s('plain', plain)):.2f})" if plain else ""
        fl = above_floor(r)
        x_mem = f"{fl / above_floor(trl):.2f}" if trl else "-"
        x_rss = f"{r['rss_gb'] / trl['rss_gb']:.2f}" if trl else "-"
        ref_fl = above_floor(r, "ref_peak_gb")
        phases = f"{'-' if ref_fl is None else f'{ref_fl:.2f}'} / {above_floor(r, 'train_peak_gb'):.2f}"
        load = r.get("load", (float("nan"), float("nan")))
        all_runs = ", ".join(f"{tokens / x['epoch_s']:.0f}" if "error" not in x else "fail" for x in runs[name])
        pad = r.get("pad_fraction")
        lines.append(
            f"| {name} | {tps:.0f} | {x_plain} | {x_trl} | {ttps:.0f}{xt_plain} "
            f"| {r['epoch_s']:.1f} ({r['ref_s']:.1f}) | {r['cpu_s']:.1f} | {r['rss_gb']:.2f} ({x_rss}) "
            f"| {fl:.2f} ({x_mem}) | {phases} | {load[0]:.1f}→{load[1]:.1f} "
            f"| {all_runs} | {'-' if pad is None else f'{pad:.2f}'} |"
        )
    return "\n".join(lines)
