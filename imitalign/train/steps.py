"""One micro-batch's loss for each kind of objective.

Normalisation (what the optimiser step averages over), with ``W`` processes whose gradients DDP averages
and micro-batches whose gradients are summed (accumulation is done by hand, without dividing):
- pair objectives: the mean over the step's examples, ``loss = Σ_i w_i ℓ_i · W / G`` (``G`` examples in the
  whole optimiser step, across processes and micro-batches);
- token objectives: the mean over the step's response tokens, ``loss = Σ_t ℓ_t · W / N`` (``N`` response
  tokens in the whole optimiser step), so that long and short demonstrations weigh per token in every split.
Both make the update independent of how the step is split across processes and accumulation steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from imitalign.model.logprobs import batch_index, to_logprobs


def forward(engine: Any, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """The engine on a padded or packed batch (``imitalign.model.logprobs``): flat token log-probs, values."""
    return engine(
        batch["input_ids"],
        batch["attention_mask"],
        batch["response_mask"],
        batch.get("position_ids"),
        batch.get("target_index"),
    )


def pair_loss(
    engine: Any,
    fn: Callable,
    batch: dict[str, Tensor],
    *,
    weights: Tensor,
    step_examples: int,
    world: int,
) -> tuple[Tensor, dict[str, Tensor]]:
    flat, _ = forward(engine, batch)
    lp = to_logprobs(flat, None, batch["response_mask"], batch_index(batch))
    b = lp.logps.shape[0] // 2
    ref = batch.get("ref_logps")
    losses, metrics = fn(
        lp.logps[:b],
        lp.logps[b:],
        None if ref is None else ref[:b],
        None if ref is None else ref[b:],
        lp.n_tokens[:b],
        lp.n_tokens[b:],
    )
    return (losses * weights).sum() * (world / step_examples), metrics


POLICY_PREFIX = "policy/"  # keys of the policy's own samples in a token batch (online IQLearn)


def policy_part(batch: dict[str, Tensor]) -> dict[str, Tensor] | None:
    """The sub-batch of the policy's own samples (keys ``policy/...``), or None."""
    part = {k[len(POLICY_PREFIX) :]: v for k, v in batch.items() if k.startswith(POLICY_PREFIX)}
    return part or None


def token_loss(
    engine: Any,
    fn: Callable,
    batch: dict[str, Tensor],
    *,
    weights: Tensor,
    step_tokens: int,
    world: int,
    step_policy_tokens: int | None = None,
    no_policy_samples: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Token objectives; with the policy's own samples in the batch (``policy/...`` keys, online IQLearn) they go
    through the engine in a forward of their own and reach the objective as ``policy_token_*`` tensors,
    normalised by ``step_policy_tokens`` (their response tokens in the whole optimiser step); their per-sequence
    losses follow the demonstrations' in ``losses`` and weigh 1. ``no_policy_samples`` (evaluation on
    demonstrations of a run that has own samples) passes empty own-sample tensors: the demonstrations' share."""
    flat, values = forward(engine, batch)
    lp = to_logprobs(flat, values, batch["response_mask"], batch_index(batch))
    own = policy_part(batch)
    extra: dict[str, Any] = {}
    if own is not None:
        p_flat, p_values = forward(engine, own)
        plp = to_logprobs(p_flat, p_values, own["response_mask"], batch_index(own))
        extra = {
            "policy_token_logps": plp.token_logps,
            "policy_token_mask": plp.token_mask,
            "policy_token_values": plp.token_values,
            "num_policy_tokens": (step_policy_tokens or 1) / world,
        }
    elif no_policy_samples:
        none = lp.token_logps.new_zeros(0, 1)
        extra = {"policy_token_logps": none, "policy_token_mask": none.bool(), "policy_token_values": none}
    losses, metrics = fn(lp.token_logps, lp.token_mask, lp.token_values, num_tokens=step_tokens / world, **extra)
    metrics = per_token_metrics(metrics, lp.token_mask, weights, step_tokens=step_tokens, world=world)
    if own is not None:
        weights = torch.cat([weights, weights.new_ones(losses.shape[0] - weights.shape[0])])
    return (losses * weights).sum(), metrics


WEIGHT_KEY = "_weight"  # a metric dict's own averaging weight (read by the loop's metric mean), never logged


def per_token_metrics(
    metrics: dict[str, Tensor], token_mask: Tensor, weights: Tensor, *, step_tokens: int, world: int
) -> dict[str, Tensor]:
    """A token objective's metrics made averageable over micro-batches, processes and steps by token weight.

    The objective's ``loss`` is this micro-batch's *share* of the step loss (normalised by the step's token
    count ``N``, not the micro-batch's ``n``): it becomes the micro-batch's per-token mean ``loss · (N/W) / n``;
    ``tokens`` becomes the step's response tokens ``N``; and the weight is ``n`` (0 for a zero-weight stand-in).
    The token-weighted mean over the micro-batches of a step (and over processes) is then exactly the step's
    loss ``Σ ℓ_t / N`` — the logged ``train/loss`` does not depend on ``grad_accum`` or the number of processes
    — and the per-token means (``nll``, ``td_penalty``, ...) become per-token means of the step."""
    n = (token_mask.sum(dim=-1).to(weights.dtype) * weights).sum()
    out = dict(metrics)
    out["loss"] = metrics["loss"] * (step_tokens / world) / token_mask.sum().clamp(min=1)
    if "tokens" in out:
        out["tokens"] = torch.full_like(metrics["tokens"], float(step_tokens))
    out[WEIGHT_KEY] = n
    return out


@torch.no_grad()
def sequence_logps(engine: Any, batch: dict[str, Tensor]) -> Tensor:
    flat, _ = forward(engine, batch)
    return to_logprobs(flat, None, batch["response_mask"], batch_index(batch)).logps


def score_loss(
    engine: Any,
    fn: Callable,
    batch: dict[str, Tensor],
    *,
    kind: str,
    weights: Tensor,
    step_examples: int,
    world: int,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Reward-model objectives on one scalar per row (``imitalign.model.score.ScoreModel``), normalised like
    pair objectives (mean over the step's examples). ``reward_pair``: rows ``0..B-1`` chosen, ``B..2B-1``
    rejected, ``fn(chosen_scores, rejected_scores)``; ``classifier``: ``fn(logits, batch["labels"])``."""
    scores = engine(batch["input_ids"], batch["attention_mask"])
    if kind == "reward_pair":
        b = scores.shape[0] // 2
        losses, metrics = fn(scores[:b], scores[b:])
    else:
        losses, metrics = fn(scores, batch["labels"])
    return (losses * weights).sum() * (world / step_examples), metrics
