"""The fast paths of the log-prob engine give the numbers of the plain ones: packed (padding-free) batches,
host-side target indices, the fused and the chunked LM head — values and gradients."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from imitalign.data.collate import (
    collate_demos,
    collate_demos_packed,
    collate_pairs,
    collate_pairs_packed,
    pack_rows,
    with_target_index,
)
from imitalign.data.tokenize import TokenizedDemo, TokenizedPair
from imitalign.model.logprobs import LogProbModel, batch_logprobs, head_logps
from imitalign.model.packing import check_packing
from tests.helpers import TINY_LLAMA

V = 97


def _model(attn: str = "sdpa", seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = {k: v for k, v in TINY_LLAMA.items() if k != "model_type"}
    return LlamaForCausalLM(LlamaConfig(vocab_size=V, pad_token_id=0, attn_implementation=attn, **cfg)).eval()


def _pairs(n: int, seed: int = 0) -> list[TokenizedPair]:
    rng = random.Random(seed)

    def ids(lo: int, hi: int) -> list[int]:
        return [rng.randrange(1, V) for _ in range(rng.randint(lo, hi))]

    return [TokenizedPair(ids(1, 9), ids(1, 14), ids(1, 14), f"r{i}") for i in range(n)]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_pairs_equal_padded_and_sequences_do_not_attend_to_each_other(attn):
    model = _model(attn)
    items = _pairs(6)
    with torch.no_grad():
        padded = batch_logprobs(model, collate_pairs(items, 0), with_values=True)
        batch = collate_pairs_packed(items, 0, row_width=48)
        assert batch["input_ids"].shape[0] < 12  # several sequences share a row
        packed = batch_logprobs(model, batch, with_values=True)
    assert torch.equal(padded.n_tokens, packed.n_tokens)
    assert torch.equal(padded.token_mask, packed.token_mask)
    assert torch.allclose(padded.logps, packed.logps, atol=1e-5)
    assert torch.allclose(padded.token_logps, packed.token_logps, atol=1e-5)
    assert torch.allclose(padded.token_values, packed.token_values, atol=1e-5)

    # change every token of pair k (both its sequences), keep the lengths: the placement is the same, and no
    # other sequence — some of which share a row with them — may change at all
    k = 0
    it = items[k]
    bump = [(t % (V - 1)) + 1 for t in it.prompt_ids], [(t % (V - 1)) + 1 for t in it.chosen_ids]
    changed = list(items)
    changed[k] = TokenizedPair(bump[0], bump[1], [(t % (V - 1)) + 1 for t in it.rejected_ids], it.source)
    with torch.no_grad():
        batch2 = collate_pairs_packed(changed, 0, row_width=48)
        again = batch_logprobs(model, batch2)
    assert torch.equal(batch2["position_ids"], batch["position_ids"])  # same placement
    width = batch["input_ids"].shape[1]
    row_of = {int(s): int(i) // width for s, i in zip(batch["target_seq"], batch["target_index"], strict=True)}
    victims = [k, k + len(items)]
    neighbours = [s for s in range(2 * len(items)) if s not in victims and row_of[s] in {row_of[v] for v in victims}]
    assert neighbours, "a perturbed sequence should share its row with another"
    others = [s for s in range(2 * len(items)) if s not in victims]
    assert torch.allclose(again.logps[others], packed.logps[others], atol=1e-6)
    assert not torch.allclose(again.logps[victims], packed.logps[victims], atol=1e-3)


def test_packed_demos_and_indexed_padded_batches_equal_the_mask_path():
    model = _model()
    rng = random.Random(3)

    def ids(n: int) -> list[int]:
        return [rng.randrange(1, V) for _ in range(n)]

    demos = [TokenizedDemo(ids(rng.randint(0, 6)), ids(k), "") for k in (5, 1, 9, 3, 7)]
    with torch.no_grad():
        plain = batch_logprobs(model, collate_demos(demos, 0), with_values=True)
        indexed = batch_logprobs(model, with_target_index(collate_demos(demos, 0)), with_values=True)
        packed = batch_logprobs(model, collate_demos_packed(demos, 0, row_width=32), with_values=True)
    for other in (indexed, packed):
        assert torch.equal(plain.token_mask, other.token_mask)
        assert torch.allclose(plain.token_logps, other.token_logps, atol=1e-5)
        assert torch.allclose(plain.token_values, other.token_values, atol=1e-5)


def test_pack_rows_first_fit_decreasing():
    assert pack_rows([5, 3, 4, 2], 7) == [[0, 3], [2, 1]]
    with pytest.raises(ValueError, match="does not fit"):
        pack_rows([9], 7)


def _naive_head(h: torch.Tensor, head: torch.nn.Linear, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logp = torch.log_softmax(head(h).float(), -1)
    return logp.gather(-1, t.unsqueeze(-1)).squeeze(-1), torch.logsumexp(head(h).float(), -1)


@pytest.mark.parametrize("chunk", [None, 8, 100])
@pytest.mark.parametrize("bias", [False, True])
def test_fused_head_equals_naive_log_softmax_in_value_and_gradient(chunk, bias):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=bias)
    h = torch.randn(37, 16, requires_grad=True)
    t = torch.randint(0, 50, (37,))
    g1, g2 = torch.randn(37), torch.randn(37)
    lp, v = _naive_head(h, head, t)
    ((lp * g1).sum() + (v * g2).sum()).backward()
    want = [h.grad.clone(), head.weight.grad.clone()] + ([head.bias.grad.clone()] if bias else [])
    h.grad, head.weight.grad = None, None
    if bias:
        head.bias.grad = None
    lp_f, v_f = head_logps(h, head, t, chunk_tokens=chunk)
    ((lp_f * g1).sum() + (v_f * g2).sum()).backward()
    got = [h.grad, head.weight.grad] + ([head.bias.grad] if bias else [])
    assert torch.allclose(lp, lp_f, atol=1e-5) and torch.allclose(v, v_f, atol=1e-5)
    for a, b in zip(want, got, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("packed", [False, True])
def test_chunked_engine_equals_naive_full_logits_forward_and_backward(packed):
    """The whole engine (backbone + sliced, chunked head) against the model's own full-logits forward."""
    items = _pairs(4, seed=1)
    batch = collate_pairs_packed(items, 0, row_width=40) if packed else with_target_index(collate_pairs(items, 0))
    grads = []
    outs = []
    for engine_kw in ({"full_logits": True}, {"chunk_tokens": 7}):
        model = _model(seed=5)
        engine = LogProbModel(model, **engine_kw)
        lp = batch_logprobs(engine, batch, with_values=True)
        (lp.logps.sum() + 0.1 * lp.token_values.sum()).backward()
        outs.append(lp)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert torch.allclose(outs[0].logps, outs[1].logps, atol=1e-5)
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-5), n


def test_check_packing_passes_on_llama():
    assert check_packing(_model(), 0) < 1e-4
