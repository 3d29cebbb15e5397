"""Unpaired feedback in the training loop: the batch builders and the loss call of the ``unpaired`` and
``unpaired_kl`` objective kinds (their two entries in ``imitalign.train.kinds.KINDS``).

**Batch.** ``B`` labelled examples (:class:`imitalign.data.tokenize.TokenizedUnpaired`) in rows ``0..B-1``
(prompt + response), ``labels [B]`` bool. For ``unpaired_kl`` (KTO's reference point) rows ``B..2B-1`` hold
each example's prompt with its mismatched response (``kl_ids``): the layout of
:func:`imitalign.data.collate.collate_pairs`, so that the reference log-probs are the pair tensor ``[n, 2]``
(response, mismatched response), precomputed once like a pair's; ``ref_logps`` is ``[2B]``. For ``unpaired``
the mismatched rows are left out (half the compute) and ``ref_logps`` is ``[B]``.

**Loss.** ``fn(policy_logps, policy_kl_logps, reference_logps, reference_kl_logps, lengths, labels)``, the
per-example losses normalised like pair objectives' (the mean over the optimiser step's examples, across
processes). BCO's reward shift δ is a running average (:class:`imitalign.objectives.unpaired.RewardShift`)
kept per bound objective: updated in training steps (the batch's rewards included; summed over processes so
that every process uses the same δ) and only read in evaluation; :func:`loss_state` /
:func:`load_loss_state` carry it through checkpoints so that a resumed run continues with the same δ.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from imitalign.data.collate import (
    collate_demos,
    collate_demos_packed,
    collate_pairs,
    collate_pairs_packed,
    with_target_index,
)
from imitalign.model.logprobs import batch_index, to_logprobs
from imitalign.objectives import unpaired
from imitalign.objectives.unpaired import RewardShift
from imitalign.train.steps import forward

Batch = dict[str, Tensor]


def _labels(items: list) -> Tensor:
    return torch.tensor([bool(it.label) for it in items], dtype=torch.bool)


def collate_unpaired(items: list, pad_id: int, packing: bool) -> Batch:
    """``unpaired``: the responses only."""
    batch = collate_demos_packed(items, pad_id) if packing else with_target_index(collate_demos(items, pad_id))
    batch["labels"] = _labels(items)
    return batch


def collate_unpaired_kl(items: list, pad_id: int, packing: bool) -> Batch:
    """``unpaired_kl``: the responses, then the mismatched pairs of the same examples."""
    batch = collate_pairs_packed(items, pad_id) if packing else with_target_index(collate_pairs(items, pad_id))
    batch["labels"] = _labels(items)
    return batch


def attach_pair_reference(batch: Batch, rows: Tensor) -> None:
    """Precomputed ``[n, 2]`` → ``ref_logps [2n]``: the responses, then the mismatched pairs."""
    batch["ref_logps"] = torch.cat([rows[:, 0], rows[:, 1]])


def attach_response_reference(batch: Batch, rows: Tensor) -> None:
    """Precomputed ``[n, 2]`` → ``ref_logps [n]``: the responses' column (no mismatched rows in the batch)."""
    batch["ref_logps"] = rows[:, 0]


# ------------------------------------------------------------------ BCO's running reward shift
_SHIFTS: weakref.WeakKeyDictionary[Any, RewardShift] = weakref.WeakKeyDictionary()


def _is_bco(fn: Any) -> bool:
    return getattr(fn, "func", fn) is unpaired.bco


def reward_shift(fn: Any) -> RewardShift | None:
    """The running reward shift of a bound BCO objective (created on first use); None for other objectives."""
    if not _is_bco(fn):
        return None
    if fn not in _SHIFTS:
        _SHIFTS[fn] = RewardShift()
    return _SHIFTS[fn]


def loss_state(fn: Any) -> dict[str, Any]:
    """What a checkpoint keeps of the loss call's own state (BCO's reward shift), ``{}`` for the others."""
    shift = reward_shift(fn)
    return {} if shift is None else {"reward_shift": shift.state_dict()}


def load_loss_state(fn: Any, state: dict[str, Any]) -> None:
    shift = reward_shift(fn)
    if shift is not None and "reward_shift" in state:
        shift.load_state_dict(state["reward_shift"])


def _global_update(shift: RewardShift, rewards: Tensor, labels: Tensor) -> float:
    """Add the batch's rewards of every process (one all-reduce of 4 numbers when there are several)."""
    d = labels.bool()
    stats = torch.stack([rewards[d].sum(), d.sum(), rewards[~d].sum(), (~d).sum()]).double()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(stats)
    s_d, n_d, s_u, n_u = stats.tolist()
    shift.sums = [shift.sums[0] + s_d, shift.sums[1] + s_u]
    shift.counts = [shift.counts[0] + int(n_d), shift.counts[1] + int(n_u)]
    return shift.delta


# ------------------------------------------------------------------ the loss call
def unpaired_loss(
    engine: Any,
    fn: Any,
    batch: Batch,
    *,
    weights: Tensor,
    step_examples: int,
    world: int,
    with_kl: bool,
    evaluating: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One micro-batch's loss (module docstring); ``batch["ref_logps"]`` holds the reference log-probs
    (precomputed and attached, or run on the fly by the caller)."""
    flat, _ = forward(engine, batch)
    lp = to_logprobs(flat, None, batch["response_mask"], batch_index(batch))
    labels = batch["labels"]
    b = labels.shape[0]
    ref = batch.get("ref_logps")
    logps, lengths = lp.logps[:b], lp.n_tokens[:b]
    kl = lp.logps[b:] if with_kl else None
    ref_resp = None if ref is None else ref[:b]
    ref_kl = None if ref is None or not with_kl else ref[b:]
    extra: dict[str, Any] = {}
    shift = reward_shift(fn)
    if shift is not None and ref_resp is not None:
        options = getattr(fn, "keywords", {})
        rho = (logps - ref_resp).detach().double()
        if options.get("length_normalize", False):
            rho = rho / lengths.clamp(min=1)
        rewards = float(options.get("beta", 0.1)) * rho
        extra["delta"] = shift.delta if evaluating else _global_update(shift, rewards, labels)
    losses, metrics = fn(logps, kl, ref_resp, ref_kl, lengths, labels, **extra)
    return (losses * weights).sum() * (world / step_examples), metrics
