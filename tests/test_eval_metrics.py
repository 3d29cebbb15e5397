"""Metrics on hand-made inputs with hand-computed values, and evaluate_model end to end on a tiny model."""

from __future__ import annotations

import itertools
import json
import math
import random
from collections import Counter

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from imitalign.eval.evaluate import evaluate_model, format_table, to_jsonable
from imitalign.eval.metrics import (
    cluster_mean_se,
    distinct_n,
    kl_estimate,
    mean_se,
    mean_token_entropy,
    self_bleu,
    win_rate,
)
from imitalign.gym.build import gold_rewards
from imitalign.gym.tokenizer import build_tokenizer, tiny_llama_config


def test_mean_se():
    mean, se = mean_se([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and se == pytest.approx(math.sqrt((5 / 3) / 4))
    assert mean_se([3.0])[0] == 3.0 and math.isnan(mean_se([3.0])[1])
    assert all(math.isnan(x) for x in mean_se([]))


def test_win_rate_paired_with_ties():
    mean, se = win_rate([1, 2, 3], [0, 2, 4])  # wins: 1, ½, 0
    assert mean == 0.5 and se == pytest.approx(0.5 / math.sqrt(3))
    assert win_rate([1, 1], [1, 1]) == (0.5, 0.0)
    with pytest.raises(ValueError):
        win_rate([1], [1, 2])


def test_distinct_n():
    texts = ["a b a b", "a b c"]
    assert distinct_n(texts, 1) == pytest.approx(3 / 7)  # a b a b a b c
    assert distinct_n(texts, 2) == pytest.approx(3 / 5)  # ab ba ab | ab bc
    assert distinct_n(["a"], 2) == 0.0 and distinct_n([], 1) == 0.0


def test_self_bleu_known_strings():
    assert self_bleu(["the cat sat on the mat"] * 3) == 1.0
    assert self_bleu(["a b c d", "e f g h", "i j k l"]) == 0.0
    # p1 = 3/4, p2 = (2+1)/(3+1), p3 = (1+1)/(2+1), p4 = (0+1)/(1+1); equal lengths: BP = 1; symmetric
    expected = (3 / 4 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25
    assert self_bleu(["a b c d", "a b c e"]) == pytest.approx(expected)
    # brevity penalty: "a b" vs "a b c d": all p_n = 1, BP = exp(1 − 4/2);
    # "a b c d" vs "a b": p = 2/4, (1+1)/(3+1), (0+1)/(2+1), (0+1)/(1+1), BP = 1
    short = math.exp(1 - 2)
    long = (1 / 2 * 1 / 2 * 1 / 3 * 1 / 2) ** 0.25
    assert self_bleu(["a b", "a b c d"]) == pytest.approx((short + long) / 2)
    assert math.isnan(self_bleu(["only one"]))
    assert self_bleu(["", "a b"]) == 0.0  # empty hypothesis: 0; "a b" shares no word with "": p1 = 0


def _bleu_brute(hyp: list[str], refs: list[list[str]], max_n: int = 4) -> float:
    if not hyp:
        return 0.0
    log_p = 0.0
    for n in range(1, max_n + 1):
        h = Counter(tuple(hyp[i : i + n]) for i in range(len(hyp) - n + 1))
        clip = sum(min(c, max(Counter(tuple(r[i : i + n]) for i in range(len(r) - n + 1))[g] for r in refs))
                   for g, c in h.items())
        delta = 0 if n == 1 else 1
        if clip + delta == 0:
            return 0.0
        log_p += math.log((clip + delta) / (sum(h.values()) + delta))
    rho = min((len(r) for r in refs), key=lambda x: (abs(x - len(hyp)), x))
    bp = 1.0 if len(hyp) > rho else math.exp(1 - rho / len(hyp))
    return bp * math.exp(log_p / max_n)


def test_self_bleu_matches_brute_force():
    rng = random.Random(0)
    for _ in range(20):
        texts = [" ".join(rng.choice("abcde") for _ in range(rng.randint(1, 9))) for _ in range(rng.randint(2, 7))]
        toks = [t.split() for t in texts]
        brute = sum(_bleu_brute(toks[i], toks[:i] + toks[i + 1 :]) for i in range(len(toks))) / len(toks)
        assert self_bleu(texts) == pytest.approx(brute, abs=1e-12)


def test_mean_token_entropy_is_token_weighted():
    assert mean_token_entropy([[1.0, 2.0], [3.0]]) == 2.0
    assert math.isnan(mean_token_entropy([[]]))


P = [0.5, 0.25, 0.25]
Q = [0.25, 0.5, 0.25]
KL_PQ = sum(p * math.log(p / q) for p, q in zip(P, Q, strict=True))  # = ln 2 / 4


def test_kl_estimate_exact_by_enumeration():
    # a multiset of outcomes in exact proportion to P: y0, y0, y1, y2
    ys = [0, 0, 1, 2]
    kl, _ = kl_estimate([math.log(P[y]) for y in ys], [math.log(Q[y]) for y in ys])
    assert kl == pytest.approx(KL_PQ) and KL_PQ == pytest.approx(math.log(2) / 4)


def test_kl_estimate_by_sampling():
    g = torch.Generator().manual_seed(0)
    ys = torch.multinomial(torch.tensor(P), 20_000, replacement=True, generator=g).tolist()
    kl, se = kl_estimate([math.log(P[y]) for y in ys], [math.log(Q[y]) for y in ys])
    assert abs(kl - KL_PQ) < 4 * se and se < 0.01
    with pytest.raises(ValueError):
        kl_estimate([0.0], [])


def test_cluster_mean_se():
    mean, se = cluster_mean_se([1.0, 3.0, 5.0, 7.0], [0, 0, 1, 1])  # prompt means 2 and 6
    assert mean == 4.0 and se == pytest.approx(2.0)


def test_format_table():
    rows = [
        {"name": "sft", "gold_reward": {"mean": 0.5, "se": 0.01}, "distinct_1": 0.25, "per_sample": {"x": [1]}},
        {"name": "dpo", "gold_reward": {"mean": 0.61234, "se": 0.0123}, "win_rate_vs_baseline": {"mean": 0.7,
         "se": None}, "kl_to_reference": {"mean": -0.0001, "se": 0.001}, "heldout_logp_chosen": {"mean": -12.345,
                                                                                                   "se": 0.5}},
    ]
    table = format_table(rows)
    lines = table.splitlines()
    assert len(lines) == 4 and lines[0].startswith("| name")
    assert "gold" in lines[0] and "win vs base" in lines[0] and "dist-1" in lines[0]
    assert "0.500 ± 0.010" in lines[2] and "0.612 ± 0.012" in lines[3]
    assert "-0.000" not in table and "0.000 ± 0.001" in lines[3]
    assert "-12.35 ± 0.50" in lines[3] and "0.700" in lines[3]
    assert "–" in lines[2]  # sft has no win rate
    assert len({len(line) for line in lines}) == 1  # aligned
    assert "per_sample" not in table


def test_to_jsonable():
    assert to_jsonable({"a": [math.nan, 1.0], "b": (math.inf,)}) == {"a": [None, 1.0], "b": [None]}


# ------------------------------------------------------------------------------------------ evaluate_model
PROMPTS = ["write about sea and forest , short =>", "a long text on art and farm =>",
           "describe city and space , medium =>"]


def _tiny(seed: int) -> LlamaForCausalLM:
    cfg = tiny_llama_config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    cfg.pop("model_type")
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**cfg)).eval()


def test_evaluate_model_end_to_end():
    tok = build_tokenizer()
    policy, reference = _tiny(0), _tiny(1)
    pairs = [{"prompt": PROMPTS[0], "chosen": "wave boat tree moss .", "rejected": "the the ."},
             {"prompt": PROMPTS[1], "chosen": "paint barn .", "rejected": "star ."}]
    kwargs = {"reward_fn": gold_rewards, "n": 4, "seed": 0, "max_new_tokens": 12}
    base = evaluate_model(reference, tok, PROMPTS, **kwargs)
    result = evaluate_model(policy, tok, PROMPTS, reference_model=reference, chosen_scores=[0.9, 0.5, 0.1],
                            baseline_scores=base["per_sample"]["score"], heldout_pairs=pairs, **kwargs)
    json.dumps(result, allow_nan=False)
    assert result["n_samples"] == 12 and len(result["per_sample"]["score"]) == 12
    for key in ("gold_reward", "win_rate_vs_chosen", "win_rate_vs_baseline", "kl_to_reference", "self_bleu",
                "length", "heldout_logp_chosen", "heldout_logp_rejected", "heldout_logp_margin"):
        assert set(result[key]) == {"mean", "se"}, key
    assert 0 <= result["gold_reward"]["mean"] <= 1 and result["kl_valid"] is True
    assert 0 < result["distinct_1"] <= 1 and result["token_entropy"] > 0
    # the policy's own samples, teacher-forced by the same model: KL estimate 0
    self_kl = evaluate_model(policy, tok, PROMPTS, reference_model=policy, **kwargs)["kl_to_reference"]
    assert abs(self_kl["mean"]) < 1e-4
    # against its own scores (same prompts, n, seed) a model wins exactly half
    again = evaluate_model(reference, tok, PROMPTS, baseline_scores=base["per_sample"]["score"], **kwargs)
    assert again["win_rate_vs_baseline"]["mean"] == 0.5
    # held-out log-likelihood: teacher-forced by hand (prompt ids, response ids + EOS)
    by_hand = {key: [_logp_by_hand(policy, tok, p["prompt"], p[key]) for p in pairs] for key in ("chosen", "rejected")}
    assert result["heldout_logp_chosen"]["mean"] == pytest.approx(sum(by_hand["chosen"]) / 2, abs=1e-4)
    assert result["heldout_logp_rejected"]["mean"] == pytest.approx(sum(by_hand["rejected"]) / 2, abs=1e-4)
    table = format_table([{"name": "base", **base}, {"name": "policy", **result}])
    assert "KL(π‖ref)" in table and table.count("\n") == 3


def _logp_by_hand(model, tok, prompt: str, response: str) -> float:
    p_ids = tok(prompt)["input_ids"]
    ids = p_ids + tok(response)["input_ids"] + [tok.eos_token_id]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1], -1)
    return logp[len(p_ids) - 1 :].gather(1, torch.tensor(ids[len(p_ids) :])[:, None]).sum().item()


def test_evaluate_model_rejects_misaligned_scores():
    tok = build_tokenizer()
    with pytest.raises(ValueError, match="baseline_scores"):
        evaluate_model(_tiny(0), tok, PROMPTS, reward_fn=gold_rewards, n=2, max_new_tokens=3,
                       baseline_scores=[0.1] * 5)


def test_self_bleu_permutation_invariant():
    texts = ["a b c", "a b d", "c d e f", "a"]
    values = {round(self_bleu(list(p)), 12) for p in itertools.permutations(texts)}
    assert len(values) == 1
