"""What the training loop checks so that a run folder never holds something silently wrong.

* :func:`step_grad_norm`: the gradient norm of every optimiser step, clipped or not (``max_grad_norm: null``
  computes it without clipping), so the non-finite guard sees a NaN/inf gradient before it reaches the weights.
* :func:`weights_finite` / :func:`last_finite_checkpoint`: a checkpoint records whether its weights were
  verified finite when it was written; "the last good checkpoint" is only ever one that was.
* :func:`truncate_metrics`: on resume at step ``s``, ``metrics.jsonl`` keeps the records of steps ``≤ s`` (on
  a fresh start, none), so every step is logged once however often the run was killed and resumed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from imitalign.train.checkpoint import STATE_FILE, checkpoint_dirs, latest_checkpoint

FINITE_KEY = "weights_finite"


class TrainingError(RuntimeError):
    """The run cannot go on (non-finite loss, ...); the message says what happened and what is kept."""


def start_checkpoint(
    run_dir: Path, resume: bool, fingerprints: Iterable[str], say: Callable[[str], None] | None = None
) -> Path | None:
    """The checkpoint a run continues from: with ``resume`` the newest complete one (written by a config whose
    fingerprint is one of ``fingerprints``), or None — also when a kill during the first checkpoint left none
    complete (said through ``say``; the run starts at step 0). Without ``resume`` a folder that holds a complete
    checkpoint is refused (an incomplete ``step-N.tmp`` is not one: a plain rerun starts over)."""
    ckpt = latest_checkpoint(run_dir)
    if not resume:
        if ckpt is not None:
            raise TrainingError(
                f"{run_dir} already holds checkpoints: pass --resume to continue, or pick a new output_dir"
            )
        return None
    if ckpt is None:
        if say is not None:
            say(f"--resume: no complete checkpoint under {run_dir / 'checkpoints'}: starting from step 0")
        return None
    saved = json.loads((ckpt / STATE_FILE).read_text())
    if saved.get("config_fingerprint") not in set(fingerprints):
        raise TrainingError(
            f"--resume: {ckpt} was written by a different configuration (what is trained changed); "
            "resume with the config saved in the run folder, or start a new output_dir"
        )
    return ckpt


def checkpoint_step(ckpt: Path | None) -> int:
    """The optimiser step a checkpoint was written at (0 for None: a fresh start)."""
    return 0 if ckpt is None else int(json.loads((ckpt / STATE_FILE).read_text())["step"])


def step_grad_norm(accelerator: Any, params: Iterable[torch.Tensor], max_grad_norm: float | None) -> torch.Tensor:
    """The total gradient norm of the step; the gradients are clipped to ``max_grad_norm`` when it is set (with
    ``None`` the norm is still computed — clipping to ∞ changes nothing)."""
    limit = float("inf") if max_grad_norm is None else max_grad_norm
    return accelerator.clip_grad_norm_(params, limit)


def weights_finite(model: torch.nn.Module, accelerator: Any = None) -> bool:
    """Whether every parameter of ``model`` is finite (one host sync); with an ``accelerator`` of several
    processes, on all of them (sharded weights: each process checks its shard; the answer is the same on all)."""
    local = [p.detach().to_local() if hasattr(p, "to_local") else p.detach() for p in model.parameters()]  # (FSDP)
    flags = [torch.isfinite(t).all() for t in local]
    bad = (~torch.stack(flags).all()).float() if flags else torch.zeros(())
    if accelerator is not None and accelerator.num_processes > 1:
        bad = accelerator.reduce(bad.to(accelerator.device), "sum")
    return not bool(bad > 0)


def last_finite_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint whose weights were verified finite when it was written."""
    for ckpt in reversed(checkpoint_dirs(run_dir)):
        try:
            state = json.loads((ckpt / STATE_FILE).read_text())
        except (OSError, ValueError):
            continue
        if state.get(FINITE_KEY) is True:
            return ckpt
    return None


def truncate_metrics(path: Path, step: int) -> int:
    """Keep the records of ``metrics.jsonl`` logged at steps ``≤ step`` (a resume at ``step``; ``0``: none) and
    drop a last line cut short by a kill; rewritten atomically. Returns how many records were dropped."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            dropped += 1  # a partial line written when the process was killed
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int | float) and record["step"] <= step:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
        os.replace(tmp, path)
    return dropped


def checkpoint_bytes(model: torch.nn.Module, optimizer_states: int = 2) -> int:
    """About how many bytes a checkpoint of ``model`` takes: the trainable weights and ``optimizer_states``
    tensors of their size per weight (AdamW's two moments), plus the frozen weights."""
    total = 0
    for p in model.parameters():
        n = p.numel() * p.element_size()
        total += n * (1 + optimizer_states * 4 // p.element_size()) if p.requires_grad else n
    return total
