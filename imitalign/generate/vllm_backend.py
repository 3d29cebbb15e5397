"""vLLM as a sampling backend (``generate.backend: vllm``), with the transformers sampler's output schema.

Used only when ``vllm`` is installed (GPU machines); nothing imports it otherwise. ``n`` samples per prompt come
from one ``SamplingParams(n=K, seed=...)`` request per prompt (vLLM's per-request seed, offset by the prompt's
global index so that shards do not repeat each other's draws). Token log-probs are vLLM's ``logprobs=0``
entries of the sampled tokens, requested as raw log-probs of the model (``logprobs_mode="raw_logprobs"``, the
default of vLLM ≥ 0.10), i.e. ``log π(y_t | ·)`` at temperature 1 as the transformers sampler records them;
entropies are not available (left empty). The draws are not the transformers sampler's (different RNG):
compare the two statistically, not row by row.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

from imitalign.generate.sampler import Sample


def require_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise ValueError(
            "generate.backend 'vllm' needs the vllm package (pip install vllm, on a GPU machine); "
            "use backend 'transformers' or 'auto'"
        )


def sample_vllm(
    model_path: str,
    prompt_ids: Sequence[Sequence[int]],
    prompt_indices: Sequence[int],
    *,
    n: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 64,
    seed: int = 0,
    dtype: str = "auto",
    llm: Any = None,
) -> list[Sample]:
    """``n`` samples of each prompt (ids), as :class:`~imitalign.generate.sampler.Sample` with global
    ``prompt_index``; ``llm`` reuses a ``vllm.LLM`` already built for ``model_path``."""
    require_vllm()
    from vllm import LLM, SamplingParams

    if llm is None:
        llm = LLM(model=model_path, dtype=dtype, seed=seed)
    tokenizer = llm.get_tokenizer()
    eos = tokenizer.eos_token_id
    params = [
        SamplingParams(
            n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed * 1_000_003 + i, logprobs=0
        )
        for i in prompt_indices
    ]
    requests = [{"prompt_token_ids": list(ids)} for ids in prompt_ids]
    outputs = llm.generate(requests, params, use_tqdm=False)
    samples = []
    for i, out in zip(prompt_indices, outputs, strict=True):
        for j, comp in enumerate(out.outputs):
            ids = list(comp.token_ids)
            logps = [
                float(lp[t].logprob) if lp and t in lp else float("nan")
                for t, lp in zip(ids, comp.logprobs or [None] * len(ids), strict=True)
            ]
            finished = comp.finish_reason == "stop"  # EOS (vLLM keeps the EOS id in token_ids)
            text_ids = ids[:-1] if ids and ids[-1] == eos else ids
            samples.append(
                Sample(
                    prompt_index=int(i),
                    sample_idx=j,
                    response_ids=ids,
                    text=tokenizer.decode(text_ids, skip_special_tokens=True),
                    token_logps=logps,
                    finished=finished,
                    token_entropies=[],
                )
            )
    return sorted(samples, key=lambda s: (s.prompt_index, s.sample_idx))
