"""The "limit" variant of ``bench_dpo.py``: offline DPO as a plain PyTorch loop, the reference a reader needs
to judge imitalign's ratios (issue 16).

What a careful engineer writes in ~100 lines without a library: the same token ids and the same batches as
imitalign (``imitalign.train.batching.epoch_order``), reference log-probs precomputed once with the initial
weights (``no_grad``, batches sorted by length), then one epoch of

    padded batch [2B, T] → backbone (attention mask) → hidden states of the response positions only
    → LM head → fp32 log-softmax → gather → per-sequence sums → DPO sigmoid loss → backward → clip → AdamW

No packing, no fused head, no accelerate, no logging: one host sync per step (the loss, read at the end).
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F


def pad_batch(items: list, pad_id: int) -> dict[str, torch.Tensor]:
    """``[2B, T]`` right-padded rows: chosen of every pair, then rejected; mask of the response tokens."""
    rows = [(it.prompt_ids, it.chosen_ids) for it in items] + [(it.prompt_ids, it.rejected_ids) for it in items]
    width = max(len(p) + len(r) for p, r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    resp = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (p, r) in enumerate(rows):
        ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        attn[i, : len(p) + len(r)] = 1
        resp[i, len(p) : len(p) + len(r)] = True
    return {"input_ids": ids, "attention_mask": attn, "response_mask": resp}


def sequence_logps(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of response-token log-probs per row; the head runs on response positions only."""
    hidden = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    mask = batch["response_mask"][:, 1:]  # position i predicts token i + 1
    h = hidden[:, :-1][mask]  # [M, H]
    logits = model.lm_head(h).float()
    targets = batch["input_ids"][:, 1:][mask]
    token_logps = logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    row = torch.arange(mask.shape[0]).unsqueeze(1).expand_as(mask)[mask]
    return torch.zeros(mask.shape[0], dtype=torch.float32).index_add_(0, row, token_logps)


def dpo_loss(pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor, beta: float) -> torch.Tensor:
    return -F.logsigmoid(beta * ((pc - rc) - (pr - rr))).mean()


@torch.no_grad()
def reference_logps(model: Any, items: list, pad_id: int, batch_size: int) -> torch.Tensor:
    """``[n, 2]`` (chosen, rejected) log-probs under the initial weights, batches of similar length."""
    model.eval()
    out = torch.zeros(len(items), 2)
    order = sorted(range(len(items)), key=lambda i: -(len(items[i].prompt_ids) + max(
        len(items[i].chosen_ids), len(items[i].rejected_ids))))
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        logps = sequence_logps(model, pad_batch([items[i] for i in idx], pad_id))
        out[idx, 0], out[idx, 1] = logps[: len(idx)], logps[len(idx) :]
    model.train()
    return out


def train_epoch(
    model: Any, items: list, pad_id: int, hp: dict[str, Any], order: list[int], after_ref: Any = None
) -> dict[str, Any]:
    """Reference pass + one epoch; returns times (wall, CPU), steps and the last loss. ``after_ref()`` is
    called between the two (the benchmark reads the reference pass's peak memory there)."""
    opt = torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=0.0)
    bs, beta = hp["batch_size"], hp["beta"]
    t0, c0 = time.perf_counter(), time.process_time()
    ref = reference_logps(model, items, pad_id, max(bs, 8))
    t_ref = time.perf_counter()
    if after_ref is not None:
        after_ref()
    losses = []
    for s in range(0, len(order), bs):
        idx = order[s : s + bs]
        batch = pad_batch([items[i] for i in idx], pad_id)
        logps = sequence_logps(model, batch)
        b = len(idx)
        loss = dpo_loss(logps[:b], logps[b:], ref[idx, 0], ref[idx, 1], beta)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), hp["max_grad_norm"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    final = float(losses[-1]) if losses else None
    return {
        "epoch_s": time.perf_counter() - t0,
        "ref_s": t_ref - t0,
        "cpu_s": time.process_time() - c0,
        "steps": len(losses),
        "final_loss": final,
    }
