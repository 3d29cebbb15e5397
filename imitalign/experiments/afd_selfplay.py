"""SPIN and GSIL (self-play on demonstrations) vs SFT: ``imitalign afd gym-selfplay``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imitalign.data.jsonl import read_jsonl
from imitalign.experiments.common import (
    PLAN,
    GymPlan,
    aggregate_rows,
    base,
    cached_eval,
    evaluate,
    policy_row,
    policy_table,
    say,
    sft_model,
    train_stage,
)


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
        res = run_iterate(cfg, say=say)
        results[label] = str(Path(res.root) / f"round_{rounds}" / "train" / "model")
    more = train_stage(
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
    rows = [policy_row("π_SFT (plain demos)", base_res)]
    for label, model in (("SFT, more epochs on the demos", more), *results.items()):
        res = cached_eval(
            work / f"eval_{label.split()[0].lower()}.json",
            model,
            lambda m=model: evaluate(m, b, plan, reference=sft, baseline=baseline),
        )
        rows.append(policy_row(label, res))
    return rows


def exp_selfplay(root: str | Path, plan: GymPlan = PLAN, seeds: int = 1, rounds: int = 2) -> str:
    """SPIN and GSIL vs SFT (see :func:`_selfplay_seed`), over ``seeds`` seeds."""
    per_seed = [_selfplay_seed(root, plan, seed, rounds) for seed in range(seeds)]
    text = policy_table(aggregate_rows(per_seed)) + (
        f"\n\n{seeds} seed(s): mean over seeds ± se over seeds (one seed: ± se over prompts). {rounds} rounds, each "
        f"on {plan.gym.n_expert // rounds} demonstration prompts with one own sample; win rates against π_SFT's "
        "samples of the same held-out prompts."
    )
    (Path(root) / "afd_selfplay.md").write_text(text + "\n")
    print(text)
    return text


