"""Token objectives (MLE, IQLearn) against hand-computed numbers; masking and terminal-value handling."""

from __future__ import annotations

import math

import pytest
import torch

from imitalign import objectives

NAN = math.nan
# Two demonstrations, left-aligned: A has 3 response tokens, B has 1 (then padding, whose entries are junk).
LOGPS = [[-1.0, -2.0, -0.5], [-3.0, NAN, -math.inf]]
VALUES = [[0.3, 0.7, -0.2], [1.1, 5.0, NAN]]
MASK = [[True, True, True], [True, False, False]]


def inputs(requires_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    logps = torch.tensor(LOGPS, dtype=torch.float64, requires_grad=requires_grad)
    values = torch.tensor(VALUES, dtype=torch.float64, requires_grad=requires_grad)
    return logps, torch.tensor(MASK), values


def assert_close(actual: torch.Tensor, expected: object, tol: float = 1e-12) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=tol, rtol=tol)


# -------------------------------------------------------------------------------------------------- MLE
def test_mle_is_per_token_mean_over_the_batch() -> None:
    logps, mask, _ = inputs()
    losses, metrics = objectives.mle(logps, mask)
    # 4 response tokens: A sums to 3.5, B to 3.0; per-sequence losses are sums / 4 and add up to the mean.
    assert_close(losses, [3.5 / 4, 3.0 / 4])
    assert_close(metrics["loss"], 6.5 / 4)
    assert_close(metrics["nll"], 6.5 / 4)
    assert_close(metrics["logps/mean"], -6.5 / 4)
    assert_close(metrics["tokens"], 4.0)


def test_mle_ignores_padding_and_gives_it_zero_gradient() -> None:
    logps, mask, _ = inputs(requires_grad=True)
    losses, _ = objectives.mle(logps, mask)
    losses.sum().backward()
    assert_close(logps.grad, [[-0.25, -0.25, -0.25], [-0.25, 0.0, 0.0]])


def test_mle_num_tokens_overrides_the_normaliser() -> None:
    logps, mask, _ = inputs()
    losses, metrics = objectives.mle(logps, mask, num_tokens=10)
    assert_close(losses, [0.35, 0.30])
    assert_close(metrics["nll"], 6.5 / 4)  # the metric stays this batch's per-token mean
    losses, _ = objectives.mle(logps, mask, num_tokens=torch.tensor(10))
    assert_close(losses, [0.35, 0.30])
    losses, _ = objectives.mle(logps, mask, num_tokens=20 / 2)  # e.g. step tokens / world size
    assert_close(losses, [0.35, 0.30])


def test_mle_all_masked_batch_is_zero_not_nan() -> None:
    losses, metrics = objectives.mle(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool))
    assert torch.equal(losses, torch.zeros(2)) and metrics["nll"].item() == 0.0


# ---------------------------------------------------------------------------------------------- IQLearn
GAMMA, LAM = 0.9, 0.5
# r_t = log π + V(s_t) − γ V(s_{t+1}), V = 0 after the last response token (B's padding value 5.0 unused)
R_A = [-1.0 + 0.3 - GAMMA * 0.7, -2.0 + 0.7 - GAMMA * -0.2, -0.5 + -0.2 - 0.0]  # −1.33, −1.12, −0.70
R_B = [-3.0 + 1.1 - 0.0]  # −1.90


def test_implicit_token_rewards_hand_computed() -> None:
    logps, mask, values = inputs()
    rewards = objectives.implicit_token_rewards(logps, mask, values, GAMMA)
    assert_close(rewards, [R_A, [R_B[0], 0.0, 0.0]])
    assert_close(rewards[0], [-1.33, -1.12, -0.70])


def test_iqlearn_hand_computed_two_sequences_of_different_lengths() -> None:
    logps, mask, values = inputs()
    losses, metrics = objectives.iqlearn(logps, mask, values, lam=LAM, gamma=GAMMA)
    loss_a = sum(-lp + LAM * r**2 for lp, r in zip(LOGPS[0], R_A, strict=True))
    loss_b = 3.0 + LAM * R_B[0] ** 2
    assert loss_a == pytest.approx(5.25665) and loss_b == pytest.approx(4.805)
    assert_close(losses, [loss_a / 4, loss_b / 4])
    assert_close(metrics["loss"], (loss_a + loss_b) / 4)
    assert_close(metrics["nll"], 6.5 / 4)
    assert_close(metrics["td_penalty"], sum(r**2 for r in R_A + R_B) / 4)
    assert_close(metrics["reward/mean"], sum(R_A + R_B) / 4)
    assert_close(metrics["logps/mean"], -6.5 / 4)
    assert_close(metrics["values/mean"], (0.3 + 0.7 - 0.2 + 1.1) / 4)
    for key, value in metrics.items():
        assert value.dim() == 0 and not value.requires_grad, key


def test_iqlearn_gradients_match_closed_form() -> None:
    logps, mask, values = inputs(requires_grad=True)
    losses, _ = objectives.iqlearn(logps, mask, values, lam=LAM, gamma=GAMMA)
    losses.sum().backward()
    n = 4
    # ∂/∂logπ_t = (−1 + 2λ r_t)/n;  ∂/∂V_t = (2λ r_t − γ·2λ r_{t−1} [t−1 a response token])/n
    assert_close(logps.grad, [[(-1 + 2 * LAM * r) / n for r in R_A], [(-1 + 2 * LAM * R_B[0]) / n, 0.0, 0.0]])
    grad_v_a = [2 * LAM * R_A[0] / n] + [(2 * LAM * R_A[t] - GAMMA * 2 * LAM * R_A[t - 1]) / n for t in (1, 2)]
    assert_close(values.grad, [grad_v_a, [2 * LAM * R_B[0] / n, 0.0, 0.0]])


def test_iqlearn_masked_values_change_nothing() -> None:
    logps, mask, values = inputs(requires_grad=True)
    losses, metrics = objectives.iqlearn(logps, mask, values, lam=LAM, gamma=GAMMA)
    logps2 = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, 123.0, -7.0]], dtype=torch.float64, requires_grad=True)
    values2 = torch.tensor([[0.3, 0.7, -0.2], [1.1, -1e30, math.inf]], dtype=torch.float64, requires_grad=True)
    losses2, metrics2 = objectives.iqlearn(logps2, mask, values2, lam=LAM, gamma=GAMMA)
    assert torch.equal(losses, losses2)
    assert all(torch.equal(metrics[k], metrics2[k]) for k in metrics)
    losses.sum().backward()
    losses2.sum().backward()
    assert torch.equal(values.grad, values2.grad) and torch.equal(logps.grad, logps2.grad)
    assert torch.isfinite(values.grad).all() and torch.isfinite(logps.grad).all()


def test_iqlearn_masks_prompt_positions_before_the_response() -> None:
    """A generic mask (prompt first, then response) works too: masked positions are never read."""
    mask = torch.tensor([[False, True, True]])
    logps = torch.tensor([[NAN, -1.0, -2.0]], dtype=torch.float64)
    values = torch.tensor([[NAN, 0.4, 0.6]], dtype=torch.float64)
    losses, _ = objectives.iqlearn(logps, mask, values, lam=LAM, gamma=GAMMA)
    r = [-1.0 + 0.4 - GAMMA * 0.6, -2.0 + 0.6]
    assert_close(losses, [(1.0 + 2.0 + LAM * (r[0] ** 2 + r[1] ** 2)) / 2])


def test_iqlearn_lambda_zero_equals_mle_exactly() -> None:
    generator = torch.Generator().manual_seed(0)
    logps = -torch.rand(4, 9, generator=generator) * 5
    values = torch.randn(4, 9, generator=generator) * 3
    lengths = torch.tensor([9, 1, 5, 3])
    mask = torch.arange(9)[None, :] < lengths[:, None]
    iq_losses, iq_metrics = objectives.iqlearn(logps, mask, values, lam=0.0, gamma=0.95)
    mle_losses, mle_metrics = objectives.mle(logps, mask, values)
    assert torch.equal(iq_losses, mle_losses)
    assert torch.equal(iq_metrics["loss"], mle_metrics["loss"]) and torch.equal(iq_metrics["nll"], mle_metrics["nll"])
    # and the gradients w.r.t. the log-probs are identical too
    a, b = logps.clone().requires_grad_(True), logps.clone().requires_grad_(True)
    objectives.iqlearn(a, mask, values, lam=0.0)[0].sum().backward()
    objectives.mle(b, mask)[0].sum().backward()
    assert torch.equal(a.grad, b.grad)


def test_iqlearn_gradcheck() -> None:
    logps, mask, values = inputs(requires_grad=True)
    clean_l = torch.where(mask, logps.detach(), 0.0).requires_grad_(True)
    clean_v = torch.where(mask, values.detach(), 0.0).requires_grad_(True)

    def fn(l: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return objectives.iqlearn(l, mask, v, lam=LAM, gamma=GAMMA)[0]

    assert torch.autograd.gradcheck(fn, (clean_l, clean_v))


def test_token_objective_errors() -> None:
    logps, mask, values = inputs()
    with pytest.raises(ValueError, match="needs token_values"):
        objectives.iqlearn(logps, mask)
    with pytest.raises(ValueError, match=r"shape \[N, L\]"):
        objectives.mle(logps[0], mask[0])
    with pytest.raises(ValueError, match="token_mask"):
        objectives.mle(logps, mask[:, :2])
    with pytest.raises(ValueError, match="token_values"):
        objectives.iqlearn(logps, mask, values[:1])
    with pytest.raises(ValueError, match="lam"):
        objectives.iqlearn(logps, mask, values, lam=-1.0)
    with pytest.raises(ValueError, match="gamma"):
        objectives.iqlearn(logps, mask, values, gamma=1.5)


def test_build_token_objectives_bind_defaults() -> None:
    logps, mask, values = inputs()
    fn = objectives.build("iqlearn", {"lam": LAM, "gamma": GAMMA})
    expected, _ = objectives.iqlearn(logps, mask, values, lam=LAM, gamma=GAMMA)
    assert torch.equal(fn(logps, mask, values)[0], expected)
    default, _ = objectives.build("iqlearn", {})(logps, mask, values)
    assert_close(default, objectives.iqlearn(logps, mask, values, lam=0.1, gamma=1.0)[0])
    assert objectives.get("iqlearn").reduction == "sum"
