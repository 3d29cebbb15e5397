"""The sampler's speedups keep the samples: the Gumbel noise drawn ahead in chunks on CPU equals the noise drawn
step by step (the original processor, kept here verbatim as the reference), token for token, for the same seed."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LogitsProcessor

import imitalign.generate.sampler as sampler_mod
from imitalign.generate.sampler import encode_prompts, sample
from imitalign.gym.tokenizer import build_tokenizer, tiny_llama_config

PROMPTS = ["write about sea and forest , short =>", "a long text on art and farm =>",
           "describe city and space , medium =>", "tell me about music and food , long =>"]


class StepByStepGumbel(LogitsProcessor):
    """The sampler's noise before the chunked draw: one ``rand(V)`` per row per step."""

    def __init__(self, seeds, max_steps=1):
        self.seeds = list(seeds)
        self.generators = None

    def __call__(self, input_ids, scores):
        if self.generators is None:
            self.generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds]
        u = torch.stack([torch.rand(scores.shape[-1], generator=g, device=scores.device) for g in self.generators])
        return scores + (-torch.log(-torch.log(u.clamp_(min=torch.finfo(u.dtype).tiny)))).to(scores.dtype)


@pytest.fixture(scope="module")
def setup():
    tok = build_tokenizer()
    cfg = tiny_llama_config(len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    cfg.pop("model_type")
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**cfg)).eval(), tok, encode_prompts(tok, PROMPTS)


@pytest.mark.parametrize("vocab", [3, 17, 204, 32000])
def test_cpu_generator_block_equals_successive_draws(vocab):
    a, b = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    steps = torch.stack([torch.rand(vocab, generator=a) for _ in range(5)])
    assert torch.equal(torch.rand((5, vocab), generator=b), steps)
    assert torch.equal(torch.rand(vocab, generator=b), torch.rand(vocab, generator=a))  # and the stream goes on alike


@pytest.mark.parametrize("chunk_floats", [None, 1, 204 * 3 * 5])  # default (all steps), 1 step, 5-step chunks
def test_chunked_noise_gives_the_step_by_step_samples(setup, monkeypatch, chunk_floats):
    model, tok, ids = setup
    kw = {"n": 3, "max_new_tokens": 12, "seed": 5, "batch_size": 3, "temperature": 0.8, "top_p": 0.9}
    with monkeypatch.context() as m:
        m.setattr(sampler_mod, "_GumbelNoise", StepByStepGumbel)
        ref = sample(model, tok, ids, **kw)
    if chunk_floats is not None:
        monkeypatch.setattr(sampler_mod, "NOISE_CHUNK_FLOATS", chunk_floats)
    new = sample(model, tok, ids, **kw)
    assert [s.response_ids for s in new] == [s.response_ids for s in ref]
    assert [s.token_logps for s in new] == [s.token_logps for s in ref]
    assert len({tuple(s.response_ids) for s in new}) > 6  # real samples, not one repeated answer
