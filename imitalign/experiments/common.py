"""What the gym studies share: their plan, the base of every seed, cached evaluation, mean ± se over seeds,
tables.

The studies (one module each, one ``imitalign`` command each; every number with its standard error):

    imitalign afd gym-sft       [--seeds 3] [--out runs/afd_gym]   afd_sft: SFT on demonstrations vs the demonstrator
    imitalign afd gym-bon       [--seeds 3] [--styles plain,style] afd_bon: best-of-N curves per reward source
                                [--styles sorted]                   (the order style: content words sorted)
    imitalign afd gym-distill   [--seeds 3]                         afd_distill: distilled (SFT on winners, DPO on
                                                                    best-vs-worst) vs reranked
    imitalign afd gym-selfplay  [--seeds 3]                         afd_selfplay: SPIN and GSIL vs SFT
    imitalign iqlearn gym-frontier [--seeds 3] [--lams 0,0.1,0.3,1] iqlearn_frontier: λ sweep: gold vs diversity,
                                                                    cost per step, the recovered reward's rank
                                                                    correlation, α (semi-online and online arms)

All share one base per seed (``<out>/seed<s>/init``): the gym (:func:`imitalign.gym.build.build_gym`) and π_init,
a tiny Llama trained from scratch with MLE on the gym's base process (the "pretraining"). π_SFT is π_init
fine-tuned on the expert demonstrations (``expert.jsonl``, or the style-shifted ``expert_style.jsonl``: the same
demonstrations with style words the gold reward ignores; or ``expert_sorted.jsonl``, the same demonstrations with
their content words in alphabetical order, a style of the whole response that leaves word frequencies as they are,
written next to the gym by :func:`imitalign.gym.build.build_expert_variant`). Every stage writes ordinary files and
is reused when its configuration did not change, so an interrupted experiment resumes. Evaluation: samples on the
gym's held-out prompts, gold reward r* (mean ± se over prompts; with several seeds, mean over seeds ± se over seeds).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from imitalign.data.jsonl import read_jsonl, write_jsonl
from imitalign.gym.build import GymConfig, GymFiles, build_expert_variant, build_gym, gym_dir
from imitalign.gym.task import DEMO_VARIANTS
from imitalign.gym.tokenizer import tiny_llama_config
from imitalign.loops.afd import AfdConfig, TrainSpec, run_config
from imitalign.loops.bon import SamplingConfig
from imitalign.loops.stages import train_or_reuse, write_json

STYLES = ("plain", "style", *DEMO_VARIANTS)  # demonstration files: expert, expert_style, expert_<variant>
DEFAULT_STYLES = ("plain", "style")
THREADS = 1  # tiny models sample and train fastest on one intra-op thread on a shared 2-core machine


@dataclass(frozen=True)
class GymPlan:
    """Sizes and hyper-parameters of the gym experiments (small enough for a 2-core CPU)."""

    gym: GymConfig = field(
        default_factory=lambda: GymConfig(
            n_sft=8_000, n_expert=600, n_pref_prompts=0, n_online_prompts=400, n_eval_prompts=64
        )
    )
    model: dict[str, Any] = field(
        default_factory=lambda: tiny_llama_config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
    )
    init: TrainSpec = field(default_factory=lambda: TrainSpec(lr=3e-3, epochs=3, batch_size=64, num_threads=THREADS))
    sft: TrainSpec = field(default_factory=lambda: TrainSpec(lr=1e-3, epochs=4, batch_size=16, num_threads=THREADS))
    disc: TrainSpec = field(default_factory=lambda: TrainSpec(lr=1e-3, epochs=3, batch_size=32, num_threads=THREADS))
    pref: TrainSpec = field(default_factory=lambda: TrainSpec(lr=5e-4, epochs=2, batch_size=16, num_threads=THREADS))
    n_max: int = 64
    eval_n: int = 4
    max_new_tokens: int = 32
    sample_batch: int = 128
    max_length: int = 96


PLAN = GymPlan()


def say(msg: str) -> None:
    print(f"[afd-gym] {msg}", flush=True)


def sampling(plan: GymPlan) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=plan.max_new_tokens, batch_size=plan.sample_batch)


# ------------------------------------------------------------------------------------------ the base
@dataclass(frozen=True)
class Base:
    files: GymFiles
    work: Path  # <out>/seed<s>
    init: str  # π_init model folder
    seed: int


def base(root: str | Path, plan: GymPlan, seed: int) -> Base:
    """The gym (seed 0: the same task and data for every seed) and π_init of ``seed`` (reused when finished)."""
    torch.set_num_threads(THREADS)
    root = Path(root)
    gym_cfg = plan.gym.model_copy(update={"seed": 0})
    files = build_gym(gym_cfg, gym_dir(root / "gym", gym_cfg))
    work = root / f"seed{seed}"
    cfg = run_config(
        work / "init",
        {"config": plan.model, "tokenizer": str(files.tokenizer)},
        {"train": {"path": str(files.sft), "format": "demonstration"}, "eval_fraction": 0.05},
        "mle",
        plan.init,
        seed,
        chat_template="none",
        max_length=plan.max_length,
    )
    summary = train_or_reuse(cfg, say=say)
    return Base(files, work, str(summary["model_dir"]), seed)


def demos_path(b: Base, style: str) -> Path:
    if style == "plain":
        return b.files.expert
    if style == "style":
        assert b.files.expert_style is not None
        return b.files.expert_style
    if style in DEMO_VARIANTS:
        config = GymConfig.model_validate(json.loads(b.files.manifest.read_text())["config"])
        return build_expert_variant(config, b.files.root, style)
    raise ValueError(f"unknown demonstration style {style!r} ({', '.join(STYLES)})")


def afd_config(b: Base, plan: GymPlan, style: str, modes: Sequence[str] | None = None) -> AfdConfig:
    """The AfD pipeline of the gym on ``style`` demonstrations (π_SFT trained from π_init)."""
    raw: dict[str, Any] = {
        "demos": {"path": str(demos_path(b, style)), "format": "demonstration"},
        "init_model": b.init,
        "heldout_fraction": 0.1,
        "seed": b.seed,
        "sampling": sampling(plan).model_dump(),
        "sft": plan.sft.model_dump(),
        "discriminator": plan.disc.model_dump(),
        "chat_template": "none",
        "max_length": plan.max_length,
        "output_dir": str(b.work / f"afd_{style}"),
    }
    if modes is not None:
        raw["modes"] = list(modes)
    return AfdConfig.model_validate(raw)


def sft_model(b: Base, plan: GymPlan, style: str) -> str:
    """π_SFT on ``style`` demonstrations (the AfD pipeline's first stage)."""
    from imitalign.loops.afd import sft_policy

    return sft_policy(afd_config(b, plan, style))



def styles_suffix(styles: Sequence[str]) -> str:
    """Output-name suffix: none for the original styles (their tables keep their names), else ``_<styles>``."""
    return "" if all(s in DEFAULT_STYLES for s in styles) else "_" + "_".join(styles)


def evaluate(
    model_dir: str,
    b: Base,
    plan: GymPlan,
    *,
    reference: str | None = None,
    baseline: Sequence[float] | None = None,
    temperature: float = 1.0,
) -> dict[str, Any]:
    """``evaluate_model`` on the held-out prompts: gold, diversity, length, KL to ``reference``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from imitalign.eval.evaluate import evaluate_model
    from imitalign.gym.build import gold_rewards

    prompts = [r["prompt"] for r in read_jsonl(b.files.eval_prompts)]
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    ref = AutoModelForCausalLM.from_pretrained(reference).eval() if reference else None
    res = evaluate_model(
        model,
        tok,
        prompts,
        reward_fn=gold_rewards,
        reference_model=ref,
        baseline_scores=baseline,
        n=plan.eval_n,
        seed=b.seed + 1000,
        temperature=temperature,
        max_new_tokens=plan.max_new_tokens,
        batch_size=plan.sample_batch,
    )
    return res


def cached_eval(path: Path, model_dir: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``fn()`` unless ``path`` holds an evaluation of the same model weights."""
    from imitalign.loops.bon import model_id

    key = model_id(model_dir)
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("model_id") == key:
            return saved["result"]
    result = fn()
    write_json(path, {"model_id": key, "result": result})
    return result



def over_seeds(values: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Mean over seeds ± se over seeds; one seed: its own (mean, se)."""
    if len(values) == 1:
        return values[0]
    means = [m for m, _ in values]
    return statistics.fmean(means), statistics.stdev(means) / math.sqrt(len(means))


def as_mean_se(v: Any) -> tuple[float, float]:
    if isinstance(v, dict):
        return float(v["mean"]), float(v["se"]) if v.get("se") is not None else math.nan
    if isinstance(v, list | tuple):
        return float(v[0]), float(v[1]) if v[1] is not None else math.nan
    return float(v), math.nan


def cell(v: tuple[float, float]) -> str:
    m, se = v
    return f"{m:.3f}" if math.isnan(se) else f"{m:.3f} ± {se:.3f}"


# ------------------------------------------------------------------------------------------ policies and tables
def write_demo_rows(path: Path, rows: Sequence[dict[str, Any]]) -> Path:

    return write_jsonl(path, [{"prompt": r["prompt"], "response": r["response"]} for r in rows])


def train_stage(
    out: Path,
    init: str,
    data: dict[str, Any],
    objective: str,
    spec: TrainSpec,
    seed: int,
    plan: GymPlan,
    options: dict[str, Any] | None = None,
    reference: str | None = None,
) -> str:
    cfg = run_config(
        out,
        {"name_or_path": init},
        data,
        objective,
        spec,
        seed,
        chat_template="none",
        max_length=plan.max_length,
        options=options,
    )
    if reference is not None:
        cfg = cfg.model_copy(
            update={"reference": cfg.reference.model_copy(update={"mode": "copy", "name_or_path": reference})}
        )
    return str(train_or_reuse(cfg, say=say)["model_dir"])


def policy_row(name: str, res: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        **{
            k: as_mean_se(res[k])
            for k in ("gold_reward", "win_rate_vs_baseline", "kl_to_reference", "length")
            if k in res and res[k] is not None
        },
    }


def policy_table(rows: Sequence[dict[str, Any]]) -> str:
    heads = [
        ("gold_reward", "gold r*"),
        ("win_rate_vs_baseline", "win vs π_SFT"),
        ("kl_to_reference", "KL(π‖π_SFT)"),
        ("length", "length"),
    ]
    lines = ["| policy | " + " | ".join(h for _, h in heads) + " |", "|---|" + "---|" * len(heads)]
    for r in rows:
        lines.append(f"| {r['name']} | " + " | ".join(cell(r[k]) if k in r else "–" for k, _ in heads) + " |")
    return "\n".join(lines)



def aggregate_rows(per_seed: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Rows of the same name over seeds: mean over seeds ± se over seeds (one seed: its own se)."""
    out = []
    for r0 in per_seed[0]:
        same = [next(r for r in rows if r["name"] == r0["name"]) for rows in per_seed]
        out.append({"name": r0["name"], **{k: over_seeds([r[k] for r in same]) for k in r0 if k != "name"}})
    return out


