"""The reward IQLearn recovers, Σ_t log π(a_t|s_t) + V(s_t) − γV(s_{t+1}), on a hand-made logits tensor (V = 0 after
the last response token), through the reward kind ``iqlearn``, and the rank correlations used to compare it."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from imitalign.model.logprobs import LogProbModel, batch_logprobs
from imitalign.reward.iq_reward import logits_reward, ranks, recovered_reward, spearman, within_group_spearman

V = 5


class FixedLogits(nn.Module):
    """A stand-in LM whose logits are a given tensor ``[N, T, V]`` whatever the input."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids: torch.Tensor, **_: object) -> SimpleNamespace:
        return SimpleNamespace(logits=self.logits[:, : input_ids.shape[1]])


def hand_batch() -> dict[str, torch.Tensor]:
    # row 0: prompt 2 tokens, response 3 tokens; row 1: prompt 2 tokens, response 1 token, then 2 padding
    return {
        "input_ids": torch.tensor([[1, 3, 4, 0, 2], [1, 3, 2, 0, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]),
        "response_mask": torch.tensor([[0, 0, 1, 1, 1], [0, 0, 1, 0, 0]], dtype=torch.bool),
    }


def test_recovered_reward_on_hand_made_logits() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, V, generator=g, dtype=torch.float64)
    batch = hand_batch()
    gamma = 0.9
    lp = batch_logprobs(LogProbModel(FixedLogits(logits), full_logits=True), batch, with_values=True)
    got = recovered_reward(lp, gamma)

    def lse(z: torch.Tensor) -> float:
        return float(torch.logsumexp(z, -1))

    def logp(z: torch.Tensor, a: int) -> float:
        return float(torch.log_softmax(z, -1)[a])

    # row 0: logits at positions 1, 2, 3 predict tokens 4, 0, 2; V after the last one is 0
    z = logits[0]
    expected0 = (
        logp(z[1], 4)
        + lse(z[1])
        - gamma * lse(z[2])
        + logp(z[2], 0)
        + lse(z[2])
        - gamma * lse(z[3])
        + logp(z[3], 2)
        + lse(z[3])
        - 0.0
    )
    # row 1: one response token (position 1 predicts token 2); the padding positions' logits are never used
    expected1 = logp(logits[1, 1], 2) + lse(logits[1, 1]) - 0.0
    assert got.tolist() == pytest.approx([expected0, expected1], abs=1e-5)  # the engine works in float32
    # the same as Σ_t Q(s_t, a_t) − γV(s_{t+1}), written without log π
    q_logits = torch.stack([logits[0, 1:4], torch.cat([logits[1, 1:2], torch.zeros(2, V, dtype=torch.float64)])])
    targets = torch.tensor([[4, 0, 2], [2, 0, 0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    assert logits_reward(q_logits, targets, mask, gamma).tolist() == pytest.approx(
        [expected0, expected1], abs=1e-5
    )  # the engine works in float32
    # per token
    per_token = recovered_reward(lp, gamma, length_normalize=True)
    assert per_token.tolist() == pytest.approx([expected0 / 3, expected1 / 1], abs=1e-5)  # the engine works in float32


def test_padding_logits_do_not_leak_into_the_terminal_value() -> None:
    logits = torch.randn(2, 5, V, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    batch = hand_batch()
    base = recovered_reward(
        batch_logprobs(LogProbModel(FixedLogits(logits), full_logits=True), batch, with_values=True)
    )
    junk = logits.clone()
    junk[1, 2:] = 1e4  # positions after row 1's last response token
    again = recovered_reward(batch_logprobs(LogProbModel(FixedLogits(junk), full_logits=True), batch, with_values=True))
    assert torch.equal(base, again)


def test_gamma_one_telescopes_to_logp_plus_first_value() -> None:
    logits = torch.randn(2, 5, V, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    lp = batch_logprobs(LogProbModel(FixedLogits(logits), full_logits=True), hand_batch(), with_values=True)
    assert lp.token_values is not None
    torch.testing.assert_close(recovered_reward(lp, 1.0), lp.logps + lp.token_values[:, 0])


def test_recovered_reward_needs_values_and_a_valid_gamma() -> None:
    lp = batch_logprobs(LogProbModel(FixedLogits(torch.zeros(2, 5, V)), full_logits=True), hand_batch())
    with pytest.raises(ValueError, match="with_values=True"):
        recovered_reward(lp)
    lp = batch_logprobs(
        LogProbModel(FixedLogits(torch.zeros(2, 5, V)), full_logits=True), hand_batch(), with_values=True
    )
    with pytest.raises(ValueError, match="gamma"):
        recovered_reward(lp, 1.5)


def test_iqlearn_reward_kind_matches_the_function_row_by_row(tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    from imitalign.gym.tokenizer import build_tokenizer
    from imitalign.reward import RewardError, load_reward
    from tests.test_afd_rewards import ROWS, save_lm

    path = save_lm(tmp_path / "pi", 3)
    source = load_reward({"kind": "iqlearn", "path": str(path), "chat_template": "none", "options": {"gamma": 0.9}})
    scores = source.score(ROWS)
    tok = build_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    for row, got in zip(ROWS, scores, strict=True):
        p = tok(row["prompt"])["input_ids"]
        r = tok(row["response"])["input_ids"] + [tok.eos_token_id]
        batch = {
            "input_ids": torch.tensor([p + r]),
            "attention_mask": torch.ones(1, len(p) + len(r), dtype=torch.long),
            "response_mask": torch.tensor([[False] * len(p) + [True] * len(r)]),
        }
        with torch.no_grad():
            logits = model(batch["input_ids"]).logits.double()[0, len(p) - 1 : -1]
        expected = logits_reward(logits.unsqueeze(0), torch.tensor([r]), torch.ones(1, len(r), dtype=torch.bool), 0.9)
        assert got == pytest.approx(float(expected[0]), abs=2e-4)
    with pytest.raises(RewardError, match="unknown option"):
        load_reward({"kind": "iqlearn", "path": str(path), "options": {"gama": 0.9}})


def test_ranks_and_spearman() -> None:
    assert ranks([3.0, 1.0, 2.0, 1.0]) == [4.0, 1.5, 3.0, 1.5]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)  # 1 − 6·4/(5·24)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    mean, se, n = within_group_spearman([1, 2, 3, 1, 2, 3], [1, 2, 3, 3, 2, 1], [0, 0, 0, 1, 1, 1])
    assert (mean, n) == (pytest.approx(0.0), 2) and se == pytest.approx(1.0)
