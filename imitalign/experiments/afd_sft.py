"""SFT on demonstrations (forward KL) vs the demonstrator's gold reward: ``imitalign afd gym-sft``."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from pathlib import Path

from imitalign.data.jsonl import read_jsonl
from imitalign.eval.metrics import mean_se
from imitalign.experiments.common import (
    DEFAULT_STYLES,
    PLAN,
    Base,
    GymPlan,
    as_mean_se,
    base,
    cached_eval,
    cell,
    evaluate,
    over_seeds,
    sft_model,
    styles_suffix,
)
from imitalign.gym.task import DEMO_VARIANTS, expert_response, stylize
from imitalign.loops.stages import write_json


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



def exp_sft(root: str | Path, plan: GymPlan = PLAN, seeds: int = 1, styles: Sequence[str] = DEFAULT_STYLES) -> str:
    """SFT on demonstrations (forward KL) vs the demonstrator's gold reward, plain and style-shifted demos (or the
    ``styles`` asked for; other styles than the default write ``afd_sft_<styles>.md``)."""
    rows: dict[str, list[tuple[float, float]]] = {}
    for seed in range(seeds):
        b = base(root, plan, seed)
        demo = demonstrator_gold(b)
        rows.setdefault("demonstrator (expert)", []).append(mean_se(demo))
        init = cached_eval(b.work / "eval_init.json", b.init, lambda b=b: evaluate(b.init, b, plan))
        rows.setdefault("π_init (base process)", []).append(as_mean_se(init["gold_reward"]))
        for style in styles:
            sft = sft_model(b, plan, style)
            res = cached_eval(b.work / f"eval_sft_{style}.json", sft, lambda s=sft, b=b: evaluate(s, b, plan))
            rows.setdefault(f"π_SFT on {style} demos", []).append(as_mean_se(res["gold_reward"]))
            ratio = as_mean_se(res["gold_reward"])[0] / statistics.fmean(demo)
            rows.setdefault(f"π_SFT on {style} demos ÷ demonstrator", []).append((ratio, math.nan))
    table = ["| policy | gold r* |", "|---|---|"]
    table += [f"| {name} | {cell(over_seeds(v))} |" for name, v in rows.items()]
    text = "\n".join(table)
    out = Path(root)
    (out / f"afd_sft{styles_suffix(styles)}.md").write_text(text + "\n")
    write_json(out / f"afd_sft{styles_suffix(styles)}.json", {k: [list(x) for x in v] for k, v in rows.items()})
    print(text)
    return text


