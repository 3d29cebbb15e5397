"""The reference policy π_ref: which weights, and when its log-probs are computed.

Weights (``reference.mode``): ``copy`` — the initial policy (or ``reference.name_or_path``), frozen;
``adapter`` — under LoRA, the policy with its adapter disabled (no second copy in memory); ``auto`` picks
``adapter`` under LoRA and ``copy`` otherwise; ``none`` is only valid for reference-free objectives.

When (``reference.precompute``, default on): once, before the first step, over the train and eval
examples — with the initial policy itself when the reference *is* the initial policy, so no copy is ever
made — giving a ``[n, 2]`` tensor of (chosen, rejected) sequence log-probs (plain sums over response tokens)
that travels in the batches. Otherwise the reference runs in every step.

The precomputed tensor is cached on disk (``reference.cache_dir``, ``"auto"`` by default, ``null`` turns it
off; see ``imitalign.train.refcache`` for the key): a later run — another objective on the same pairs, a
resumed run — reads it instead of running the reference. Under several processes every process checks the
entry, they agree on hit or miss (a hit only if every process read a valid entry), on a miss each computes
a strided share, the shares are summed across processes, and the main process writes the entry atomically
while the others wait at a barrier.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM

from imitalign.config import Config
from imitalign.data.collate import collate_pairs, collate_pairs_packed, pad_id_for, with_target_index
from imitalign.model import segment_attention
from imitalign.model.load import frozen_copy, resolve_dtype
from imitalign.model.logprobs import LogProbModel
from imitalign.train import refcache, sharding
from imitalign.train.steps import sequence_logps

log = logging.getLogger(__name__)


def reference_mode(cfg: Config) -> str:
    mode = cfg.reference.mode
    if mode == "auto":
        mode = "adapter" if cfg.model.lora is not None and cfg.reference.name_or_path is None else "copy"
    if mode == "adapter" and cfg.model.lora is None:
        raise ValueError("reference.mode 'adapter' needs model.lora (the reference is the adapter-disabled model)")
    if mode == "none":
        raise ValueError(f"objective {cfg.objective.name!r} needs a reference; reference.mode 'none' is not allowed")
    return mode


def _load_reference_lm(cfg: Config) -> torch.nn.Module:
    from imitalign.model.load import from_pretrained

    lm = from_pretrained(
        AutoModelForCausalLM,
        cfg.reference.name_or_path,
        "reference",
        dtype=resolve_dtype(cfg.model.dtype),
        trust_remote_code=cfg.model.trust_remote_code,
    )
    if cfg.train.packing:
        segment_attention.enable(lm)  # like the policy's (Trainer._setup_engine)
    return frozen_copy(lm)


def _weights_fingerprint(cfg: Config, model: torch.nn.Module, mode: str) -> str:
    """What the reference's weights are (see ``refcache``): a big local folder by its file stats, else a hash
    of the tensors (the initial policy, or the adapter-disabled base under LoRA)."""
    if cfg.reference.name_or_path is not None:
        folder = Path(cfg.reference.name_or_path)
        if folder.is_dir():
            return "folder:" + refcache.hash_folder(folder)
        return "tensors:" + refcache.hash_weights(_load_reference_lm(cfg))
    folder = Path(cfg.model.name_or_path) if cfg.model.name_or_path else None
    if folder is not None and folder.is_dir() and refcache.weights_bytes(model) > refcache.HASH_WEIGHTS_MAX_BYTES:
        return "folder:" + refcache.hash_folder(folder)
    return "tensors:" + refcache.hash_weights(model)


def _attention_name(model: torch.nn.Module) -> str | None:
    """The attention implementation in the cache key; segment attention is sdpa run per packed sequence (the same
    numbers as sdpa's masked and padded forms), so a packed and a padded run of the same data share an entry."""
    name = getattr(getattr(model, "config", None), "_attn_implementation", None)
    return "sdpa" if name == segment_attention.NAME else name


@torch.no_grad()
def compute_reference_logps(
    ref: Any, items: list, mine: list[int], pad_id: int, batch_size: int, packing: bool, accelerator: Any, bar: Any
) -> torch.Tensor:
    """``[len(items), 2]`` (chosen, rejected) log-probs of the examples ``mine`` under ``ref`` (other rows 0).
    The examples go longest first, so each batch holds similar lengths (little padding)."""
    out = torch.zeros(len(items), 2, device=accelerator.device)
    order = sorted(mine, key=lambda i: -refcache.data_lengths([items[i]])[0])
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    for n in range(sharding.lockstep_batches(len(batches), accelerator)):
        idx = batches[n] if n < len(batches) else [0]  # past its own: a discarded forward keeps the shards in step
        chunk = [items[i] for i in idx]
        batch = collate_pairs_packed(chunk, pad_id) if packing else with_target_index(collate_pairs(chunk, pad_id))
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        logps = sequence_logps(ref, batch).float()
        if n >= len(batches):
            continue
        b = len(idx)
        index = torch.tensor(idx, device=accelerator.device)
        out[index, 0] = logps[:b]
        out[index, 1] = logps[b:]
        bar.update(b)
    return out


@torch.no_grad()
def precompute_reference(
    cfg: Config, engine: LogProbModel, model: torch.nn.Module, tok: Any, items: list, accelerator: Any, quiet: bool
) -> torch.Tensor:
    """``[len(items), 2]`` reference log-probs (chosen, rejected), each process computing a strided share;
    read from / written to the disk cache when ``reference.cache_dir`` is set."""
    mode = reference_mode(cfg)
    world, rank = accelerator.num_processes, accelerator.process_index
    cache_dir = refcache.resolve_cache_dir(cfg.reference.cache_dir)
    cache, key, fingerprint = None, "", {}
    if cache_dir is not None:
        cache = refcache.RefLogpsCache(cache_dir)
        fingerprint = refcache.reference_fingerprint(
            weights=_weights_fingerprint(cfg, model, mode),
            data=refcache.hash_token_rows(items),
            n=len(items),
            dtype=cfg.model.dtype,
            mixed_precision=str(accelerator.mixed_precision),
            attn=_attention_name(model),
        )
        key = refcache.fingerprint_key(fingerprint)
        hit = cache.load(key, len(items))
        ok = torch.tensor(0.0 if hit is None else 1.0, device=accelerator.device)
        if world > 1:
            ok = accelerator.reduce(ok, "sum") / world  # a hit only if every process has it
        if hit is not None and float(ok) == 1.0:
            if accelerator.is_main_process and not quiet:
                print(f"reference log-probs: read from cache {cache.path(key)}")
            log.info("reference log-probs read from cache %s", cache.path(key))
            return hit

    if cfg.reference.name_or_path is not None:
        ref = LogProbModel(_load_reference_lm(cfg))
    else:
        ref = engine
    if not sharding.is_sharded(accelerator):  # a sharded engine is placed already (and cannot be moved)
        ref = ref.to(accelerator.device)
    was_training = ref.training
    ref.eval()
    mine = list(range(len(items)))[rank::world]
    bs = cfg.train.eval_batch_size or max(cfg.train.batch_size, 8)
    ctx = model.disable_adapter() if mode == "adapter" and cfg.reference.name_or_path is None else _Null()
    bar = tqdm(total=len(mine), disable=quiet or not accelerator.is_main_process, desc="reference log-probs")
    with ctx, accelerator.autocast():
        out = compute_reference_logps(ref, items, mine, pad_id_for(tok), bs, cfg.train.packing, accelerator, bar)
    bar.close()
    if was_training:
        ref.train()
    if world > 1:
        out = accelerator.reduce(out, "sum")
    out = out.cpu()
    if cache is not None:
        if accelerator.is_main_process:
            path = cache.save(key, out, fingerprint)
            log.info("reference log-probs written to cache %s", path)
        if world > 1:
            accelerator.wait_for_everyone()
    return out


def attach_reference(cfg: Config, model: torch.nn.Module, tok: Any, accelerator: Any) -> Any:
    """A reference evaluated in every step: a frozen ``LogProbModel``, or the string ``"adapter"``."""
    mode = reference_mode(cfg)
    if mode == "adapter":
        return "adapter"
    lm = _load_reference_lm(cfg) if cfg.reference.name_or_path else frozen_copy(model)
    return LogProbModel(lm).eval()


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None
