"""vLLM as a sampling backend (``generate.backend: vllm``), with the transformers sampler's output schema.

Used only when ``vllm`` is installed (GPU machines); nothing imports it otherwise. Written against the source
of vLLM 0.33.0 (offline ``LLM`` API, V1 engine) and tested against a stand-in with that API's shapes
(tests/test_vllm_backend.py), not against vLLM itself.

- Requests: one ``TokensPrompt`` (``{"prompt_token_ids": ids}``) and one ``SamplingParams(n=K, logprobs=0,
  seed=s_i)`` per prompt. vLLM gives the ``j``-th of the ``n`` child requests the seed ``s_i + j``, so
  ``s_i = (seed · 1_000_003 + i) · K`` (``i`` the prompt's global index) gives every row ``(i, j)`` its own
  seed, whatever the sharding. The draws are not the transformers sampler's (different RNG): compare the two
  backends statistically, not row by row. Greedy (``temperature`` 0) needs ``n=1`` in vLLM, so it sends K
  copies of the prompt.
- ``sample_idx`` is ``CompletionOutput.index`` (of the copy, for greedy), not the position in ``outputs``.
- Log-probs: ``logprobs=0`` returns, per generated token, a dict holding only the sampled token's
  ``Logprob`` (the sampler always puts the sampled token first). With ``logprobs_mode="raw_logprobs"``
  (passed explicitly; also vLLM's default) these are ``log_softmax`` of the model's logits before
  temperature, top-p or any processor, i.e. ``log π(y_t | ·)`` at temperature 1, as the transformers sampler
  records them. Entropies are not available (left empty).
- EOS: vLLM stops on the tokenizer's EOS and the ``eos_token_id``s of the model's generation config, with
  ``finish_reason == "stop"``; the stop token stays in ``token_ids`` (and has a log-prob). So a ``"stop"``
  row keeps it in ``response_ids`` and drops it from ``text``; ``"length"`` rows are unfinished. Any other
  finish reason (abort, error) raises.
- ``max_model_len`` is the longest prompt plus ``max_new_tokens`` (vLLM would otherwise reserve the KV cache
  for the model's whole context).

Several processes (``accelerate launch``, i.e. torchrun): each process builds its own engine with
``distributed_executor_backend="external_launcher"`` (vLLM's mode for torchrun-launched processes, also what TRL's
colocated vLLM uses): vLLM then takes the launcher's ``RANK`` / ``LOCAL_RANK`` / ``WORLD_SIZE``, puts each
process's worker on ``cuda:LOCAL_RANK`` and runs no engine subprocess. With ``tensor_parallel_size`` 1 every
process is an independent engine on its own GPU (data parallel: the prompts are sharded by the caller); with
``tensor_parallel_size`` p, consecutive groups of p processes form one engine each (vLLM's tensor-parallel groups
over the launcher's ranks), and every process of a group must send the same prompts (the caller shards by group).
vLLM's own ``data_parallel_size`` is not used: in vLLM 0.33 offline data parallel is refused for dense models
outside external-launcher mode, and under it only couples the engines' steps (needed for MoE expert layers).
One process with ``tensor_parallel_size`` p > 1 lets vLLM start its p workers itself (the GPUs must be visible).
A model too large for one machine's GPUs needs vLLM's Ray backend across machines, which this module does not set
up (see docs/scale.md).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

from imitalign.generate.sampler import Sample

GREEDY_EPS = 1e-5  # vLLM treats temperature < 1e-5 as greedy (sampling_params._SAMPLING_EPS)


def require_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise ValueError(
            "generate.backend 'vllm' needs the vllm package (pip install vllm, on a GPU machine); "
            "use backend 'transformers' or 'auto'"
        )


def _sample_of(comp: Any, prompt_index: int, first: int, tokenizer: Any) -> Sample:
    """One vLLM completion as a :class:`Sample`: the sampled tokens' raw log-probs (each must be there), cut at
    the stop token (an EOS, the last of ``token_ids``, kept in ``response_ids`` and not in ``text``)."""
    ids = list(comp.token_ids)
    steps = list(comp.logprobs or [])
    if len(steps) != len(ids):
        raise RuntimeError(f"vLLM returned {len(steps)} log-prob entries for {len(ids)} tokens")
    logps = []
    for t, step in zip(ids, steps, strict=True):
        if not step or t not in step:
            raise RuntimeError(f"vLLM's log-probs lack the sampled token {t}")
        logps.append(float(step[t].logprob))
    if comp.finish_reason not in ("stop", "length"):
        raise RuntimeError(f"vLLM request for prompt {prompt_index} ended with finish_reason {comp.finish_reason!r}")
    finished = comp.finish_reason == "stop"
    return Sample.build(tokenizer, prompt_index, first + int(comp.index), ids, finished, logps)


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
    tensor_parallel_size: int = 1,
    external_launcher: bool = False,
    max_model_len: int | None = None,
) -> list[Sample]:
    """``n`` samples of each prompt (ids), as :class:`~imitalign.generate.sampler.Sample` with global
    ``prompt_index``, sorted by ``(prompt_index, sample_idx)``; ``llm`` reuses a ``vllm.LLM`` already built
    for ``model_path`` (built with ``logprobs_mode="raw_logprobs"``, the default). ``external_launcher``: this
    process is one rank of an ``accelerate launch`` / torchrun job (module docstring); every rank must call this,
    an empty shard included (the engine's construction is collective). ``max_model_len``: default, the longest
    prompt here plus ``max_new_tokens``."""
    if n < 1 or max_new_tokens < 1:
        raise ValueError("n and max_new_tokens must be >= 1")
    if len(prompt_ids) != len(prompt_indices):
        raise ValueError("prompt_indices must give one index per prompt")
    if not prompt_ids and not external_launcher:
        return []
    require_vllm()
    from vllm import LLM, SamplingParams

    if llm is None:
        launcher = {"distributed_executor_backend": "external_launcher"} if external_launcher else {}
        llm = LLM(
            model=model_path,
            dtype=dtype,
            seed=seed,  # the same on every rank (a tensor-parallel group must draw alike); rows have their own seeds
            logprobs_mode="raw_logprobs",
            max_model_len=max_model_len or max((len(p) for p in prompt_ids), default=1) + max_new_tokens,
            tensor_parallel_size=tensor_parallel_size,
            **launcher,
        )
    if not prompt_ids:
        return []
    tokenizer = llm.get_tokenizer()
    per_request = 1 if temperature < GREEDY_EPS else n
    requests, params, names = [], [], []
    for i, ids in zip(prompt_indices, prompt_ids, strict=True):
        for copy in range(n // per_request):
            requests.append({"prompt_token_ids": list(ids)})
            params.append(
                SamplingParams(
                    n=per_request,
                    temperature=temperature,
                    top_p=top_p,
                    max_tokens=max_new_tokens,
                    seed=(seed * 1_000_003 + int(i)) * n + copy,
                    logprobs=0,
                )
            )
            names.append((int(i), copy * per_request))
    outputs = llm.generate(requests, params, use_tqdm=False)
    samples = [
        _sample_of(comp, i, first, tokenizer)
        for (i, first), out in zip(names, outputs, strict=True)
        for comp in out.outputs
    ]
    return sorted(samples, key=lambda s: (s.prompt_index, s.sample_idx))
