"""Objectives on unpaired feedback: responses labelled desirable or undesirable, with no pairing.

Every function here has the same signature::

    fn(policy_logps, policy_kl_logps, reference_logps, reference_kl_logps, lengths, labels, **options)
        -> (losses [B], metrics)

``policy_logps`` / ``reference_logps`` ``[B]`` are summed response log-probs of the batch's responses,
``lengths`` ``[B]`` their token counts, ``labels`` ``[B]`` bool (True: desirable). ``policy_kl_logps`` /
``reference_kl_logps`` ``[B]`` are the log-probs of *mismatched* pairs (example ``i``'s prompt with another
row's response, see :mod:`imitalign.data.unpaired`): objectives of kind ``unpaired_kl`` (KTO) get them, those
of kind ``unpaired`` get None. ``ρ = log π_θ(y|x) − log π_ref(y|x)`` (divided by ``|y|`` with
``length_normalize``).

Losses are per example and the trainer takes their mean (``reduction: "mean"``). Metrics are detached
scalar tensors: ``loss``, ``rewards/desirable``, ``rewards/undesirable`` (mean implicit rewards over the
examples of each label; 0 when the batch has none), ``logps/desirable``, ``logps/undesirable``,
``desirable_fraction``; KTO adds ``kl`` (its z₀), BCO ``delta`` (its reward shift).

**DIL on unpaired data** (METHODS.md §1). Bregman density-ratio estimation of ``r = π_chosen / π_ref`` with a
convex ``f`` minimises

    E_{y ~ desirable}[ −f'(r(y)) ] + E_{y ~ undesirable}[ f'(r(y))·r(y) − f(r(y)) ],   r = exp(β·ρ)

a sum of one expectation over samples of the numerator and one over samples of the denominator: no pairing
is needed. Within a batch each expectation is the mean over the examples of its label, so the per-example
losses are ``ℓ_i = (B / n_D)·d(r_i)`` for desirable and ``(B / n_U)·u(r_i)`` for undesirable examples and their
mean is exactly ``mean_D d + mean_U u`` (a label absent from the batch contributes nothing). The closed forms
(the paired losses' two halves): LSIF ``d = −r``, ``u = ½r²``; UKL ``d = −βρ``, ``u = r``; BCE
``d = −log σ(βρ)``, ``u = −log σ(−βρ)``; any other ``f`` through autograd (``bregman_unpaired``). On the two
halves of B pairs the batch loss equals the paired DIL loss's mean (a test).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .ratio import Generator, _elementwise_derivative, _per_token, load_generator

Metrics = dict[str, Tensor]


def _check(
    objective: str,
    policy_logps: Tensor,
    reference_logps: Tensor | None,
    lengths: Tensor | None,
    labels: Tensor,
    length_normalize: bool,
    beta: float,
) -> None:
    if policy_logps.dim() != 1:
        raise ValueError(f"{objective}: policy_logps must have shape [B], got {tuple(policy_logps.shape)}")
    if reference_logps is None:
        raise ValueError(f"{objective} needs reference log-probs, got reference_logps=None")
    for name, t in (("reference_logps", reference_logps), ("labels", labels), ("lengths", lengths)):
        if t is not None and t.shape != policy_logps.shape:
            raise ValueError(f"{objective}: {name} must have shape {tuple(policy_logps.shape)}, got {tuple(t.shape)}")
    if length_normalize and lengths is None:
        raise ValueError(f"{objective} with length normalisation needs response lengths, got lengths=None")
    if not beta > 0:
        raise ValueError(f"{objective}: beta must be > 0, got {beta!r}")


def _log_ratio(policy: Tensor, reference: Tensor, lengths: Tensor | None, length_normalize: bool) -> Tensor:
    rho = policy - reference
    return _per_token(rho, lengths) if length_normalize and lengths is not None else rho


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1)


def _metrics(losses: Tensor, rewards: Tensor, policy_logps: Tensor, labels: Tensor) -> Metrics:
    rewards, logps, d = rewards.detach(), policy_logps.detach(), labels.bool()
    return {
        "loss": losses.detach().mean(),
        "rewards/desirable": _masked_mean(rewards, d),
        "rewards/undesirable": _masked_mean(rewards, ~d),
        "logps/desirable": _masked_mean(logps, d),
        "logps/undesirable": _masked_mean(logps, ~d),
        "desirable_fraction": d.to(rewards.dtype).mean(),
    }


def _group_weights(labels: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``B/n_D`` on desirable and ``B/n_U`` on undesirable examples (0 on the other label)."""
    d = labels.bool().to(dtype)
    b = torch.tensor(float(labels.shape[0]), dtype=dtype, device=labels.device)
    return d * b / d.sum().clamp(min=1), (1 - d) * b / (1 - d).sum().clamp(min=1)


_CLOSED = ("lsif", "ukl", "bce")


def _terms(kind: str | Generator, scaled: Tensor, max_log_ratio: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(d, u, clamped)``: the desirable and undesirable terms of every example, and where the guard acted."""
    clamped = scaled > max_log_ratio
    r = torch.exp(scaled.clamp(max=max_log_ratio))
    if kind == "lsif":
        return -r, 0.5 * r**2, clamped
    if kind == "ukl":
        return -scaled, r, clamped
    if kind == "bce":
        return -F.logsigmoid(scaled), -F.logsigmoid(-scaled), torch.zeros_like(clamped)
    f = load_generator(kind) if isinstance(kind, str) else kind
    grad = _elementwise_derivative(f, r)
    return -grad, grad * r - f(r), clamped


def dil_unpaired(
    policy_logps: Tensor,
    policy_kl_logps: Tensor | None,
    reference_logps: Tensor,
    reference_kl_logps: Tensor | None,
    lengths: Tensor | None,
    labels: Tensor,
    *,
    generator: str | Generator = "bce",
    beta: float = 1.0,
    length_normalize: bool = True,
    max_log_ratio: float = 20.0,
    **_: object,
) -> tuple[Tensor, Metrics]:
    """DIL on unpaired feedback: Bregman density-ratio estimation with desirable responses as the numerator's
    samples and undesirable ones as the denominator's (module docstring).

        ℓ_i = (B/n_D)·d(r_i)  if y_i desirable,   (B/n_U)·u(r_i)  otherwise;   r = exp(β·ρ)
        mean_i ℓ_i = mean_D d + mean_U u = E_D[−f'(r)] + E_U[f'(r)·r − f(r)]  (closed forms for lsif/ukl/bce)

    Args:
      policy_logps, reference_logps: ``[B]`` summed response log-probs.
      policy_kl_logps, reference_kl_logps: ignored (may be None).
      lengths: ``[B]`` response token counts (needed with ``length_normalize``).
      labels: ``[B]`` bool, True for desirable.
      generator: ``lsif``, ``ukl``, ``bce`` (closed forms) or a convex f (callable or ``"module:function"``).
      beta: temperature β > 0 on ρ.
      length_normalize: per-token mean log ratios (default, as paired DIL).
      max_log_ratio: upper clamp on β·ρ before exp (the overflow guard of paired DIL).

    Returns:
      ``(losses [B], metrics)``; rewards are β·ρ; ``ratio/clamped`` the fraction of guarded examples.
    """
    name = f"dil_{generator}_unpaired" if isinstance(generator, str) and generator in _CLOSED else "bregman_unpaired"
    _check(name, policy_logps, reference_logps, lengths, labels, length_normalize, beta)
    scaled = beta * _log_ratio(policy_logps, reference_logps, lengths, length_normalize)
    d_term, u_term, clamped = _terms(generator, scaled, max_log_ratio)
    w_d, w_u = _group_weights(labels, scaled.dtype)
    losses = w_d * d_term + w_u * u_term
    metrics = _metrics(losses, scaled, policy_logps, labels)
    metrics["ratio/clamped"] = clamped.detach().to(scaled.dtype).mean()
    return losses, metrics


def kto(
    policy_logps: Tensor,
    policy_kl_logps: Tensor | None,
    reference_logps: Tensor,
    reference_kl_logps: Tensor | None,
    lengths: Tensor | None,
    labels: Tensor,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    length_normalize: bool = False,
    **_: object,
) -> tuple[Tensor, Metrics]:
    """KTO, Kahneman–Tversky Optimisation (Ethayarajh et al., ICML 2024, eq. 7; TRL's ``KTOTrainer`` loss).

        z₀ = max(0, mean_i[log π_θ(y'_i|x_i) − log π_ref(y'_i|x_i)])   (detached; y'_i answers another prompt)
        ℓ_i = λ_D·(1 − σ(β(ρ_i − z₀)))   if y_i desirable
        ℓ_i = λ_U·(1 − σ(β(z₀ − ρ_i)))   if y_i undesirable

    z₀ is the batch's estimate of KL(π_θ ‖ π_ref) from mismatched prompt/response pairs, with no gradient and
    clamped at 0, as in the paper and TRL (which also averages it over processes; here it is the micro-batch's
    own). The batch loss is the mean of ``ℓ`` over all examples (TRL's ``nanmean`` of the concatenated losses).
    The paper suggests λ_D·n_D / (λ_U·n_U) in [1, 4/3].

    Args:
      policy_logps, reference_logps: ``[B]`` summed response log-probs.
      policy_kl_logps, reference_kl_logps: ``[B]`` summed log-probs of the mismatched pairs (required).
      lengths: ``[B]`` response token counts (needed with ``length_normalize``).
      labels: ``[B]`` bool, True for desirable.
      beta: β > 0.
      desirable_weight, undesirable_weight: λ_D, λ_U.
      length_normalize: per-token mean log ratios (off, as the paper and TRL).

    Returns:
      ``(losses [B], metrics)``; rewards are β·ρ; ``kl`` is z₀.
    """
    _check("kto", policy_logps, reference_logps, lengths, labels, length_normalize, beta)
    if policy_kl_logps is None or reference_kl_logps is None:
        raise ValueError("kto needs the mismatched pairs' log-probs (policy_kl_logps, reference_kl_logps) for z0")
    rho = _log_ratio(policy_logps, reference_logps, lengths, length_normalize)
    z0 = (policy_kl_logps - reference_kl_logps).mean().detach().clamp(min=0)
    d = labels.bool()
    desirable = desirable_weight * (1 - torch.sigmoid(beta * (rho - z0)))
    undesirable = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - rho)))
    losses = torch.where(d, desirable, undesirable)
    metrics = _metrics(losses, beta * rho, policy_logps, labels)
    metrics["kl"] = z0
    return losses, metrics


def bco(
    policy_logps: Tensor,
    policy_kl_logps: Tensor | None,
    reference_logps: Tensor,
    reference_kl_logps: Tensor | None,
    lengths: Tensor | None,
    labels: Tensor,
    *,
    beta: float = 0.1,
    delta: Tensor | float | None = None,
    length_normalize: bool = False,
    **_: object,
) -> tuple[Tensor, Metrics]:
    """BCO, Binary Classifier Optimisation (Jung et al., 2024, "Binary Classifier Optimization for Large Language
    Model Alignment", eq. 9 with the reward shift of §4.2).

        r_i = β·ρ_i
        ℓ_i = −log σ(r_i − δ)      if y_i desirable
        ℓ_i = −log σ(−(r_i − δ))   if y_i undesirable

    The loss trains a binary classifier whose logit is the implicit reward; δ, the reward shift, is the
    average of the mean desirable and the mean undesirable reward, which the paper keeps as a moving average
    over training (:class:`RewardShift`, held by the trainer, passes it as ``delta``). With ``delta=None``
    δ = ½(mean_D r + mean_U r) of this batch (detached). The batch loss is the mean of ``ℓ`` over all
    examples (as TRL's former ``BCOTrainer``, without its optional UDM density-ratio weights).

    Args:
      policy_logps, reference_logps: ``[B]`` summed response log-probs.
      policy_kl_logps, reference_kl_logps: ignored (may be None).
      lengths: ``[B]`` response token counts (needed with ``length_normalize``).
      labels: ``[B]`` bool, True for desirable.
      beta: β > 0.
      delta: the reward shift δ (a scalar, detached), or None for the batch's own.
      length_normalize: per-token mean log ratios (off, as the paper).

    Returns:
      ``(losses [B], metrics)``; rewards are β·ρ; ``delta`` is δ.
    """
    _check("bco", policy_logps, reference_logps, lengths, labels, length_normalize, beta)
    rewards = beta * _log_ratio(policy_logps, reference_logps, lengths, length_normalize)
    d = labels.bool()
    if delta is None:
        delta = 0.5 * (_masked_mean(rewards.detach(), d) + _masked_mean(rewards.detach(), ~d))
    delta = torch.as_tensor(delta, dtype=rewards.dtype, device=rewards.device).detach()
    losses = torch.where(d, -F.logsigmoid(rewards - delta), -F.logsigmoid(-(rewards - delta)))
    metrics = _metrics(losses, rewards, policy_logps, labels)
    metrics["delta"] = delta
    return losses, metrics


class RewardShift:
    """BCO's δ as a running average over training: the running means of the desirable and of the undesirable
    rewards seen so far (every example counted once), δ = ½(μ_D + μ_U); a label not yet seen counts as 0.
    :meth:`update` adds a batch's rewards and returns the δ to use for it (the batch included, as TRL did)."""

    def __init__(self) -> None:
        self.sums = [0.0, 0.0]  # desirable, undesirable
        self.counts = [0, 0]

    def update(self, rewards: Tensor, labels: Tensor) -> float:
        d = labels.bool()
        for k, mask in enumerate((d, ~d)):
            self.sums[k] += float(rewards.detach()[mask].sum())
            self.counts[k] += int(mask.sum())
        return self.delta

    @property
    def delta(self) -> float:
        means = [s / c if c else 0.0 for s, c in zip(self.sums, self.counts, strict=True)]
        return 0.5 * (means[0] + means[1])

    def state_dict(self) -> dict[str, list]:
        return {"sums": list(self.sums), "counts": list(self.counts)}

    def load_state_dict(self, state: dict[str, list]) -> None:
        self.sums, self.counts = [float(x) for x in state["sums"]], [int(x) for x in state["counts"]]


def _closed(generator: str):  # noqa: ANN202 - a loss function of the unpaired signature
    def objective(
        policy_logps: Tensor,
        policy_kl_logps: Tensor | None,
        reference_logps: Tensor,
        reference_kl_logps: Tensor | None,
        lengths: Tensor | None,
        labels: Tensor,
        *,
        beta: float = 1.0,
        length_normalize: bool = True,
        max_log_ratio: float = 20.0,
        **_: object,
    ) -> tuple[Tensor, Metrics]:
        return dil_unpaired(
            policy_logps,
            policy_kl_logps,
            reference_logps,
            reference_kl_logps,
            lengths,
            labels,
            generator=generator,
            beta=beta,
            length_normalize=length_normalize,
            max_log_ratio=max_log_ratio,
        )

    objective.__name__ = objective.__qualname__ = f"dil_{generator}_unpaired"
    objective.__doc__ = f"DIL-{generator.upper()} on unpaired feedback (closed form; see dil_unpaired).\n\n" + (
        dil_unpaired.__doc__ or ""
    )
    return objective


dil_lsif_unpaired = _closed("lsif")
dil_ukl_unpaired = _closed("ukl")
dil_bce_unpaired = _closed("bce")


def bregman_unpaired(
    policy_logps: Tensor,
    policy_kl_logps: Tensor | None,
    reference_logps: Tensor,
    reference_kl_logps: Tensor | None,
    lengths: Tensor | None,
    labels: Tensor,
    *,
    generator: str | Generator | None = None,
    beta: float = 1.0,
    length_normalize: bool = True,
    max_log_ratio: float = 20.0,
    **_: object,
) -> tuple[Tensor, Metrics]:
    """DIL on unpaired feedback with the Bregman estimator of any convex generator f (see dil_unpaired)."""
    if generator is None:
        raise ValueError("bregman_unpaired needs a generator: a callable f(t) or 'package.module:function'")
    return dil_unpaired(
        policy_logps,
        policy_kl_logps,
        reference_logps,
        reference_kl_logps,
        lengths,
        labels,
        generator=generator,
        beta=beta,
        length_normalize=length_normalize,
        max_log_ratio=max_log_ratio,
    )
