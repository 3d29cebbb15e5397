"""Distilling best-of-N into the policy vs reranking at the same N: ``imitalign afd gym-distill``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imitalign.data.jsonl import read_jsonl, write_jsonl
from imitalign.experiments.common import (
    PLAN,
    Base,
    GymPlan,
    afd_config,
    aggregate_rows,
    as_mean_se,
    base,
    cached_eval,
    evaluate,
    policy_row,
    policy_table,
    sampling,
    say,
    train_stage,
    write_demo_rows,
)
from imitalign.loops.afd import run_afd
from imitalign.loops.bon import BonConfig, run_bon


def _distill_seed(root: str | Path, plan: GymPlan, seed: int, n: int, rounds: int) -> tuple[list[dict[str, Any]], str]:
    """Distilling best-of-N with the init-SFT discriminator into the policy, compared with reranking at the same N:
    (a) SFT (MLE) from π_SFT on the best-of-n winners of π_SFT's samples on the gym's training prompts;
    (b) DPO (reference π_SFT) on best-vs-worst pairs of the same samples (``max_min`` of :mod:`imitalign.loops.pairs`);
    (c) (b) iterated through ``imitalign iterate`` (fresh samples of the current policy each round, reference π_SFT);
    against best-of-n reranking of π_SFT's samples on the held-out prompts (the same reward)."""
    b = base(root, plan, seed)
    afd = run_afd(afd_config(b, plan, "plain", modes=["init_sft"]))
    sft = afd["sft_model"]
    reward = next(r for r in afd["rewards"] if r["kind"] == "discriminator")
    work = b.work / "distill"
    winners_path, pairs_path, note = _distill_data(b, plan, seed, n, sft, reward, work)
    policies = _distilled_policies(b, plan, seed, n, rounds, sft, reward, work, winners_path, pairs_path)
    # evaluation (π_SFT's own evaluation is the baseline of the win rates)
    base_res = cached_eval(work / "eval_sft.json", sft, lambda: evaluate(sft, b, plan, reference=sft))
    baseline = base_res["per_sample"]["score"]
    table_rows = [policy_row("π_SFT (plain demos)", base_res)]
    for label, model in policies:
        res = cached_eval(
            work / f"eval_{Path(model).parent.name}.json",
            model,
            lambda m=model: evaluate(m, b, plan, reference=sft, baseline=baseline),
        )
        table_rows.append(policy_row(label, res))
    table_rows += _rerank_rows(b, plan, seed, n, sft, reward, work)
    return table_rows, note


def _distill_data(
    b: Base, plan: GymPlan, seed: int, n: int, sft: str, reward: dict[str, Any], work: Path
) -> tuple[Path, Path, str]:
    """Best-of-n of π_SFT on the training prompts, scored by the init-SFT discriminator: the winners (a
    demonstration file) and best-vs-worst pairs; returns both paths and the seed's note."""
    from imitalign.loops.bon import best_index, group_by_prompt
    from imitalign.loops.pairs import make_pairs

    run_bon(_bon_config(plan, sft, reward, b.files.online_prompts, [n], 1, seed + 11, work / "bon_train"))
    rows = read_jsonl(work / "bon_train" / "samples.scored.jsonl")
    name = reward["name"]
    scores = [r["scores"][name] for r in rows]
    winners = [rows[g[best_index([scores[i] for i in g], n)]] for g in group_by_prompt(rows)]
    winners_path = write_demo_rows(work / "winners.jsonl", winners)
    scored = [{**r, "score": r["scores"][name]} for r in rows]
    pairs, stats = make_pairs(scored, mode="max_min", tie_eps=1e-6, seed=seed)

    pairs_path = write_jsonl(work / "best_vs_worst.jsonl", pairs)
    say(f"distillation data: {len(winners)} winners, {stats.summary()}")
    note = f"seed {seed}: {len(winners)} training prompts × {n} samples; pairs: {stats.summary()}"
    return winners_path, pairs_path, note


def _distilled_policies(
    b: Base, plan: GymPlan, seed: int, n: int, rounds: int, sft: str, reward: dict[str, Any], work: Path,
    winners_path: Path, pairs_path: Path,
) -> list[tuple[str, str]]:
    """(label, model folder) of SFT on the winners, DPO on the pairs (two strengths), and DPO iterated."""
    from imitalign.loops.iterate import parse_iterate_config, run_iterate

    sft_winners = train_stage(
        work / "sft_winners",
        sft,
        {"train": {"path": str(winners_path), "format": "demonstration"}},
        "mle",
        plan.pref,
        seed,
        plan,
    )
    dpo = train_stage(
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
    gentle = train_stage(  # the same pairs, a stronger KL anchor and a tenth of the update
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
    iterated = run_iterate(it_cfg, say=say)
    last = str(Path(iterated.root) / f"round_{rounds}" / "train" / "model")
    return [
        (f"SFT on best-of-{n} winners", sft_winners),
        (f"DPO on best-vs-worst of {n} (β 0.1)", dpo),
        (f"DPO on best-vs-worst of {n} (β 0.5, lr/5, 1 epoch)", gentle),
        (f"DPO best-vs-worst, iterated ×{rounds}", last),
    ]


def _rerank_rows(
    b: Base, plan: GymPlan, seed: int, n: int, sft: str, reward: dict[str, Any], work: Path
) -> list[dict[str, Any]]:
    """Best-of-n reranking of π_SFT's samples at the same N on the held-out prompts (the same reward)."""
    name = reward["name"]
    table_rows = []
    rerank = run_bon(_bon_config(plan, sft, reward, b.files.eval_prompts, [1, n], 4, seed + 77, work / "bon_eval"))
    for r in rerank["results"]:
        if r["n"] == n:
            table_rows.append(
                {
                    "name": f"best-of-{n} reranking ({name})",
                    "gold_reward": as_mean_se(r["gold"]),
                    "win_rate_vs_baseline": as_mean_se(r["win_rate"]),
                    "length": as_mean_se(r["length"]),
                }
            )
    return table_rows



def exp_distill(root: str | Path, plan: GymPlan = PLAN, seeds: int = 1, n: int = 8, rounds: int = 2) -> str:
    """Distilled vs reranked (see :func:`_distill_seed`), over ``seeds`` seeds."""
    runs = [_distill_seed(root, plan, seed, n, rounds) for seed in range(seeds)]
    text = policy_table(aggregate_rows([rows for rows, _ in runs]))
    text += (
        f"\n\n{seeds} seed(s): mean over seeds ± se over seeds (one seed: ± se over prompts). Win rates are against "
        "π_SFT's samples of the same held-out prompts (ties ½).\n" + "\n".join(f"- {note}" for _, note in runs)
    )
    (Path(root) / "afd_distill.md").write_text(text + "\n")
    print(text)
    return text


def _bon_config(
    plan: GymPlan, sft: str, reward: dict[str, Any], prompts: Path, ns: list[int], baseline_n: int, seed: int,
    out: Path,
) -> BonConfig:
    """Best-of-``max(ns)`` of π_SFT on ``prompts`` with ``reward`` (N = ``ns``)."""
    return BonConfig.model_validate(
        {
            "model": sft,
            "prompts": {"path": str(prompts), "format": "prompt"},
            "rewards": [reward],
            "n_max": ns[-1],
            "ns": ns,
            "baseline_n": baseline_n,
            "seed": seed,
            "sampling": sampling(plan).model_dump(),
            "chat_template": "none",
            "max_length": plan.max_length,
            "output_dir": str(out),
        }
    )
