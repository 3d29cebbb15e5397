"""Pair objectives on sequence log-probabilities: DPO, IPO, hinge (SLiC), SimPO and DIL (METHODS.md §1).

Every function here has the same signature::

    fn(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
       chosen_lengths, rejected_lengths, *, beta, length_normalize, **options) -> (losses [B], metrics)

All sequence log-probs are *sums* over response tokens (prompt excluded), shape ``[B]``; ``*_lengths`` are
the response token counts ``|y|``, shape ``[B]`` (int or float). The log density ratio of a response is
``ρ(y) = log π(y|x) − log π_ref(y|x)``, divided by ``|y|`` when ``length_normalize`` is set (the per-token
mean of the log ratio, as the DIL and TRL-IPO code do). Unknown keyword options are ignored (``**_``) so that
a trainer can pass one set of keywords to any pair objective; `imitalign.objectives.build` validates option
names instead.

Losses are per pair, ``[B]``; the trainer reduces them with ``losses.mean()`` (``ObjectiveSpec.reduction``
is ``"mean"``). Metrics are detached scalar tensors (batch means), never Python numbers: no host syncs.
Every objective logs ``loss``, ``rewards/chosen``, ``rewards/rejected``, ``rewards/margin`` (the implicit
rewards exactly as they enter the loss, e.g. ``β·ρ``), ``accuracy`` (fraction of pairs whose chosen reward is
strictly larger), ``logps/chosen`` and ``logps/rejected`` (policy summed log-probs).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

Metrics = dict[str, Tensor]
Generator = Callable[[Tensor], Tensor]

# The checks below look at shapes and Python options only, never at tensor values: no host syncs.


# ----------------------------------------------------------------------------------------------- helpers
def _check_pair_shapes(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor | None,
    reference_rejected_logps: Tensor | None,
    chosen_lengths: Tensor | None,
    rejected_lengths: Tensor | None,
    *,
    objective: str,
    needs_reference: bool,
    needs_lengths: bool,
) -> None:
    if policy_chosen_logps.dim() != 1:
        raise ValueError(
            f"{objective}: policy_chosen_logps must have shape [B], got {tuple(policy_chosen_logps.shape)}"
        )
    shape = policy_chosen_logps.shape
    named = {
        "policy_rejected_logps": policy_rejected_logps,
        "reference_chosen_logps": reference_chosen_logps,
        "reference_rejected_logps": reference_rejected_logps,
        "chosen_lengths": chosen_lengths,
        "rejected_lengths": rejected_lengths,
    }
    for arg, value in named.items():
        if value is None:
            if arg.startswith("reference") and needs_reference:
                raise ValueError(f"{objective} needs reference log-probs, got {arg}=None")
            if arg.endswith("lengths") and needs_lengths:
                raise ValueError(f"{objective} with length normalisation needs response lengths, got {arg}=None")
            continue
        if value.shape != shape:
            raise ValueError(
                f"{objective}: {arg} must have the shape of policy_chosen_logps {tuple(shape)}, "
                f"got {tuple(value.shape)}"
            )


def _check_positive(objective: str, name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{objective}: {name} must be > 0, got {value!r}")


def _per_token(logps: Tensor, lengths: Tensor) -> Tensor:
    """``logps / |y|``; zero-length responses (sum 0) stay 0."""
    return logps / lengths.to(logps.dtype).clamp(min=1)


def _at_least_fp32(t: Tensor) -> Tensor:
    """fp16/bf16 → fp32; fp32 and fp64 as they are."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _log_ratios(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    chosen_lengths: Tensor | None,
    rejected_lengths: Tensor | None,
    length_normalize: bool,
) -> tuple[Tensor, Tensor]:
    """``(ρ_w, ρ_l)``, each ``[B]``, per-token means when ``length_normalize``; in fp32 (at least) whatever the
    inputs' dtype (bf16 log-probs would lose the ratio's digits, and every exponential of the DIL losses is taken
    of it)."""
    pc, pr, rc, rr = (_at_least_fp32(t) for t in (policy_chosen_logps, policy_rejected_logps,
                                                 reference_chosen_logps, reference_rejected_logps))
    rho_w, rho_l = pc - rc, pr - rr
    if length_normalize:
        assert chosen_lengths is not None and rejected_lengths is not None
        rho_w, rho_l = _per_token(rho_w, chosen_lengths), _per_token(rho_l, rejected_lengths)
    return rho_w, rho_l


def _pair_metrics(
    losses: Tensor,
    reward_chosen: Tensor,
    reward_rejected: Tensor,
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
) -> Metrics:
    reward_chosen, reward_rejected = reward_chosen.detach(), reward_rejected.detach()
    return {
        "loss": losses.detach().mean(),
        "rewards/chosen": reward_chosen.mean(),
        "rewards/rejected": reward_rejected.mean(),
        "rewards/margin": (reward_chosen - reward_rejected).mean(),
        "accuracy": (reward_chosen > reward_rejected).to(reward_chosen.dtype).mean(),
        "logps/chosen": policy_chosen_logps.detach().mean(),
        "logps/rejected": policy_rejected_logps.detach().mean(),
    }


def _ratio_metrics(rho_w: Tensor, rho_l: Tensor, clamped: Tensor) -> Metrics:
    """DIL extras: the mean log ratios before β, and the fraction of pairs where the overflow guard acted."""
    return {
        "ratio/chosen_log": rho_w.detach().mean(),
        "ratio/rejected_log": rho_l.detach().mean(),
        "ratio/clamped": clamped.detach().to(rho_w.dtype).mean(),
    }


def _checked_log_ratios(
    objective: str,
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor | None,
    reference_rejected_logps: Tensor | None,
    chosen_lengths: Tensor | None,
    rejected_lengths: Tensor | None,
    beta: float,
    length_normalize: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Shape/option checks, then ``(ρ_w, ρ_l, β·ρ_w, β·ρ_l)`` for the reference-based objectives."""
    _check_pair_shapes(
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        chosen_lengths,
        rejected_lengths,
        objective=objective,
        needs_reference=True,
        needs_lengths=length_normalize,
    )
    _check_positive(objective, "beta", beta)
    assert reference_chosen_logps is not None and reference_rejected_logps is not None
    rho_w, rho_l = _log_ratios(
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        chosen_lengths,
        rejected_lengths,
        length_normalize,
    )
    return rho_w, rho_l, beta * rho_w, beta * rho_l


# ------------------------------------------------------------------------------- reference-based baselines
def dpo(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    *,
    beta: float = 0.1,
    length_normalize: bool = False,
    label_smoothing: float = 0.0,
    **_: object,
) -> tuple[Tensor, Metrics]:
    """Direct Preference Optimisation (Rafailov et al., NeurIPS 2023), with conservative DPO smoothing.

        ℓ = (1 − ε)·(−log σ(β(ρ_w − ρ_l))) + ε·(−log σ(−β(ρ_w − ρ_l)))

    ``ε = label_smoothing`` (cDPO, Mitchell 2023; 0 gives plain DPO). In DIL's terms this is the CPC/InfoNCE
    density-ratio estimator with one negative.

    Args:
      policy_chosen_logps: ``[B]`` log π_θ(y_w|x), summed over response tokens.
      policy_rejected_logps: ``[B]`` log π_θ(y_l|x).
      reference_chosen_logps: ``[B]`` log π_ref(y_w|x).
      reference_rejected_logps: ``[B]`` log π_ref(y_l|x).
      chosen_lengths: ``[B]`` |y_w| (needed only with ``length_normalize``).
      rejected_lengths: ``[B]`` |y_l| (needed only with ``length_normalize``).
      beta: inverse temperature β > 0 (the KL weight of the RLHF objective).
      length_normalize: use per-token mean log ratios (the DIL code's DPO baseline) instead of sums.
      label_smoothing: ε in [0, 0.5), the assumed probability that a preference label is flipped.

    Returns:
      ``(losses [B], metrics)``; ``rewards/*`` are β·ρ.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"dpo: label_smoothing must be in [0, 0.5), got {label_smoothing!r}")
    _, _, reward_chosen, reward_rejected = _checked_log_ratios(
        "dpo",
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        chosen_lengths,
        rejected_lengths,
        beta,
        length_normalize,
    )
    logits = reward_chosen - reward_rejected
    losses = -F.logsigmoid(logits)
    if label_smoothing:
        losses = (1.0 - label_smoothing) * losses - label_smoothing * F.logsigmoid(-logits)
    metrics = _pair_metrics(losses, reward_chosen, reward_rejected, policy_chosen_logps, policy_rejected_logps)
    return losses, metrics


def ipo(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    *,
    beta: float = 0.1,
    length_normalize: bool = False,
    **_: object,
) -> tuple[Tensor, Metrics]:
    """Identity Preference Optimisation (Azar et al., AISTATS 2024, "A General Theoretical Paradigm…").

        ℓ = (ρ_w − ρ_l − 1/(2β))²

    With ``length_normalize`` each ρ is divided by its response's token count (TRL's IPO behaviour).

    Args:
      policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps: ``[B]``
        summed response log-probs.
      chosen_lengths, rejected_lengths: ``[B]`` token counts (needed only with ``length_normalize``).
      beta: regularisation β > 0; the target margin is 1/(2β) (the paper's τ).
      length_normalize: per-token mean log ratios (TRL) instead of sums (the paper's text).

    Returns:
      ``(losses [B], metrics)``; ``rewards/*`` are β·ρ.
    """
    rho_w, rho_l, reward_chosen, reward_rejected = _checked_log_ratios(
        "ipo",
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        chosen_lengths,
        rejected_lengths,
        beta,
        length_normalize,
    )
    losses = (rho_w - rho_l - 1.0 / (2.0 * beta)) ** 2
    metrics = _pair_metrics(losses, reward_chosen, reward_rejected, policy_chosen_logps, policy_rejected_logps)
    return losses, metrics


def hinge(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    *,
    beta: float = 0.1,
    length_normalize: bool = False,
    **_: object,
) -> tuple[Tensor, Metrics]:
    """Hinge / SLiC calibration loss (Zhao et al., 2023, "SLiC-HF"; the form of TRL's ``hinge``).

        ℓ = max(0, 1 − β(ρ_w − ρ_l))

    Args:
      policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps: ``[B]``
        summed response log-probs.
      chosen_lengths, rejected_lengths: ``[B]`` token counts (needed only with ``length_normalize``).
      beta: β > 0; the margin in log-ratio units is 1/β.
      length_normalize: per-token mean log ratios instead of sums.

    Returns:
      ``(losses [B], metrics)``; ``rewards/*`` are β·ρ.
    """
    _, _, reward_chosen, reward_rejected = _checked_log_ratios(
        "hinge",
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        chosen_lengths,
        rejected_lengths,
        beta,
        length_normalize,
    )
    losses = torch.relu(1.0 - (reward_chosen - reward_rejected))
    metrics = _pair_metrics(losses, reward_chosen, reward_rejected, policy_chosen_logps, policy_rejected_logps)
    return losses, metrics


def simpo(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor | None = None,
    reference_rejected_logps: Tensor | None = None,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    *,
    beta: float = 2.0,
    length_normalize: bool = True,
    gamma: float = 0.5,
    **_: object,
) -> tuple[Tensor, Metrics]:
    """SimPO, reference-free with a target margin (Meng, Xia & Chen, NeurIPS 2024).

        ℓ = −log σ(β·log π(y_w)/|y_w| − β·log π(y_l)/|y_l| − γ)

    Always length-normalised (``length_normalize`` is accepted for a uniform signature and ignored); the
    reference log-probs are ignored and may be None. Defaults β = 2, γ = 0.5 (the paper's γ/β = 0.25 with
    β = 2). The SimPO code's ``gamma_beta_ratio`` corresponds to ``gamma = beta * gamma_beta_ratio``.

    Args:
      policy_chosen_logps, policy_rejected_logps: ``[B]`` summed response log-probs.
      reference_chosen_logps, reference_rejected_logps: ignored (may be None).
      chosen_lengths, rejected_lengths: ``[B]`` response token counts (required).
      beta: reward scale β > 0.
      gamma: target reward margin γ.

    Returns:
      ``(losses [B], metrics)``; ``rewards/*`` are β·log π(y)/|y|.
    """
    _check_pair_shapes(
        policy_chosen_logps,
        policy_rejected_logps,
        None,
        None,
        chosen_lengths,
        rejected_lengths,
        objective="simpo",
        needs_reference=False,
        needs_lengths=True,
    )
    _check_positive("simpo", "beta", beta)
    assert chosen_lengths is not None and rejected_lengths is not None
    reward_chosen = beta * _per_token(policy_chosen_logps, chosen_lengths)
    reward_rejected = beta * _per_token(policy_rejected_logps, rejected_lengths)
    losses = -F.logsigmoid(reward_chosen - reward_rejected - gamma)
    metrics = _pair_metrics(losses, reward_chosen, reward_rejected, policy_chosen_logps, policy_rejected_logps)
    return losses, metrics


# ---------------------------------------------------------------------------------------------------- DIL
def dil_lsif(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    *,
    beta: float = 1.0,
    length_normalize: bool = True,
    max_log_ratio: float = 20.0,
    **_: object,
) -> tuple[Tensor, Metrics]:
    """DIL with least-squares importance fitting, LSIF (Xiao et al., ICLR 2025, "On a Connection Between
    Imitation Learning and RLHF"); Bregman generator f(t) = (t − 1)²/2.

        ℓ = −exp(ρ'_w) + ½·exp(2ρ'_l),   ρ' = β·ρ

    The loss is unbounded below in ρ_w. Overflow guard: ρ' is clamped to at most ``max_log_ratio`` before
    the exponential, so the loss stays finite (exp(2·20) ≈ 2.4e17 fits in fp32 and bf16); beyond the clamp
    the gradient of that term is 0 and ``ratio/clamped`` reports the fraction of affected pairs.
    Length normalisation is on by default (the official code's behaviour, and what keeps exp(ρ) in range).

    Args:
      policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps: ``[B]``
        summed response log-probs.
      chosen_lengths, rejected_lengths: ``[B]`` token counts (needed with ``length_normalize``).
      beta: temperature β > 0 on ρ (the DIL code runs with β = 1).
      length_normalize: per-token mean log ratios (default, the DIL code) instead of sums.
      max_log_ratio: upper clamp on ρ' before exp.

    Returns:
      ``(losses [B], metrics)``; ``rewards/*`` are ρ' = β·ρ; extras ``ratio/chosen_log``,
      ``ratio/rejected_log`` (mean ρ before β) and ``ratio/clamped``.
    """
    rho_w, rho_l, scaled_w, scaled_l = _checked_log_ratios(
        "dil_lsif",
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        chosen_lengths,
        rejected_lengths,
        beta,
        length_normalize,
    )
    r_w = torch.exp(scaled_w.clamp(max=max_log_ratio))
    r_l = torch.exp(scaled_l.clamp(max=max_log_ratio))
    losses = -r_w + 0.5 * r_l**2
    metrics = _pair_metrics(losses, scaled_w, scaled_l, policy_chosen_logps, policy_rejected_logps)
    metrics.update(_ratio_metrics(rho_w, rho_l, (scaled_w > max_log_ratio) | (scaled_l > max_log_ratio)))
    return losses, metrics


def dil_ukl(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    *,
    beta: float = 1.0,
    length_normalize: bool = True,
    max_log_ratio: float = 20.0,
    **_: object,
) -> tuple[Tensor, Metrics]:
    """DIL with the unnormalised KL (KLIEP-like) estimator (Xiao et al., ICLR 2025); f(t) = t log t − t.

        ℓ = −ρ'_w + exp(ρ'_l),   ρ' = β·ρ

    The text's formula is used (the official code drops the constant log π_ref(y_w), same gradient).
    Overflow guard: ρ'_l is clamped to at most ``max_log_ratio`` inside the exponential (see ``dil_lsif``).

    Args:
      policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps: ``[B]``
        summed response log-probs.
      chosen_lengths, rejected_lengths: ``[B]`` token counts (needed with ``length_normalize``).
      beta: temperature β > 0 on ρ (default 1, as the DIL code).
      length_normalize: per-token mean log ratios (default) instead of sums.
      max_log_ratio: upper clamp on ρ'_l before exp.

    Returns:
      ``(losses [B], metrics)``; ``rewards/*`` are ρ' = β·ρ; DIL extras as ``dil_lsif``.
    """
    rho_w, rho_l, scaled_w, scaled_l = _checked_log_ratios(
        "dil_ukl",
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        chosen_lengths,
        rejected_lengths,
        beta,
        length_normalize,
    )
    losses = -scaled_w + torch.exp(scaled_l.clamp(max=max_log_ratio))
    metrics = _pair_metrics(losses, scaled_w, scaled_l, policy_chosen_logps, policy_rejected_logps)
    metrics.update(_ratio_metrics(rho_w, rho_l, scaled_l > max_log_ratio))  # only ρ'_l enters an exp
    return losses, metrics


def dil_bce(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    *,
    beta: float = 1.0,
    length_normalize: bool = True,
    **_: object,
) -> tuple[Tensor, Metrics]:
    """DIL with the binary cross-entropy (logistic) ratio estimator (Xiao et al., ICLR 2025);
    f(t) = t log t − (1 + t) log(1 + t). With demonstrations as chosen this is GSIL.

        ℓ = −log σ(ρ'_w) − log σ(−ρ'_l),   ρ' = β·ρ

    Numerically safe for any ρ (log-sigmoid).

    Args:
      policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps: ``[B]``
        summed response log-probs.
      chosen_lengths, rejected_lengths: ``[B]`` token counts (needed with ``length_normalize``).
      beta: temperature β > 0 on ρ (default 1, as the DIL code).
      length_normalize: per-token mean log ratios (default) instead of sums.

    Returns:
      ``(losses [B], metrics)``; ``rewards/*`` are ρ' = β·ρ; extras ``ratio/chosen_log``,
      ``ratio/rejected_log``.
    """
    rho_w, rho_l, scaled_w, scaled_l = _checked_log_ratios(
        "dil_bce",
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        chosen_lengths,
        rejected_lengths,
        beta,
        length_normalize,
    )
    losses = -F.logsigmoid(scaled_w) - F.logsigmoid(-scaled_l)
    metrics = _pair_metrics(losses, scaled_w, scaled_l, policy_chosen_logps, policy_rejected_logps)
    metrics["ratio/chosen_log"] = rho_w.detach().mean()
    metrics["ratio/rejected_log"] = rho_l.detach().mean()
    return losses, metrics


# ----------------------------------------------------------------------------------------- generic Bregman
def lsif_generator(t: Tensor) -> Tensor:
    """f(t) = (t − 1)²/2 (LSIF; its Bregman loss is ``dil_lsif`` + ½)."""
    return 0.5 * (t - 1.0) ** 2


def ukl_generator(t: Tensor) -> Tensor:
    """f(t) = t log t − t (unnormalised KL; its Bregman loss is ``dil_ukl``)."""
    return t * torch.log(t) - t


def bce_generator(t: Tensor) -> Tensor:
    """f(t) = t log t − (1 + t) log(1 + t) (logistic; its Bregman loss is ``dil_bce``)."""
    return t * torch.log(t) - (1.0 + t) * torch.log1p(t)


BUILTIN_GENERATORS: dict[str, Generator] = {
    "lsif": lsif_generator,
    "ukl": ukl_generator,
    "bce": bce_generator,
}


def load_generator(spec: str) -> Generator:
    """Resolve a Bregman generator from ``"package.module:function"`` (or a built-in name: lsif, ukl, bce).

    Raises ValueError with a message that says what is wrong: malformed spec, module not importable,
    attribute missing, or not callable.
    """
    if not isinstance(spec, str):
        raise ValueError(f"a Bregman generator is given as 'package.module:function', got {spec!r}")
    if spec in BUILTIN_GENERATORS:
        return BUILTIN_GENERATORS[spec]
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(
            f"bregman generator {spec!r}: expected 'package.module:function' "
            f"(or a built-in: {', '.join(sorted(BUILTIN_GENERATORS))})"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ValueError(
            f"bregman generator {spec!r}: module {module_name!r} not found ({e}); is it installed or on PYTHONPATH?"
        ) from e
    except Exception as e:  # a broken user module: say which, keep the cause
        raise ValueError(f"bregman generator {spec!r}: importing {module_name!r} failed: {e!r}") from e
    obj: object = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"bregman generator {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(
            f"bregman generator {spec!r}: {attr!r} is a {type(obj).__name__}, not a callable f(t: Tensor) -> Tensor"
        )
    return obj  # type: ignore[return-value]


def _elementwise_derivative(f: Generator, t: Tensor) -> Tensor:
    """f'(t) for an elementwise f, by autograd; differentiable (create_graph) when t is part of a graph."""
    if t.requires_grad and torch.is_grad_enabled():
        (grad,) = torch.autograd.grad(f(t).sum(), t, create_graph=True)
        return grad
    # No graph to extend (evaluation, no_grad or inference_mode): differentiate a detached leaf.
    with torch.inference_mode(False), torch.enable_grad():
        leaf = t.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(f(leaf).sum(), leaf)
    return grad.detach()


def bregman(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    *,
    generator: Generator | str | None = None,
    beta: float = 1.0,
    length_normalize: bool = True,
    max_log_ratio: float = 20.0,
    **_: object,
) -> tuple[Tensor, Metrics]:
    """DIL with any Bregman density-ratio estimator, from a convex generator f (Xiao et al., ICLR 2025;
    Sugiyama, Suzuki & Kanamori 2012, "Density-ratio matching under the Bregman divergence").

        ℓ = [f'(r_l)·r_l − f(r_l)] − f'(r_w),   r = exp(ρ'),  ρ' = β·ρ

    (chosen responses are the numerator samples, rejected ones the denominator samples). f' is obtained by
    autograd with ``create_graph=True``, so the loss is differentiable w.r.t. the log-probs. f must be a
    torch-differentiable, elementwise function ``f(t: Tensor) -> Tensor``. LSIF's f gives ``dil_lsif`` + ½,
    UKL's and BCE's give ``dil_ukl`` and ``dil_bce`` exactly. Overflow guard: ρ' is clamped to at most
    ``max_log_ratio`` before exp (as in ``dil_lsif``).

    Args:
      policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps: ``[B]``
        summed response log-probs.
      chosen_lengths, rejected_lengths: ``[B]`` token counts (needed with ``length_normalize``).
      generator: f, a callable or a ``"package.module:function"`` string (or ``lsif``/``ukl``/``bce``).
      beta: temperature β > 0 on ρ.
      length_normalize: per-token mean log ratios (default) instead of sums.
      max_log_ratio: upper clamp on ρ' before exp.

    Returns:
      ``(losses [B], metrics)``; ``rewards/*`` are ρ' = β·ρ; DIL extras as ``dil_lsif``.
    """
    if generator is None:
        raise ValueError("bregman needs a generator: a callable f(t) or 'package.module:function'")
    f = load_generator(generator) if isinstance(generator, str) else generator
    rho_w, rho_l, scaled_w, scaled_l = _checked_log_ratios(
        "bregman",
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        chosen_lengths,
        rejected_lengths,
        beta,
        length_normalize,
    )
    r_w = torch.exp(scaled_w.clamp(max=max_log_ratio))
    r_l = torch.exp(scaled_l.clamp(max=max_log_ratio))
    losses = (_elementwise_derivative(f, r_l) * r_l - f(r_l)) - _elementwise_derivative(f, r_w)
    metrics = _pair_metrics(losses, scaled_w, scaled_l, policy_chosen_logps, policy_rejected_logps)
    metrics.update(_ratio_metrics(rho_w, rho_l, (scaled_w > max_log_ratio) | (scaled_l > max_log_ratio)))
    return losses, metrics


def make_bregman(f: Generator, name: str | None = None) -> Callable[..., tuple[Tensor, Metrics]]:
    """A pair objective (the common signature) from a convex generator ``f``; see `bregman`."""
    if not callable(f):
        raise ValueError(f"make_bregman: f must be a callable f(t: Tensor) -> Tensor, got {type(f).__name__}")

    def objective(
        policy_chosen_logps: Tensor,
        policy_rejected_logps: Tensor,
        reference_chosen_logps: Tensor,
        reference_rejected_logps: Tensor,
        chosen_lengths: Tensor | None = None,
        rejected_lengths: Tensor | None = None,
        *,
        beta: float = 1.0,
        length_normalize: bool = True,
        max_log_ratio: float = 20.0,
        **_: object,
    ) -> tuple[Tensor, Metrics]:
        return bregman(
            policy_chosen_logps,
            policy_rejected_logps,
            reference_chosen_logps,
            reference_rejected_logps,
            chosen_lengths,
            rejected_lengths,
            generator=f,
            beta=beta,
            length_normalize=length_normalize,
            max_log_ratio=max_log_ratio,
        )

    label = name or getattr(f, "__name__", "f")
    objective.__name__ = objective.__qualname__ = f"bregman_{label}" if name is None else label
    objective.__doc__ = f"Bregman density-ratio DIL objective with generator {label}.\n\n" + (
        inspect.getdoc(bregman) or ""
    )
    return objective
