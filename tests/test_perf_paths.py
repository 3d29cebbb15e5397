"""Which fast path the engine and the loop take, and that each gives the numbers of the plain one (issue 16):
packing skipped when it saves no row, the head's logits chunked without a backward and under
``chunk_tokens="auto"``, fused AdamW. Numeric checks on a tiny model; nothing here is timed."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from imitalign.data.collate import collate_demos_packed, collate_pairs, collate_pairs_packed
from imitalign.data.tokenize import TokenizedDemo, TokenizedPair
from imitalign.model import logprobs
from imitalign.model.logprobs import LogProbModel, auto_chunk, batch_logprobs
from imitalign.train import optim
from tests.helpers import TINY_LLAMA

V = 97


def _model(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = {k: v for k, v in TINY_LLAMA.items() if k != "model_type"}
    return LlamaForCausalLM(LlamaConfig(vocab_size=V, pad_token_id=0, **cfg)).eval()


def _ids(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(1, V) for _ in range(n)]


def _equal_pairs(n: int, seed: int = 0) -> list[TokenizedPair]:
    rng = random.Random(seed)
    return [TokenizedPair(_ids(rng, 4), _ids(rng, 6), _ids(rng, 6), f"r{i}") for i in range(n)]


def _grads(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    lp = batch_logprobs(LogProbModel(model), batch)
    (lp.logps * torch.linspace(-1, 1, lp.logps.shape[0])).sum().backward()
    return lp.token_logps.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_equal_lengths_skip_packing_same_log_probs_and_gradients():
    model, items = _model(), _equal_pairs(4)
    skipped = collate_pairs_packed(items, 0)  # every sequence is 10 tokens: no two fit in a 10-wide row
    assert "position_ids" not in skipped  # the padded layout was chosen
    padded = collate_pairs(items, 0)
    for k in ("input_ids", "attention_mask", "response_mask"):
        assert torch.equal(skipped[k], padded[k])
    packed = collate_pairs_packed(items, 0, row_width=20)  # two sequences per row: the packed layout
    assert "position_ids" in packed and packed["input_ids"].shape[0] == 4
    lp_s, g_s = _grads(model, skipped)
    lp_p, g_p = _grads(model, packed)
    lp_m, _ = _grads(model, padded)  # the boolean-mask path, no index tensors
    assert torch.allclose(lp_s, lp_p, atol=1e-6, rtol=0) and torch.allclose(lp_s, lp_m, atol=1e-6, rtol=0)
    for n in g_s:
        assert torch.allclose(g_s[n], g_p[n], atol=1e-6, rtol=1e-5), n


def test_unequal_lengths_still_pack():
    rng = random.Random(1)
    items = [TokenizedDemo(_ids(rng, 2), _ids(rng, n), "d") for n in (12, 3, 4, 8)]
    batch = collate_demos_packed(items, 0)  # 14, 5, 6, 10 tokens into rows of 14: 5 + 6 share a row
    assert "position_ids" in batch and batch["input_ids"].shape[0] == 3


def test_head_without_backward_runs_in_chunks_with_the_same_numbers(monkeypatch):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, V, bias=False)
    h, t = torch.randn(10, 16), torch.randint(0, V, (10,))
    lp_full, v_full = logprobs.head_logps(h.requires_grad_(), head, t)  # a backward to serve: one chunk
    calls = []
    real = logprobs._lse_pick_
    monkeypatch.setattr(logprobs, "_lse_pick_", lambda z, tt: calls.append(z.shape[0]) or real(z, tt))
    monkeypatch.setattr(logprobs, "_NOGRAD_ELEMS", 3 * V)  # 3 rows per chunk
    with torch.no_grad():
        lp, v = logprobs.head_logps(h, head, t)
    assert calls == [3, 3, 3, 1]
    assert torch.allclose(lp, lp_full, atol=1e-6, rtol=0) and torch.allclose(v, v_full, atol=1e-6, rtol=0)


def test_in_place_logsumexp_equals_torch_bit_for_bit_and_leaves_the_unnormalised_softmax():
    torch.manual_seed(0)
    z = torch.randn(7, V) * 4 + 10  # large logits: a naive exp would overflow
    t = torch.randint(0, V, (7,))
    lse_torch = torch.logsumexp(z, -1)
    lp_torch = z.gather(-1, t[:, None]).squeeze(-1) - lse_torch
    e = z.clone()
    lp, lse, total = logprobs._lse_pick_(e, t)
    assert torch.equal(lse, lse_torch) and torch.equal(lp, lp_torch)  # the same numbers as before, bit for bit
    assert torch.allclose(e / total[:, None], torch.softmax(z, -1), atol=1e-7, rtol=1e-5)
    empty = torch.zeros(0, V)
    lp0, lse0, _ = logprobs._lse_pick_(empty, torch.zeros(0, dtype=torch.long))
    assert lp0.shape == lse0.shape == (0,)


@pytest.mark.parametrize("chunk", [None, 3])
def test_fused_head_gradients_equal_float64_autograd(chunk):
    """The kept path (``e · (g_v − g_lp) / Σ``) and the recompute path (``exp(z − lse)``) against autograd."""
    torch.manual_seed(1)
    h = torch.randn(8, 16, dtype=torch.float64)
    w, b = torch.randn(V, 16, dtype=torch.float64) * 0.3, torch.randn(V, dtype=torch.float64)
    t = torch.randint(0, V, (8,))
    g_lp, g_v = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    leaves64 = [x.clone().requires_grad_() for x in (h, w, b)]
    z = torch.nn.functional.linear(*leaves64)
    lse = torch.logsumexp(z, -1)
    want = torch.autograd.grad(((z.gather(-1, t[:, None]).squeeze(-1) - lse) * g_lp + lse * g_v).sum(), leaves64)
    leaves = [x.float().requires_grad_() for x in (h, w, b)]
    lp32, lse32 = logprobs._FusedHeadLogps.apply(*leaves, t, chunk)
    got = torch.autograd.grad((lp32 * g_lp.float() + lse32 * g_v.float()).sum(), leaves)
    for g, want_g in zip(got, want, strict=True):
        assert torch.allclose(g.double(), want_g, atol=1e-5, rtol=1e-4)


def test_auto_chunk_rule_by_hand():
    # the benchmark's fixed set: 65 MB of logits -> kept
    assert auto_chunk(m=1024, tokens=1536, body_params=4_200_000, hidden=256, vocab=16_000) is None
    # big logits (1 GB) but a tiny body: recomputing them is 2·M·H·V = 134 GFLOP > 5 % of 704 GFLOP -> kept
    assert auto_chunk(m=8192, tokens=12_000, body_params=4_200_000, hidden=256, vocab=32_000) is None
    # an 8B-like model: 2·8192·4096·128256 = 8.6 TFLOP vs 5 % of 6·7e9·16384 + 6·M·H·V = 37.0 TFLOP -> chunked
    assert auto_chunk(m=8192, tokens=16_384, body_params=7_000_000_000, hidden=4096, vocab=128_256) == 130


def test_auto_chunk_engine_takes_the_chunked_path_with_the_same_numbers(monkeypatch):
    model, items = _model(), _equal_pairs(3)
    batch = collate_pairs_packed(items, 0, row_width=20)
    plain = LogProbModel(model)
    lp0 = batch_logprobs(plain, batch)
    lp0.logps.sum().backward()
    g0 = model.lm_head.weight.grad.clone()
    model.zero_grad(set_to_none=True)
    monkeypatch.setattr(logprobs, "AUTO_CHUNK_BYTES", 0)
    monkeypatch.setattr(logprobs, "AUTO_CHUNK_MAX_COST", 1.0)
    monkeypatch.setattr(logprobs, "_NOGRAD_ELEMS", 4 * V)  # chunks of 4 positions
    chunks = []
    real = logprobs._FusedHeadLogps.apply
    monkeypatch.setattr(logprobs._FusedHeadLogps, "apply", lambda *a: chunks.append(a[-1]) or real(*a))
    auto = LogProbModel(model, chunk_tokens="auto")
    lp1 = batch_logprobs(auto, batch)
    lp1.logps.sum().backward()
    assert chunks == [4]
    assert torch.allclose(lp0.token_logps, lp1.token_logps, atol=1e-6, rtol=0)
    assert torch.allclose(g0, model.lm_head.weight.grad, atol=1e-6, rtol=1e-5)


def test_chunk_tokens_is_validated():
    with pytest.raises(ValueError, match="chunk_tokens"):
        LogProbModel(_model(), chunk_tokens=0)


def test_fused_adamw_is_chosen_on_cpu_and_updates_like_adamw():
    torch.manual_seed(0)
    start = [torch.randn(30, 8), torch.randn(8)]
    grads = [[torch.randn_like(p) for p in start] for _ in range(5)]
    weights = []
    for build in (optim.adamw, None):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        groups = [{"params": params[:1], "weight_decay": 0.1}, {"params": params[1:], "weight_decay": 0.0}]
        opt = build(groups, 1e-2, (0.9, 0.999)) if build else torch.optim.AdamW(groups, lr=1e-2)
        assert opt.defaults["fused"] is (True if build else None)  # the loop's AdamW is the fused one on CPU
        for g in grads:
            for p, gg in zip(params, g, strict=True):
                p.grad = gg.clone()
            opt.step()
        weights.append([p.detach() for p in params])
    for a, b in zip(*weights, strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)
    assert not optim.fusable([torch.zeros(2, dtype=torch.long)])
    assert optim.adamw([{"params": [torch.nn.Parameter(start[1].clone())]}], 1e-2, (0.9, 0.999),
                       sharded=True).defaults["fused"] is None  # FSDP2 / DeepSpeed: the default AdamW
