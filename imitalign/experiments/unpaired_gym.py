"""Paired vs unpaired feedback on the gym, at the same data.

    python -m imitalign.experiments.unpaired_gym [--seeds 3] [--fast] [--root runs/quickstart] [--only NAME ...]
    python -m imitalign.experiments.unpaired_gym --seed 1        # one seed (seeds can run as parallel processes)
    python -m imitalign.experiments.unpaired_gym --report        # the table from the seeds already run

The quickstart's preference pairs (two SFT samples per prompt, labelled by Bradley–Terry on the gold reward r*)
are used twice: as pairs by DPO and paired DIL, and broken into unpaired halves — the chosen response of each
pair a desirable row, the rejected one an undesirable row, the pairing forgotten — by unpaired DIL, KTO and BCO
(the data pipeline breaks pairs given to an unpaired objective; its report says so). Every method sees the
same responses for the same number of optimiser steps with the same learning rate: an unpaired batch holds
2 × the pair batch size rows (the halves of as many pairs, shuffled), so a step sees as many responses.

With ``--root runs/quickstart`` the gym, the SFT model, the pairs and the paired runs of an earlier quickstart
of the same plan and seeds are reused (``train_or_reuse``). Prints one markdown table: mean ± standard error
over seeds of the gold reward, the win rate against SFT and KL(π‖SFT), over the held-out prompts.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from imitalign.eval.report import aggregate, markdown_table
from imitalign.experiments.quickstart import Method, evaluate_run
from imitalign.gym.base import FAST, FULL, Plan, gym_run_config, load_model, prepare_base
from imitalign.gym.build import read_jsonl
from imitalign.loops.stages import train_or_reuse

METHODS: tuple[Method, ...] = (
    Method("DPO (pairs)", "dpo", "prefs", {"beta": 0.1}),
    Method("DIL-LSIF (pairs)", "dil_lsif", "prefs", {}),
    Method("DIL-BCE (pairs)", "dil_bce", "prefs", {}),
    Method("DIL-LSIF (unpaired halves)", "dil_lsif_unpaired", "prefs", {}),
    Method("DIL-BCE (unpaired halves)", "dil_bce_unpaired", "prefs", {}),
    Method("KTO (unpaired halves)", "kto", "prefs", {"beta": 0.1}),
    Method("BCO (unpaired halves)", "bco", "prefs", {"beta": 0.1}),
)
UNPAIRED = {"dil_lsif_unpaired", "dil_bce_unpaired", "kto", "bco"}


def run_seed(root: Path, plan: Plan, seed: int, methods: tuple[Method, ...]) -> list[dict[str, Any]]:
    base = prepare_base(root, plan, seed)
    eval_prompts = [r["prompt"] for r in read_jsonl(base.files.eval_prompts)]
    eval_pairs = read_jsonl(base.eval_pairs)
    sft_model, _ = load_model(base.sft_dir)
    rows = [evaluate_run("SFT", base.sft_dir, sft_model, eval_prompts, eval_pairs, plan, seed, None)]
    baseline = rows[0]["per_sample"]["score"]
    for m in methods:
        t = time.perf_counter()
        data = {
            "train": {"path": str(base.prefs), "format": "preference"},
            "eval": {"path": str(base.eval_pairs), "format": "preference"},
        }
        batch = plan.batch * (2 if m.objective in UNPAIRED else 1)  # as many responses per step
        cfg = gym_run_config(
            base.work / m.objective,
            {"name_or_path": str(base.sft_dir)},
            data,
            m.objective,
            m.options,
            {"lr": m.lr or plan.pref_lr, "epochs": plan.pref_epochs, "batch_size": batch, "eval_every": 10},
            seed,
        )
        summary = train_or_reuse(cfg)
        res = evaluate_run(
            m.name, Path(summary["model_dir"]), sft_model, eval_prompts, eval_pairs, plan, seed, baseline
        )
        res["train_seconds"] = time.perf_counter() - t
        res["objective"] = m.objective
        rows.append(res)
        print(
            f"[unpaired] seed {seed} {m.name}: gold {res['gold_reward']['mean']:.3f}, "
            f"KL {res['kl_to_reference']['mean']:.3f} ({res['train_seconds']:.0f} s)",
            flush=True,
        )
    (base.work / "unpaired_results.json").write_text(json.dumps(rows, indent=2, default=list))
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--fast", action="store_true", help="the quickstart's fast plan (CI sizes)")
    ap.add_argument("--root", default="runs/quickstart", help="the quickstart folder to reuse or build")
    ap.add_argument("--only", nargs="*", help="objective names to run (default: all)")
    ap.add_argument("--seed", type=int, help="run this one seed only")
    ap.add_argument("--report", action="store_true", help="only aggregate the seeds' saved results")
    args = ap.parse_args(argv)
    plan = FAST if args.fast else FULL
    methods = tuple(m for m in METHODS if not args.only or m.objective in args.only)
    t0 = time.perf_counter()
    if args.report:
        per_seed = [json.loads(p.read_text()) for p in sorted(Path(args.root).glob("seed*/unpaired_results.json"))]
    else:
        seeds = [args.seed] if args.seed is not None else list(range(args.seeds))
        per_seed = [run_seed(Path(args.root), plan, seed, methods) for seed in seeds]
    table = markdown_table(aggregate(per_seed))
    wall = (time.perf_counter() - t0) / 60
    print(
        "\n" + table + f"\n\n{len(per_seed)} seed(s), plan {'fast' if args.fast else 'full'}, {wall:.1f} min",
        flush=True,
    )


if __name__ == "__main__":
    main()
