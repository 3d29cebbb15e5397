"""The reference policy π_ref: which weights, and when its log-probs are computed.

Weights (``reference.mode``): ``copy`` — the initial policy (or ``reference.name_or_path``), frozen;
``adapter`` — under LoRA, the policy with its adapter disabled (no second copy in memory); ``auto`` picks
``adapter`` under LoRA and ``copy`` otherwise; ``none`` is only valid for reference-free objectives.

When (``reference.precompute``, default on): once, before the first step, over the train and eval
examples — with the initial policy itself when the reference *is* the initial policy, so no copy is ever
made — giving a ``[n, 2]`` tensor of (chosen, rejected) sequence log-probs that travels in the batches.
Otherwise the reference runs in every step.
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM

from imitalign.config import Config
from imitalign.data.collate import collate_pairs, pad_id_for
from imitalign.model.load import frozen_copy, resolve_dtype
from imitalign.model.logprobs import LogProbModel
from imitalign.train.steps import sequence_logps


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
    lm = AutoModelForCausalLM.from_pretrained(
        cfg.reference.name_or_path, dtype=resolve_dtype(cfg.model.dtype), trust_remote_code=cfg.model.trust_remote_code
    )
    return frozen_copy(lm)


@torch.no_grad()
def precompute_reference(
    cfg: Config, engine: LogProbModel, model: torch.nn.Module, tok: Any, items: list, accelerator: Any, quiet: bool
) -> torch.Tensor:
    """``[len(items), 2]`` reference log-probs (chosen, rejected), each process computing a strided share."""
    mode = reference_mode(cfg)
    if cfg.reference.name_or_path is not None:
        ref = LogProbModel(_load_reference_lm(cfg))
    else:
        ref = engine
    ref = ref.to(accelerator.device)
    was_training = ref.training
    ref.eval()
    world, rank = accelerator.num_processes, accelerator.process_index
    out = torch.zeros(len(items), 2, device=accelerator.device)
    mine = list(range(len(items)))[rank::world]
    bs = cfg.train.eval_batch_size or max(cfg.train.batch_size, 8)
    ctx = model.disable_adapter() if mode == "adapter" and cfg.reference.name_or_path is None else _Null()
    bar = tqdm(total=len(mine), disable=quiet or not accelerator.is_main_process, desc="reference log-probs")
    with ctx, accelerator.autocast():
        for s in range(0, len(mine), bs):
            idx = mine[s : s + bs]
            batch = collate_pairs([items[i] for i in idx], pad_id_for(tok))
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            logps = sequence_logps(ref, batch).float()
            b = len(idx)
            out[idx, 0] = logps[:b]
            out[idx, 1] = logps[b:]
            bar.update(len(idx))
    bar.close()
    if was_training:
        ref.train()
    if world > 1:
        out = accelerator.reduce(out, "sum")
    return out.cpu()


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
