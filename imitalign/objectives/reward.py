"""Reward-model objectives on scalar scores: Bradley–Terry on pairs (METHODS.md §2) and the discriminator's
binary cross-entropy (AfD, METHODS.md §3).

Losses are per example, ``[B]``; reduce with ``losses.mean()``. Metrics are detached scalar tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

Metrics = dict[str, Tensor]


def bradley_terry(chosen_scores: Tensor, rejected_scores: Tensor, **_: object) -> tuple[Tensor, Metrics]:
    """Bradley–Terry reward-model loss (Bradley & Terry 1952; Ouyang et al. 2022):

        ℓ = −log σ(r(x, y_w) − r(x, y_l))

    Args:
      chosen_scores: ``[B]`` scalar rewards r(x, y_w) of the chosen responses.
      rejected_scores: ``[B]`` scalar rewards r(x, y_l) of the rejected responses.

    Returns:
      ``(losses [B], metrics)`` with ``loss``, ``accuracy`` (fraction with r_w > r_l), ``rewards/chosen``,
      ``rewards/rejected``, ``rewards/margin``.
    """
    if chosen_scores.dim() != 1:
        raise ValueError(f"bradley_terry: chosen_scores must have shape [B], got {tuple(chosen_scores.shape)}")
    if rejected_scores.shape != chosen_scores.shape:
        raise ValueError(
            f"bradley_terry: rejected_scores must have the shape of chosen_scores {tuple(chosen_scores.shape)}, "
            f"got {tuple(rejected_scores.shape)}"
        )
    margin = chosen_scores - rejected_scores
    losses = -F.logsigmoid(margin)
    margin = margin.detach()
    metrics = {
        "loss": losses.detach().mean(),
        "accuracy": (margin > 0).to(margin.dtype).mean(),
        "rewards/chosen": chosen_scores.detach().mean(),
        "rewards/rejected": rejected_scores.detach().mean(),
        "rewards/margin": margin.mean(),
    }
    return losses, metrics


def discriminator_bce(logits: Tensor, labels: Tensor, **_: object) -> tuple[Tensor, Metrics]:
    """Discriminator loss of adversarial imitation / AfD (Sun & van der Schaar, 2024), with D = σ(logit):

        ℓ = −y·log σ(z) − (1 − y)·log σ(−z)

    The logit z is the reward r = log D − log(1 − D).

    Args:
      logits: ``[B]`` scalar logits z(x, y).
      labels: ``[B]`` in {0, 1} (bool, int or float); 1 = positive (e.g. π_SFT sample or demonstration).

    Returns:
      ``(losses [B], metrics)`` with ``loss``, ``accuracy`` (sign of z agrees with the label),
      ``logits/positive`` and ``logits/negative`` (mean logit of each class; 0 when a class is absent from
      the batch).
    """
    if logits.dim() != 1:
        raise ValueError(f"discriminator_bce: logits must have shape [B], got {tuple(logits.shape)}")
    if labels.shape != logits.shape:
        raise ValueError(
            f"discriminator_bce: labels must have the shape of logits {tuple(logits.shape)}, got {tuple(labels.shape)}"
        )
    targets = labels.to(logits.dtype)
    losses = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    z, positive = logits.detach(), labels.bool()
    negative = ~positive

    def class_mean(selected: Tensor) -> Tensor:
        return torch.where(selected, z, 0).sum() / selected.sum().to(z.dtype).clamp(min=1)

    metrics = {
        "loss": losses.detach().mean(),
        "accuracy": ((z > 0) == positive).to(z.dtype).mean(),
        "logits/positive": class_mean(positive),
        "logits/negative": class_mean(negative),
    }
    return losses, metrics
