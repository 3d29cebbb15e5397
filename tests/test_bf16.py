"""bf16 correctness (speed is benchmarked elsewhere; this CPU has no avx512_bf16, so tensors stay tiny).

Whatever the weights' dtype (``model.dtype: bfloat16``) or autocast (``train.mixed_precision: bf16``), the engine
returns fp32 log-probs and values (the head's logits go to fp32 before the log-softmax), and the log-ratios and
every exponential of the DIL losses are computed in fp32 (``objectives.ratio._log_ratios`` upcasts).

Tolerances, on a gym batch (6 pairs) through a tiny Llama (hidden 32): bf16 keeps 8 bits of mantissa (relative
rounding 2⁻⁹ ≈ 2e-3 per operation). Measured max errors against fp32: token log-probs 1.5e-3 (bf16 weights) /
1.0e-3 (autocast); DPO loss 1.3e-4 / 1.1e-5; DIL-LSIF loss 4.2e-5 / 2.9e-6. Asserted with ~7× headroom: token
log-probs within 1e-2, losses within 1e-3.
"""

from __future__ import annotations

import copy
import json
import math
from types import SimpleNamespace

import pytest
import torch

from imitalign import objectives
from imitalign.config import load_config
from imitalign.data.collate import collate_pairs, with_target_index
from imitalign.gym.build import GymConfig, expert_rows, sft_rows
from imitalign.gym.tokenizer import build_tokenizer, save_tokenizer
from imitalign.model.logprobs import LogProbModel, batch_logprobs
from imitalign.train.loop import train
from tests.helpers import TINY_LLAMA, tiny_llama
from tests.test_train import write_pairs


def _gym_batch() -> tuple[dict[str, torch.Tensor], int]:
    """6 gym pairs: an expert response chosen over a base-process one, on the expert's prompt."""
    tok = build_tokenizer()
    cfg = GymConfig(n_sft=6, n_expert=6, n_pref_prompts=0, n_online_prompts=0, n_eval_prompts=2)

    def ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    items = [
        SimpleNamespace(prompt_ids=ids(e["prompt"]), chosen_ids=ids(" " + e["response"]),
                        rejected_ids=ids(" " + s["response"]))
        for e, s in zip(expert_rows(cfg), sft_rows(cfg), strict=True)
    ]
    return with_target_index(collate_pairs(items, tok.pad_token_id)), len(tok)


def _logprobs(model: torch.nn.Module, batch: dict, autocast: bool = False):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        return batch_logprobs(LogProbModel(model), batch, with_values=True)


def _pair_loss(name: str, policy, reference, options: dict) -> float:
    b = policy.logps.shape[0] // 2
    fn = objectives.build(name, options)
    losses, _ = fn(policy.logps[:b], policy.logps[b:], reference.logps[:b], reference.logps[b:],
                   policy.n_tokens[:b], policy.n_tokens[b:])
    assert losses.dtype == torch.float32
    return float(losses.mean())


@pytest.mark.parametrize("variant", ["bf16_weights", "bf16_autocast"])
def test_bf16_logprobs_and_losses_in_fp32_close_to_fp32(variant):
    batch, vocab = _gym_batch()
    policy = tiny_llama(vocab_size=vocab, seed=0)
    reference = _logprobs(tiny_llama(vocab_size=vocab, seed=1), batch)  # precomputed in fp32
    exact = _logprobs(policy, batch)
    if variant == "bf16_weights":
        low = _logprobs(copy.deepcopy(policy).to(torch.bfloat16), batch)
    else:
        low = _logprobs(policy, batch, autocast=True)
    for t in (low.logps, low.token_logps, low.token_values):
        assert t.dtype == torch.float32
    err = (low.token_logps - exact.token_logps).abs().max()
    assert 0 < err < 1e-2, err  # bf16 did run (not bit-identical), and stays close
    for name, options in (("dpo", {"beta": 0.5}), ("dil_lsif", {})):
        a, b = _pair_loss(name, exact, reference, options), _pair_loss(name, low, reference, options)
        assert abs(a - b) < 1e-3, (name, a, b)


def test_dil_lsif_does_not_overflow_with_bf16_inputs():
    """Log-ratios of +40 nats per token (far past the clamp at 20) given as bf16 tensors: the loss is the
    clamped value −e²⁰ + ½e⁴⁰ computed in fp32 (in bf16, ½e⁴⁰ ≈ 1.2e17 keeps 3 digits), finite gradients."""
    n = torch.tensor([4.0, 5.0])
    policy_w = (torch.tensor([-2.0, -3.0]) * n).to(torch.bfloat16).requires_grad_()
    policy_l = (torch.tensor([-1.0, -1.5]) * n).to(torch.bfloat16).requires_grad_()
    ref = (-42.0 * n).to(torch.bfloat16)
    losses, metrics = objectives.build("dil_lsif", {})(policy_w, policy_l, ref, ref, n, n)
    assert losses.dtype == torch.float32
    expected = -math.exp(20.0) + 0.5 * math.exp(40.0)
    assert torch.allclose(losses.double(), torch.full((2,), expected, dtype=torch.float64), rtol=1e-6)
    assert float(metrics["ratio/clamped"]) == 1.0
    losses.sum().backward()
    assert torch.isfinite(policy_w.grad.float()).all() and torch.isfinite(policy_l.grad.float()).all()


def _loop_cfg(tmp_path, name: str, **model_train):
    raw = {
        "run": {"output_dir": str(tmp_path / name), "seed": 3},
        "model": {"config": dict(TINY_LLAMA), "tokenizer": str(tmp_path / "tok")},
        "reference": {"cache_dir": None},
        "data": {"train": {"path": str(tmp_path / "pairs.jsonl")}, "chat_template": "none", "max_length": 64},
        "objective": {"name": "dil_lsif", "options": {}},
        "train": {"batch_size": 8, "lr": 3e-3, "max_steps": 3, "log_every": 1, "schedule": "constant",
                  "warmup_ratio": 0.0, "mixed_precision": "no"},
    }
    for dotted, value in model_train.items():
        section, key = dotted.split("__")
        raw[section][key] = value
    return load_config(None, raw=raw)


def _losses(run_dir) -> list[float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in rows if "train/loss" in r]


def test_bf16_training_paths_follow_fp32(tmp_path):
    """The loop with ``mixed_precision: bf16`` (autocast) and with ``model.dtype: bfloat16`` (bf16 weights and
    AdamW states): finite DIL-LSIF losses, −½ at step 1 (policy = reference, ρ = 0 in every precision), and
    within 0.05 of the fp32 run over 3 steps at lr 3e-3. The three runs share one process: each run starts
    from a fresh accelerate state (accelerate alone refuses a second mixed-precision setting)."""
    write_pairs(tmp_path / "pairs.jsonl", 24, 0)
    save_tokenizer(tmp_path / "tok")
    for name, kw in (("fp32", {}), ("autocast", {"train__mixed_precision": "bf16"}),
                     ("weights", {"model__dtype": "bfloat16"})):
        train(_loop_cfg(tmp_path, name, **kw), quiet=True)
    ref = _losses(tmp_path / "fp32")
    for name in ("autocast", "weights"):
        got = _losses(tmp_path / name)
        assert len(got) == 3 and all(math.isfinite(x) for x in got), (name, got)
        assert abs(got[0] - (-0.5)) < 1e-6, (name, got)
        assert max(abs(a - b) for a, b in zip(got, ref, strict=True)) < 0.05, (name, got, ref)
