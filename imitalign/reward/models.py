"""Model-based reward kinds: ``bradley_terry`` / ``classifier`` (a sequence classifier's scalar) and
``implicit`` (a policy's log-ratio against its reference).

Rows are rendered and tokenised by the data layer exactly as for training (``chat_template``,
``system_prompt``, ``max_length`` of the :class:`~imitalign.reward.base.RewardConfig`; the response gets its
EOS), collated right-padded, sorted by length for batching, and scored in ``batch_size`` rows at a time.

- ``bradley_terry`` / ``classifier``: ``r(x, y) = s(x, y)``, the head of a :class:`~imitalign.model.score.ScoreModel`
  at the last real token (for a discriminator trained with ``discriminator_bce`` this is the logit
  ``log D − log(1 − D)``, AfD's reward).
- ``implicit``: ``r(x, y) = β · (log π(y|x) − log π_ref(y|x))``, sequence log-probs (sum over response tokens,
  EOS included); with ``length_normalize`` the log-ratio is divided by the response's token count |y|.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from imitalign.config import ModelConfig
from imitalign.data.collate import collate_demos, pad_id_for
from imitalign.data.records import DemonstrationRecord
from imitalign.data.templates import Renderer
from imitalign.data.tokenize import TokenizedDemo, tokenize_records
from imitalign.reward.base import RewardConfig, RewardError, register_reward_kind


def resolve_device(name: str) -> torch.device:
    """``"auto"``: the GPU when there is one — under ``accelerate launch`` this process's own (``LOCAL_RANK``), so
    that a scoring job of N processes puts one copy of the reward model on each GPU — else the CPU; any other name
    as ``torch.device`` reads it."""
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return torch.device(name)


def _prompt_messages(prompt: Any, where: str) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
        return [{"role": m["role"], "content": m["content"]} for m in prompt]
    raise RewardError(f"{where}: 'prompt' must be a string or a list of messages, got {type(prompt).__name__}")


def tokenize_rows(
    rows: Sequence[dict[str, Any]], tokenizer: Any, renderer: Renderer, max_length: int
) -> list[TokenizedDemo]:
    """``{"prompt", "response"}`` rows as demonstrations (prompt ids + response ids + EOS), one per row, in
    order, truncated as in training (prompt cut from the left, response from the right); a row left with no
    response token is a :class:`RewardError` (every row must get a score)."""
    records = []
    for i, row in enumerate(rows):
        if "prompt" not in row or "response" not in row:
            raise RewardError(f"row {i}: a scored row needs 'prompt' and 'response', has {', '.join(map(str, row))}")
        response = row["response"]
        if not isinstance(response, str):
            raise RewardError(f"row {i}: 'response' must be a string, got {type(response).__name__}")
        records.append(DemonstrationRecord(_prompt_messages(row["prompt"], f"row {i}"), response, f"row {i}"))
    out = []
    for rec, (example, note) in zip(
        records, tokenize_records(records, "demonstration", tokenizer, renderer, max_length), strict=True
    ):
        if example is None:
            raise RewardError(
                f"{rec.source}: cannot score it within max_length {max_length} ({note.dropped}; prompt "
                f"{note.prompt_tokens} tokens); raise reward.max_length"
            )
        out.append(example)  # type: ignore[arg-type]
    return out


def _batches(items: Sequence[TokenizedDemo], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(items)), key=lambda i: -(len(items[i].prompt_ids) + len(items[i].response_ids)))
    return [order[k : k + batch_size] for k in range(0, len(order), batch_size)]


class TokenizingSource:
    """Base of the model-based reward sources: loads the tokenizer of ``tokenizer_source`` and the renderer of
    ``cfg`` (``chat_template``, ``system_prompt``), resolves ``cfg.device``, and implements ``score`` —
    rows tokenised as in training (:func:`tokenize_rows`), sorted by length, scored ``cfg.batch_size`` at a
    time by ``_score_items`` (which a subclass defines), returned in row order."""

    def __init__(self, cfg: RewardConfig, tokenizer_source: str) -> None:
        from imitalign.model.load import load_tokenizer

        self.cfg = cfg
        self.name = cfg.display_name()
        self.device = resolve_device(cfg.device)
        self.tokenizer = load_tokenizer(ModelConfig(name_or_path=tokenizer_source))
        self.renderer = Renderer(self.tokenizer, cfg.chat_template, cfg.system_prompt)
        self.pad_id = pad_id_for(self.tokenizer)

    def collate(self, items: list[TokenizedDemo]) -> dict[str, torch.Tensor]:
        """A right-padded batch of ``items`` (:func:`imitalign.data.collate.collate_demos`) on ``self.device``."""
        return {k: v.to(self.device) for k, v in collate_demos(items, self.pad_id).items()}

    def _score_items(self, items: list[TokenizedDemo]) -> list[float]:
        raise NotImplementedError

    @torch.no_grad()
    def score(self, rows: list[dict[str, Any]]) -> list[float]:
        items = tokenize_rows(rows, self.tokenizer, self.renderer, self.cfg.max_length)
        out = [0.0] * len(items)
        for idx in _batches(items, self.cfg.batch_size):
            for i, v in zip(idx, self._score_items([items[i] for i in idx]), strict=True):
                out[i] = v
        return out


class SequenceClassifierReward(TokenizingSource):
    """``r(x, y) = s(x, y)`` of a saved sequence classifier (``bradley_terry`` or ``classifier`` training)."""

    def __init__(self, cfg: RewardConfig) -> None:
        from imitalign.model.score import ScoreModel, load_score_lm

        if not cfg.path:
            raise RewardError(f"reward kind {cfg.kind!r} needs reward.path (the reward model's folder)")
        super().__init__(cfg, cfg.path)
        lm = load_score_lm(ModelConfig(name_or_path=cfg.path, dtype=cfg.dtype), self.tokenizer, seed=0)
        self.model = ScoreModel(lm).to(self.device).eval()

    def _score_items(self, items: list[TokenizedDemo]) -> list[float]:
        batch = self.collate(items)
        return self.model(batch["input_ids"], batch["attention_mask"]).tolist()


def load_scoring_lm(path: str, dtype: str, device: torch.device) -> nn.Module:
    """A saved causal LM to score with (``AutoModelForCausalLM.from_pretrained``): ``dtype`` by name, moved to
    ``device``, in eval mode."""
    from transformers import AutoModelForCausalLM

    from imitalign.model.load import from_pretrained, resolve_dtype

    return from_pretrained(AutoModelForCausalLM, path, dtype=resolve_dtype(dtype)).to(device).eval()


class ImplicitReward(TokenizingSource):
    """``r(x, y) = β·(log π(y|x) − log π_ref(y|x))`` (÷ |y| with ``length_normalize``)."""

    def __init__(self, cfg: RewardConfig) -> None:
        if not cfg.path or not cfg.reference:
            raise RewardError("reward kind 'implicit' needs reward.path (the policy) and reward.reference (π_ref)")
        super().__init__(cfg, cfg.path)
        self.policy = load_scoring_lm(cfg.path, cfg.dtype, self.device)
        self.reference = load_scoring_lm(cfg.reference, cfg.dtype, self.device)

    def _score_items(self, items: list[TokenizedDemo]) -> list[float]:
        from imitalign.model.logprobs import batch_logprobs

        batch = self.collate(items)
        lp = batch_logprobs(self.policy, batch)
        ref = batch_logprobs(self.reference, batch)
        ratio = (lp.logps - ref.logps).float()
        if self.cfg.length_normalize:
            ratio = ratio / lp.n_tokens.clamp(min=1)
        return (self.cfg.beta * ratio).cpu().tolist()


register_reward_kind("bradley_terry", SequenceClassifierReward)
register_reward_kind("classifier", SequenceClassifierReward)
register_reward_kind("implicit", ImplicitReward)
