"""The bodies of the stages of ``imitalign iterate`` that run in the loop's own process — a round's prompts, the
samples of π_{t-1} (with an enhancer share), the pairs or accepted samples, the offline baseline's training file,
an evaluation — each writing its round's files (the loop that decides which stages run is
:mod:`imitalign.loops.iterate`; the stages that can run as launched jobs are :mod:`imitalign.loops.stage_jobs`).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from imitalign.loops.iterate_config import IterateConfig
from imitalign.loops.iterate_preflight import (
    LoopError,
    Preflight,
    data_section,
    demos,
    load_prompts,
    policy_samples_path,
)
from imitalign.loops.launch import fault_point
from imitalign.loops.pairs import OWN_SAMPLES, SELF_PLAY, make_pairs, own_sample_data, self_play_pairs
from imitalign.loops.rejection import accept
from imitalign.loops.scoring import read_rows, write_rows
from imitalign.loops.stages import write_json
from imitalign.processes import is_main
from imitalign.reward.base import score_rows


def _round_prompts(cfg: IterateConfig, n: int, t: int) -> list[int]:
    """The prompt indices of round ``t``: a fresh slice of the (seeded) order, or the first one again."""
    import random

    order = list(range(n))
    if cfg.prompts.shuffle:
        random.Random(f"{cfg.run.seed}:prompts").shuffle(order)
    start = (t - 1) * cfg.prompts.per_round if cfg.prompts.fresh else 0
    return [order[(start + i) % n] for i in range(cfg.prompts.per_round)]


def load_causal(path: str) -> Any:
    """A causal LM for evaluation, on the GPU when there is one."""
    import torch
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return AutoModelForCausalLM.from_pretrained(path).to(device).eval()


def _evaluate(
    cfg: IterateConfig, pf: Preflight, model_dir: str, pi0: Any, baseline: list[float] | None
) -> dict[str, Any]:
    from imitalign.eval.evaluate import evaluate_model

    assert cfg.eval is not None and pf.eval_reward is not None
    side: list[float] = []

    def reward_fn(rows: list[dict[str, Any]]) -> list[float]:
        if pf.side_reward is not None:
            side.extend(score_rows(pf.side_reward, rows))
        return score_rows(pf.eval_reward, rows)  # type: ignore[arg-type]

    model = load_causal(model_dir)
    res = evaluate_model(
        model,
        pf.tokenizer,
        pf.eval_prompts.prompts,
        prompt_ids=pf.eval_prompts.prompt_ids,
        reward_fn=reward_fn,
        reference_model=pi0,
        baseline_scores=baseline,
        heldout_pairs=pf.eval_pairs or None,
        n=cfg.eval.n,
        seed=cfg.eval.seed,
        temperature=cfg.eval.temperature,
        max_new_tokens=cfg.eval.max_new_tokens or cfg.generate.max_new_tokens,
        batch_size=cfg.eval.batch_size,
    )
    if side:
        from imitalign.eval.metrics import cluster_mean_se

        m, se = cluster_mean_se(side, res["per_sample"]["prompt_index"])
        res["loop_reward"] = {"mean": m, "se": se}
    return res


def eval_stage(
    cfg: IterateConfig, pf: Preflight, model_dir: str, pi0: Any, baseline: list[float] | None, rd: Path
) -> None:
    """``eval.json`` of ``model_dir`` (:func:`imitalign.eval.evaluate.evaluate_model` on the eval prompts, π_0 the
    reference of the KL, ``baseline`` π_0's scores for the win rate) with the seconds it took."""
    t0 = time.perf_counter()
    res = _evaluate(cfg, pf, model_dir, pi0, baseline)
    res["seconds"] = time.perf_counter() - t0
    write_json(rd / "eval.json", res)


def sample_stage(cfg: IterateConfig, rd: Path, t: int, model: str, pi0: str) -> dict[str, Any]:
    """``samples.jsonl`` of round ``t``: K samples per prompt of ``prompts.jsonl`` from ``model`` (π_{t-1}), or
    K·(1 − fraction) from it and the rest from the enhancer (merged, the enhancer's after the policy's); returns
    ``{"generation": stats}`` (empty on the processes other than the main one when there is an enhancer)."""
    from imitalign.config import ModelConfig
    from imitalign.generate.kshot import generate_k
    from imitalign.model.load import load_tokenizer

    g = cfg.generate
    tok = load_tokenizer(ModelConfig(name_or_path=model))
    prompts = load_prompts(str(rd / "prompts.jsonl"), tok, data_section(cfg), g.max_new_tokens)
    seed = cfg.run.seed * 1000 + t
    common = {
        "top_p": g.top_p,
        "max_new_tokens": g.max_new_tokens,
        "batch_size": g.batch_size,
        "backend": g.backend,
        "dtype": g.dtype,
        "tensor_parallel_size": g.tensor_parallel_size,
        "after_shard": lambda: fault_point("generate", t),
    }
    if g.enhancer is None:
        st = generate_k(
            model,
            prompts,
            rd / "samples.jsonl",
            k=g.k,
            temperature=g.temperature,
            seed=seed,
            policy=f"pi_{t - 1}",
            **common,
        )
        return {"generation": st.to_dict()}
    k_e = round(g.enhancer.fraction * g.k)
    k_p = g.k - k_e
    enh_model = pi0 if g.enhancer.policy == "initial" else model
    st_p = generate_k(
        model,
        prompts,
        rd / "samples_policy.jsonl",
        k=k_p,
        temperature=g.temperature,
        seed=seed,
        policy=f"pi_{t - 1}",
        **common,
    )
    st_e = generate_k(
        enh_model,
        prompts,
        rd / "samples_enhancer.jsonl",
        k=k_e,
        temperature=g.enhancer.temperature or g.temperature,
        seed=seed + 500_000,
        policy="enhancer",
        **common,
    )
    if not is_main():  # the main process merges the two files
        return {}
    return {"generation": _merge_enhancer(rd, k_p, st_p, st_e, {"k": k_e, "policy": g.enhancer.policy})}


def _merge_enhancer(rd: Path, k_p: int, st_p: Any, st_e: Any, enhancer: dict[str, Any]) -> dict[str, Any]:
    """``samples.jsonl`` from the policy's and the enhancer's samples (the enhancer's ``sample_idx`` shifted by
    ``k_p``, rows by prompt then index) and the merged generation stats."""
    rows = read_rows(rd / "samples_policy.jsonl")
    for row in read_rows(rd / "samples_enhancer.jsonl"):
        rows.append({**row, "sample_idx": row["sample_idx"] + k_p})
    rows.sort(key=lambda r: (r["prompt_index"], r["sample_idx"]))
    write_rows(rd / "samples.jsonl", rows)
    merged = st_p.to_dict()
    merged.update(tokens=st_p.tokens + st_e.tokens, seconds=st_p.seconds + st_e.seconds, samples=len(rows))
    merged["tokens_per_s"] = merged["tokens"] / merged["seconds"] if merged["seconds"] else 0.0
    merged["enhancer"] = {**enhancer, **st_e.to_dict()}
    return merged


def select_stage(cfg: IterateConfig, rd: Path, t: int, rows: list[dict[str, Any]]) -> tuple[Path, dict[str, Any]]:
    """Pairs (or accepted samples) of round ``t``: the training file and its stats."""
    seed = cfg.run.seed * 1000 + t
    info: dict[str, Any] = {}
    if cfg.rejection is not None:
        eta = cfg.rejection.step_eta(t)
        accepted, st = accept(rows, eta=eta, method=cfg.rejection.acceptance, seed=seed)
        info["rejection"] = {"eta_target": cfg.rejection.etas[t - 1], "eta_step": eta, **st}
        write_rows(rd / "accepted.jsonl", accepted)
        if not accepted:
            raise LoopError(f"round {t}: no sample was accepted")
        if cfg.rejection.form == "sft":
            out = write_rows(
                rd / "train_data.jsonl",
                [{"prompt": r["prompt"], "response": r["response"], "score": r["score"]} for r in accepted],
            )
            info["train_examples"] = len(accepted)
            return out, info
        rows = accepted
        pairs, pst = make_pairs(rows, mode="max_min", tie_eps=cfg.pairs.tie_eps, seed=seed)
    elif cfg.pairs.mode == SELF_PLAY:  # SPIN / GSIL: demonstration vs own sample
        pairs, pst = self_play_pairs(rows, demos(cfg), seed=seed)
    elif cfg.pairs.mode == OWN_SAMPLES:  # online IQLearn: demonstrations + the policy's own samples (TD term)
        demo_rows, own_rows, ost = own_sample_data(rows, demos(cfg))
        info["own_samples"] = ost
        if not demo_rows or not own_rows:
            raise LoopError(f"round {t}: nothing to train on ({ost}); check that pairs.demos has these prompts")
        write_rows(policy_samples_path(rd / "train_data.jsonl"), own_rows)
        info["train_examples"] = len(demo_rows)
        return write_rows(rd / "train_data.jsonl", demo_rows), info
    else:
        p = cfg.pairs
        pairs, pst = make_pairs(rows, mode=p.mode, length_penalty=p.length_penalty, tie_eps=p.tie_eps, seed=seed)
    info["pairs"] = pst.to_dict()
    if pairs and "chosen_gold" in pairs[0]:
        info["pairs"]["gold_agreement"] = statistics.fmean(float(q["chosen_gold"] > q["rejected_gold"]) for q in pairs)
    if not pairs:
        raise LoopError(f"round {t}: no pairs ({pst.summary()}); raise K or check the reward")
    info["train_examples"] = len(pairs)
    return write_rows(rd / "train_data.jsonl", pairs), info


def offline_stage(cfg: IterateConfig, rd: Path) -> None:
    """The offline baseline's training file: the fixed preference file's rows, copied as they are."""
    from imitalign.data.sources import iter_rows

    assert cfg.offline is not None
    rows = [row for _, row in iter_rows(cfg.offline.path, cfg.offline.split, cfg.offline.limit)]
    write_rows(rd / "train_data.jsonl", rows)
    write_json(rd / "selection.json", {"offline": cfg.offline.path, "train_examples": len(rows)})


def prompts_stage(cfg: IterateConfig, pf: Preflight, rd: Path, t: int, prompt_set: Any) -> Any:
    """``prompts.jsonl``: the round's slice of the prompt set (loaded once, returned for the next rounds)."""
    from imitalign.generate.kshot import RESERVED

    assert cfg.prompts is not None
    if prompt_set is None:
        prompt_set = load_prompts(cfg.prompts.source, pf.tokenizer, data_section(cfg), cfg.generate.max_new_tokens)
    idx = _round_prompts(cfg, len(prompt_set), t)
    write_rows(
        rd / "prompts.jsonl",
        [
            {
                **{k: v for k, v in prompt_set.extras[i].items() if k not in RESERVED},
                "prompt": prompt_set.prompts[i],
                "source_index": i,
            }
            for i in idx
        ],
    )
    return prompt_set
