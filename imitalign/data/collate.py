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


# ---------------------------------------------------------------- packing and per-target index tensors


def target_index(
    rows: Sequence[tuple[list[int], list[int]]], row_of: list[int], start_of: list[int], width: int
) -> dict[str, torch.Tensor]:
    """Host-side index tensors of the response targets of ``rows`` (sequence ``s`` placed in row ``row_of[s]``
    from column ``start_of[s]`` of a ``width``-wide batch):

    - ``target_index [M]`` long: flat index ``row * width + column`` of each position whose logits predict a
      response token (that token is at ``target_index + 1``), sequences in order, tokens in order;
    - ``target_seq [M]`` long: the sequence of each target; ``target_pos [M]`` long: its rank in the sequence;
    - ``token_mask [N, L]`` bool: left-aligned, True for the first ``n_s`` entries of sequence ``s``.

    A response token at a sequence's first position has no predicting position and is not a target (as in the
    padded layout, where ``response_mask[:, 1:]`` skips column 0)."""
    counts, idx, seq, pos = [], [], [], []
    for s, (prompt, response) in enumerate(rows):
        first = max(len(prompt), 1)  # the first predicted token of the sequence
        n = len(prompt) + len(response) - first
        base = row_of[s] * width + start_of[s]
        idx.append(torch.arange(base + first - 1, base + first - 1 + n))
        seq.append(torch.full((n,), s, dtype=torch.long))
        pos.append(torch.arange(n))
        counts.append(n)
    width_l = max(counts) if counts else 0
    token_mask = torch.arange(width_l).unsqueeze(0) < torch.tensor(counts).unsqueeze(1)
    return {
        "target_index": torch.cat(idx).long(),
        "target_seq": torch.cat(seq),
        "target_pos": torch.cat(pos).long(),
        "token_mask": token_mask,
    }


def with_target_index(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add the index tensors of :func:`target_index` to a padded batch (one sequence per row), computed on the
    host from ``response_mask``; the engine then needs no boolean-mask indexing on the device."""
    resp = batch["response_mask"]
    width = resp.shape[1]
    rows = []
    for r in range(resp.shape[0]):
        cols = resp[r].nonzero().flatten().tolist()
        n_p = cols[0] if cols else int(batch["attention_mask"][r].sum())
        rows.append((list(range(n_p)), cols))
    out = dict(batch)
    out.update(target_index(rows, list(range(len(rows))), [0] * len(rows), width))
    return out


def pack_rows(lengths: Sequence[int], width: int) -> list[list[int]]:
    """First-fit-decreasing bin packing of sequences (by ``lengths``) into rows of ``width`` tokens: a list of
    rows, each the sequence indices it holds in placement order. Deterministic (ties keep index order)."""
    order = sorted(range(len(lengths)), key=lambda s: (-lengths[s], s))
    rows: list[list[int]] = []
    free: list[int] = []
    for s in order:
        for r, room in enumerate(free):
            if lengths[s] <= room:
                rows[r].append(s)
                free[r] -= lengths[s]
                break
        else:
            if lengths[s] > width:
                raise ValueError(f"a sequence of {lengths[s]} tokens does not fit in rows of {width}")
            rows.append([s])
            free.append(width - lengths[s])
    return rows


def _collate_packed(
    rows: list[tuple[list[int], list[int]]], pad_id: int, row_width: int | None, pad_to_multiple_of: int | None
) -> dict[str, torch.Tensor]:
    if not rows:
        raise ValueError("cannot collate an empty batch")
    lengths = [len(p) + len(r) for p, r in rows]
    width = _width([max(lengths), row_width or 0], pad_to_multiple_of)
    placement = pack_rows(lengths, width)
    n_rows = len(placement)
    if n_rows == len(rows):  # no two sequences share a row: packing saves nothing, the padded layout is as small
        batch = _collate(rows, pad_id, pad_to_multiple_of)
        n = len(rows)
        batch.update(target_index(rows, list(range(n)), [0] * n, batch["input_ids"].shape[1]))
        return batch
    input_ids = torch.full((n_rows, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((n_rows, width), dtype=torch.long)
    attention_mask = torch.zeros((n_rows, width), dtype=torch.long)
    response_mask = torch.zeros((n_rows, width), dtype=torch.bool)
    row_of, start_of = [0] * len(rows), [0] * len(rows)
    for r, members in enumerate(placement):
        col = 0
        for s in members:
            prompt, response = rows[s]
            n = lengths[s]
            row_of[s], start_of[s] = r, col
            input_ids[r, col : col + n] = torch.tensor(prompt + response, dtype=torch.long)
            position_ids[r, col : col + n] = torch.arange(n)
            attention_mask[r, col : col + n] = 1
            response_mask[r, col + max(len(prompt), 1) : col + n] = True
            col += n
        position_ids[r, col:] = torch.arange(width - col)  # the tail is a document of its own (padding)
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "response_mask": response_mask,
        "position_ids": position_ids,
    }
    batch.update(target_index(rows, row_of, start_of, width))
    return batch


def collate_pairs_packed(
    items: Sequence[TokenizedPair], pad_id: int, row_width: int | None = None, pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """Padding-free pairs: the ``2B`` sequences (chosen of pairs ``0..B-1``, then their rejected, as in
    :func:`collate_pairs`) packed first-fit-decreasing into rows of ``row_width`` tokens (default: the longest
    sequence), each sequence whole in one row. Returns the padded keys over the packed ``[R, W]`` rows, with

    - ``position_ids [R, W]`` restarting at 0 at every sequence (the row's unused tail counts from 0 too), which
      makes the model's attention block-diagonal causal: no sequence attends to another;
    - ``attention_mask`` 1 on real tokens (for counting; the engine does not pass it to the model);
    - ``response_mask`` False on a sequence's first token, which has no predicting position in its own sequence;
    - the index tensors of :func:`target_index`, in sequence order ``0..2B-1``, so that per-sequence results come
      back in the row order of :func:`collate_pairs`.

    When packing puts no two sequences in one row (equal lengths, or lengths that do not fit together), it would
    save no token slot: the batch is then the padded one (:func:`collate_pairs` with the index tensors, no
    ``position_ids``) — at most as wide, and the model gets the plain causal attention of a padded batch."""
    rows = [(it.prompt_ids, it.chosen_ids) for it in items] + [(it.prompt_ids, it.rejected_ids) for it in items]
    return _collate_packed(rows, pad_id, row_width, pad_to_multiple_of)


def collate_demos_packed(
    items: Sequence[TokenizedDemo], pad_id: int, row_width: int | None = None, pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """Padding-free demonstrations (see :func:`collate_pairs_packed`); sequences ``0..B-1`` in item order."""
    return _collate_packed([(it.prompt_ids, it.response_ids) for it in items], pad_id, row_width, pad_to_multiple_of)


def padding_stats(batch: dict[str, torch.Tensor]) -> tuple[int, int]:
    """``(real tokens, token slots)`` of a batch: its padded-token fraction is ``1 - real / slots``."""
    return int(batch["attention_mask"].sum()), batch["attention_mask"].numel()
