"""The online loops on real rows (``../shared/data/real``), as a user would point them at their data: HH-RLHF
conversations (multi-turn prompts, rendered with a real ChatML tokenizer's template) through iterative DIL with a
rule reward given as ``module:function``, and Alpaca demonstrations through online IQLearn (``own_samples``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imitalign.loops.iterate import parse_iterate_config, run_iterate
from imitalign.loops.pairs import prompt_key
from imitalign.loops.scoring import check_samples, read_rows
from tests.helpers import REAL

HH = REAL / "hh_rlhf" / "harmless-base_test.jsonl.gz"
ALPACA = REAL / "alpaca" / "alpaca_tiny.json"
TOKENIZER = REAL / "tokenizers" / "chatml_6400"

real_data = pytest.mark.skipif(not (HH.is_file() and ALPACA.is_file()), reason="../shared/data/real is not here")


def brevity(rows: list[dict]) -> list[float]:
    """A rule reward (the kind a user writes): shorter responses, and ones that end with a period, score higher."""
    return [1.0 / (1 + len(str(r["response"]).split())) + float(str(r["response"]).strip().endswith(".")) for r in rows]


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    out = tmp_path_factory.mktemp("real") / "pi0"
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _train() -> dict:
    data = {"chat_template": "auto", "max_length": 256}
    return {"train": {"max_steps": 2, "batch_size": 4, "lr": 1e-3}, "data": data}


@real_data
def test_iterative_dil_on_hh_conversations_with_a_rule_reward(policy: Path, tmp_path: Path) -> None:
    reward = {"kind": "function", "function": f"{__name__}:brevity"}
    cfg = parse_iterate_config(
        {
            "run": {"output_dir": str(tmp_path / "hh"), "seed": 0},
            "policy": str(policy),
            "rounds": 1,
            "prompts": {"source": {"path": str(HH), "format": "hh", "limit": 40}, "per_round": 7},
            "generate": {"k": 3, "max_new_tokens": 12, "batch_size": 16},
            "reward": reward,
            "train": {"objective": {"name": "dil_lsif"}, **_train()},
            "eval": {"prompts": {"path": str(HH), "format": "hh", "limit": 12}, "n": 2},
        }
    )
    res = run_iterate(cfg, say=lambda m: None)
    rd = res.root / "round_1"
    samples = read_rows(rd / "scored.jsonl")
    check_samples(samples, 3)
    assert len(samples) == 21  # 7 conversations × K = 3, exactly
    first = samples[0]["prompt"]
    assert isinstance(first, list) and first[0]["role"] == "user" and first[-1]["role"] == "user"  # multi-turn
    assert [r["score"] for r in samples] == pytest.approx(brevity(samples))
    selection = json.loads((rd / "selection.json").read_text())["pairs"]
    assert selection["pairs"] + sum(selection["dropped"].values()) == 7
    for pair in read_rows(rd / "train_data.jsonl"):
        assert pair["chosen_score"] > pair["rejected_score"]
    assert "dil_lsif" in (rd / "train" / "config.yaml").read_text()
    assert len(res.rows) == 2
    # the eval stage scored its samples with the user's function: every score has brevity's form 1/(1 + words)
    # (+ 1 for a final period), and the round's reported mean is theirs
    scores = json.loads((rd / "eval.json").read_text())["per_sample"]["score"]
    words = [1.0 / (s - 1.0 if s > 1.0 else s) - 1.0 for s in scores]
    assert len(scores) >= 2 and all(abs(w - round(w)) < 1e-6 and w > -0.5 for w in words), scores
    assert res.rows[1]["gold_reward"]["mean"] == pytest.approx(sum(scores) / len(scores))


@real_data
def test_online_iqlearn_on_alpaca_demonstrations(policy: Path, tmp_path: Path) -> None:
    alpaca = {"path": str(ALPACA), "format": "alpaca"}
    cfg = parse_iterate_config(
        {
            "run": {"output_dir": str(tmp_path / "iq"), "seed": 0},
            "policy": str(policy),
            "rounds": 1,
            "prompts": {"source": alpaca, "per_round": 6},
            "generate": {"k": 2, "max_new_tokens": 12, "batch_size": 16},
            "pairs": {"mode": "own_samples", "demos": alpaca},
            "train": {"objective": {"name": "iqlearn", "options": {"lam": 0.1, "alpha": 0.3}}, **_train()},
            "eval": {
                "prompts": {**alpaca, "limit": 4},
                "n": 2,
                "reward": {"kind": "function", "function": f"{__name__}:brevity"},
            },
        }
    )
    res = run_iterate(cfg, say=lambda m: None)
    rd = res.root / "round_1"
    demos = {prompt_key(r["prompt"]): r["response"] for r in read_rows(rd / "train_data.jsonl")}
    raw = {row["instruction"]: row["output"] for row in json.loads(ALPACA.read_text()) if not row["input"]}
    samples = read_rows(rd / "samples.jsonl")
    assert len(samples) == 12 and len(read_rows(rd / "policy_samples.jsonl")) == 12
    matched = [k for k in demos if k in raw]
    assert matched and all(demos[k] == raw[k] for k in matched)  # the instruction's own output, as written
    assert {prompt_key(r["prompt"]) for r in samples} == set(demos)


def test_a_mean_without_a_standard_error_prints_plainly() -> None:
    """One usable eval prompt (the rest too long for max_length, as with HH above at limit 4) has no se."""
    from imitalign.loops.iterate_report import format_mean_se

    assert format_mean_se({"mean": 0.5, "se": None}, 4) == "0.5000"
    assert format_mean_se({"mean": 0.5, "se": 0.01}, 3) == "0.500 ± 0.010"
    assert format_mean_se(None) == "–"
