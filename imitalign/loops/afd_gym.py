"""Learning from demonstrations on the gym: one command per experiment, every number with its standard error.

    imitalign afd gym-sft       [--seeds 3] [--out runs/afd_gym]   SFT on demonstrations vs the demonstrator
    imitalign afd gym-bon       [--seeds 3] [--styles plain,style] best-of-N curves per reward source
                                [--styles sorted]                   (the order style: content words sorted)
    imitalign afd gym-distill   [--seeds 3]                         distilled (SFT on winners, DPO on best-vs-worst)
                                                                    vs reranked
    imitalign afd gym-selfplay  [--seeds 3]                         SPIN and GSIL vs SFT
    imitalign iqlearn gym-frontier [--seeds 3] [--lams 0,0.1,0.3,1] λ sweep: gold vs diversity, cost per step,
                                                                    the recovered reward's rank correlation, α

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
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from imitalign.data.jsonl import read_jsonl, write_jsonl
from imitalign.eval.metrics import mean_se
from imitalign.gym.build import GymConfig, GymFiles, build_expert_variant, build_gym, gym_dir
from imitalign.gym.task import DEMO_VARIANTS, STYLE, ascending_share, expert_response, stylize
from imitalign.gym.tokenizer import tiny_llama_config
from imitalign.loops.afd import AfdConfig, TrainSpec, run_afd, run_config
from imitalign.loops.bon import BonConfig, SamplingConfig, plot_curves, run_bon
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


def _say(msg: str) -> None:
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
    summary = train_or_reuse(cfg, say=_say)
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


# ------------------------------------------------------------------------------------------ evaluation
def style_share(row: dict[str, Any]) -> dict[str, float]:
    """Share of a response's words that are style words (the gold reward ignores them)."""
    words = str(row["response"]).split()
    return {"style_share": sum(w in STYLE for w in words) / len(words) if words else 0.0}


def order_share(row: dict[str, Any]) -> dict[str, float]:
    """:func:`style_share` and the sorted style's measure: the share of adjacent content-word pairs in alphabetical
    order (:func:`imitalign.gym.task.ascending_share`; 1 for the sorted demonstrations, ½ by chance)."""
    return {**style_share(row), "order_share": ascending_share(str(row["response"]))}


def _suffix(styles: Sequence[str]) -> str:
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


def demonstrator_gold(b: Base, style: str = "plain") -> list[float]:
    """The demonstrator's gold reward on the held-out prompts: one expert response per prompt (seeded), in the
    same style as the demonstrations (r* ignores style, so both give the same numbers)."""
    from imitalign.gym.task import gold_reward

    rng, style_rng = random.Random(f"{b.seed}:demonstrator"), random.Random(f"{b.seed}:demonstrator-style")
    out = []
    for row in read_jsonl(b.files.eval_prompts):
        y = expert_response(row["prompt"], rng)
        if style == "style":
            y = stylize(y, style_rng)
        elif style in DEMO_VARIANTS:
            y = DEMO_VARIANTS[style](y)
        out.append(gold_reward(row["prompt"], y))
    return out


def over_seeds(values: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Mean over seeds ± se over seeds; one seed: its own (mean, se)."""
    if len(values) == 1:
        return values[0]
    means = [m for m, _ in values]
    return statistics.fmean(means), statistics.stdev(means) / math.sqrt(len(means))


def _ms(v: Any) -> tuple[float, float]:
    if isinstance(v, dict):
        return float(v["mean"]), float(v["se"]) if v.get("se") is not None else math.nan
    if isinstance(v, list | tuple):
        return float(v[0]), float(v[1]) if v[1] is not None else math.nan
    return float(v), math.nan


def _cell(v: tuple[float, float]) -> str:
    m, se = v
    return f"{m:.3f}" if math.isnan(se) else f"{m:.3f} ± {se:.3f}"


# ------------------------------------------------------------------------------------------ experiment 1
def exp_sft(root: str | Path, plan: GymPlan = PLAN, seeds: int = 1, styles: Sequence[str] = DEFAULT_STYLES) -> str:
    """SFT on demonstrations (forward KL) vs the demonstrator's gold reward, plain and style-shifted demos (or the
    ``styles`` asked for; other styles than the default write ``afd_sft_<styles>.md``)."""
    rows: dict[str, list[tuple[float, float]]] = {}
    for seed in range(seeds):
        b = base(root, plan, seed)
        demo = demonstrator_gold(b)
        rows.setdefault("demonstrator (expert)", []).append(mean_se(demo))
        init = cached_eval(b.work / "eval_init.json", b.init, lambda b=b: evaluate(b.init, b, plan))
        rows.setdefault("π_init (base process)", []).append(_ms(init["gold_reward"]))
        for style in styles:
            sft = sft_model(b, plan, style)
            res = cached_eval(b.work / f"eval_sft_{style}.json", sft, lambda s=sft, b=b: evaluate(s, b, plan))
            rows.setdefault(f"π_SFT on {style} demos", []).append(_ms(res["gold_reward"]))
            ratio = _ms(res["gold_reward"])[0] / statistics.fmean(demo)
            rows.setdefault(f"π_SFT on {style} demos ÷ demonstrator", []).append((ratio, math.nan))
    table = ["| policy | gold r* |", "|---|---|"]
    table += [f"| {name} | {_cell(over_seeds(v))} |" for name, v in rows.items()]
    text = "\n".join(table)
    out = Path(root)
    (out / f"afd_sft{_suffix(styles)}.md").write_text(text + "\n")
    write_json(out / f"afd_sft{_suffix(styles)}.json", {k: [list(x) for x in v] for k, v in rows.items()})
    print(text)
    return text


# ------------------------------------------------------------------------------------------ experiment 2
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
            _say(f"seed {seed}, {style} demonstrations: AfD reward models")
            summary = run_afd(afd_config(b, plan, style))
            for mode, info in summary["modes"].items():
                acc = info.get("eval", {}).get("accuracy")
                if acc is not None:
                    accuracy[style].setdefault(mode, []).append(acc)
            if style in shares:
                afd_dir = Path(afd_config(b, plan, style).output_dir)
                shares[style].append(_class_shares(afd_dir))
                sensitivity[style].append(style_sensitivity({**summary, "max_length": plan.max_length}, afd_dir, style))
            _say(f"seed {seed}, {style}: best-of-N sweep")
            extra = order_share if shares else style_share  # the default styles' outputs stay as they were
            res = run_bon(bon_config(b, plan, style, summary["rewards"], summary["sft_model"]), extra=extra)
            per[style].append(res["results"])
    panels: dict[str, list[dict[str, Any]]] = {}
    for style, runs in per.items():
        agg = []
        for r0 in runs[0]:
            same = [next(r for r in run if r["source"] == r0["source"] and r["n"] == r0["n"]) for run in runs]
            row = {"source": r0["source"], "n": r0["n"]}
            for key in ("gold", "win_rate", "proxy", "length", "style_share", "order_share"):
                if key in r0:
                    row[key] = over_seeds([_ms(r[key]) for r in same])
            agg.append(row)
        panels[f"{style} demos"] = agg
    out = Path(root)
    suffix = _suffix(styles)
    plot_curves(panels, out / f"afd_bon{suffix}.png", metrics=metrics)
    lines = [
        f"Seeds: {seeds} (cells: mean over seeds ± se over seeds; one seed: ± se over prompts). "
        f"N_max = {plan.n_max}, {plan.gym.n_eval_prompts} held-out prompts. "
        f"Wall {(time.perf_counter() - t0) / 60:.1f} min.",
        "",
    ]
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
                lines.append(f"| {name} | " + " | ".join(_cell(by[n][metric]) for n in ns) + " |")
            lines.append("")
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
            cells = [_cell(over_seeds([(r[name][k], math.nan) for r in runs])) for k in ("style_share", "order_share")]
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
            cells = [_cell(over_seeds([(r[mode][k], math.nan) for r in runs])) for k in keys]
            acc_lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    text = "\n".join(lines + acc_lines)
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


def sample_prompts(model: str, prompts_file: Path, n: int, seed: int, plan: GymPlan) -> list[dict[str, Any]]:
    """``n`` sample rows per prompt of ``prompts_file`` (any row format) from ``model``."""
    from imitalign.config import DataSource, ModelConfig
    from imitalign.generate.kshot import load_prompt_set
    from imitalign.loops.bon import draw
    from imitalign.model.load import load_tokenizer

    ps = load_prompt_set(
        DataSource(path=str(prompts_file)),
        load_tokenizer(ModelConfig(name_or_path=model)),
        chat_template="none",
        max_length=plan.max_length,
        max_new_tokens=plan.max_new_tokens,
    )
    return draw(model, ps.prompts, ps.prompt_ids, n, seed, sampling(plan))


# ------------------------------------------------------------------------------------------ experiment 3
def _write_demo_rows(path: Path, rows: Sequence[dict[str, Any]]) -> Path:

    return write_jsonl(path, [{"prompt": r["prompt"], "response": r["response"]} for r in rows])


def _train(
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
    return str(train_or_reuse(cfg, say=_say)["model_dir"])


def _policy_row(name: str, res: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        **{
            k: _ms(res[k])
            for k in ("gold_reward", "win_rate_vs_baseline", "kl_to_reference", "length")
            if k in res and res[k] is not None
        },
    }


def _policy_table(rows: Sequence[dict[str, Any]]) -> str:
    heads = [
        ("gold_reward", "gold r*"),
        ("win_rate_vs_baseline", "win vs π_SFT"),
        ("kl_to_reference", "KL(π‖π_SFT)"),
        ("length", "length"),
    ]
    lines = ["| policy | " + " | ".join(h for _, h in heads) + " |", "|---|" + "---|" * len(heads)]
    for r in rows:
        lines.append(f"| {r['name']} | " + " | ".join(_cell(r[k]) if k in r else "–" for k, _ in heads) + " |")
    return "\n".join(lines)


def _distill_seed(root: str | Path, plan: GymPlan, seed: int, n: int, rounds: int) -> tuple[list[dict[str, Any]], str]:
    """Distilling best-of-N with the init-SFT discriminator into the policy, compared with reranking at the same N:
    (a) SFT (MLE) from π_SFT on the best-of-n winners of π_SFT's samples on the gym's training prompts;
    (b) DPO (reference π_SFT) on best-vs-worst pairs of the same samples (``max_min`` of :mod:`imitalign.loops.pairs`);
    (c) (b) iterated through ``imitalign iterate`` (fresh samples of the current policy each round, reference π_SFT);
    against best-of-n reranking of π_SFT's samples on the held-out prompts (the same reward)."""
    from imitalign.loops.bon import best_index, group_by_prompt
    from imitalign.loops.iterate import parse_iterate_config, run_iterate
    from imitalign.loops.pairs import make_pairs

    b = base(root, plan, seed)
    afd = run_afd(afd_config(b, plan, "plain", modes=["init_sft"]))
    sft = afd["sft_model"]
    reward = next(r for r in afd["rewards"] if r["kind"] == "discriminator")
    work = b.work / "distill"
    # best-of-n of π_SFT on the training prompts, scored by the init-SFT discriminator
    train_bon = BonConfig.model_validate(
        {
            "model": sft,
            "prompts": {"path": str(b.files.online_prompts), "format": "prompt"},
            "rewards": [reward],
            "n_max": n,
            "ns": [n],
            "baseline_n": 1,
            "seed": seed + 11,
            "sampling": sampling(plan).model_dump(),
            "chat_template": "none",
            "max_length": plan.max_length,
            "output_dir": str(work / "bon_train"),
        }
    )
    run_bon(train_bon)
    rows = read_jsonl(work / "bon_train" / "samples.scored.jsonl")
    name = reward["name"]
    scores = [r["scores"][name] for r in rows]
    winners = [rows[g[best_index([scores[i] for i in g], n)]] for g in group_by_prompt(rows)]
    winners_path = _write_demo_rows(work / "winners.jsonl", winners)
    scored = [{**r, "score": r["scores"][name]} for r in rows]
    pairs, stats = make_pairs(scored, mode="max_min", tie_eps=1e-6, seed=seed)

    pairs_path = write_jsonl(work / "best_vs_worst.jsonl", pairs)
    _say(f"distillation data: {len(winners)} winners, {stats.summary()}")
    sft_winners = _train(
        work / "sft_winners",
        sft,
        {"train": {"path": str(winners_path), "format": "demonstration"}},
        "mle",
        plan.pref,
        seed,
        plan,
    )
    dpo = _train(
        work / "dpo_best_worst",
        sft,
        {"train": {"path": str(pairs_path), "format": "preference"}},
        "dpo",
        plan.pref,
        seed,
        plan,
        options={"beta": 0.1},
        reference=sft,
    )
    gentle = _train(  # the same pairs, a stronger KL anchor and a tenth of the update
        work / "dpo_best_worst_gentle",
        sft,
        {"train": {"path": str(pairs_path), "format": "preference"}},
        "dpo",
        plan.pref.model_copy(update={"lr": plan.pref.lr / 5, "epochs": 1.0}),
        seed,
        plan,
        options={"beta": 0.5},
        reference=sft,
    )
    it_cfg = parse_iterate_config(
        {
            "run": {"output_dir": str(work / "iterate"), "seed": seed},
            "policy": sft,
            "rounds": rounds,
            "prompts": {
                "source": {"path": str(b.files.online_prompts)},
                "per_round": plan.gym.n_online_prompts // rounds,
            },
            "generate": {"k": n, "max_new_tokens": plan.max_new_tokens, "batch_size": plan.sample_batch},
            "reward": reward,
            "pairs": {"mode": "max_min"},
            "train": {
                "objective": {"name": "dpo", "options": {"beta": 0.1}},
                "train": {**{k: v for k, v in plan.pref.model_dump().items() if v is not None}},
                "data": {"chat_template": "none", "max_length": plan.max_length},
            },
        }
    )
    iterated = run_iterate(it_cfg, say=_say)
    last = str(Path(iterated.root) / f"round_{rounds}" / "train" / "model")
    # evaluation (π_SFT's own evaluation is the baseline of the win rates)
    base_res = cached_eval(work / "eval_sft.json", sft, lambda: evaluate(sft, b, plan, reference=sft))
    baseline = base_res["per_sample"]["score"]
    table_rows = [_policy_row("π_SFT (plain demos)", base_res)]
    for label, model in (
        (f"SFT on best-of-{n} winners", sft_winners),
        (f"DPO on best-vs-worst of {n} (β 0.1)", dpo),
        (f"DPO on best-vs-worst of {n} (β 0.5, lr/5, 1 epoch)", gentle),
        (f"DPO best-vs-worst, iterated ×{rounds}", last),
    ):
        res = cached_eval(
            work / f"eval_{Path(model).parent.name}.json",
            model,
            lambda m=model: evaluate(m, b, plan, reference=sft, baseline=baseline),
        )
        table_rows.append(_policy_row(label, res))
    # reranking at the same N on the held-out prompts (the gym-bon samples when they exist)
    rerank = run_bon(
        BonConfig.model_validate(
            {
                "model": sft,
                "prompts": {"path": str(b.files.eval_prompts), "format": "prompt"},
                "rewards": [reward],
                "n_max": n,
                "ns": [1, n],
                "baseline_n": 4,
                "seed": seed + 77,
                "sampling": sampling(plan).model_dump(),
                "chat_template": "none",
                "max_length": plan.max_length,
                "output_dir": str(work / "bon_eval"),
            }
        )
    )
    for r in rerank["results"]:
        if r["n"] == n:
            table_rows.append(
                {
                    "name": f"best-of-{n} reranking ({name})",
                    "gold_reward": _ms(r["gold"]),
                    "win_rate_vs_baseline": _ms(r["win_rate"]),
                    "length": _ms(r["length"]),
                }
            )
    note = f"seed {seed}: {len(winners)} training prompts × {n} samples; pairs: {stats.summary()}"
    return table_rows, note


def _aggregate(per_seed: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Rows of the same name over seeds: mean over seeds ± se over seeds (one seed: its own se)."""
    out = []
    for r0 in per_seed[0]:
        same = [next(r for r in rows if r["name"] == r0["name"]) for rows in per_seed]
        out.append({"name": r0["name"], **{k: over_seeds([r[k] for r in same]) for k in r0 if k != "name"}})
    return out


def exp_distill(root: str | Path, plan: GymPlan = PLAN, seeds: int = 1, n: int = 8, rounds: int = 2) -> str:
    """Distilled vs reranked (see :func:`_distill_seed`), over ``seeds`` seeds."""
    runs = [_distill_seed(root, plan, seed, n, rounds) for seed in range(seeds)]
    text = _policy_table(_aggregate([rows for rows, _ in runs]))
    text += (
        f"\n\n{seeds} seed(s): mean over seeds ± se over seeds (one seed: ± se over prompts). Win rates are against "
        "π_SFT's samples of the same held-out prompts (ties ½).\n" + "\n".join(f"- {note}" for _, note in runs)
    )
    (Path(root) / "afd_distill.md").write_text(text + "\n")
    print(text)
    return text


# ------------------------------------------------------------------------------------------ experiment 4
def _selfplay_seed(root: str | Path, plan: GymPlan, seed: int, rounds: int) -> list[dict[str, Any]]:
    """SPIN (DPO; demonstration chosen, own sample rejected; reference = the previous iterate) and GSIL (DIL-BCE on
    the same pairs), both through ``imitalign iterate`` with ``pairs.mode: self_play``, from π_SFT, against π_SFT and
    against SFT trained for as many more epochs on the same demonstrations."""
    from imitalign.loops.iterate import parse_iterate_config, run_iterate

    b = base(root, plan, seed)
    sft = sft_model(b, plan, "plain")
    work = b.work / "selfplay"
    demos = str(b.files.expert)
    n_prompts = len(read_jsonl(b.files.expert))
    per_round = n_prompts // rounds
    results = {}
    for label, objective, options in (("SPIN (DPO)", "dpo", {"beta": 0.1}), ("GSIL (DIL-BCE)", "dil_bce", {})):
        cfg = parse_iterate_config(
            {
                "run": {"output_dir": str(work / objective), "seed": seed},
                "policy": sft,
                "rounds": rounds,
                "prompts": {"source": {"path": demos}, "per_round": per_round},
                "generate": {"k": 1, "max_new_tokens": plan.max_new_tokens, "batch_size": plan.sample_batch},
                "reward": {"kind": "gold"},
                "pairs": {"mode": "self_play", "demos": {"path": demos}},
                "reference": "previous",
                "train": {
                    "objective": {"name": objective, "options": options},
                    "train": {**{k: v for k, v in plan.pref.model_dump().items() if v is not None}},
                    "data": {"chat_template": "none", "max_length": plan.max_length},
                },
            }
        )
        res = run_iterate(cfg, say=_say)
        results[label] = str(Path(res.root) / f"round_{rounds}" / "train" / "model")
    more = _train(
        work / "sft_more",
        sft,
        {"train": {"path": demos, "format": "demonstration"}},
        "mle",
        plan.pref.model_copy(update={"epochs": plan.pref.epochs * rounds / 2}),
        seed,
        plan,
    )
    base_res = cached_eval(work / "eval_sft.json", sft, lambda: evaluate(sft, b, plan, reference=sft))
    baseline = base_res["per_sample"]["score"]
    rows = [_policy_row("π_SFT (plain demos)", base_res)]
    for label, model in (("SFT, more epochs on the demos", more), *results.items()):
        res = cached_eval(
            work / f"eval_{label.split()[0].lower()}.json",
            model,
            lambda m=model: evaluate(m, b, plan, reference=sft, baseline=baseline),
        )
        rows.append(_policy_row(label, res))
    return rows


def exp_selfplay(root: str | Path, plan: GymPlan = PLAN, seeds: int = 1, rounds: int = 2) -> str:
    """SPIN and GSIL vs SFT (see :func:`_selfplay_seed`), over ``seeds`` seeds."""
    per_seed = [_selfplay_seed(root, plan, seed, rounds) for seed in range(seeds)]
    text = _policy_table(_aggregate(per_seed)) + (
        f"\n\n{seeds} seed(s): mean over seeds ± se over seeds (one seed: ± se over prompts). {rounds} rounds, each "
        f"on {plan.gym.n_expert // rounds} demonstration prompts with one own sample; win rates against π_SFT's "
        "samples of the same held-out prompts."
    )
    (Path(root) / "afd_selfplay.md").write_text(text + "\n")
    print(text)
    return text


# ------------------------------------------------------------------------------------------ experiment 5
def ms_per_step(run_dir: Path) -> float:
    """Wall milliseconds per optimiser step between the first and the last logged training step."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    pts = [(r["step"], r["time"]) for r in rows if "train/loss" in r and "time" in r]
    if len(pts) < 2:
        return math.nan
    (s0, t0), (s1, t1) = pts[0], pts[-1]
    return 1000.0 * (t1 - t0) / max(s1 - s0, 1)


def exp_iqlearn(
    root: str | Path,
    plan: GymPlan = PLAN,
    seeds: int = 1,
    lams: Sequence[float] = (0.0, 0.1, 0.3, 1.0),
    alphas: Sequence[float] = (0.2,),
    mle_temperatures: Sequence[float] = (1.25, 1.5),
) -> str:
    """IQLearn on the expert demonstrations from π_init: for each λ (λ = 0 runs objective ``mle``) and, at the
    second λ, each online α — semi-online (own samples: one π_init sample per demonstration prompt, drawn once) and
    online (:func:`online_iqlearn`: one sample per demonstration prompt re-drawn from the current policy before
    every epoch, through ``imitalign iterate`` with ``pairs.mode: own_samples``) — gold reward, Self-BLEU,
    distinct-1/2, entropy, ms per optimiser step, and the Spearman correlation of the recovered reward
    Σ_t log π + V(s_t) − γV(s_{t+1}) with gold on a pool of π_init samples of the held-out prompts. MLE sampled at
    higher temperatures (``mle_temperatures``) traces MLE's own reward/diversity trade-off to compare with."""

    variants: list[tuple[str, float, float, float, bool]] = [
        (f"λ={lam:g}" + (" (MLE)" if lam == 0 else ""), lam, 0.0, 1.0, False) for lam in lams
    ]
    lam_online = lams[1] if len(lams) > 1 else lams[0]
    for a in (a for a in alphas if a > 0):
        variants.append((f"λ={lam_online:g}, α={a:g} (semi-online: π_init samples)", lam_online, a, 1.0, False))
        variants.append((f"λ={lam_online:g}, α={a:g} (online: re-sampled every epoch)", lam_online, a, 1.0, True))
    variants += [(f"λ=0 (MLE), sampled at T={t:g}", 0.0, 0.0, t, False) for t in mle_temperatures]
    per: dict[str, list[dict[str, Any]]] = {}
    for seed in range(seeds):
        b = base(root, plan, seed)
        work = b.work / "iqlearn"
        demos = read_jsonl(b.files.expert)
        own_path = work / "own_samples_init.jsonl"
        if not own_path.is_file():  # the policy's own samples at the start: one π_init sample per demo prompt
            own = sample_prompts(b.init, b.files.expert, 1, seed + 31, plan)
            _write_demo_rows(own_path, [r for r in own if r["response"].strip()])
        pool_path = work / "pool.jsonl"
        if not pool_path.is_file():  # 8 π_init samples per held-out prompt, with their gold reward
            from imitalign.gym.build import gold_rewards

            pool = sample_prompts(b.init, b.files.eval_prompts, 8, seed + 41, plan)
            for r, g in zip(pool, gold_rewards(pool), strict=True):
                r["gold"] = g
            write_jsonl(pool_path, pool)
        pool = read_jsonl(pool_path)
        for label, lam, alpha, temp, online in variants:
            if online:
                tag = f"lam{lam:g}_a{alpha:g}_online"
                model, run_dir = online_iqlearn(work / tag, b, plan, seed, lam, alpha)
                res = cached_eval(work / f"eval_{tag}.json", model, lambda m=model, b=b: evaluate(m, b, plan))
                per.setdefault(label, []).append(_frontier_row(res, run_dir, model, pool, plan, len(demos)))
                continue
            data: dict[str, Any] = {
                "train": {"path": str(b.files.expert), "format": "demonstration"},
                "eval_fraction": 0.05,
            }
            if alpha > 0:
                data["policy_samples"] = {"path": str(own_path), "format": "demonstration"}
            objective = "mle" if lam == 0 else "iqlearn"
            options = {} if lam == 0 else {"lam": lam, "alpha": alpha}
            tag = "mle" if lam == 0 else f"lam{lam:g}_a{alpha:g}"
            model = _train(work / tag, b.init, data, objective, plan.sft, seed, plan, options=options)
            suffix = "" if temp == 1.0 else f"_T{temp:g}"
            res = cached_eval(
                work / f"eval_{tag}{suffix}.json",
                model,
                lambda m=model, b=b, t=temp: evaluate(m, b, plan, temperature=t),
            )
            per.setdefault(label, []).append(_frontier_row(res, work / tag, model, pool, plan, len(demos)))
    keys = [
        ("gold", "gold r*"),
        ("self_bleu", "self-BLEU ↓"),
        ("distinct_2", "distinct-2 ↑"),
        ("entropy", "entropy"),
        ("length", "length"),
        ("ms_per_step", "ms/step"),
        ("rho_pooled", "ρ(r̂, r*) pooled"),
        ("rho_within", "ρ within prompt"),
    ]
    agg = {label: {k: over_seeds([r[k] for r in runs]) for k, _ in keys} for label, runs in per.items()}
    lines = [
        f"Seeds: {seeds}. IQLearn from π_init on {plan.gym.n_expert} expert demonstrations "
        f"({plan.sft.epochs:g} epochs, lr {plan.sft.lr:g}); ρ: Spearman of the recovered reward (γ = 1) with "
        "r* on 8 π_init samples of each held-out prompt (the same for every sampling temperature of a model).",
        "",
        "| variant | " + " | ".join(h for _, h in keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for label, vals in agg.items():
        lines.append(
            f"| {label} | "
            + " | ".join(_cell(vals[k]) if k != "ms_per_step" else f"{vals[k][0]:.1f}" for k, _ in keys)
            + " |"
        )
    text = "\n".join(lines)
    out = Path(root)
    (out / "iqlearn_frontier.md").write_text(text + "\n")
    write_json(out / "iqlearn_frontier.json", {k: {kk: list(vv) for kk, vv in v.items()} for k, v in agg.items()})
    _plot_frontier(agg, out / "iqlearn_frontier.png")
    print(text)
    return text


def online_iqlearn(out: Path, b: Base, plan: GymPlan, seed: int, lam: float, alpha: float) -> tuple[str, Path]:
    """Fully online IQLearn from π_init: ``plan.sft.epochs`` rounds of ``imitalign iterate`` (``pairs.mode:
    own_samples``), each sampling one response per demonstration prompt from the current policy and training one
    epoch of iqlearn(λ, α) on all demonstrations with those samples in the TD term (warm start; each round's
    learning-rate schedule starts again). Returns the final model and its last training run's folder."""
    from imitalign.loops.iterate import parse_iterate_config, run_iterate

    rounds = max(1, round(plan.sft.epochs))
    demos = str(b.files.expert)
    spec = plan.sft.model_copy(update={"epochs": plan.sft.epochs / rounds})
    data = {"train": {"path": demos, "format": "demonstration"}, "eval_fraction": 0.05}
    options = {"lam": lam, "alpha": alpha}
    # the train section the other arms get (run_config), with one epoch per round
    one_run = run_config(out, {"name_or_path": b.init}, data, "iqlearn", spec, seed, chat_template="none",
                         max_length=plan.max_length, options=options)
    cfg = parse_iterate_config(
        {
            "run": {"output_dir": str(out), "seed": seed},
            "policy": b.init,
            "rounds": rounds,
            "prompts": {"source": {"path": demos}, "per_round": len(read_jsonl(b.files.expert)), "fresh": False},
            "generate": {"k": 1, "max_new_tokens": plan.max_new_tokens, "batch_size": plan.sample_batch},
            "pairs": {"mode": "own_samples", "demos": {"path": demos}},
            "train": {
                "objective": {"name": "iqlearn", "options": options},
                "train": one_run.train.model_dump(mode="json", exclude_defaults=True),
                "data": {"chat_template": "none", "max_length": plan.max_length, "eval_fraction": 0.05},
            },
        }
    )
    res = run_iterate(cfg, say=_say)
    last = Path(res.root) / f"round_{rounds}" / "train"
    return str(last / "model"), last


def _frontier_row(
    res: dict[str, Any], run_dir: Path, model: str, pool: list[dict[str, Any]], plan: GymPlan, n_demos: int
) -> dict[str, Any]:
    """One model's cells of the IQLearn frontier table: its evaluation, training cost per step, and the rank
    correlation of its recovered reward with gold on the pool of π_init samples."""
    from imitalign.reward import load_reward
    from imitalign.reward.iq_reward import spearman, within_group_spearman

    src = load_reward({"kind": "iqlearn", "path": model, "chat_template": "none", "max_length": plan.max_length})
    r_hat = src.score([{"prompt": r["prompt"], "response": r["response"]} for r in pool])
    gold = [r["gold"] for r in pool]
    rho_w = within_group_spearman(r_hat, gold, [r["prompt_index"] for r in pool])
    return {
        "gold": _ms(res["gold_reward"]),
        "self_bleu": _ms(res["self_bleu"]),
        "distinct_1": (res["distinct_1"], math.nan),
        "distinct_2": (res["distinct_2"], math.nan),
        "entropy": (res["token_entropy"], math.nan),
        "length": _ms(res["length"]),
        "ms_per_step": (ms_per_step(run_dir), math.nan),
        "rho_pooled": (spearman(r_hat, gold), math.nan),
        "rho_within": (rho_w[0], rho_w[1]),
        "demos": n_demos,
    }


def _plot_frontier(agg: dict[str, dict[str, tuple[float, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    for label, v in agg.items():
        for ax, key in ((axes[0], "self_bleu"), (axes[1], "distinct_2")):
            (x, xe), (y, ye) = v[key], v["gold"]
            ax.errorbar(x, y, xerr=0 if math.isnan(xe) else xe, yerr=0 if math.isnan(ye) else ye, fmt="o", capsize=3)
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    axes[0].set_xlabel("Self-BLEU among a prompt's samples (lower = more diverse)")
    axes[1].set_xlabel("distinct-2 (higher = more diverse)")
    for ax in axes[:2]:
        ax.set_ylabel("gold reward r*")
        ax.grid(alpha=0.3)
    labels = list(agg)
    axes[2].barh(labels, [agg[k]["ms_per_step"][0] for k in labels])
    axes[2].set_xlabel("training ms per optimiser step")
    axes[2].invert_yaxis()
    fig.suptitle("IQLearn λ sweep on the gym (λ = 0: MLE)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
