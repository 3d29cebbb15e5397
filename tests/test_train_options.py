"""Loop options: accumulation equals a bigger batch, LoRA's reference is the adapter-disabled model,
reference-free objectives load no reference, gradient checkpointing changes nothing."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from imitalign.train import loop
from imitalign.train.loop import train
from tests.test_train import make_cfg


def _weights(result):
    return load_file(str(result.model_dir / "model.safetensors"))


def test_accumulation_equals_the_same_global_batch(tmp_path):
    a = train(make_cfg(tmp_path / "a", "dpo", {"beta": 0.5}, batch_size=8, epochs=1), quiet=True)
    b = train(make_cfg(tmp_path / "b", "dpo", {"beta": 0.5}, batch_size=4, grad_accum=2, epochs=1), quiet=True)
    assert a.steps == b.steps
    wa, wb = _weights(a), _weights(b)
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k


def test_token_objective_accumulation_is_per_token_over_the_step(tmp_path):
    a = train(make_cfg(tmp_path / "a", "mle", batch_size=8, epochs=1), quiet=True)
    b = train(make_cfg(tmp_path / "b", "mle", batch_size=2, grad_accum=4, epochs=1), quiet=True)
    wa, wb = _weights(a), _weights(b)
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k


def test_gradient_checkpointing_gives_the_same_weights(tmp_path):
    a = train(make_cfg(tmp_path / "a", "dpo", {"beta": 0.5}, epochs=1), quiet=True)
    cfg = make_cfg(tmp_path / "b", "dpo", {"beta": 0.5}, epochs=1)
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"gradient_checkpointing": True})})
    b = train(cfg, quiet=True)
    wa, wb = _weights(a), _weights(b)
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k


@pytest.mark.parametrize("precompute", [True, False])
def test_lora_reference_is_the_adapter_disabled_model(tmp_path, precompute):
    from imitalign.config import LoraConfig

    cfg = make_cfg(tmp_path, "dpo", {"beta": 0.5}, epochs=1, lr=5e-3)
    model = cfg.model.model_copy(update={"lora": LoraConfig(r=4, alpha=8, dropout=0.0)})
    ref = cfg.reference.model_copy(update={"precompute": precompute})
    cfg = cfg.model_copy(update={"model": model, "reference": ref})
    result = train(cfg, quiet=True)
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in rows if "train/loss" in r)
    # at the start LoRA's B = 0, so policy = reference: ρ = 0 and the DPO loss is log 2 (first window ~ it)
    assert abs(first["train/loss"] - math.log(2)) < 0.05
    assert result.eval_metrics["accuracy"] > 0.8
    assert (result.model_dir / "adapter" / "adapter_config.json").exists()
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(result.model_dir)  # merged weights: a plain model folder


def test_reference_free_objective_loads_no_reference(tmp_path, monkeypatch):
    def fail(*a, **k):
        raise AssertionError("a reference was built for a reference-free objective")

    monkeypatch.setattr(loop, "precompute_reference", fail)
    monkeypatch.setattr(loop, "attach_reference", fail)
    result = train(make_cfg(tmp_path, "simpo", {"beta": 2.0, "gamma": 0.5}, epochs=1), quiet=True)
    assert result.eval_metrics["accuracy"] > 0.8
