"""Online alignment, side by side: imitalign ``iterate`` against TRL's online trainers, on the gym's gold reward.

    python benchmarks/bench_online.py                 # default arms (≈ 20 min on an idle 2-core machine)
    python benchmarks/bench_online.py --quick         # smoke test: a tiny gym, one step of each kind
    python benchmarks/bench_online.py --arms it_dpo_k4_p128,trl_grpo --queries 2048 --seconds 90

Needs ``pip install -e ".[bench]"`` (TRL ≥ 1.16). Nothing is downloaded. Setup, the same for every arm:

- π_0 = the quickstart's SFT model (``imitalign.gym.base.prepare_base`` with the ``FAST`` plan: the gym,
  a tiny Llama pretrained on the base process), built once and cached under ``--out``;
- training prompts: the gym's ``online_prompts.jsonl``; held-out prompts: ``eval_prompts.jsonl`` (disjoint);
- the reward of every arm is the gold reward r* (``imitalign.gym.build.gold_rewards``); a *query* is one
  (prompt, response) scored by it;
- sampling temperature 1.0 and at most 32 new tokens in training and evaluation; fp32; lr 5e-4; ``--threads``
  intra-op threads (default 1, the gym's setting: tiny models run fastest on one thread); every arm in its own
  subprocess, one after the other, with the 1-minute load average recorded before and after it, and with an
  empty reference-log-prob cache of its own (``IMITALIGN_CACHE``; a rerun of the same seed would otherwise
  skip iterate's reference passes through the cache of the earlier run).

Arms (``ARMS``): imitalign ``iterate`` (K samples per prompt from π_{t−1}, best vs worst, DPO β 0.1 or
DIL-LSIF / DIL-BCE, 2 epochs of batch 16 per round, warm start, reference π_0) with K ∈ {2, 4, 8} and rounds of
64 or 128 prompts; TRL 1.16's ``GRPOTrainer`` and ``RLOOTrainer`` (K = 4, 32 completions per step) and
``trl.experimental.online_dpo.OnlineDPOTrainer`` (2 completions per prompt, 16 prompts per step, β 0.1), each
given r* as a ``reward_funcs`` callable, with TRL's defaults otherwise (GRPO: β 0, DAPO loss; RLOO: β 0.05;
linear lr decay over ``max_steps``) except fp32, no gradient checkpointing, the shared lr, temperature and length.

Budget: every arm stops at ``--queries`` reward queries (iterate: ⌊Q / (prompts·K)⌋ rounds; TRL: ``max_steps``)
or once its clock passes ``--seconds``, whichever comes first. The clock runs from loading π_0 to the end of
training and includes everything an arm does to train (iterate: every stage's model loading, sampling,
scoring, pairing, training and saving; TRL: generation, scoring, reference passes, steps); evaluation is off
the clock. Checkpoints: every round of iterate, and ``--checkpoints`` points of TRL's run (copied in memory);
at most ``--checkpoints`` + 1 per arm are evaluated, evenly spread, the last one always.

Evaluation (``online_arms.evaluate_points``, i.e. ``imitalign.eval.evaluate.evaluate_model`` for every arm):
4 samples of each held-out prompt, seeded the same for every checkpoint; gold reward mean ± se over prompts,
KL(π‖π_0) from those samples (temperature 1, so it is a valid estimate), distinct-2, win rate vs π_0's samples.

Output: ``--out/results.json``, the tables (printed, and ``--out/table.md``) and ``--out/online_curves.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from online_table import plot_curves, summary_tables  # noqa: E402

ARMS: dict[str, dict[str, Any]] = {
    "it_dpo_k2_p128": {"kind": "iterate", "objective": "dpo", "options": {"beta": 0.1}, "k": 2, "per_round": 128},
    "it_dpo_k4_p128": {"kind": "iterate", "objective": "dpo", "options": {"beta": 0.1}, "k": 4, "per_round": 128},
    "it_dpo_k8_p64": {"kind": "iterate", "objective": "dpo", "options": {"beta": 0.1}, "k": 8, "per_round": 64},
    "it_dpo_k4_p64": {"kind": "iterate", "objective": "dpo", "options": {"beta": 0.1}, "k": 4, "per_round": 64},
    "it_lsif_k4_p128": {"kind": "iterate", "objective": "dil_lsif", "k": 4, "per_round": 128},
    "it_bce_k4_p128": {"kind": "iterate", "objective": "dil_bce", "k": 4, "per_round": 128},
    "trl_online_dpo": {"kind": "online_dpo", "queries_per_step": 32, "beta": 0.1},
    "trl_rloo": {"kind": "rloo", "k": 4, "queries_per_step": 32},
    "trl_grpo": {"kind": "grpo", "k": 4, "queries_per_step": 32},
}
QUICK_ARMS: dict[str, dict[str, Any]] = {
    "it_dpo_k2_p8": {"kind": "iterate", "objective": "dpo", "options": {"beta": 0.1}, "k": 2, "per_round": 8,
                     "epochs": 1, "batch": 8},
    "trl_online_dpo": {"kind": "online_dpo", "queries_per_step": 16, "beta": 0.1},
    "trl_rloo": {"kind": "rloo", "k": 2, "queries_per_step": 16},
    "trl_grpo": {"kind": "grpo", "k": 2, "queries_per_step": 16},
}


def quick_plan() -> Any:
    """A gym small enough for a smoke test: 600 SFT rows, one epoch, a 1-layer model, 8 eval prompts."""
    from imitalign.gym.base import Plan
    from imitalign.gym.build import GymConfig
    from imitalign.gym.tokenizer import tiny_llama_config

    return Plan(gym=GymConfig(n_sft=600, n_expert=8, n_pref_prompts=8, n_online_prompts=64, n_eval_prompts=8),
                model=tiny_llama_config(hidden_size=32, num_hidden_layers=1, num_attention_heads=4),
                sft_epochs=1, sft_lr=3e-3, sft_batch=32, pref_lr=5e-4, pref_epochs=1, demo_lr=5e-4, demo_epochs=1,
                batch=8, eval_n=2)


def prepare(out: Path, quick: bool, threads: int) -> dict[str, str]:
    """π_0 and the prompt files (built once, reused from ``out/base``)."""
    import torch

    from imitalign.gym.base import FAST, prepare_base

    torch.set_num_threads(threads)
    base = prepare_base(out / "base", quick_plan() if quick else FAST, 0)
    return {"sft": str(base.sft_dir), "prompts": str(base.files.online_prompts),
            "eval_prompts": str(base.files.eval_prompts)}


def make_spec(name: str, arm: dict[str, Any], paths: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    return {"name": name, "kind": arm["kind"], "params": {k: v for k, v in arm.items() if k != "kind"},
            **paths, "seed": args.seed, "lr": args.lr, "temperature": 1.0, "max_new_tokens": args.max_new_tokens,
            "threads": args.threads, "queries": args.queries, "seconds": args.seconds,
            "clock": args.clock, "gpu": args.gpu, "checkpoints": args.checkpoints, "eval_n": args.eval_n,
            "eval_seed": 1234}


def run_subprocess(spec: dict[str, Any], arm_dir: Path) -> dict[str, Any]:
    """Run one arm in a fresh process; its result plus the load average around it and its CPU time."""
    arm_dir.mkdir(parents=True, exist_ok=True)
    (arm_dir / "spec.json").write_text(json.dumps(spec, indent=1))
    cache = arm_dir / "cache"  # imitalign's reference-log-prob cache, empty: no hit from an earlier run of the arm
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "MKL_NUM_THREADS": str(spec["threads"]),
           "IMITALIGN_CACHE": str(cache),
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": os.pathsep.join([str(HERE.parent),
                                                                             os.environ.get("PYTHONPATH", "")])}
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(arm_dir / "log.txt", "w") as log:
        proc = subprocess.run([sys.executable, str(HERE / "online_arms.py"), str(arm_dir / "spec.json")],
                              stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        tail = (arm_dir / "log.txt").read_text()[-3000:]
        raise RuntimeError(f"arm {spec['name']} failed (exit {proc.returncode}); end of {arm_dir / 'log.txt'}:\n{tail}")
    result = json.loads((arm_dir / "result.json").read_text())
    result.update(load_before=load0, load_after=os.getloadavg()[0], process_seconds=time.perf_counter() - t0,
                  process_cpu_seconds=(cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime))
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny gym, one or two steps per arm")
    ap.add_argument("--report", action="store_true", help="only rebuild the tables and plot from OUT/arms/*")
    ap.add_argument("--out", default="runs/bench_online", help="run folder (π_0 is cached in OUT/base)")
    ap.add_argument("--arms", default=None, help="comma-separated subset of the arms")
    ap.add_argument("--queries", type=int, default=None, help="reward-query budget per arm (default 3072)")
    ap.add_argument("--seconds", type=float, default=None, help="wall-clock budget per arm (default 120, on --clock)")
    ap.add_argument("--checkpoints", type=int, default=None, help="checkpoints evaluated per arm (default 5)")
    ap.add_argument("--eval-n", type=int, default=None, help="eval samples per held-out prompt (default 4)")
    ap.add_argument("--clock", choices=("cpu_seconds", "seconds"), default="cpu_seconds",
                    help="the clock of the budget, the tables and the plot: process CPU seconds (default: robust to "
                         "other load on a shared machine; equal to wall seconds on an idle core) or wall seconds")
    ap.add_argument("--gpu", action="store_true",
                    help="GPU node: every arm generates with vLLM (iterate: generate.backend vllm; TRL: use_vllm, "
                         "colocate), trains and evaluates on the GPU; use with --clock seconds")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    defaults = {"queries": 32, "seconds": 60.0, "checkpoints": 1, "eval_n": 2} if args.quick else \
        {"queries": 3072, "seconds": 120.0, "checkpoints": 5, "eval_n": 4}
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def report(out: Path, clock: str) -> str:
    """Tables and plot from the arms already in ``out/arms`` (e.g. arms run by several invocations; each
    arm's load is then the mean load its own process saw while training)."""
    results = []
    for path in sorted(out.glob("arms/*/result.json")):
        r = json.loads(path.read_text())
        r.setdefault("load_before", r["train_load"])
        r.setdefault("load_after", r["train_load"])
        results.append(r)
    pi0 = next(r for r in results if r["kind"] == "pi0")
    arms = [r for r in results if r["kind"] != "pi0"]
    tables = summary_tables(arms, pi0, clock)
    (out / "table.md").write_text(tables + "\n")
    plot_curves(arms, out / "online_curves.png", clock)
    return tables


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    out = Path(args.out)
    if args.report:
        print(report(out, args.clock))
        return {}
    catalogue = QUICK_ARMS if args.quick else ARMS
    names = list(catalogue) if not args.arms else args.arms.split(",")
    unknown = [n for n in names if n not in catalogue]
    if unknown:
        raise SystemExit(f"unknown arms {unknown}; known: {', '.join(catalogue)}")
    t0 = time.perf_counter()
    paths = prepare(out, args.quick, args.threads)
    pi0_spec = make_spec("pi0", {"kind": "pi0"}, paths, args)
    results = [run_subprocess(pi0_spec, out / "arms" / "pi0")]
    baseline = str(out / "arms" / "pi0" / "result.json")
    for name in names:
        spec = {**make_spec(name, catalogue[name], paths, args), "baseline": baseline}
        res = run_subprocess(spec, out / "arms" / name)
        last = res["points"][-1]
        print(f"[bench_online] {name}: {last['queries']} queries, {last['seconds']:.1f} s, gold "
              f"{last['gold_reward']['mean']:.4f} ± {last['gold_reward']['se']:.4f} (load {res['load_before']:.1f}"
              f"→{res['load_after']:.1f})", flush=True)
        results.append(res)
    tables = summary_tables(results[1:], results[0], args.clock)
    print(tables, flush=True)
    (out / "table.md").write_text(tables + "\n")
    plot_curves(results[1:], out / "online_curves.png", args.clock)
    record = {"args": vars(args), "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
              "wall_seconds": time.perf_counter() - t0, "arms": results}
    for r in record["arms"]:
        for p in r["points"]:
            p.pop("scores", None)
    (out / "results.json").write_text(json.dumps(record, indent=1))
    print(f"[bench_online] {len(names)} arms in {record['wall_seconds']:.0f} s → {out}/results.json", flush=True)
    return record


if __name__ == "__main__":
    main()
