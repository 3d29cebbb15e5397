"""The log-prob engine: response-token log-probabilities (and soft values) of a causal LM.

For a row with tokens ``x_0 … x_{T-1}`` the logits at position ``i`` predict ``x_{i+1}``. A response token at
position ``i+1`` gets

    log π(x_{i+1} | x_{≤i}) = z_i[x_{i+1}] − logsumexp(z_i),   V(s) = logsumexp(z_i)

where ``z_i = W_head h_i``. Only the hidden states of positions that predict a response token go through the
LM head (hidden states are sliced *before* the head), which saves the ``[tokens, vocab]`` logits of the
prompt and padding. With ``chunk_tokens`` the head and log-softmax run over chunks of positions under
activation checkpointing, so that the full ``[tokens, vocab]`` logits are never alive at once (forward or
backward); the result is identical to the plain computation.

``LogProbModel`` wraps a ``transformers`` causal LM (or a peft model around one) as an ``nn.Module`` whose
``forward`` returns the per-token tensors. It is what the trainer hands to ``accelerate.prepare``: DDP/FSDP
then wrap a module whose forward is the whole computation, so gradient synchronisation works as usual.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


@dataclass
class LogProbs:
    logps: Tensor  # [N] sum of response-token log-probs
    n_tokens: Tensor  # [N] number of response tokens
    token_logps: Tensor  # [N, L] left-aligned, zero-padded
    token_mask: Tensor  # [N, L] bool
    token_values: Tensor | None = None  # [N, L] V(s_t) = logsumexp of the logits predicting token t


def _causal_lm(model: nn.Module) -> nn.Module:
    """The ``*ForCausalLM`` module inside a peft wrapper (LoRA layers stay injected in it)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _head_logps(hidden: Tensor, head: nn.Module, targets: Tensor) -> tuple[Tensor, Tensor]:
    logits = head(hidden).float()
    values = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - values, values


def head_logps(hidden: Tensor, head: nn.Module, targets: Tensor, chunk_tokens: int | None = None):
    """Log-probs and values of ``targets [M]`` from hidden states ``[M, H]``; chunked when asked."""
    if chunk_tokens is None or hidden.shape[0] <= chunk_tokens:
        return _head_logps(hidden, head, targets)
    outs = [
        checkpoint(_head_logps, h, head, t, use_reentrant=False)
        for h, t in zip(hidden.split(chunk_tokens), targets.split(chunk_tokens), strict=True)
    ]
    return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


class LogProbModel(nn.Module):
    """``forward(input_ids, attention_mask, response_mask, position_ids=None) -> (token_logps, values)``
    flattened over the response positions of the batch (row-major order)."""

    def __init__(self, lm: nn.Module, chunk_tokens: int | None = None, full_logits: bool = False):
        super().__init__()
        self.lm = lm
        self.chunk_tokens = chunk_tokens
        self.full_logits = full_logits  # fall back to the model's own forward (exotic heads)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        response_mask: Tensor,
        position_ids: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        targets_mask = response_mask[:, 1:]
        targets = input_ids[:, 1:][targets_mask]
        extra = {} if position_ids is None else {"position_ids": position_ids}
        if self.full_logits:
            logits = self.lm(input_ids=input_ids, attention_mask=attention_mask, **extra).logits
            logits = logits[:, :-1][targets_mask].float()
            values = torch.logsumexp(logits, dim=-1)
            return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - values, values
        causal = _causal_lm(self.lm)
        backbone = getattr(causal, causal.base_model_prefix)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        hidden = hidden[:, :-1][targets_mask]
        return head_logps(hidden, causal.get_output_embeddings(), targets, self.chunk_tokens)


def unflatten(flat: Tensor, targets_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Scatter flat per-token values back to left-aligned ``[N, L]`` rows (and the matching mask)."""
    counts = targets_mask.sum(dim=1)
    width = int(counts.max()) if counts.numel() else 0
    mask = torch.arange(width, device=flat.device).unsqueeze(0) < counts.unsqueeze(1)
    out = flat.new_zeros(mask.shape)
    out[mask] = flat
    return out, mask


def to_logprobs(token_logps: Tensor, values: Tensor | None, response_mask: Tensor) -> LogProbs:
    targets_mask = response_mask[:, 1:]
    rows, mask = unflatten(token_logps, targets_mask)
    vals = unflatten(values, targets_mask)[0] if values is not None else None
    return LogProbs(
        logps=rows.sum(dim=1), n_tokens=mask.sum(dim=1), token_logps=rows, token_mask=mask, token_values=vals
    )


def batch_logprobs(
    model: nn.Module, batch: dict[str, Tensor], *, with_values: bool = False, chunk_tokens: int | None = None
) -> LogProbs:
    """Response log-probs of a collated batch (contracts.md) under ``model`` (a causal LM, a peft model,
    or a ``LogProbModel``)."""
    engine = model if isinstance(model, LogProbModel) else LogProbModel(model, chunk_tokens)
    flat, values = engine(
        batch["input_ids"], batch["attention_mask"], batch["response_mask"], batch.get("position_ids")
    )
    return to_logprobs(flat, values if with_values else None, batch["response_mask"])
