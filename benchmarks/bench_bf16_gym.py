"""bf16 against fp32 on the gym: the same training in ``train.mixed_precision: bf16`` (autocast) and ``no``.

    python benchmarks/bench_bf16_gym.py [--seeds 3] [--fast] [--out runs/bench-bf16-gym]

For every seed: the quickstart's base (gym, π_SFT trained in fp32, SFT-sampled pairs labelled by r*), then
DPO (pairs) and MLE (expert demonstrations) from π_SFT, once in fp32 and once in bf16, with the same data
order and seed; each model is evaluated like the quickstart's (fp32 sampling on the held-out prompts, gold
reward r*). Printed: per method and precision the gold reward (mean over seeds of the per-seed means, ± the
standard error over seeds and the mean within-seed se), the final logged train loss, the largest gap between
the two precisions' logged train losses at the same step, and the training wall/CPU seconds — with the CPU's
SIMD flags, since bf16 speed depends on them (without ``avx512_bf16``/``amx_bf16`` bf16 matmuls are emulated).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _methods() -> tuple[Any, ...]:
    from imitalign.experiments.quickstart import Method

    out = []
    for precision in ("no", "bf16"):
        tag = "fp32" if precision == "no" else "bf16"
        out.append(Method(f"DPO {tag}", "dpo", "prefs", {"beta": 0.1}, train={"mixed_precision": precision},
                          folder=f"dpo_{tag}"))
        out.append(Method(f"MLE {tag}", "mle", "expert", {}, train={"mixed_precision": precision},
                          folder=f"mle_{tag}"))
    return tuple(out)


def _losses(run_dir: str) -> dict[int, float]:
    rows = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def _summary(rows_by_seed: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    names = [r["name"] for r in rows_by_seed[0]]
    out = []
    for name in names:
        runs = [next(r for r in rows if r["name"] == name) for rows in rows_by_seed]
        golds = [r["gold_reward"]["mean"] for r in runs]
        out.append({
            "name": name,
            "gold": statistics.fmean(golds),
            "gold_se_seeds": statistics.stdev(golds) / len(golds) ** 0.5 if len(golds) > 1 else float("nan"),
            "gold_se_within": statistics.fmean(r["gold_reward"]["se"] for r in runs),
            "golds": golds,
            "final_loss": [r.get("final_loss") for r in runs],
            "max_loss_gap": [r.get("max_loss_gap") for r in runs],
            "train_s": statistics.fmean(r.get("train_wall_s", float("nan")) for r in runs),
            "train_cpu_s": statistics.fmean(r.get("train_cpu_s", float("nan")) for r in runs),
        })
    return out


def _loss_gaps(rows: list[dict[str, Any]]) -> None:
    """Add ``final_loss`` and ``max_loss_gap`` (|bf16 − fp32| over the logged steps both have) to the rows."""
    by = {r["name"]: r for r in rows}
    for r in rows:
        if "run_dir" not in r:
            continue
        losses = _losses(r["run_dir"])
        r["final_loss"] = losses[max(losses)] if losses else None
        base, _, tag = r["name"].rpartition(" ")
        if tag == "bf16" and f"{base} fp32" in by:
            ref = _losses(by[f"{base} fp32"]["run_dir"])
            common = sorted(set(ref) & set(losses))
            r["max_loss_gap"] = max(abs(losses[s] - ref[s]) for s in common) if common else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--fast", action="store_true", help="the quickstart's smaller plan")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-bf16-gym"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    import bench_tables
    import torch

    from imitalign.experiments import quickstart
    from imitalign.gym.base import FAST, FULL

    plan = FAST if args.fast else FULL
    print(f"command: python {' '.join(sys.argv)}\nCPU flags: {bench_tables.cpu_flags()}\n"
          f"torch CPU capability: {torch.backends.cpu.get_cpu_capability()}\nload at start: {os.getloadavg()}",
          flush=True)
    rows_by_seed = []
    for seed in range(args.seeds):
        methods = _methods()
        timed: dict[str, tuple[float, float]] = {}
        real = quickstart.train_or_reuse

        def timed_train(cfg: Any, _real: Any = real, _timed: dict = timed) -> Any:
            t, c = time.perf_counter(), time.process_time()
            out = _real(cfg)
            _timed[cfg.run.output_dir] = (time.perf_counter() - t, time.process_time() - c)
            return out

        quickstart.train_or_reuse = timed_train
        try:
            rows = quickstart.run_seed(args.out, plan, seed, methods)
        finally:
            quickstart.train_or_reuse = real
        for r in rows:
            if r.get("run_dir") in timed:
                r["train_wall_s"], r["train_cpu_s"] = timed[r["run_dir"]]
        _loss_gaps(rows)
        rows_by_seed.append(rows)
    table = _summary(rows_by_seed)
    print(f"\nload at end: {os.getloadavg()}\n")
    print("| method | gold (mean of seeds) | ± se over seeds | mean within-seed se | per seed | final train loss "
          "| max |Δ loss| vs fp32 | train wall s | train CPU s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in table:
        fmt = ", ".join
        print(f"| {r['name']} | {r['gold']:.4f} | {r['gold_se_seeds']:.4f} | {r['gold_se_within']:.4f} | "
              f"{fmt(f'{g:.3f}' for g in r['golds'])} | "
              f"{fmt('-' if x is None else f'{x:.4f}' for x in r['final_loss'])} | "
              f"{fmt('-' if x is None else f'{x:.4f}' for x in r['max_loss_gap'])} | "
              f"{r['train_s']:.1f} | {r['train_cpu_s']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps({"rows": table}, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    sys.path.insert(0, str(HERE))
    main()
