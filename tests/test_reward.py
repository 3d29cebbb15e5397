"""Reward sources and reward models: the BT loss, the score head at the last real token, BT and classifier
training through the one loop, save/reload, the implicit reward, the registry and its error checks."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, LlamaConfig, LlamaForSequenceClassification

from imitalign.config import load_config
from imitalign.data.collate import collate_demos
from imitalign.gym.build import make_preference_pairs
from imitalign.gym.task import TOPICS, all_prompts, base_response, expert_response
from imitalign.gym.tokenizer import save_tokenizer
from imitalign.model.score import ScoreModel, last_token_index
from imitalign.objectives import bradley_terry
from imitalign.reward import RewardError, check_scores, load_reward, register_reward_kind, reward_kinds, score_rows
from imitalign.reward.models import tokenize_rows
from imitalign.train.loop import train
from tests.helpers import TINY_LLAMA

GOOD, BAD = list(TOPICS["sea"]), list(TOPICS["city"])


def test_bradley_terry_loss_equals_formula():
    rw = torch.tensor([1.0, 0.0, -2.0, 3.5])
    rl = torch.tensor([0.0, 0.0, 1.0, -0.5])
    losses, m = bradley_terry(rw, rl)
    expected = [math.log1p(math.exp(-(w - l))) for w, l in zip(rw.tolist(), rl.tolist(), strict=True)]
    assert losses.tolist() == pytest.approx(expected, rel=1e-6)
    assert expected[0] == pytest.approx(0.31326169, rel=1e-6)  # −log σ(1)
    assert float(m["accuracy"]) == pytest.approx(0.5)  # 1 > 0 and 3.5 > −0.5; a tie is not a win


def _tiny_cls(pad: int, seed: int = 0) -> LlamaForSequenceClassification:
    torch.manual_seed(seed)
    cfg = {k: v for k, v in TINY_LLAMA.items() if k != "model_type"}
    return LlamaForSequenceClassification(LlamaConfig(vocab_size=50, pad_token_id=pad, num_labels=1, **cfg)).eval()


def test_score_model_reads_the_last_real_token_even_when_pad_is_eos():
    eos = 2
    model = ScoreModel(_tiny_cls(pad=eos))
    rows = [[5, 6, 7, 8, eos], [9, 10, eos]]  # responses end with EOS; padding is EOS too
    ids = torch.full((2, 5), eos)
    mask = torch.zeros(2, 5, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    assert last_token_index(mask).tolist() == [4, 2]
    with torch.no_grad():
        batched = model(ids, mask)
        alone = [float(model(torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long))) for r in rows]
        pooled_by_pad_id = model.lm(input_ids=ids, attention_mask=mask).logits[:, 0]
    assert batched.tolist() == pytest.approx(alone, abs=1e-5)
    # transformers' own pooling looks for the last non-pad id and reads the token before the EOS instead
    assert abs(float(pooled_by_pad_id[1]) - alone[1]) > 1e-4


def _gym_pairs(path: Path, n_prompts: int, seed: int) -> Path:
    """Gym pairs: an expert and a base-process response per prompt, labelled by Bradley–Terry on the gold
    reward (τ = 0.02; the expert wins most, not all, of them) and presented in random order."""
    rng = random.Random(seed)
    pool = all_prompts(4)
    prompts = [rng.choice(pool) for _ in range(n_prompts)]
    rows = []
    for i, p in enumerate(prompts):
        rows.append({"prompt": p, "response": expert_response(p, rng), "prompt_index": i})
        rows.append({"prompt": p, "response": base_response(p, rng, list(TOPICS)[:4]), "prompt_index": i})
    pairs = make_preference_pairs(rows, seed=seed, bt_temperature=0.02)
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return path


def _cfg(tmp_path: Path, objective: str, data: dict, **train_kw) -> object:
    raw = {
        "run": {"output_dir": str(tmp_path / f"run_{objective}"), "seed": 1},
        "model": {"config": {**TINY_LLAMA, "hidden_size": 48, "num_attention_heads": 4, "intermediate_size": 96},
                  "tokenizer": str(save_tokenizer(tmp_path / "tok"))},
        "data": {"chat_template": "none", "max_length": 64, **data},
        "objective": {"name": objective},
        "train": {"batch_size": 16, "lr": 2e-3, "epochs": 3, "warmup_ratio": 0.0, "log_every": 10,
                  "schedule": "constant", **train_kw},
    }
    return load_config(None, raw=raw)


def test_bt_reward_model_on_gym_pairs_beats_chance_and_reloads_identically(tmp_path):
    train_pairs = _gym_pairs(tmp_path / "train.jsonl", 192, seed=0)
    held = _gym_pairs(tmp_path / "held.jsonl", 96, seed=1)
    cfg = _cfg(tmp_path, "bradley_terry", {"train": {"path": str(train_pairs)}, "eval": {"path": str(held)}})
    result = train(cfg, quiet=True)
    acc = result.eval_metrics["accuracy"]
    assert acc >= 0.65, f"held-out pairwise accuracy {acc:.3f}: not 15 points above chance"
    log = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/accuracy" in r for r in log)

    # reload: the reward source, transformers' own class and a fresh ScoreModel all give the same scores
    rows = [json.loads(line) for line in held.read_text().splitlines()][:8]
    scored = [{"prompt": r["prompt"], "response": r["chosen"]} for r in rows]
    source = load_reward({"kind": "bradley_terry", "path": str(result.model_dir), "chat_template": "none"})
    a = score_rows(source, scored)
    hf = AutoModelForSequenceClassification.from_pretrained(result.model_dir).eval()
    batch = collate_demos(tokenize_rows(scored, source.tokenizer, source.renderer, 64), 0)
    with torch.no_grad():
        b = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0].tolist()
    assert a == pytest.approx(b, abs=1e-5)
    assert score_rows(source, scored[::-1]) == pytest.approx(a[::-1], abs=1e-5)  # batching order does not matter
    # the scores rank the held-out pairs as the eval metric said: the reloaded reward's ranking accuracy on all
    # held-out pairs is the training run's eval/accuracy (one pair of slack for a float tie)
    every = [json.loads(line) for line in held.read_text().splitlines()]
    chosen = score_rows(source, [{"prompt": r["prompt"], "response": r["chosen"]} for r in every])
    rejected = score_rows(source, [{"prompt": r["prompt"], "response": r["rejected"]} for r in every])
    ranked = sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(every)
    assert ranked == pytest.approx(acc, abs=1.0 / len(every)) and ranked >= 0.65, (ranked, acc)


def test_classifier_kind_trains_on_labelled_rows(tmp_path):
    rng = random.Random(0)
    rows = []
    for i in range(96):
        words = GOOD if i % 2 else BAD
        rows.append({"prompt": "write about sea", "response": " ".join(rng.choice(words) for _ in range(4)),
                     "label": i % 2})
    path = tmp_path / "labelled.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = _cfg(tmp_path, "discriminator_bce", {"train": {"path": str(path)}, "eval_fraction": 0.25}, epochs=3)
    result = train(cfg, quiet=True)
    assert result.eval_metrics["accuracy"] >= 0.95
    source = load_reward({"kind": "classifier", "path": str(result.model_dir), "chat_template": "none"})
    pos, neg = score_rows(source, [{"prompt": "write about sea", "response": "wave boat shell tide"},
                                   {"prompt": "write about sea", "response": "street tower bus bridge"}])
    assert pos > 0 > neg  # the logit log D − log(1 − D)

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "response": "wave", "label": 2}) + "\n")
    from imitalign.data.records import DataError

    with pytest.raises(DataError, match="must be 0 or 1"):
        train(_cfg(tmp_path / "b", "discriminator_bce", {"train": {"path": str(bad)}}), quiet=True)


def test_implicit_reward_is_beta_times_log_ratio(tmp_path):
    from transformers import LlamaForCausalLM

    from imitalign.gym.tokenizer import build_tokenizer
    from imitalign.model.logprobs import batch_logprobs

    tok = build_tokenizer()
    cfg = {k: v for k, v in TINY_LLAMA.items() if k != "model_type"}
    paths = []
    for seed, name in ((0, "policy"), (1, "ref")):
        torch.manual_seed(seed)
        m = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), pad_token_id=0, **cfg))
        m.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
        paths.append(str(tmp_path / name))
    rows = [{"prompt": "write about sea", "response": "wave boat ."}, {"prompt": "write about sea", "response": ""}]
    src = load_reward({"kind": "implicit", "path": paths[0], "reference": paths[1], "beta": 0.5,
                       "chat_template": "none"})
    got = score_rows(src, rows)
    batch = collate_demos(tokenize_rows(rows, src.tokenizer, src.renderer, 64), 0)
    lp = batch_logprobs(src.policy, batch)
    lr = batch_logprobs(src.reference, batch)
    assert lp.n_tokens.tolist() == [4, 1]  # 3 words + EOS; the empty response is its EOS
    assert got == pytest.approx((0.5 * (lp.logps - lr.logps)).tolist(), abs=1e-5)
    norm = load_reward({"kind": "implicit", "path": paths[0], "reference": paths[1], "beta": 0.5,
                        "chat_template": "none", "length_normalize": True})
    assert score_rows(norm, rows) == pytest.approx([g / n for g, n in zip(got, [4, 1], strict=True)], abs=1e-5)


# ------------------------------------------------------------------------------------------ registry, checks
def three(rows):
    return [1.0, 2.0, 3.0]


def nan_scores(rows):
    return [float("nan")] * len(rows)


def lengths(rows, scale=1.0):
    return [scale * len(r["response"]) for r in rows]


def test_registry_and_score_checks():
    assert {"gold", "bradley_terry", "classifier", "implicit", "function"} <= set(reward_kinds())
    with pytest.raises(RewardError, match="unknown reward kind 'nope'; known: .*bradley_terry.*gold"):
        load_reward({"kind": "nope"})
    with pytest.raises(RewardError, match="reward.beta"):
        load_reward({"kind": "gold", "beta": "x"})
    with pytest.raises(RewardError, match="cannot import module 'no_such_module_xyz'"):
        load_reward({"kind": "function", "function": "no_such_module_xyz:f"})
    with pytest.raises(RewardError, match="has no attribute 'missing'"):
        load_reward({"kind": "function", "function": "tests.test_reward:missing"})
    with pytest.raises(RewardError, match="needs reward.function"):
        load_reward({"kind": "function"})
    rows = [{"prompt": "p", "response": "ab"}, {"prompt": "p", "response": "abcd"}]
    with pytest.raises(RewardError, match="returned 3 scores for 2 rows"):
        score_rows(load_reward({"kind": "function", "function": "tests.test_reward:three"}), rows)
    with pytest.raises(RewardError, match="non-finite score"):
        score_rows(load_reward({"kind": "function", "function": "tests.test_reward:nan_scores"}), rows)
    f = load_reward({"kind": "function", "function": "tests.test_reward:lengths", "options": {"scale": 0.5}})
    assert score_rows(f, rows) == [1.0, 2.0]
    assert score_rows(f, rows, batch_size=1) == [1.0, 2.0]
    assert check_scores("t", rows, torch.tensor([1.0, 2.0])) == [1.0, 2.0]
    gold = load_reward({"kind": "gold"})
    prompt = "write about sea and forest , short =>"
    assert score_rows(gold, [{"prompt": prompt, "response": "wave tree ."}])[0] == pytest.approx(0.725)

    class Const:
        name = "const"

        def score(self, rows):
            return [0.5] * len(rows)

    register_reward_kind("test_const", lambda cfg: Const(), overwrite=True)
    assert score_rows(load_reward({"kind": "test_const"}), rows) == [0.5, 0.5]
