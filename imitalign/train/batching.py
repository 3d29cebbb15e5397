"""Which examples go into which optimiser step, micro-batch and process.

The order is a pure function of (seed, epoch): a seeded permutation of the training set, optionally grouped
by length (examples of similar length share a micro-batch, less padding; the groups are then shuffled).
An optimiser step takes the next ``G = batch_size × processes × grad_accum`` examples; micro-batch ``m`` of
process ``r`` takes the ``r``-th strided share of the ``m``-th slice. The composition of every optimiser step
therefore depends only on ``G``, not on how it is split across processes or accumulation steps — which is
what makes 1 process with batch 8 and 2 processes with batch 4 train identically, and what makes resume
exact (the position in the data is the step number).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StepPlan:
    """The example indices of one optimiser step, as ``micro[m]`` for this process (may be empty)."""

    micro: list[list[int]]
    n_examples: int  # examples in the whole step, across processes


def epoch_order(n: int, seed: int, epoch: int, lengths: Sequence[int] | None = None, group: int = 0) -> list[int]:
    """A seeded permutation of ``range(n)``. With ``lengths`` and ``group > 0``: sort within windows of
    ``group × 50`` examples by length, cut into groups of ``group``, and shuffle the groups."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    if lengths is None or group <= 0:
        return order
    window = group * 50
    grouped: list[list[int]] = []
    for start in range(0, n, window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        grouped.extend(chunk[j : j + group] for j in range(0, len(chunk), group))
    perm = torch.randperm(len(grouped), generator=g).tolist()
    return [i for k in perm for i in grouped[k]]


def steps_per_epoch(n: int, global_batch: int) -> int:
    return max(1, math.ceil(n / global_batch))


def plan_step(
    order: list[int], step_in_epoch: int, batch_size: int, grad_accum: int, world: int, rank: int
) -> StepPlan:
    per_micro = batch_size * world
    start = step_in_epoch * per_micro * grad_accum
    step_indices = order[start : start + per_micro * grad_accum]
    micro = []
    for m in range(grad_accum):
        chunk = step_indices[m * per_micro : (m + 1) * per_micro]
        if chunk:
            micro.append(chunk[rank::world])
    return StepPlan(micro=micro, n_examples=len(step_indices))


def policy_order(n: int, seed: int, step: int, global_batch: int) -> list[int]:
    """The policy's own samples (online IQLearn) of optimiser step ``step``: positions ``step·G … step·G + G − 1``
    of an endless sequence of seeded permutations of ``range(n)`` (a pure function of the step, so resume is
    exact)."""
    perms: dict[int, list[int]] = {}
    out = []
    for q in range(step * global_batch, (step + 1) * global_batch):
        cycle, k = divmod(q, n)
        if cycle not in perms:
            perms[cycle] = epoch_order(n, seed + 7_919, cycle)
        out.append(perms[cycle][k])
    return out
