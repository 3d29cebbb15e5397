"""K samples per prompt from a model folder, sharded exactly across ``accelerate launch`` processes.

    imitalign generate MODEL PROMPTS.jsonl --k 4 --out samples.jsonl [--temperature 1.0 --max-new-tokens 64]
    accelerate launch --num_processes 8 -m imitalign.cli generate ...      (same file, same rows)

Prompts go through the data layer as for training (``Renderer`` with ``chat_template`` / ``system_prompt``,
``tokenize_prompt`` with ``max_length`` / ``max_prompt_length``), so a policy samples from exactly the prompt
ids it is trained on. Prompt ``i`` of the file (after parsing) is sampled by process ``i mod W`` (strided
shards: sizes differ by at most one, every prompt in exactly one shard — no dropped tail, no duplicate), with
row seeds ``(seed, i, j)`` (:func:`imitalign.generate.sampler.row_seed`), so the rows do not depend on ``W``.
Each process writes its shard atomically; after a barrier the main process merges them, checks that every
prompt has exactly ``K`` samples with ``sample_idx`` ``0..K-1``, and writes the samples file atomically
(sorted by ``prompt_index, sample_idx``), then removes the shards. Nothing half-written ever carries the final
name.

Sample rows (contracts.md): ``{"prompt", "response", "sample_idx", "n_tokens", "logp", "finished",
"prompt_index"}`` plus the prompt row's other columns (kept) and ``"policy"`` when a name is given.

Backends: ``transformers`` (the sampler: batched, KV cache, prompts grouped by length) and ``vllm``
(:mod:`imitalign.generate.vllm_backend`, same schema, used when installed; under ``accelerate launch`` one
engine per process on the process's GPU, or one per ``tensor_parallel_size`` processes, prompts sharded over the
engines); ``auto`` picks vLLM when it is installed and a GPU is present.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imitalign.config import DataSource
from imitalign.data.dataset import read_records
from imitalign.data.jsonl import read_jsonl, write_jsonl
from imitalign.data.records import DataError
from imitalign.data.templates import Renderer
from imitalign.data.tokenize import tokenize_records
from imitalign.generate.sampler import Sample, sample, sample_rows
from imitalign.processes import process_state

log = logging.getLogger(__name__)

BACKENDS = ("transformers", "vllm", "auto")


@dataclass
class PromptSet:
    """Parsed and tokenised prompts: the row's ``prompt`` value (string or messages), its ids, its other
    columns, and where it came from. ``dropped`` counts prompts too long to leave room to generate."""

    prompts: list[Any]
    prompt_ids: list[list[int]]
    extras: list[dict[str, Any]]
    sources: list[str]
    dropped: int = 0

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass
class GenerationStats:
    """What a generation call did (for tables): prompts, samples, generated tokens, wall seconds."""

    prompts: int = 0
    samples: int = 0
    tokens: int = 0
    seconds: float = 0.0
    processes: int = 1
    backend: str = "transformers"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompts": self.prompts,
            "samples": self.samples,
            "tokens": self.tokens,
            "seconds": self.seconds,
            "tokens_per_s": self.tokens_per_s,
            "processes": self.processes,
            "backend": self.backend,
            **self.extra,
        }


def prompt_value(messages: list[dict[str, str]]) -> Any:
    """The prompt as a file would hold it: a single user turn as its string, anything else as the message list."""
    if len(messages) == 1 and messages[0].get("role") == "user":
        return messages[0]["content"]
    return messages


def load_prompt_set(
    source: DataSource | str,
    tokenizer: Any,
    *,
    chat_template: str = "auto",
    system_prompt: str | None = None,
    max_length: int = 1024,
    max_prompt_length: int | None = None,
    max_new_tokens: int = 0,
) -> PromptSet:
    """Read any row format as prompts (``{"prompt"}`` rows, preference or demonstration rows, message lists)
    and tokenise them with the generation prompt. A prompt is dropped (counted) when it leaves no room for
    ``max_new_tokens`` within ``max_length``. Raises :class:`DataError` when the file has no usable prompt."""
    if isinstance(source, str):
        source = DataSource(path=source)
    records, stats = read_records(source, kind="prompt")
    if not records:
        raise DataError(f"{source.path}: no prompts (all {stats.rows_read} rows were skipped: {dict(stats.skipped)})")
    renderer = Renderer(tokenizer, chat_template, system_prompt)
    cap = max_length - max(0, max_new_tokens)
    if cap < 1:
        raise DataError(f"max_length {max_length} leaves no room for the prompt with max_new_tokens {max_new_tokens}")
    if max_prompt_length is not None:
        cap = min(cap, max_prompt_length)
    out = PromptSet([], [], [], [])
    for rec, (example, _note) in zip(
        records, tokenize_records(records, "prompt", tokenizer, renderer, max_length, max_prompt_length), strict=True
    ):
        if example is None or len(example.prompt_ids) > cap:
            out.dropped += 1
            continue
        out.prompts.append(prompt_value(rec.prompt))
        out.prompt_ids.append(list(example.prompt_ids))
        out.extras.append({k: v for k, v in rec.extra.items() if k not in RESERVED})
        out.sources.append(rec.source)
    if not out.prompts:
        raise DataError(f"{source.path}: every prompt is longer than max_length {max_length} - max_new_tokens")
    if out.dropped:
        log.warning("%s: %d prompts dropped (too long to generate within max_length)", source.path, out.dropped)
    return out


RESERVED = ("prompt", "response", "sample_idx", "n_tokens", "logp", "finished", "prompt_index", "score", "policy")


def shard(n: int, world: int, rank: int) -> list[int]:
    """Indices of ``range(n)`` that process ``rank`` of ``world`` owns: ``rank, rank + world, ...``. The shards
    partition ``range(n)`` exactly (sizes differ by at most one)."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"need 0 <= rank < world, got rank {rank}, world {world}")
    return list(range(rank, n, world))


def rows_of(prompts: PromptSet, samples: Sequence[Sample], policy: str | None = None) -> list[dict[str, Any]]:
    """Sample rows (module docstring), in the order of ``samples``."""
    rows = []
    for s, sample_row in zip(samples, sample_rows(prompts.prompts, samples), strict=True):
        row = dict(prompts.extras[s.prompt_index])
        row.update(sample_row)
        if policy is not None:
            row["policy"] = policy
        rows.append(row)
    return rows


def _shard_path(out: Path, rank: int, world: int) -> Path:
    """Where process ``rank`` of ``world`` writes its rows (its stats go to the same name + ``.json``)."""
    return out.with_name(f"{out.name}.shard{rank}-of-{world}")


def check_k(rows: Sequence[dict[str, Any]], n_prompts: int, k: int, where: str = "samples") -> None:
    """Every prompt index ``0..n_prompts-1`` has exactly ``k`` rows with ``sample_idx`` ``0..k-1``; raises
    :class:`ValueError` naming the first prompt that does not (missing, extra or duplicated samples)."""
    seen: dict[int, list[int]] = {}
    for row in rows:
        seen.setdefault(int(row["prompt_index"]), []).append(int(row["sample_idx"]))
    if set(seen) - set(range(n_prompts)):
        bad = sorted(set(seen) - set(range(n_prompts)))[:3]
        raise ValueError(f"{where}: prompt indices {bad} are outside 0..{n_prompts - 1}")
    for i in range(n_prompts):
        got = sorted(seen.get(i, []))
        if got != list(range(k)):
            raise ValueError(
                f"{where}: prompt {i} has samples {got[:8]}{'…' if len(got) > 8 else ''}, expected exactly "
                f"sample_idx 0..{k - 1} (K = {k})"
            )


def resolve_backend(name: str, processes: int = 1) -> str:
    """The backend that ``name`` means here: ``auto`` is vLLM when it is installed and a GPU is there, else
    transformers. Under several processes vLLM runs one engine per process, each on its process's GPU
    (:mod:`imitalign.generate.vllm_backend`); ``processes`` is kept for callers that pass it."""
    del processes  # (vLLM under several processes: external-launcher engines, one per rank)
    if name not in BACKENDS:
        raise ValueError(f"unknown generation backend {name!r}; known: {', '.join(BACKENDS)}")
    if name == "auto":
        import importlib.util

        import torch

        vllm_ok = importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()
        return "vllm" if vllm_ok else "transformers"
    if name == "vllm":
        from imitalign.generate.vllm_backend import require_vllm

        require_vllm()
    return name


def engine_groups(world: int, rank: int, tensor_parallel_size: int) -> tuple[int, int]:
    """``(groups, group)``: the processes form ``world / p`` engines of ``p = tensor_parallel_size`` consecutive
    ranks; prompts are sharded over the engines, and this rank belongs to engine ``group``."""
    if tensor_parallel_size < 1 or world % tensor_parallel_size:
        raise ValueError(
            f"generate.tensor_parallel_size {tensor_parallel_size} must divide the number of processes ({world})"
        )
    return world // tensor_parallel_size, rank // tensor_parallel_size


def sample_shard(
    model: Any,
    tokenizer: Any,
    prompts: PromptSet,
    indices: Sequence[int],
    *,
    k: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 64,
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = False,
) -> list[Sample]:
    """``k`` samples of each prompt in ``indices`` with the transformers sampler (global prompt indices)."""
    if not indices:
        return []
    return sample(
        model,
        tokenizer,
        [prompts.prompt_ids[i] for i in indices],
        n=k,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        seed=seed,
        batch_size=batch_size,
        progress=progress,
        prompt_indices=list(indices),
    )


def generate_k(
    model_path: str | Path,
    prompts: PromptSet,
    out: str | Path,
    *,
    k: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 64,
    seed: int = 0,
    batch_size: int = 32,
    backend: str = "transformers",
    policy: str | None = None,
    progress: bool = False,
    dtype: str = "auto",
    tensor_parallel_size: int = 1,
    after_shard: Callable[[], None] | None = None,
) -> GenerationStats:
    """Write ``k`` samples of every prompt of ``prompts`` from the model at ``model_path`` to ``out`` (module
    docstring), sharded over the processes of the current ``accelerate`` state (one process when not
    launched) — over its vLLM engines of ``tensor_parallel_size`` processes each with the vLLM backend.
    ``after_shard`` runs once this process's shard is written (a fault-injection point). Returns the
    :class:`GenerationStats` (tokens and seconds filled in on the main process)."""
    if k < 1:
        raise ValueError(f"K must be at least 1, got {k}")
    state = process_state()
    world, rank = state.num_processes, state.process_index
    backend = resolve_backend(backend, world)
    if backend != "vllm" and tensor_parallel_size != 1:
        raise ValueError("generate.tensor_parallel_size > 1 needs the vllm backend")
    groups, group = engine_groups(world, rank, tensor_parallel_size)
    out = Path(out)
    mine = shard(len(prompts), groups, group)
    kw = {"k": k, "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens, "seed": seed}
    t0 = time.perf_counter()
    if backend == "vllm":
        samples = _sample_vllm(model_path, prompts, mine, dtype, tensor_parallel_size, world, **kw)
    else:
        samples = _sample_transformers(model_path, prompts, mine, dtype, batch_size, progress, **kw)
    seconds = time.perf_counter() - t0
    if rank % tensor_parallel_size == 0:  # one writer per engine (the ranks of a tensor-parallel group agree)
        shard_path = _shard_path(out, group, groups)
        write_jsonl(shard_path, rows_of(prompts, samples, policy))
        meta = {"tokens": sum(s.n_tokens for s in samples), "seconds": seconds}
        Path(f"{shard_path}.json").write_text(json.dumps(meta))
    if after_shard is not None:
        after_shard()
    state.wait_for_everyone()
    stats = GenerationStats(prompts=len(prompts), samples=len(prompts) * k, processes=world, backend=backend)
    if state.is_main_process:
        _merge_shards(out, groups, len(prompts), k, stats)
    state.wait_for_everyone()
    return stats


def _sample_vllm(
    model_path: str | Path, prompts: PromptSet, mine: list[int], dtype: str, tp: int, world: int, **kw: Any
) -> list[Sample]:
    from imitalign.generate.vllm_backend import sample_vllm

    return sample_vllm(
        str(model_path),
        [prompts.prompt_ids[i] for i in mine],
        list(mine),
        n=kw["k"],
        temperature=kw["temperature"],
        top_p=kw["top_p"],
        max_new_tokens=kw["max_new_tokens"],
        seed=kw["seed"],
        dtype=dtype,
        tensor_parallel_size=tp,
        external_launcher=world > 1,  # one engine per rank (group), on the rank's own GPU
        max_model_len=max(map(len, prompts.prompt_ids)) + kw["max_new_tokens"],  # the same engine on every rank
    )


def _sample_transformers(
    model_path: str | Path, prompts: PromptSet, mine: list[int], dtype: str, batch_size: int, progress: bool, **kw: Any
) -> list[Sample]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from imitalign.model.load import from_pretrained, resolve_dtype

    state = process_state()
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    model = from_pretrained(AutoModelForCausalLM, str(model_path), dtype=resolve_dtype(dtype))
    model = model.to(state.device).eval()
    return sample_shard(
        model, tokenizer, prompts, mine, batch_size=batch_size, progress=progress and state.is_main_process, **kw
    )


def _merge_shards(out: Path, groups: int, n_prompts: int, k: int, stats: GenerationStats) -> None:
    """The main process: the shards' rows, checked (exactly K per prompt) and sorted, to ``out``; the shards
    removed; tokens and the slowest shard's seconds added to ``stats``."""
    rows: list[dict[str, Any]] = []
    for g in range(groups):
        rows += read_jsonl(_shard_path(out, g, groups))
    rows.sort(key=lambda row: (row["prompt_index"], row["sample_idx"]))
    check_k(rows, n_prompts, k, where=str(out))
    write_jsonl(out, rows)
    for g in range(groups):
        part = _shard_path(out, g, groups)
        meta = json.loads(Path(f"{part}.json").read_text())
        stats.tokens += meta["tokens"]
        stats.seconds = max(stats.seconds, meta["seconds"])
        part.unlink()
        Path(f"{part}.json").unlink()
