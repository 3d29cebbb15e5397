"""Reward objectives (Bradley–Terry, discriminator BCE) against hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from imitalign import objectives


def assert_close(actual: torch.Tensor, expected: object, tol: float = 1e-12) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=tol, rtol=tol)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# ---------------------------------------------------------------------------------------- Bradley–Terry
def test_bradley_terry_hand_computed() -> None:
    chosen = torch.tensor([1.5, -0.2, 0.0], dtype=torch.float64)
    rejected = torch.tensor([0.5, 0.3, 0.0], dtype=torch.float64)
    losses, metrics = objectives.bradley_terry(chosen, rejected)
    margins = [1.0, -0.5, 0.0]
    assert_close(losses, [softplus(-m) for m in margins])  # −log σ(m) = log(1 + e^{−m})
    assert losses[2].item() == pytest.approx(math.log(2))
    assert_close(metrics["loss"], sum(softplus(-m) for m in margins) / 3)
    assert_close(metrics["accuracy"], 1 / 3)  # ties do not count as correct
    assert_close(metrics["rewards/chosen"], 1.3 / 3)
    assert_close(metrics["rewards/rejected"], 0.8 / 3)
    assert_close(metrics["rewards/margin"], 0.5 / 3)
    for key, value in metrics.items():
        assert value.dim() == 0 and not value.requires_grad, key


def test_bradley_terry_gradient() -> None:
    chosen = torch.tensor([1.5, -0.2], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([0.5, 0.3], dtype=torch.float64, requires_grad=True)
    objectives.bradley_terry(chosen, rejected)[0].sum().backward()
    # ∂/∂r_w = −σ(−m), ∂/∂r_l = σ(−m)
    sig = [1 / (1 + math.exp(m)) for m in (1.0, -0.5)]
    assert_close(chosen.grad, [-s for s in sig])
    assert_close(rejected.grad, sig)


def test_bradley_terry_is_stable_for_large_margins() -> None:
    losses, _ = objectives.bradley_terry(torch.tensor([-1e4, 1e4]), torch.tensor([1e4, -1e4]))
    assert_close(losses, [2e4, 0.0], tol=1e-3)


def test_bradley_terry_shape_errors() -> None:
    with pytest.raises(ValueError, match=r"shape \[B\]"):
        objectives.bradley_terry(torch.zeros(2, 1), torch.zeros(2, 1))
    with pytest.raises(ValueError, match="rejected_scores"):
        objectives.bradley_terry(torch.zeros(2), torch.zeros(3))


# ------------------------------------------------------------------------------------- discriminator BCE
@pytest.mark.parametrize(
    "labels",
    [
        torch.tensor([True, False, False, True]),
        torch.tensor([1, 0, 0, 1]),
        torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64),
    ],
)
def test_discriminator_bce_hand_computed(labels: torch.Tensor) -> None:
    logits = torch.tensor([2.0, -1.0, 0.5, -0.3], dtype=torch.float64)
    losses, metrics = objectives.discriminator_bce(logits, labels)
    # positive: −log σ(z) = softplus(−z); negative: −log σ(−z) = softplus(z)
    expected = [softplus(-2.0), softplus(-1.0), softplus(0.5), softplus(0.3)]
    assert_close(losses, expected)
    assert_close(metrics["loss"], sum(expected) / 4)
    assert_close(metrics["accuracy"], 0.5)  # right on 2.0 (pos) and −1.0 (neg); wrong on 0.5 (neg), −0.3 (pos)
    assert_close(metrics["logits/positive"], (2.0 - 0.3) / 2)
    assert_close(metrics["logits/negative"], (-1.0 + 0.5) / 2)


def test_discriminator_bce_gradient_and_missing_class() -> None:
    logits = torch.tensor([2.0, -1.0], dtype=torch.float64, requires_grad=True)
    losses, metrics = objectives.discriminator_bce(logits, torch.tensor([1, 1]))
    losses.sum().backward()
    assert_close(logits.grad, [1 / (1 + math.exp(-z)) - 1 for z in (2.0, -1.0)])  # σ(z) − y
    assert_close(metrics["logits/negative"], 0.0)  # no negatives in the batch: 0, not nan
    assert_close(metrics["logits/positive"], 0.5)


def test_discriminator_bce_shape_errors() -> None:
    with pytest.raises(ValueError, match=r"shape \[B\]"):
        objectives.discriminator_bce(torch.zeros(2, 1), torch.zeros(2, 1))
    with pytest.raises(ValueError, match="labels"):
        objectives.discriminator_bce(torch.zeros(2), torch.zeros(3))


def test_reward_objectives_in_registry() -> None:
    bt = objectives.get("bradley_terry")
    assert bt.kind == "reward_pair" and bt.reduction == "mean" and not bt.needs_reference
    disc = objectives.get("discriminator_bce")
    assert disc.kind == "classifier" and disc.reduction == "mean"
    losses, _ = objectives.build("bradley_terry", {})(torch.tensor([1.0]), torch.tensor([0.0]))
    assert_close(losses, [softplus(-1.0)], tol=1e-6)
