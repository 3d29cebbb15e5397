"""The reward an LM recovers when read as soft Q-values (IQLearn for language, Wulfmeier et al., NeurIPS 2024;
METHODS.md §4).

With ``Q(s_t, ·)`` = the logits at step ``t`` and ``V(s) = logsumexp_a Q(s, a)``, the implicit per-token reward is
``r_t = Q(s_t, a_t) − γV(s_{t+1}) = log π(a_t|s_t) + V(s_t) − γV(s_{t+1})`` with ``V = 0`` after the last response
token (``imitalign.objectives.implicit_token_rewards``). The sequence reward is its sum,

    R(x, y) = Σ_t [ log π(a_t|s_t) + V(s_t) − γ·V(s_{t+1}) ]          (``length_normalize``: divided by |y|)

With γ = 1 the sum telescopes to ``log π(y|x) + V(s_0)``: within one prompt it ranks responses like the
likelihood, and across prompts the value of the first state ``V(s_0)`` sets the level. An MLE-trained model
leaves ``V`` unconstrained (softmax is shift-invariant), so its ``R`` says little across prompts; IQLearn's
χ² term pins ``r_t`` towards 0 on demonstrations and so gives ``V`` a meaning (the paper: Spearman 0.64 with
ROUGE-1 on TL;DR for IQLearn vs −0.05 for MLE).

Reward kind ``iqlearn`` (:func:`imitalign.reward.load_reward`): ``path`` = the trained policy, ``options.gamma``
(default 1), ``length_normalize``, ``beta`` (a scale, default 1). Values come from the log-prob engine
(``batch_logprobs(..., with_values=True)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from imitalign.model.logprobs import LogProbs, batch_logprobs
from imitalign.objectives.token import implicit_token_rewards
from imitalign.reward.base import RewardConfig, RewardError, register_reward_kind
from imitalign.reward.closed_form import require_causal_lm
from imitalign.reward.models import TokenizingSource, load_scoring_lm


def recovered_reward(lp: LogProbs, gamma: float = 1.0, *, length_normalize: bool = False) -> Tensor:
    """``[N]`` sequence rewards ``Σ_t r_t`` (÷ |y| with ``length_normalize``) from the engine's ``LogProbs``
    (``token_values`` required: compute them with ``with_values=True``)."""
    if lp.token_values is None:
        raise ValueError("recovered_reward needs token values: compute log-probs with with_values=True")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma!r}")
    r_t = implicit_token_rewards(lp.token_logps, lp.token_mask, lp.token_values, gamma)
    total = r_t.sum(dim=-1)
    if length_normalize:
        total = total / lp.n_tokens.clamp(min=1).to(total.dtype)
    return total


class IQReward(TokenizingSource):
    """``r(x, y) = β·Σ_t [log π(a_t|s_t) + V(s_t) − γV(s_{t+1})]`` of a trained policy (module docstring)."""

    def __init__(self, cfg: RewardConfig) -> None:
        if not cfg.path:
            raise RewardError("reward kind 'iqlearn' needs reward.path (the trained policy's folder)")
        unknown = sorted(set(cfg.options) - {"gamma"})
        if unknown:
            raise RewardError(f"reward kind 'iqlearn': unknown option(s) {', '.join(unknown)} (accepted: gamma)")
        self.gamma = float(cfg.options.get("gamma", 1.0))
        if not 0.0 <= self.gamma <= 1.0:
            raise RewardError(f"reward kind 'iqlearn': options.gamma must be in [0, 1], got {self.gamma}")
        require_causal_lm(cfg.path, "reward.path", "iqlearn")
        super().__init__(cfg, cfg.path)
        self.policy = load_scoring_lm(cfg.path, cfg.dtype, self.device)

    def _score_items(self, items: list) -> list[float]:
        lp = batch_logprobs(self.policy, self.collate(items), with_values=True)
        reward = recovered_reward(lp, self.gamma, length_normalize=self.cfg.length_normalize)
        return (self.cfg.beta * reward.float()).cpu().tolist()


def build_iq_reward(cfg: RewardConfig) -> IQReward:
    return IQReward(cfg)


register_reward_kind("iqlearn", build_iq_reward)


# ------------------------------------------------------------------------------------------ rank correlation
def ranks(xs: Sequence[float]) -> list[float]:
    """1-based ranks with ties given their average rank."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    out = [0.0] * len(xs)
    k = 0
    while k < len(order):
        j = k
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[k]]:
            j += 1
        for m in range(k, j + 1):
            out[order[m]] = (k + j) / 2 + 1
        k = j + 1
    return out


def pearson(a: Sequence[float], b: Sequence[float]) -> float:
    """Pearson correlation (``nan`` with fewer than 2 points or a constant input)."""
    if len(a) != len(b):
        raise ValueError(f"need equal lengths, got {len(a)} and {len(b)}")
    n = len(a)
    if n < 2:
        return math.nan
    ma, mb = math.fsum(a) / n, math.fsum(b) / n
    cov = math.fsum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True))
    va = math.fsum((x - ma) ** 2 for x in a)
    vb = math.fsum((y - mb) ** 2 for y in b)
    return cov / math.sqrt(va * vb) if va > 0 and vb > 0 else math.nan


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's ρ: the Pearson correlation of the (tie-averaged) ranks."""
    return pearson(ranks(a), ranks(b))


def within_group_spearman(a: Sequence[float], b: Sequence[float], groups: Sequence[Any]) -> tuple[float, float, int]:
    """Mean ± se over groups (e.g. prompts) of Spearman's ρ within each group (groups with < 3 points or a
    constant input are left out); returns ``(mean, se, groups used)``."""
    from imitalign.eval.metrics import mean_se

    by: dict[Any, list[int]] = {}
    for i, g in enumerate(groups):
        by.setdefault(g, []).append(i)
    rhos = []
    for idx in by.values():
        if len(idx) < 3:
            continue
        rho = spearman([a[i] for i in idx], [b[i] for i in idx])
        if not math.isnan(rho):
            rhos.append(rho)
    mean, se = mean_se(rhos)
    return mean, se, len(rhos)


def logits_reward(logits: Tensor, targets: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """Reference implementation on full logits, for checks: ``logits [N, L, V]`` at the positions predicting the
    response tokens ``targets [N, L]`` (``mask [N, L]`` True on response tokens, left-aligned):
    ``Σ_t [z_t[a_t] − γ·logsumexp z_{t+1}]`` with the last term 0 after the last response token — i.e.
    ``Σ_t Q(s_t, a_t) − γ V(s_{t+1})`` written without log π."""
    logits = logits.double()
    q = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    v = torch.logsumexp(logits, dim=-1)
    v_next = torch.zeros_like(v)
    v_next[:, :-1] = torch.where(mask[:, 1:], v[:, 1:], torch.zeros_like(v[:, 1:]))
    return torch.where(mask, q - gamma * v_next, torch.zeros_like(q)).sum(-1)
