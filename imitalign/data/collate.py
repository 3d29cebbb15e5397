"""Tokenised examples to batches (docs/contracts.md, "Batches").

``collate_pairs`` and ``collate_demos`` right-pad ``prompt_ids + response_ids`` rows to the longest row
(optionally rounded up to a multiple of ``pad_to_multiple_of``) and return

- ``input_ids [N, T]`` long (padding is ``pad_id``), ``attention_mask [N, T]`` long (1 on real tokens),
- ``response_mask [N, T]`` bool, True where the token *at that position* is a response token, so the loss
  positions are ``response_mask[:, 1:]`` against logits ``[:, :-1]``.

For pairs ``N = 2B``: rows ``0..B-1`` are prompt + chosen, rows ``B..2B-1`` prompt + rejected of the same
pairs, in the same order. ``collate_prompts`` LEFT-pads prompts for generation (``input_ids``,
``attention_mask``), so that every row's last position is its last prompt token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from imitalign.data.tokenize import TokenizedDemo, TokenizedPair, TokenizedPrompt


def pad_id_for(tokenizer: Any) -> int:
    """The id to pad with: the tokenizer's pad token, else its eos token (masked out either way)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad token nor an eos token to pad with")
    return int(pad)


def _width(lengths: list[int], pad_to_multiple_of: int | None) -> int:
    width = max(lengths)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    return width


def _collate(rows: list[tuple[list[int], list[int]]], pad_id: int, pad_to_multiple_of: int | None) -> dict:
    if not rows:
        raise ValueError("cannot collate an empty batch")
    width = _width([len(p) + len(r) for p, r in rows], pad_to_multiple_of)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    response_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (prompt, response) in enumerate(rows):
        n_p, n = len(prompt), len(prompt) + len(response)
        input_ids[i, :n] = torch.tensor(prompt + response, dtype=torch.long)
        attention_mask[i, :n] = 1
        response_mask[i, n_p:n] = True
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}


def collate_pairs(
    items: Sequence[TokenizedPair], pad_id: int, pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """``[2B, T]`` batch: chosen rows first, then the rejected rows of the same pairs."""
    rows = [(it.prompt_ids, it.chosen_ids) for it in items] + [(it.prompt_ids, it.rejected_ids) for it in items]
    return _collate(rows, pad_id, pad_to_multiple_of)


def collate_demos(
    items: Sequence[TokenizedDemo], pad_id: int, pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """``[B, T]`` batch of prompt + response rows."""
    return _collate([(it.prompt_ids, it.response_ids) for it in items], pad_id, pad_to_multiple_of)


def collate_prompts(
    items: Sequence[TokenizedPrompt | TokenizedPair | TokenizedDemo], pad_id: int, pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """``[B, T]`` LEFT-padded prompts for generation: ``input_ids``, ``attention_mask``."""
    if not items:
        raise ValueError("cannot collate an empty batch")
    width = _width([len(it.prompt_ids) for it in items], pad_to_multiple_of)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(items), width), dtype=torch.long)
    for i, it in enumerate(items):
        n = len(it.prompt_ids)
        if n:
            input_ids[i, width - n :] = torch.tensor(it.prompt_ids, dtype=torch.long)
            attention_mask[i, width - n :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}
