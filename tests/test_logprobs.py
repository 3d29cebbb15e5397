import torch

from imitalign.model.logprobs import LogProbModel, batch_logprobs, head_logps
from tests.helpers import tiny_llama


def _naive(model, ids: list[int], n_prompt: int) -> tuple[float, list[float], list[float]]:
    """One unpadded row: Σ_t log π(y_t | x, y_<t) by a plain full-logits forward."""
    x = torch.tensor([ids])
    logits = model(input_ids=x).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    toks = [logp[i - 1, ids[i]].item() for i in range(n_prompt, len(ids))]
    vals = [torch.logsumexp(logits[i - 1], -1).item() for i in range(n_prompt, len(ids))]
    return sum(toks), toks, vals


def _batch(rows: list[tuple[list[int], int]]) -> dict[str, torch.Tensor]:
    T = max(len(ids) for ids, _ in rows)
    input_ids = torch.zeros(len(rows), T, dtype=torch.long)
    attn = torch.zeros(len(rows), T, dtype=torch.long)
    resp = torch.zeros(len(rows), T, dtype=torch.bool)
    for r, (ids, n_prompt) in enumerate(rows):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        attn[r, : len(ids)] = 1
        resp[r, n_prompt : len(ids)] = True
    return {"input_ids": input_ids, "attention_mask": attn, "response_mask": resp}


def test_engine_equals_naive_per_example_and_padding_changes_nothing():
    model = tiny_llama()
    g = torch.Generator().manual_seed(1)
    rows = [
        (torch.randint(1, 97, (n,), generator=g).tolist(), p) for n, p in [(9, 4), (15, 3), (6, 5), (12, 2)]
    ]
    with torch.no_grad():
        out = batch_logprobs(model, _batch(rows), with_values=True)
        for r, (ids, n_prompt) in enumerate(rows):
            total, toks, vals = _naive(model, ids, n_prompt)
            n = len(ids) - n_prompt
            assert out.n_tokens[r].item() == n
            assert abs(out.logps[r].item() - total) < 1e-4
            assert torch.allclose(out.token_logps[r, :n], torch.tensor(toks), atol=1e-5)
            assert torch.allclose(out.token_values[r, :n], torch.tensor(vals), atol=1e-5)
            assert not out.token_mask[r, n:].any() and (out.token_logps[r, n:] == 0).all()
        # the same row alone (no padding) gives the same numbers
        alone = batch_logprobs(model, _batch(rows[2:3]))
        assert abs(alone.logps[0].item() - out.logps[2].item()) < 1e-5


def test_chunked_head_equals_plain_in_value_and_gradient():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    h = torch.randn(37, 16, requires_grad=True)
    t = torch.randint(0, 50, (37,))
    lp, v = head_logps(h, head, t)
    (lp.sum() + 0.3 * v.sum()).backward()
    g_plain, gw_plain = h.grad.clone(), head.weight.grad.clone()
    h.grad = None
    head.weight.grad = None
    lp_c, v_c = head_logps(h, head, t, chunk_tokens=8)
    (lp_c.sum() + 0.3 * v_c.sum()).backward()
    assert torch.allclose(lp, lp_c, atol=1e-6) and torch.allclose(v, v_c, atol=1e-6)
    assert torch.allclose(g_plain, h.grad, atol=1e-6)
    assert torch.allclose(gw_plain, head.weight.grad, atol=1e-6)


def test_full_logits_fallback_matches_sliced_head():
    model = tiny_llama()
    batch = _batch([([5, 6, 7, 8, 9], 2), ([3, 4, 5], 1)])
    with torch.no_grad():
        a = LogProbModel(model)(batch["input_ids"], batch["attention_mask"], batch["response_mask"])
        b = LogProbModel(model, full_logits=True)(
            batch["input_ids"], batch["attention_mask"], batch["response_mask"]
        )
    assert torch.allclose(a[0], b[0], atol=1e-5) and torch.allclose(a[1], b[1], atol=1e-5)
