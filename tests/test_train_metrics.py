"""The logged metrics (``metrics.jsonl``), not only the weights, do not depend on how an optimiser step is split:
``grad_accum`` 1 and 4 over the same global batch log the same ``train/loss``, and for token objectives that
loss is the step's per-token loss, computed here by hand from a plain ``transformers`` forward."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from imitalign.config import load_config
from imitalign.data.dataset import build_datasets
from imitalign.gym.tokenizer import save_tokenizer
from imitalign.model.load import load_policy
from imitalign.train.loop import train
from tests.helpers import TINY_LLAMA
from tests.test_train import write_demos, write_pairs

N_EXAMPLES = 16  # one optimiser step = the whole training set, so step 1's batch is known whatever the order


def _cfg(tmp_path: Path, objective: str, options: dict, *, batch_size: int, grad_accum: int):
    tmp_path.mkdir(parents=True, exist_ok=True)
    token = objective in ("mle", "iqlearn")
    data = (write_demos if token else write_pairs)(tmp_path / "data.jsonl", N_EXAMPLES, 1)
    raw = {
        "run": {"output_dir": str(tmp_path / "run"), "seed": 5},
        "model": {"config": dict(TINY_LLAMA), "tokenizer": str(save_tokenizer(tmp_path / "tok"))},
        "reference": {"cache_dir": None},
        "data": {"train": {"path": str(data)}, "eval_fraction": 0.0, "chat_template": "none", "max_length": 64},
        "objective": {"name": objective, "options": options},
        "train": {"batch_size": batch_size, "grad_accum": grad_accum, "lr": 1e-3, "max_steps": 3, "log_every": 1,
                  "schedule": "constant", "warmup_ratio": 0.0},
    }
    return load_config(None, raw=raw)


def _train_rows(cfg) -> list[dict]:
    result = train(cfg, quiet=True)
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "train/loss" in r]


def _hand_nll_per_token(cfg) -> float:
    """Σ −log π(a_t|s_t) / N over the response tokens of every training example at the initial weights."""
    model, tok = load_policy(cfg.model, cfg.run.seed)
    items, _, _ = build_datasets(cfg.data, tok, "demonstration", seed=cfg.run.seed)
    assert len(items) == N_EXAMPLES
    total, n = 0.0, 0
    with torch.no_grad():
        for it in items:
            ids = torch.tensor([it.prompt_ids + it.response_ids])
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), dim=-1)
            targets = ids[0, 1:]
            start = len(it.prompt_ids) - 1  # the logits at position p predict token p + 1
            total -= float(logp[start:, :].gather(1, targets[start:, None]).sum())
            n += len(it.response_ids)
    return total / n


@pytest.mark.parametrize(("objective", "options"), [("mle", {}), ("iqlearn", {"lam": 0.3})])
def test_token_objective_logs_the_step_loss_under_accumulation(tmp_path, objective, options):
    whole = _train_rows(_cfg(tmp_path / "a", objective, options, batch_size=N_EXAMPLES, grad_accum=1))
    split = _train_rows(_cfg(tmp_path / "b", objective, options, batch_size=4, grad_accum=4))
    assert len(whole) == len(split) == 3
    for a, b in zip(whole, split, strict=True):
        for key in ("train/loss", "train/nll", "train/tokens", "train/logps/mean", "train/td_penalty"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-5), (key, a, b)
        if objective == "mle":
            assert a["train/loss"] == pytest.approx(a["train/nll"], rel=1e-6)
            assert b["train/loss"] == pytest.approx(b["train/nll"], rel=1e-6)  # was nll / grad_accum (issue 17)
        else:  # ℓ_t = −log π + λ·r_t², both averaged over the step's tokens
            assert b["train/loss"] == pytest.approx(b["train/nll"] + 0.3 * b["train/td_penalty"], rel=1e-5)
    # step 1 runs at the initial weights on the whole training set: its loss is the hand-computed one
    hand = _hand_nll_per_token(_cfg(tmp_path / "c", objective, options, batch_size=4, grad_accum=4))
    assert split[0]["train/nll"] == pytest.approx(hand, rel=1e-5)
    if objective == "mle":  # the step's response tokens, not a micro-batch's
        assert whole[0]["train/tokens"] == split[0]["train/tokens"] > 3 * N_EXAMPLES


@pytest.mark.parametrize("objective", ["dpo", "bradley_terry"])
def test_example_objective_logs_the_same_metrics_under_accumulation(tmp_path, objective):
    whole = _train_rows(_cfg(tmp_path / "a", objective, {}, batch_size=N_EXAMPLES, grad_accum=1))
    split = _train_rows(_cfg(tmp_path / "b", objective, {}, batch_size=4, grad_accum=4))
    assert len(whole) == len(split) == 3
    for a, b in zip(whole, split, strict=True):
        keys = sorted(k for k in a if k.startswith("train/"))
        assert keys == sorted(k for k in b if k.startswith("train/")) and "train/loss" in keys
        for key in keys:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (key, a, b)
    if objective == "dpo":  # policy = reference at step 1: ρ = 0, loss log 2
        assert whole[0]["train/loss"] == pytest.approx(0.6931471805599453, rel=1e-6)
