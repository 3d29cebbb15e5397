"""One arm of ``bench_online.py``, run in its own process: train from π_0 under a budget, keep checkpoints with the
seconds and reward queries spent to reach them, then evaluate every checkpoint with imitalign's evaluator.

    python benchmarks/online_arms.py ARM_DIR/spec.json      (bench_online.py writes the spec and starts this)

Kinds: ``pi0`` (only evaluates π_0: the baseline of every curve), ``iterate`` (imitalign's loop through its public
entry point ``run_iterate``), ``grpo`` / ``rloo`` (TRL's ``GRPOTrainer`` / ``RLOOTrainer``) and ``online_dpo``
(TRL's ``trl.experimental.online_dpo.OnlineDPOTrainer``); all TRL trainers take the gold reward as a
``reward_funcs`` callable ``f(prompts, completions, **kw) -> list[float]``.

The clock of an arm starts when it starts loading π_0 and stops at each checkpoint; evaluation and (for TRL) the
in-memory copy of a checkpoint are outside it. Each checkpoint records wall seconds, process CPU seconds (the
clock that other processes on a shared machine disturb least) and reward queries (rows scored by r*).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def cpu_time() -> float:
    """CPU seconds of this process and of its finished children (stages that may run in subprocesses count)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _now(t0: float, c0: float, paused: float = 0.0, paused_cpu: float = 0.0) -> dict[str, float]:
    return {"seconds": time.perf_counter() - t0 - paused, "cpu_seconds": cpu_time() - c0 - paused_cpu}


def _load(path: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval(), AutoTokenizer.from_pretrained(path)


# ------------------------------------------------------------------------------------------ imitalign iterate
def iterate_raw(spec: dict[str, Any], out: Path) -> dict[str, Any]:
    """The ``imitalign iterate`` config of an arm: K samples per prompt from π_{t−1}, gold reward, best vs worst,
    the arm's objective for ``train_epochs`` epochs (warm start, reference π_0), no eval section (the bench
    evaluates the rounds' models itself, off the clock)."""
    p = spec["params"]
    per_round_queries = p["per_round"] * p["k"]
    rounds = max(1, spec["queries"] // per_round_queries)
    return {
        "run": {"output_dir": str(out), "seed": spec["seed"], "name": spec["name"]},
        "policy": spec["sft"],
        "rounds": rounds,
        "prompts": {"source": {"path": spec["prompts"]}, "per_round": p["per_round"]},
        "generate": {"k": p["k"], "temperature": spec["temperature"], "max_new_tokens": spec["max_new_tokens"],
                     "batch_size": p.get("gen_batch", 512), "backend": "vllm" if spec.get("gpu") else "transformers"},
        "reward": {"kind": "gold"},
        "pairs": {"mode": "max_min"},
        "train": {
            "objective": {"name": p["objective"], "options": p.get("options", {})},
            "train": {"lr": spec["lr"], "epochs": p.get("epochs", 2), "batch_size": p.get("batch", 16),
                      "schedule": "cosine", "warmup_ratio": 0.1, "log_every": 10**6,
                      "num_threads": spec["threads"]},
            "data": {"chat_template": "none", "max_length": 96},
        },
    }


def run_iterate_arm(spec: dict[str, Any], arm_dir: Path) -> list[dict[str, Any]]:
    from imitalign.loops.iterate import Interrupted, parse_iterate_config, run_iterate

    raw = iterate_raw(spec, arm_dir / "iterate")
    p = spec["params"]
    t0, c0 = time.perf_counter(), cpu_time()
    cfg = parse_iterate_config(raw, spec["name"])
    points: list[dict[str, Any]] = []

    def on_stage(t: int, stage: str) -> None:
        if stage != "train":
            return
        model = arm_dir / "iterate" / f"round_{t}" / "train" / "model"
        points.append({"step": t, "queries": t * p["per_round"] * p["k"], **_now(t0, c0), "model": str(model)})
        if points[-1][spec["clock"]] >= spec["seconds"]:
            raise Interrupted(f"time budget {spec['seconds']} s ({spec['clock']}) spent after round {t}")

    try:
        run_iterate(cfg, on_stage=on_stage, say=lambda m: print(f"[{spec['name']}] {m}", flush=True))
    except Interrupted as e:
        print(f"[{spec['name']}] {e}", flush=True)
    return points


# ------------------------------------------------------------------------------------------ TRL
def trl_trainer(spec: dict[str, Any], model: Any, tok: Any, reward: Any, callback: Any, out: Path) -> Any:
    """The TRL trainer of an arm: fp32 (``bf16=False``), no gradient checkpointing (both on by default in TRL's
    configs), the arm's lr, temperature and completion length, no saving or reporting; ``max_steps`` from the
    query budget; on CPU (``use_cpu``), or with ``spec["gpu"]`` on the GPU with vLLM colocated for generation
    (``use_vllm``, ``vllm_mode="colocate"``, 30 % of the GPU memory). Everything else is TRL's default."""
    from datasets import Dataset

    from imitalign.gym.build import read_jsonl

    p = spec["params"]
    data = Dataset.from_list([{"prompt": r["prompt"]} for r in read_jsonl(spec["prompts"])])
    common = {
        "output_dir": str(out), "learning_rate": spec["lr"],
        "max_steps": max(1, spec["queries"] // p["queries_per_step"]),
        "logging_steps": 10**6, "report_to": "none", "save_strategy": "no", "bf16": False,
        **({"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.3} if spec.get("gpu")
           else {"use_cpu": True}),
        "gradient_checkpointing": False, "disable_tqdm": True, "seed": spec["seed"], "temperature": spec["temperature"],
    }
    kind = spec["kind"]
    if kind in ("grpo", "rloo"):
        k = p["k"]
        gen = {"num_generations": k, "per_device_train_batch_size": p["queries_per_step"],
               "max_completion_length": spec["max_new_tokens"]}
        if kind == "grpo":
            from trl import GRPOConfig, GRPOTrainer

            return GRPOTrainer(model=model, reward_funcs=reward, args=GRPOConfig(**gen, **common),
                               train_dataset=data, processing_class=tok, callbacks=[callback])
        from trl import RLOOConfig, RLOOTrainer

        return RLOOTrainer(model=model, reward_funcs=reward, args=RLOOConfig(**gen, **common),
                           train_dataset=data, processing_class=tok, callbacks=[callback])
    if kind == "online_dpo":
        from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

        args = OnlineDPOConfig(per_device_train_batch_size=p["queries_per_step"] // 2,
                               max_new_tokens=spec["max_new_tokens"], beta=p.get("beta", 0.1), **common)
        return OnlineDPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=data,
                                processing_class=tok, callbacks=[callback])
    raise ValueError(f"unknown arm kind {kind!r}")


def run_trl_arm(spec: dict[str, Any], arm_dir: Path) -> list[dict[str, Any]]:
    from transformers import TrainerCallback

    from imitalign.gym.build import gold_rewards

    t0, c0 = time.perf_counter(), cpu_time()
    queries = [0]

    def gold(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
        queries[0] += len(completions)
        return gold_rewards({"prompt": p, "response": c} for p, c in zip(prompts, completions, strict=True))

    points: list[dict[str, Any]] = []
    grid = spec["checkpoints"]
    state = {"paused": 0.0, "paused_cpu": 0.0, "next_q": spec["queries"] / grid, "next_s": spec["seconds"] / grid}

    class Snapshots(TrainerCallback):
        def on_step_end(self, args: Any, st: Any, control: Any, model: Any = None, **kw: Any) -> None:
            now = _now(t0, c0, state["paused"], state["paused_cpu"])
            spent = now[spec["clock"]] >= spec["seconds"]
            if spent or st.global_step >= st.max_steps or queries[0] >= state["next_q"] or \
                    now[spec["clock"]] >= state["next_s"]:
                t, c = time.perf_counter(), cpu_time()
                weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
                points.append({"step": st.global_step, "queries": queries[0], **now, "weights": weights})
                while state["next_q"] <= queries[0]:
                    state["next_q"] += spec["queries"] / grid
                while state["next_s"] <= now[spec["clock"]]:
                    state["next_s"] += spec["seconds"] / grid
                state["paused"] += time.perf_counter() - t
                state["paused_cpu"] += cpu_time() - c
            if spent:
                control.should_training_stop = True

    model, tok = _load(spec["sft"])
    trainer = trl_trainer(spec, model, tok, gold, Snapshots(), arm_dir / "trl")
    trainer.train()
    return points


# ------------------------------------------------------------------------------------------ evaluation
def evaluate_points(spec: dict[str, Any], points: list[dict[str, Any]], baseline: list[float] | None) -> list[dict]:
    """Evaluate each checkpoint with :func:`imitalign.eval.evaluate.evaluate_model`: ``eval_n`` samples of every
    held-out prompt at the arm's temperature and length, gold reward r*, KL to π_0 from samples, distinct-2,
    win rate against π_0's samples (same prompts, seeds, sample indices)."""
    import torch

    from imitalign.eval.evaluate import evaluate_model
    from imitalign.gym.build import gold_rewards, read_jsonl

    prompts = [r["prompt"] for r in read_jsonl(spec["eval_prompts"])]
    pi0, tok = _load(spec["sft"])
    rows = []
    for pt in points:
        if "weights" in pt:
            model, _ = _load(spec["sft"])
            model.load_state_dict(pt.pop("weights"))
        else:
            model, _ = _load(pt["model"])
        t = time.perf_counter()
        with torch.no_grad():
            res = evaluate_model(model, tok, prompts, reward_fn=gold_rewards, reference_model=pi0,
                                 baseline_scores=baseline, n=spec["eval_n"], seed=spec["eval_seed"],
                                 temperature=spec["temperature"], max_new_tokens=spec["max_new_tokens"], batch_size=64)
        keep = ("gold_reward", "kl_to_reference", "distinct_2", "length", "win_rate_vs_baseline", "finished_fraction")
        row = {k: v for k, v in pt.items() if k != "model"}
        row.update({k: res[k] for k in keep if k in res})
        row["eval_seconds"] = time.perf_counter() - t
        row["scores"] = res["per_sample"]["score"]
        rows.append(row)
        g = res["gold_reward"]
        print(f"[{spec['name']}] step {pt['step']}: {pt['queries']} queries, {pt['seconds']:.1f} s → gold "
              f"{g['mean']:.4f} ± {g['se']:.4f}", flush=True)
    return rows


def thin(points: list[dict[str, Any]], keep: int) -> list[dict[str, Any]]:
    """At most ``keep`` checkpoints, evenly spread, always the last one."""
    if len(points) <= keep:
        return points
    idx = sorted({round(i * (len(points) - 1) / (keep - 1)) for i in range(keep)})
    return [points[i] for i in idx]


def run_arm(spec_path: Path) -> dict[str, Any]:
    import torch

    spec = json.loads(spec_path.read_text())
    arm_dir = spec_path.parent
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    load_before = os.getloadavg()[0]
    if spec["kind"] == "pi0":
        points = [{"step": 0, "queries": 0, "seconds": 0.0, "cpu_seconds": 0.0, "model": spec["sft"]}]
    elif spec["kind"] == "iterate":
        points = run_iterate_arm(spec, arm_dir)
    else:
        points = run_trl_arm(spec, arm_dir)
    train_load = (load_before + os.getloadavg()[0]) / 2
    baseline = None
    if spec.get("baseline"):
        baseline = json.loads(Path(spec["baseline"]).read_text())["points"][0]["scores"]
    rows = evaluate_points(spec, thin(points, spec["checkpoints"] + 1), baseline)
    if spec["kind"] != "pi0":
        pi0 = json.loads(Path(spec["baseline"]).read_text())["points"][0] if spec.get("baseline") else None
        rows = ([pi0] if pi0 else []) + rows
    result = {"name": spec["name"], "kind": spec["kind"], "params": spec["params"], "points": rows,
              "train_load": train_load, "threads": spec["threads"], "torch_threads": torch.get_num_threads()}
    (arm_dir / "result.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    run_arm(Path(sys.argv[1]))
