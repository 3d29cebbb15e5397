"""The sampler: seeded reproducibility, EOS handling, log-probs equal to a teacher-forced forward."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from imitalign.generate.sampler import encode_prompts, row_seed, sample, write_samples_jsonl
from imitalign.gym.tokenizer import build_tokenizer, tiny_llama_config
from imitalign.model.logprobs import batch_logprobs

PROMPTS = [
    "write about sea and forest , short =>",
    "a long text on art and farm =>",
    "describe city and space , medium =>",
    "tell me about music and food , long =>",
]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    cfg = tiny_llama_config(len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
    cfg.pop("model_type")
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**cfg)).eval()


@pytest.fixture(scope="module")
def prompt_ids(tok):
    return encode_prompts(tok, PROMPTS)


def _ids(samples):
    return [s.response_ids for s in samples]


def test_n_samples_per_prompt_in_order(model, tok, prompt_ids):
    out = sample(model, tok, prompt_ids, n=3, max_new_tokens=5, seed=0)
    assert [(s.prompt_index, s.sample_idx) for s in out] == [(i, j) for i in range(4) for j in range(3)]
    assert all(len(s.token_logps) == len(s.response_ids) == len(s.token_entropies) for s in out)
    assert len({tuple(s.response_ids) for s in out}) > 6  # samples differ


def test_seeded_reproducibility_independent_of_batching(model, tok, prompt_ids):
    a = sample(model, tok, prompt_ids, n=3, max_new_tokens=12, seed=7, batch_size=32)
    assert _ids(sample(model, tok, prompt_ids, n=3, max_new_tokens=12, seed=7, batch_size=32)) == _ids(a)
    b = sample(model, tok, prompt_ids, n=3, max_new_tokens=12, seed=7, batch_size=2)
    assert _ids(b) == _ids(a)
    for x, y in zip(a, b, strict=True):
        assert x.token_logps == pytest.approx(y.token_logps, abs=1e-5)
    # a prompt keeps its samples when the other prompts (and so the batches and their padding) change
    other = sample(model, tok, [prompt_ids[0], prompt_ids[3], prompt_ids[1]], n=3, max_new_tokens=12, seed=7)
    assert _ids(other[:3]) == _ids(a[:3])
    assert _ids(sample(model, tok, prompt_ids, n=3, max_new_tokens=12, seed=8)) != _ids(a)
    assert row_seed(7, 0, 0) != row_seed(7, 0, 1) != row_seed(8, 0, 0)


def test_model_mode_restored(model, tok, prompt_ids):
    model.train()
    sample(model, tok, prompt_ids[:1], max_new_tokens=2)
    assert model.training
    model.eval()


def _teacher_forced(model, prompt, response):
    full = torch.tensor([prompt + response])
    with torch.no_grad():
        logp = torch.log_softmax(model(full).logits[0, :-1].float(), dim=-1)
    return logp[len(prompt) - 1 :].gather(1, full[0, len(prompt) :, None]).squeeze(1)


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 0.9), (1.5, 1.0)])
def test_token_logps_equal_teacher_forced_forward(model, tok, prompt_ids, temperature, top_p):
    out = sample(model, tok, prompt_ids, n=2, max_new_tokens=16, seed=1, temperature=temperature, top_p=top_p,
                 batch_size=3)
    for s in out:
        expected = _teacher_forced(model, prompt_ids[s.prompt_index], s.response_ids)
        assert torch.tensor(s.token_logps) == pytest.approx(expected, abs=1e-4)
    # and the log-prob engine agrees on the sequence sums (right-padded batch, contracts.md)
    from imitalign.eval.evaluate import collate_sequences

    batch = collate_sequences([prompt_ids[s.prompt_index] for s in out], [s.response_ids for s in out], 0)
    with torch.no_grad():
        engine = batch_logprobs(model, batch)
    assert engine.logps.tolist() == pytest.approx([s.logp for s in out], abs=1e-4)


def test_eos_handling(model, tok, prompt_ids):
    stop = list(range(4, 100))  # about half the vocabulary ends generation: a mix of finished and cut rows
    out = sample(model, tok, prompt_ids, n=8, max_new_tokens=3, seed=0, eos_token_id=stop)
    finished = [s for s in out if s.finished]
    cut = [s for s in out if not s.finished]
    assert finished and cut
    for s in finished:
        assert s.response_ids[-1] in stop and not set(s.response_ids[:-1]) & set(stop)
        assert s.text == tok.decode(s.response_ids[:-1], skip_special_tokens=True)
    for s in cut:
        assert len(s.response_ids) == 3 and not set(s.response_ids) & set(stop)
        assert s.text == tok.decode(s.response_ids, skip_special_tokens=True)
    # the tokenizer's own EOS: rows that stop early keep exactly one EOS and nothing after it
    eos = tok.eos_token_id
    for s in sample(model, tok, prompt_ids, n=16, max_new_tokens=40, seed=0):
        assert eos not in s.response_ids[:-1]
        assert s.finished == (s.response_ids[-1] == eos)
        assert s.finished or len(s.response_ids) == 40


def test_greedy_matches_generate(model, tok, prompt_ids):
    out = sample(model, tok, prompt_ids[:1], temperature=0.0, max_new_tokens=6, n=2)
    assert out[0].response_ids == out[1].response_ids
    ref = model.generate(torch.tensor([prompt_ids[0]]), do_sample=False, max_new_tokens=6,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    assert out[0].response_ids == ref[0, len(prompt_ids[0]) :].tolist()[: len(out[0].response_ids)]


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_samples_follow_the_tempered_distribution(model, tok, prompt_ids, temperature):
    """Gumbel-max draws are exact: the mean of log π_T(y) over draws y ~ π_T is −H(π_T) (within 4 se)."""
    n = 1500
    out = sample(model, tok, prompt_ids[:1], n=n, max_new_tokens=1, seed=3, temperature=temperature,
                 batch_size=512)
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids[0]])).logits[0, -1].float()
    logp_t = torch.log_softmax(logits / temperature, dim=-1)
    entropy = -(logp_t.exp() * logp_t).sum().item()
    draws = torch.tensor([s.response_ids[0] for s in out])
    values = logp_t[draws]
    se = values.std().item() / math.sqrt(n)
    assert abs(values.mean().item() + entropy) < 4 * se
    # and the recorded token log-probs are of the untempered model
    assert [s.token_logps[0] for s in out[:5]] == pytest.approx(torch.log_softmax(logits, -1)[draws[:5]].tolist(),
                                                                abs=1e-5)


def test_top_p_stays_in_the_nucleus(model, tok, prompt_ids):
    with torch.no_grad():
        probs = torch.softmax(model(torch.tensor([prompt_ids[1]])).logits[0, -1].float(), dim=-1)
    sorted_p, order = probs.sort(descending=True)
    keep = int((sorted_p.cumsum(0) < 0.3).sum()) + 1
    nucleus = set(order[:keep].tolist())
    out = sample(model, tok, prompt_ids[1:2], n=200, max_new_tokens=1, seed=0, top_p=0.3)
    assert {s.response_ids[0] for s in out} <= nucleus


def test_write_samples_jsonl(model, tok, prompt_ids, tmp_path):
    out = sample(model, tok, prompt_ids, n=2, max_new_tokens=8, seed=0)
    path = write_samples_jsonl(tmp_path / "s.jsonl", PROMPTS, out)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 8
    assert set(rows[0]) == {"prompt", "response", "sample_idx", "n_tokens", "logp", "finished", "prompt_index"}
    assert rows[3]["prompt"] == PROMPTS[1] and rows[3]["sample_idx"] == 1
    assert rows[0]["logp"] == pytest.approx(sum(out[0].token_logps)) and rows[0]["n_tokens"] == out[0].n_tokens


def test_rejects_bad_arguments(model, tok, prompt_ids):
    with pytest.raises(ValueError):
        sample(model, tok, [[]])
    with pytest.raises(ValueError):
        sample(model, tok, prompt_ids, top_p=0.0)
    with pytest.raises(ValueError):
        sample(model, tok, prompt_ids, n=0)


def test_prompt_indices_shard_draws_what_the_whole_set_draws(model, tok, prompt_ids):
    whole = sample(model, tok, prompt_ids, n=2, max_new_tokens=10, seed=5)
    shard = sample(model, tok, prompt_ids[2:], n=2, max_new_tokens=10, seed=5, prompt_indices=[2, 3])
    assert [(s.prompt_index, s.sample_idx) for s in shard] == [(2, 0), (2, 1), (3, 0), (3, 1)]
    assert _ids(shard) == _ids(whole[4:])
    with pytest.raises(ValueError, match="prompt_indices"):
        sample(model, tok, prompt_ids[:2], prompt_indices=[1, 1])
