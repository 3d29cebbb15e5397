"""What every experiment on the gym starts from, and the run config of one training stage on it.

``prepare_base`` builds (or reuses) the gym, pretrains π_SFT — a tiny Llama trained from scratch with MLE on the
base process's demonstrations — and samples preference pairs from it labelled by Bradley–Terry on the gold
reward r*; ``Plan`` holds the sizes (``FULL``: the quickstart, ≤ 15 min on 2 cores; ``FAST``: CI). The
quickstart (``imitalign.experiments.quickstart``) and the ``gym:`` section of ``imitalign iterate`` configs use it;
``gym_run_config`` is the stage config of the quickstart, the AfD pipeline and the gym studies.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from imitalign.config import Config, load_config
from imitalign.gym.build import GymConfig, build_gym, gym_dir, make_preference_pairs, read_jsonl, write_jsonl
from imitalign.gym.tokenizer import tiny_llama_config
from imitalign.loops.stages import train_or_reuse


@dataclass(frozen=True)
class Plan:
    """Sizes and hyper-parameters of a quickstart; ``FULL`` (≤ 15 min on 2 cores) and ``FAST`` (CI)."""

    gym: GymConfig
    model: dict[str, Any]
    sft_epochs: float
    sft_lr: float
    sft_batch: int
    pref_lr: float
    pref_epochs: float
    demo_lr: float
    demo_epochs: float
    batch: int
    eval_n: int
    max_new_tokens: int = 32


FULL = Plan(
    gym=GymConfig(n_sft=20_000, n_expert=2_000, n_pref_prompts=2_000, n_eval_prompts=128),
    model=tiny_llama_config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4),
    sft_epochs=3,
    sft_lr=3e-3,
    sft_batch=64,
    pref_lr=1e-3,
    pref_epochs=2,
    demo_lr=1e-3,
    demo_epochs=2,
    batch=16,
    eval_n=4,
)
FAST = Plan(
    gym=GymConfig(n_sft=6_000, n_expert=600, n_pref_prompts=800, n_eval_prompts=64),
    model=tiny_llama_config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4),
    sft_epochs=2,
    sft_lr=3e-3,
    sft_batch=64,
    pref_lr=5e-4,
    pref_epochs=2,
    demo_lr=5e-4,
    demo_epochs=2,
    batch=16,
    eval_n=4,
)
# Tiny models run fastest on one intra-op thread (measured: sampling 4x faster than with 2 threads on a
# loaded 2-core machine); the quickstart pins it.
THREADS = 1


def _say(msg: str) -> None:
    print(f"[quickstart] {msg}", flush=True)


def gym_run_config(
    out: Path, model: dict[str, Any], data: dict[str, Any], objective: str, options: dict, train_kw: dict, seed: int
) -> Config:
    """The run config of one training stage on the gym (also used by the AfD and online loops): output in
    ``out``, plain-text rendering at ``max_length`` 96 unless ``data`` says otherwise, cosine schedule with
    10 % warm-up, gradient clipping 1.0, ``THREADS`` intra-op threads; ``train_kw`` overrides the train section."""
    raw = {
        "run": {"output_dir": str(out), "seed": seed},
        "model": model,
        "data": {"chat_template": "none", "max_length": 96, **data},
        "objective": {"name": objective, "options": options},
        "train": {"schedule": "cosine", "warmup_ratio": 0.1, "log_every": 10, "max_grad_norm": 1.0,
                  "num_threads": THREADS, **train_kw},
    }
    return load_config(None, raw=raw)


def load_model(model_dir: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)


def sample_pairs(sft_dir: Path, prompts: list[str], out: Path, seed: int, plan: Plan, n: int = 2) -> Path:
    """Two SFT samples per prompt, labelled by Bradley–Terry on r* (the gym's phase 2)."""
    if out.exists():
        return out
    from imitalign.generate.sampler import encode_prompts, sample, sample_rows

    model, tok = load_model(sft_dir)
    samples = sample(model, tok, encode_prompts(tok, prompts), n=n, seed=seed, max_new_tokens=plan.max_new_tokens,
                     batch_size=64, progress=True)
    rows = sample_rows(prompts, samples)
    write_jsonl(out.with_name(out.stem + "_samples.jsonl"), rows)
    pairs = make_preference_pairs(rows, seed=seed, bt_temperature=plan.gym.bt_temperature,
                                  label_noise=plan.gym.label_noise)
    write_jsonl(out, pairs)
    return out


@dataclass(frozen=True)
class GymBase:
    """What every gym experiment starts from: the gym files, the SFT model π_SFT (= π_0 of the online loops),
    preference pairs of SFT samples labelled by Bradley–Terry on r*, and held-out eval pairs."""

    files: Any  # GymFiles
    work: Path
    sft_dir: Path
    sft_summary: dict[str, Any]
    sft_seconds: float
    prefs: Path
    eval_pairs: Path


def prepare_base(root: Path, plan: Plan, seed: int) -> GymBase:
    """Build (or reuse) the gym, the SFT model and the offline pairs of ``seed`` under ``root``."""
    torch.set_num_threads(THREADS)
    gym_cfg = plan.gym.model_copy(update={"seed": 0})
    files = build_gym(gym_cfg, gym_dir(root / "gym", gym_cfg))
    _say(f"gym at {files.root} ({json.loads(files.manifest.read_text())['counts']})")
    work = root / f"seed{seed}"
    model_from_config = {"config": plan.model, "tokenizer": str(files.tokenizer)}

    t = time.perf_counter()
    sft_cfg = gym_run_config(
        work / "sft", model_from_config,
        {"train": {"path": str(files.sft), "format": "demonstration"}, "eval_fraction": 0.05},
        "mle", {}, {"lr": plan.sft_lr, "epochs": plan.sft_epochs, "batch_size": plan.sft_batch}, seed,
    )
    sft_summary = train_or_reuse(sft_cfg)
    sft_dir = Path(sft_cfg.run.output_dir) / "model"
    sft_seconds = time.perf_counter() - t
    pref_prompts = [r["prompt"] for r in read_jsonl(files.pref_prompts)]
    eval_prompts = [r["prompt"] for r in read_jsonl(files.eval_prompts)]
    prefs = sample_pairs(sft_dir, pref_prompts, work / "data" / "prefs.jsonl", seed, plan)
    eval_pairs_path = sample_pairs(sft_dir, eval_prompts, work / "data" / "eval_pairs.jsonl", seed + 500, plan)
    return GymBase(files, work, sft_dir, sft_summary, sft_seconds, prefs, eval_pairs_path)

