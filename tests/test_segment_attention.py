"""Packed rows attend sequence by sequence (``imitalign.model.segment_attention``): the same numbers as the
block-diagonal masked sdpa and as padded rows, gradients included; only where that is the same computation."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig

from imitalign.data.collate import collate_pairs, collate_pairs_packed, with_target_index
from imitalign.data.tokenize import TokenizedPair
from imitalign.model import segment_attention
from imitalign.model.logprobs import LogProbModel, batch_logprobs


def _model(kv_heads: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=kv_heads, vocab_size=100, attention_dropout=0.0)
    return LlamaForCausalLM(cfg)


def _pairs(n: int) -> list[TokenizedPair]:
    rng = random.Random(0)

    def ids(k: int) -> list[int]:
        return [rng.randrange(1, 100) for _ in range(k)]

    return [TokenizedPair(ids(rng.randint(2, 9)), ids(rng.randint(1, 20)), ids(rng.randint(1, 20)), "x")
            for _ in range(n)]


def test_segments_of_by_hand():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1], [0, 1, 2, 3, 0, 1, 2]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]])
    assert segment_attention.segments_of(pos, mask) == [[(0, 3), (3, 5)], [(0, 4), (4, 7)]]


def _logps_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    lp = batch_logprobs(LogProbModel(model), batch)
    lp.logps.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return lp.logps.detach(), grads


@pytest.mark.parametrize("kv_heads", [4, 2])  # plain and grouped-query attention
def test_segments_equal_masked_sdpa_and_padded_rows_with_gradients(kv_heads):
    model, items = _model(kv_heads), _pairs(6)
    packed = collate_pairs_packed(items, 0, row_width=48)
    spans = segment_attention.segments_of(packed["position_ids"], packed["attention_mask"])
    assert len(spans) < 12 and max(len(s) for s in spans) >= 2  # sequences do share rows
    masked_lp, masked_g = _logps_and_grads(model, packed)  # transformers' block-diagonal mask
    assert segment_attention.enable(model) and segment_attention.active(model)
    calls = []
    real = segment_attention.segment_sdpa
    from transformers import AttentionInterface

    AttentionInterface.register(segment_attention.NAME,
                                lambda *a, **k: calls.append(k.get("segments") is not None) or real(*a, **k))
    try:
        seg_lp, seg_g = _logps_and_grads(model, packed)
        padded_lp, _ = _logps_and_grads(model, with_target_index(collate_pairs(items, 0)))
    finally:
        AttentionInterface.register(segment_attention.NAME, real)
    assert calls == [True, True, False, False]  # 2 layers packed by segments; the padded batch takes plain sdpa
    assert torch.allclose(seg_lp, masked_lp, atol=1e-5, rtol=0)
    assert torch.allclose(seg_lp, padded_lp, atol=1e-5, rtol=0)
    for name, g in masked_g.items():
        assert torch.allclose(seg_g[name], g, atol=1e-6, rtol=1e-4), name


def test_not_enabled_where_it_would_differ():
    cfg = MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                        num_key_value_heads=2, vocab_size=50, sliding_window=4)
    cfg._attn_implementation = "sdpa"
    assert not segment_attention.supported(cfg)  # a sliding window is not causal attention per sequence
    eager = _model(4)
    eager.set_attn_implementation("eager")
    assert not segment_attention.enable(eager) and not segment_attention.active(eager)
    assert segment_attention.supported(_model(4).config)


@pytest.mark.parametrize("packing", [True, False])
def test_trainer_uses_it_when_packing(tmp_path, packing):
    from imitalign.config import load_config
    from imitalign.gym.tokenizer import save_tokenizer
    from imitalign.train.loop import Trainer
    from tests.helpers import TINY_LLAMA
    from tests.test_train import write_pairs

    write_pairs(tmp_path / "pairs.jsonl", 8, 0)
    save_tokenizer(tmp_path / "tok")
    cfg = load_config(None, raw={
        "run": {"output_dir": str(tmp_path / "run"), "seed": 0},
        "model": {"config": dict(TINY_LLAMA), "tokenizer": str(tmp_path / "tok")},
        "reference": {"cache_dir": None},
        "data": {"train": {"path": str(tmp_path / "pairs.jsonl")}, "chat_template": "none", "max_length": 64},
        "objective": {"name": "dpo", "options": {}},
        "train": {"batch_size": 4, "max_steps": 1, "packing": packing, "mixed_precision": "no"},
    })
    trainer = Trainer(cfg, quiet=True)
    assert segment_attention.active(trainer.model) is packing
    trainer.train()
    trainer.close()
