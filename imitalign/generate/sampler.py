"""Sampling from a causal LM with ``transformers`` ``generate``: batched, KV cache, seeded, EOS-aware.

Seeding. Each row (a prompt index ``i`` and a sample index ``j``) owns a ``torch.Generator`` seeded with a
hash of ``(seed, i, j)``. Tokens are drawn by the Gumbel-max trick inside a logits processor, and
``generate`` runs in greedy mode on the perturbed scores:

    y_t = argmax_v ( z̃_t[v] + G_t[v] ),   G_t[v] = −log(−log U_t[v]),   U_t ~ Uniform(0, 1)^V  (row's generator)

where ``z̃_t`` are the logits after temperature (``z / T``) and top-p filtering (``−inf`` outside the
nucleus). ``argmax(z̃ + G)`` is an exact draw from ``softmax(z̃)``, and because every row consumes only its
own random stream, a row's sample does not depend on the batch it lands in, the batch size or the order of
the prompts (up to float differences of padded vs unpadded attention, which on CPU are below what flips a
Gumbel argmax in practice). ``temperature=0`` is greedy decoding.

Log-probs. ``token_logps[t] = log_softmax(z_t)[y_t]`` of the *raw* logits ``z_t`` (temperature 1, no top-p),
i.e. ``log π(y_t | x, y_<t)`` under the model itself, whatever temperature or top-p drew the sample; their sum
is ``log π(y|x)`` as a teacher-forced forward (``imitalign.model.logprobs``) computes it. They are recorded by
a logits processor placed first in the list, with every built-in ``generate`` processor neutralised
(repetition penalty 1, no n-gram ban, no minimum length), so it sees the model's logits unchanged.
``token_entropies[t] = −Σ_v π(v|·) log π(v|·)`` of the same raw distribution.

EOS. Generation stops at the first EOS (any of the tokenizer's and the model's EOS ids); ``response_ids``
keep that EOS and nothing after it; ``finished`` is False for rows cut by ``max_new_tokens``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from imitalign.data.collate import collate_prompts
from imitalign.data.jsonl import write_jsonl
from imitalign.data.tokenize import TokenizedPrompt


@dataclass
class Sample:
    """One sampled response. ``token_logps``/``token_entropies`` have one entry per ``response_ids`` token."""

    prompt_index: int
    sample_idx: int
    response_ids: list[int]
    text: str
    token_logps: list[float]
    finished: bool
    token_entropies: list[float] = field(default_factory=list)

    @classmethod
    def build(
        cls, tokenizer: Any, prompt_index: int, sample_idx: int, ids: list[int], finished: bool,
        token_logps: list[float], token_entropies: list[float] | None = None,
    ) -> Sample:
        """A sample whose ``text`` is ``ids`` decoded without the final EOS when ``finished`` (the EOS stays in
        ``response_ids`` and counts in ``logp``) — the rule of every backend."""
        return cls(
            prompt_index=prompt_index,
            sample_idx=sample_idx,
            response_ids=ids,
            text=tokenizer.decode(ids[:-1] if finished else ids, skip_special_tokens=True),
            token_logps=token_logps,
            finished=finished,
            token_entropies=token_entropies or [],
        )

    @property
    def logp(self) -> float:
        """``log π(y|x) = Σ_t token_logps[t]`` (EOS included when present)."""
        return float(sum(self.token_logps))

    @property
    def n_tokens(self) -> int:
        return len(self.response_ids)


def row_seed(seed: int, prompt_index: int, sample_idx: int) -> int:
    """The 63-bit seed of row ``(prompt_index, sample_idx)``'s generator (blake2b of the triple)."""
    digest = hashlib.blake2b(f"{seed}:{prompt_index}:{sample_idx}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class _Recorder(LogitsProcessor):
    """Records ``log_softmax`` of the raw scores at the chosen tokens, and the entropies. Step ``t``'s token
    is only known at step ``t+1`` (``input_ids[:, -1]``) or, for the last step, after ``generate``."""

    def __init__(self) -> None:
        self.prev: Tensor | None = None
        self.token_logps: list[Tensor] = []
        self.entropies: list[Tensor] = []

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if self.prev is not None:
            self.token_logps.append(self.prev.gather(1, input_ids[:, -1:]).squeeze(1))
        logp = torch.log_softmax(scores.float(), dim=-1)
        plogp = torch.where(torch.isfinite(logp), logp.exp() * logp, torch.zeros_like(logp))
        self.entropies.append(-plogp.sum(dim=-1))
        self.prev = logp
        return scores

    def finish(self, last_tokens: Tensor) -> tuple[Tensor, Tensor]:
        """``([B, S] token log-probs, [B, S] entropies)`` once the last step's tokens are known."""
        if self.prev is not None:
            self.token_logps.append(self.prev.gather(1, last_tokens.unsqueeze(1)).squeeze(1))
        return torch.stack(self.token_logps, dim=1), torch.stack(self.entropies, dim=1)


NOISE_CHUNK_FLOATS = 1 << 24  # uniforms drawn ahead per batch at most (64 MiB of fp32)


class _GumbelNoise(LogitsProcessor):
    """Adds per-row Gumbel noise from per-row generators (module docstring).

    On CPU the uniforms of the next ``chunk`` steps are drawn at once per row (``rand(chunk, V)``): a CPU generator
    fills a ``[chunk, V]`` tensor with exactly the numbers ``chunk`` successive ``rand(V)`` calls give
    (``tests/test_sampler_speed.py`` checks it), so every row gets the same noise — the same samples — as drawing
    step by step, with one generator call per row per chunk instead of per step. ``chunk`` keeps the drawn-ahead
    block under ``NOISE_CHUNK_FLOATS`` and at most ``max_steps``. Other devices draw step by step (a CUDA
    generator's stream is not split that way)."""

    def __init__(self, seeds: Sequence[int], max_steps: int = 1) -> None:
        self.seeds = list(seeds)
        self.max_steps = max(1, max_steps)
        self.generators: list[torch.Generator] | None = None
        self.block: Tensor | None = None  # [B, chunk, V] Gumbel noise drawn ahead (CPU)
        self.pos = 0

    def _draw(self, vocab: int, device: torch.device) -> Tensor:
        assert self.generators is not None
        if device.type != "cpu":
            u = torch.stack([torch.rand(vocab, generator=g, device=device) for g in self.generators])
            return -torch.log(-torch.log(u.clamp_(min=torch.finfo(u.dtype).tiny)))
        if self.block is None or self.pos >= self.block.shape[1]:
            chunk = max(1, min(self.max_steps, NOISE_CHUNK_FLOATS // max(1, len(self.generators) * vocab)))
            u = torch.stack([torch.rand((chunk, vocab), generator=g) for g in self.generators])
            self.block = -torch.log(-torch.log(u.clamp_(min=torch.finfo(u.dtype).tiny)))
            self.pos = 0
        self.pos += 1
        return self.block[:, self.pos - 1]

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if self.generators is None:
            self.generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds]
        gumbel = self._draw(scores.shape[-1], scores.device)
        return scores + gumbel.to(scores.dtype)


def _eos_ids(model: nn.Module, tokenizer: Any, eos_token_id: int | Sequence[int] | None) -> list[int]:
    if eos_token_id is not None:
        return [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    ids: list[int] = []
    for source in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if source is None:
            continue
        ids += [source] if isinstance(source, int) else list(source)
    if not ids:
        raise ValueError("no EOS token: the tokenizer and the model's generation config define none")
    return list(dict.fromkeys(ids))


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def encode_prompts(tokenizer: Any, prompts: Sequence[Any]) -> list[list[int]]:
    """Token ids of prompts: a string is encoded as plain text (the gym renders prompts this way); a message
    list goes through the tokenizer's chat template with the generation prompt."""
    out = []
    for p in prompts:
        if isinstance(p, str):
            out.append(list(tokenizer(p)["input_ids"]))
        elif getattr(tokenizer, "chat_template", None):
            ids = tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True)
            out.append(list(ids["input_ids"] if isinstance(ids, dict) else ids))
        else:
            raise ValueError("a message-list prompt needs a tokenizer with a chat template")
    return out


@torch.no_grad()
def _generation_config(max_new_tokens: int, eos: list[int], pad: int) -> GenerationConfig:
    """Greedy decoding on the perturbed scores (sampling is ``_GumbelNoise``), every other rule of the model's own
    generation config turned off."""
    return GenerationConfig(
        do_sample=False,  # sampling is done by _GumbelNoise; greedy on perturbed scores
        num_beams=1,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos,
        pad_token_id=pad,
        use_cache=True,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        encoder_repetition_penalty=1.0,
        min_new_tokens=0,  # overrides any min_length of the model's config (the processor stays inert)
        remove_invalid_values=False,
    )


def _warpers(temperature: float, top_p: float, seeds: list[int], max_new_tokens: int) -> list[LogitsProcessor]:
    """Temperature, top-p and the per-row Gumbel noise (none at temperature 0: greedy)."""
    if temperature <= 0:
        return []
    out: list[LogitsProcessor] = []
    if temperature != 1.0:
        out.append(TemperatureLogitsWarper(temperature))
    if top_p < 1.0:
        out.append(TopPLogitsWarper(top_p))
    out.append(_GumbelNoise(seeds, max_new_tokens))
    return out


def _sample_of(
    new: torch.Tensor, logps: torch.Tensor, entropies: torch.Tensor, eos: list[int], tokenizer: Any,
    prompt_index: int, sample_idx: int,
) -> Sample:
    """One generated row cut at its first EOS (kept in ``response_ids``, not in ``text``)."""
    hits = torch.isin(new, torch.tensor(eos)).nonzero()
    finished = hits.numel() > 0
    length = int(hits[0]) + 1 if finished else new.shape[0]
    return Sample.build(tokenizer, prompt_index, sample_idx, new[:length].tolist(), finished,
                        logps[:length].tolist(), entropies[:length].tolist())


def sample(
    model: nn.Module,
    tokenizer: Any,
    prompt_ids: Sequence[Sequence[int]],
    *,
    n: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 64,
    seed: int = 0,
    batch_size: int = 32,
    eos_token_id: int | Sequence[int] | None = None,
    progress: bool = False,
    prompt_indices: Sequence[int] | None = None,
) -> list[Sample]:
    """``n`` samples for each prompt, ordered by ``(prompt_index, sample_idx)``.

    ``prompt_indices`` (default ``0..len-1``) are the prompts' indices in a larger set: they name the samples
    (``Sample.prompt_index``) and seed their rows, so a shard of a prompt set draws exactly what the whole set
    would draw for those prompts (how :mod:`imitalign.generate.kshot` shards across processes).

    Rows are sorted by prompt length and cut into batches of ``batch_size`` (left padding, KV cache). The
    model is put in eval mode for the call and restored after. See the module docstring for the seeding,
    the log-probs (raw logits, temperature 1) and the EOS rules.
    """
    if n < 1 or batch_size < 1 or max_new_tokens < 1:
        raise ValueError("n, batch_size and max_new_tokens must be >= 1")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("empty prompt: every prompt needs at least one token")
    names = list(range(len(prompt_ids))) if prompt_indices is None else [int(i) for i in prompt_indices]
    if len(names) != len(prompt_ids) or len(set(names)) != len(names):
        raise ValueError("prompt_indices must give one distinct index per prompt")
    eos = _eos_ids(model, tokenizer, eos_token_id)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    device = _device(model)
    rows = sorted(((i, j) for i in range(len(prompt_ids)) for j in range(n)),
                  key=lambda r: (-len(prompt_ids[r[0]]), r))
    batches = [rows[k : k + batch_size] for k in range(0, len(rows), batch_size)]
    if progress:
        from rich.progress import track

        batches = track(batches, description="sampling")
    gen_config = _generation_config(max_new_tokens, eos, pad)
    was_training = model.training
    model.eval()
    out: dict[tuple[int, int], Sample] = {}
    try:
        for batch in batches:
            prompts = collate_prompts([TokenizedPrompt(list(prompt_ids[i]), "") for i, _ in batch], pad)
            width = prompts["input_ids"].shape[1]
            recorder = _Recorder()
            seeds = [row_seed(seed, names[i], j) for i, j in batch]
            processors = [recorder, *_warpers(temperature, top_p, seeds, max_new_tokens)]
            sequences = model.generate(
                input_ids=prompts["input_ids"].to(device),
                attention_mask=prompts["attention_mask"].to(device),
                generation_config=gen_config,
                logits_processor=LogitsProcessorList(processors),
            )
            new = sequences[:, width:]
            logps, entropies = recorder.finish(new[:, -1])
            new, logps, entropies = new.cpu(), logps.cpu(), entropies.cpu()
            for r, (i, j) in enumerate(batch):
                out[(i, j)] = _sample_of(new[r], logps[r], entropies[r], eos, tokenizer, names[i], j)
    finally:
        model.train(was_training)
    return sorted(out.values(), key=lambda s: (s.prompt_index, s.sample_idx))


def sample_rows(prompts: Sequence[Any], samples: Sequence[Sample]) -> list[dict[str, Any]]:
    """Sample rows (contracts.md): ``{"prompt", "response", "sample_idx", "n_tokens", "logp", "finished",
    "prompt_index"}``; ``n_tokens`` and ``logp`` count the EOS token when the response has one."""
    return [
        {
            "prompt": prompts[s.prompt_index],
            "response": s.text,
            "sample_idx": s.sample_idx,
            "n_tokens": s.n_tokens,
            "logp": s.logp,
            "finished": s.finished,
            "prompt_index": s.prompt_index,
        }
        for s in samples
    ]


def generate(
    model: str | Path | nn.Module, prompts: Sequence[Any], *, tokenizer: Any = None, n: int = 1, **kwargs: Any
) -> list[dict[str, Any]]:
    """``n`` sample rows (:func:`sample_rows`) per prompt from ``model`` — a model folder, or a loaded model with
    its ``tokenizer``. Prompts are strings (plain text) or message lists (the tokenizer's chat template);
    ``kwargs`` go to :func:`sample` (``temperature``, ``max_new_tokens``, ``seed``, ...)."""
    if isinstance(model, str | Path):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = tokenizer or AutoTokenizer.from_pretrained(model)
        model = AutoModelForCausalLM.from_pretrained(model)
    if tokenizer is None:
        raise ValueError("generate: a loaded model needs its tokenizer (tokenizer=...)")
    return sample_rows(prompts, sample(model, tokenizer, encode_prompts(tokenizer, prompts), n=n, **kwargs))


def write_samples_jsonl(path: str | Path, prompts: Sequence[Any], samples: Sequence[Sample]) -> Path:
    """Write :func:`sample_rows` as JSONL (atomically: a temporary file renamed into place)."""
    return write_jsonl(path, sample_rows(prompts, samples))
