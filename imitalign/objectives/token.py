"""Token objectives on demonstrations: MLE (SFT) and IQLearn as TD-regularised MLE (METHODS.md §4).

Inputs follow the ``LogProbs`` contract (docs/contracts.md): ``token_logps [N, L]`` holds log π(a_t|s_t) for
the response tokens of each sequence, left-aligned and padded; ``token_mask [N, L]`` (bool) is True on
response tokens; ``token_values [N, L]`` holds V(s_t) = logsumexp of the logits that predict token t. Values
at masked positions (padding) are never read: they may hold anything, even inf or nan.

Normalisation: per token over the batch. With ``n`` the number of response tokens in the batch (or
``num_tokens`` when given), the batch loss is ``(1/n)·Σ_{i,t} ℓ_{i,t}``, and the per-sequence losses
returned are ``losses[i] = (1/n)·Σ_t ℓ_{i,t}``, so that **``losses.sum()``** is the batch loss (the
``ObjectiveSpec.reduction`` of these objectives is ``"sum"``, unlike pair objectives' ``"mean"``). Long
sequences weigh more than short ones, as in standard SFT. Under gradient accumulation or data parallelism,
pass ``num_tokens`` = the token count of the whole optimisation step (summed over micro-batches and ranks) to
keep the per-token normalisation exact across them.

Metrics are detached scalar tensors (no host syncs); per-token means use the batch's own token count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

Metrics = dict[str, Tensor]


def _check_token_shapes(
    objective: str, token_logps: Tensor, token_mask: Tensor, token_values: Tensor | None, needs_values: bool
) -> None:
    if token_logps.dim() != 2:
        raise ValueError(f"{objective}: token_logps must have shape [N, L], got {tuple(token_logps.shape)}")
    if token_mask.shape != token_logps.shape:
        raise ValueError(
            f"{objective}: token_mask must have the shape of token_logps {tuple(token_logps.shape)}, "
            f"got {tuple(token_mask.shape)}"
        )
    if token_values is None:
        if needs_values:
            raise ValueError(
                f"{objective} needs token_values (V(s_t) per response token): compute log-probs with with_values=True"
            )
    elif token_values.shape != token_logps.shape:
        raise ValueError(
            f"{objective}: token_values must have the shape of token_logps {tuple(token_logps.shape)}, "
            f"got {tuple(token_values.shape)}"
        )


def _normalizer(mask: Tensor, num_tokens: Tensor | int | None, dtype: torch.dtype) -> Tensor:
    """The per-token normaliser n ≥ 1: this batch's token count, or ``num_tokens`` when given."""
    n = mask.sum() if num_tokens is None else torch.as_tensor(num_tokens, device=mask.device)
    return n.to(dtype).clamp(min=1)


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask, x, 0).sum() / mask.sum().to(x.dtype).clamp(min=1)


def mle(
    token_logps: Tensor,
    token_mask: Tensor,
    token_values: Tensor | None = None,
    *,
    num_tokens: Tensor | int | None = None,
    **_: object,
) -> tuple[Tensor, Metrics]:
    """Maximum likelihood (SFT) on demonstrations: forward KL KL(d^β ‖ d^π) (METHODS.md §3, §4).

        ℓ_t = −log π(a_t | s_t),   batch loss = (1/n)·Σ_{i,t} ℓ_{i,t}   (n = response tokens in the batch)

    Per-token normalisation: ``losses[i] = −Σ_t log π(a_{i,t}|s_{i,t}) / n``; reduce with ``losses.sum()``.

    Args:
      token_logps: ``[N, L]`` log π(a_t|s_t) per response token, left-aligned, padded.
      token_mask: ``[N, L]`` bool, True on response tokens (prompt and padding are False).
      token_values: ignored (accepted for the token-objective signature).
      num_tokens: the normaliser n, when it should span more than this batch (gradient accumulation, DDP).

    Returns:
      ``(losses [N], metrics)`` with metrics ``loss`` (= losses.sum()), ``nll`` (mean per token),
      ``logps/mean``, ``tokens`` (response tokens in the batch).
    """
    _check_token_shapes("mle", token_logps, token_mask, token_values, needs_values=False)
    mask = token_mask.bool()
    nll_t = -torch.where(mask, token_logps, 0)
    losses = nll_t.sum(dim=-1) / _normalizer(mask, num_tokens, token_logps.dtype)
    nll = _masked_mean(nll_t.detach(), mask)
    metrics = {
        "loss": losses.detach().sum(),
        "nll": nll,
        "logps/mean": -nll,
        "tokens": mask.sum().to(token_logps.dtype),
    }
    return losses, metrics


def implicit_token_rewards(token_logps: Tensor, token_mask: Tensor, token_values: Tensor, gamma: float = 1.0) -> Tensor:
    """The implicit per-token reward of a soft-Q reading of the LM (Wulfmeier et al., NeurIPS 2024):

        r_t = Q(s_t, a_t) − γ·V(s_{t+1}) = log π(a_t|s_t) + V(s_t) − γ·V(s_{t+1})

    ``V(s_{t+1})`` is ``token_values`` at the next position when that position is a response token, else 0
    (the episode ends after the last response token; a padding position's value is never used).

    Args:
      token_logps: ``[N, L]`` log π(a_t|s_t), left-aligned response tokens.
      token_mask: ``[N, L]`` bool, True on response tokens.
      token_values: ``[N, L]`` V(s_t) = logsumexp of the logits that predict token t.
      gamma: discount γ in [0, 1].

    Returns:
      ``r_t [N, L]``, 0 at masked positions.
    """
    _check_token_shapes("implicit_token_rewards", token_logps, token_mask, token_values, needs_values=True)
    mask = token_mask.bool()
    # Sanitise first: masked entries may be inf/nan, and where() alone would still leak nan into gradients.
    logp_t = torch.where(mask, token_logps, 0)
    v_t = torch.where(mask, token_values, 0)
    v_tp1 = F.pad(v_t[:, 1:], (0, 1))  # V(s_{t+1}); 0 where t+1 is not a response token (terminal)
    return torch.where(mask, logp_t + v_t - gamma * v_tp1, 0)


def iqlearn(
    token_logps: Tensor,
    token_mask: Tensor,
    token_values: Tensor | None = None,
    *,
    lam: float = 0.1,
    gamma: float = 1.0,
    alpha: float = 0.0,
    policy_token_logps: Tensor | None = None,
    policy_token_mask: Tensor | None = None,
    policy_token_values: Tensor | None = None,
    num_tokens: Tensor | int | None = None,
    num_policy_tokens: Tensor | int | None = None,
    **_: object,
) -> tuple[Tensor, Metrics]:
    """IQLearn for language as TD-regularised MLE, χ² regulariser (Wulfmeier et al., NeurIPS 2024,
    "Imitating Language via Scalable Inverse Reinforcement Learning"; Garg et al., NeurIPS 2021).

        ℓ_t = −log π(a_t|s_t) + λ·(V(s_t) + log π(a_t|s_t) − γ·V(s_{t+1}))² = −log π(a_t|s_t) + λ·r_t²

    with Q = logits, V(s) = logsumexp Q(s, ·) and V = 0 after the last response token (see
    `implicit_token_rewards`). Averaged over the batch's response tokens as `mle` (reduce with
    ``losses.sum()``); λ = 0 is exactly `mle`. A truncated response (no EOS) is also treated as terminal.
    Gradients flow through both the log-probs and the values (both come from the same logits).

    **Online variant** (α > 0, METHODS.md §4): the TD-regularised term is taken over a mixture of the
    demonstrations' states (weight 1 − α) and the states of the policy's *own* samples (weight α); the own
    samples enter only that term, never the likelihood:

        L = (1/n_D)·Σ_{demo i,t} [−log π(a_t|s_t) + λ(1−α)·r_t²]  +  λα·(1/n_P)·Σ_{own j,t} r_t²

    (``n_D``/``n_P``: response tokens of the demonstrations/own samples, or ``num_tokens``/``num_policy_tokens``).
    α = 0 is the offline objective exactly (the own-sample term is multiplied by 0; the demonstration term is
    the same expression). With own samples given, ``losses`` has ``N + N_P`` entries: the demonstrations'
    per-sequence losses, then the own samples'; their sum is the batch loss. Own-sample tensors with no rows
    (``[0, L]``) give the demonstrations' share of the loss alone (how the trainer evaluates on demonstrations).

    Args:
      token_logps: ``[N, L]`` log π(a_t|s_t) per response token, left-aligned, padded.
      token_mask: ``[N, L]`` bool, True on response tokens.
      token_values: ``[N, L]`` V(s_t) per response token (required).
      lam: weight λ ≥ 0 of the χ² (TD) term; 0.1–0.5 in public code.
      gamma: discount γ in [0, 1]; 1 is the common choice.
      alpha: share α ∈ [0, 1] of the policy's own samples in the TD term; > 0 needs the ``policy_*`` tensors.
      policy_token_logps / policy_token_mask / policy_token_values: ``[N_P, L_P]`` the same tensors for the
        policy's own samples (all three or none).
      num_tokens: the normaliser n_D, when it should span more than this batch.
      num_policy_tokens: the normaliser n_P of the own samples, likewise.

    Returns:
      ``(losses [N] or [N + N_P], metrics)`` with metrics ``loss`` (= losses.sum()), ``nll`` (mean per token),
      ``td_penalty`` (mean r_t² per demonstration token, before λ), ``reward/mean`` (mean r_t per token),
      ``logps/mean``, ``values/mean``; with own samples also ``td_penalty/policy`` and ``reward/policy_mean``.
    """
    _check_token_shapes("iqlearn", token_logps, token_mask, token_values, needs_values=True)
    assert token_values is not None
    check_iqlearn_options(lam, gamma, alpha)
    policy = (policy_token_logps, policy_token_mask, policy_token_values)
    if any(t is not None for t in policy) and any(t is None for t in policy):
        raise ValueError("iqlearn: give all of policy_token_logps, policy_token_mask and policy_token_values, or none")
    has_policy = policy_token_logps is not None
    if alpha > 0 and not has_policy:
        raise ValueError(
            f"iqlearn: alpha = {alpha} mixes the policy's own samples into the TD term, but none were given "
            "(data.policy_samples in a run config)"
        )
    mask = token_mask.bool()
    nll_t = -torch.where(mask, token_logps, 0)  # the same expression as mle: λ = 0 reproduces it bit for bit
    r_t = implicit_token_rewards(token_logps, mask, token_values, gamma)
    loss_t = nll_t + (lam * (1.0 - alpha)) * r_t**2  # α = 0: λ·r_t², the offline loss bit for bit
    losses = loss_t.sum(dim=-1) / _normalizer(mask, num_tokens, token_logps.dtype)
    nll = _masked_mean(nll_t.detach(), mask)
    r_t = r_t.detach()
    metrics = {
        "loss": losses.detach().sum(),
        "nll": nll,
        "td_penalty": _masked_mean(r_t**2, mask),
        "reward/mean": _masked_mean(r_t, mask),
        "logps/mean": -nll,
        "values/mean": _masked_mean(token_values.detach(), mask),
    }
    if has_policy:
        assert policy_token_logps is not None and policy_token_mask is not None
        _check_token_shapes(
            "iqlearn (policy samples)", policy_token_logps, policy_token_mask, policy_token_values, needs_values=True
        )
        p_mask = policy_token_mask.bool()
        p_r_t = implicit_token_rewards(policy_token_logps, p_mask, policy_token_values, gamma)  # type: ignore[arg-type]
        p_losses = ((lam * alpha) * p_r_t**2).sum(dim=-1) / _normalizer(
            p_mask, num_policy_tokens, policy_token_logps.dtype
        )
        losses = torch.cat([losses, p_losses.to(losses.dtype)])
        metrics["loss"] = losses.detach().sum()
        if p_mask.shape[0] > 0:  # (no own samples, e.g. at evaluation: the demonstrations' share only)
            p_r_t = p_r_t.detach()
            metrics["td_penalty/policy"] = _masked_mean(p_r_t**2, p_mask)
            metrics["reward/policy_mean"] = _masked_mean(p_r_t, p_mask)
    return losses, metrics


def check_iqlearn_options(lam: float, gamma: float, alpha: float = 0.0) -> None:
    """Raise ``ValueError`` unless λ ≥ 0, γ ∈ [0, 1] and α ∈ [0, 1] (checked before any model loads)."""
    if lam < 0:
        raise ValueError(f"iqlearn: lam must be >= 0, got {lam!r}")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"iqlearn: gamma must be in [0, 1], got {gamma!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(
            f"iqlearn: alpha (share of the policy's own samples in the TD term) must be in [0, 1], got {alpha!r}"
        )
