"""The log-prob engine: response-token log-probabilities (and soft values) of a causal LM.

For a row with tokens ``x_0 … x_{T-1}`` the logits at position ``i`` predict ``x_{i+1}``. A response token at
position ``i+1`` gets

    log π(x_{i+1} | x_{≤i}) = z_i[x_{i+1}] − logsumexp(z_i),   V(s) = logsumexp(z_i)

where ``z_i = W_head h_i``. Only the hidden states of positions that predict a response token go through the
LM head (hidden states are sliced *before* the head), which saves the ``[tokens, vocab]`` logits of the
prompt and padding. With ``chunk_tokens`` the head and log-softmax run over chunks of positions under
activation checkpointing, so that the full ``[tokens, vocab]`` logits are never alive at once (forward or
backward); the result is identical to the plain computation.

**Two batch layouts** (docs/contracts.md, "Batches"). *Padded*: one sequence per row, ``attention_mask``
marks the real tokens. *Packed* (``position_ids`` given, see ``imitalign.data.collate.collate_pairs_packed``):
several sequences share a row, ``position_ids`` restart at 0 at each sequence, and the model receives no 2D
attention mask, so ``transformers`` derives a document-aware (block-diagonal causal) mask from the position
ids — each sequence attends only to itself (or, once ``segment_attention.enable`` switched the model, the engine
passes each row's sequence spans and every sequence runs its own causal attention). Rows carry per-target index
tensors computed by the collator on the host (``target_index``, ``target_seq``, ``target_pos``, ``token_mask``);
with them the engine gathers the response positions with ``index_select`` and scatters results with
``index_put``, so the step has no boolean-mask indexing (which on an accelerator forces a host-device sync to
learn the output size). Without them (hand-made padded batches) the boolean-mask path below is used; both give
identical numbers.

``LogProbModel`` wraps a ``transformers`` causal LM (or a peft model around one) as an ``nn.Module`` whose
``forward`` returns the per-token tensors. It is what the trainer hands to ``accelerate.prepare``: DDP/FSDP
then wrap a module whose forward is the whole computation, so gradient synchronisation works as usual.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from imitalign.model import segment_attention


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


# Without a backward (reference pass, evaluation) the logits are computed in chunks of at most this many
# elements (64 MB in fp32): nothing is kept for backward, so chunking costs nothing and bounds the pass's memory.
# The in-place logsumexp (``_lse_pick_``) needs no ``[rows, V]`` temporary in any path.
_NOGRAD_ELEMS = 1 << 24
# ``chunk_tokens="auto"``: chunk the head (recompute its logits in backward) only when the logits it would keep
# exceed AUTO_CHUNK_BYTES *and* the recomputation (one ``[M, H] × [H, V]`` matmul) is estimated below
# AUTO_CHUNK_MAX_COST of the step's FLOPs — true of large models (an 8B Llama: ~1 %), false of the benchmark's
# tiny one, whose head is most of its compute (~13 %: there the logits are kept, see benchmarks/README.md).
AUTO_CHUNK_BYTES = 256 * 2**20
AUTO_CHUNK_MAX_COST = 0.05


def _lse_pick_(z: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(z[t] − logsumexp z, logsumexp z, Σ exp(z − max z))`` per row of fp32 logits ``z [m, V]``, computed
    **in place**: ``z`` is left holding ``exp(z − max z)``, the unnormalised softmax that backward scales by
    ``1 / Σ`` (``_softmax_grad_kept_``). ``logsumexp z = max z + log Σ exp(z − max z)`` is formed exactly as
    ``torch.logsumexp`` forms it (same numbers, bit for bit) but without its ``[m, V]`` temporary: one
    ``amax``, ``sub_``, ``exp_`` and ``sum`` over the logits instead of a fresh allocation and five passes."""
    picked = z.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    top = z.amax(-1, keepdim=True) if z.shape[0] else z.new_zeros(0, 1)
    total = z.sub_(top).exp_().sum(-1)
    lse = total.log().add_(top.squeeze(-1))
    return picked - lse, lse, total


def auto_chunk(m: int, tokens: int, body_params: int, hidden: int, vocab: int) -> int | None:
    """The chunk of ``chunk_tokens="auto"`` for ``m`` head positions in a step of ``tokens`` token slots through
    a body of ``body_params`` parameters: None (keep the logits) unless they are big and recomputing them is
    cheap (``AUTO_CHUNK_BYTES``, ``AUTO_CHUNK_MAX_COST``). FLOPs: body ``6·N·T``, head ``6·M·H·V``, recompute
    ``2·M·H·V``."""
    if 4 * m * vocab <= AUTO_CHUNK_BYTES:
        return None
    head = m * hidden * vocab
    if 2 * head > AUTO_CHUNK_MAX_COST * (6 * body_params * tokens + 6 * head):
        return None
    return max(1, _NOGRAD_ELEMS // vocab)


def _softmax_grad_(z: Tensor, lse: Tensor, g_lp: Tensor, g_v: Tensor, targets: Tensor) -> Tensor:
    """``∂z = softmax(z) · (g_v − g_lp) + onehot(t) · g_lp``, formed in place in the (recomputed) logits ``z``."""
    z.sub_(lse.unsqueeze(-1)).exp_().mul_((g_v - g_lp).unsqueeze(-1))
    return z.scatter_add_(-1, targets.unsqueeze(-1), g_lp.unsqueeze(-1))


def _softmax_grad_kept_(e: Tensor, total: Tensor, g_lp: Tensor, g_v: Tensor, targets: Tensor) -> Tensor:
    """The same ``∂z`` from forward's kept ``e = exp(z − max z)`` and ``total = Σ e``: ``softmax(z) = e / total``,
    so one in-place pass ``e · (g_v − g_lp) / total`` (no ``sub_``/``exp_`` over the logits again)."""
    e.mul_(((g_v - g_lp) / total).unsqueeze(-1))
    return e.scatter_add_(-1, targets.unsqueeze(-1), g_lp.unsqueeze(-1))


def _chunked_logps(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, chunk: int | None, keep: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(log-probs, lse, kept)`` over chunks of ``chunk`` positions (one chunk when None); with ``keep`` the single
    chunk's ``(exp(z − max z), Σ)`` are returned for backward (see ``_lse_pick_``), else None."""
    m = hidden.shape[0]
    step = max(chunk or m, 1)
    lps, lses, kept = [], [], None
    for s in range(0, m, step):
        z = torch.nn.functional.linear(hidden[s : s + step], weight, bias).float()
        lp, lse, total = _lse_pick_(z, targets[s : s + step])
        lps.append(lp)
        lses.append(lse)
        if keep:
            kept = (z, total)  # reused (overwritten) by backward: no recompute without chunking
    lse = torch.cat(lses) if lses else hidden.new_zeros(0, dtype=torch.float32)
    lp = torch.cat(lps) if lps else hidden.new_zeros(0, dtype=torch.float32)
    return lp, lse, kept


class _FusedHeadLogps(torch.autograd.Function):
    """``(log π(t | h), logsumexp z)`` for ``z = h Wᵀ + b`` with a hand-written backward.

    Forward keeps only ``lse [M]`` per position (plus the fp32 logits when not chunking); backward forms
    ``∂z = softmax(z) · (g_v − g_lp) + onehot(t) · g_lp`` in place in one ``[chunk, V]`` buffer and turns it into
    ``∂h = ∂z W`` and ``∂W = ∂zᵀ h`` chunk by chunk. With ``chunk`` set, the logits are recomputed in backward
    (one extra ``[chunk, H] × [H, V]`` matmul) and no ``[M, V]`` tensor is ever alive."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk):  # type: ignore[override]
        keep = chunk is None and any(ctx.needs_input_grad[:3])
        lp, lse, kept = _chunked_logps(hidden, weight, bias, targets, chunk, keep)
        ctx.chunk = chunk
        ctx.has_bias = bias is not None
        ctx.save_for_backward(hidden, weight, bias if bias is not None else hidden.new_zeros(0), targets, lse)
        ctx.kept = kept
        return lp, lse

    @staticmethod
    def backward(ctx, g_lp, g_v):  # type: ignore[override]
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        bias = bias if ctx.has_bias else None
        m = hidden.shape[0]
        g_lp = torch.zeros_like(lse) if g_lp is None else g_lp.float()
        g_v = torch.zeros_like(lse) if g_v is None else g_v.float()
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        step = ctx.chunk or max(m, 1)
        d_h = torch.empty_like(hidden) if need_h else None
        d_w = d_b = None
        for s in range(0, m, step):
            e = min(s + step, m)
            if ctx.kept is not None:
                dz = _softmax_grad_kept_(*ctx.kept, g_lp[s:e], g_v[s:e], targets[s:e])
            else:
                z = torch.nn.functional.linear(hidden[s:e], weight, bias).float()
                dz = _softmax_grad_(z, lse[s:e], g_lp[s:e], g_v[s:e], targets[s:e])
            if d_h is not None:
                torch.mm(dz.to(weight.dtype), weight, out=d_h[s:e])
            if need_w:  # the first chunk writes, later ones accumulate (no zero-filled [V, H] buffer)
                part = dz.t().mm(hidden[s:e].float())
                d_w = part if d_w is None else d_w.add_(part)
            if need_b and bias is not None:
                d_b = dz.sum(0) if d_b is None else d_b.add_(dz.sum(0))
        ctx.kept = None
        if need_w and d_w is None:
            d_w = torch.zeros_like(weight, dtype=torch.float32)
        if need_b and bias is not None and d_b is None:
            d_b = torch.zeros_like(bias, dtype=torch.float32)
        return (
            d_h,
            None if d_w is None else d_w.to(weight.dtype),
            None if d_b is None else d_b.to(bias.dtype),
            None,
            None,
        )


def _fusable(head: nn.Module) -> bool:
    """The fused path reads ``head.weight`` itself. Under DeepSpeed ZeRO-3 (``ds_id`` on the parameter) that read
    would see an empty placeholder outside the head's own forward, so the head is *called* instead: its hooks
    gather the weight in forward and again in backward. (Under FSDP2 the head belongs to the root group, which
    is unsharded for the whole forward and backward of the engine: the fused path stays.)"""
    return (
        type(head) is nn.Linear
        and not hasattr(head.weight, "ds_id")
        and not torch.is_autocast_enabled(head.weight.device.type)
    )


def head_logps(
    hidden: Tensor, head: nn.Module, targets: Tensor, chunk_tokens: int | None = None
) -> tuple[Tensor, Tensor]:
    """Log-probs and values (``logsumexp`` of the fp32 logits) of ``targets [M]`` from hidden states ``[M, H]``.

    A plain ``nn.Linear`` head (outside autocast) runs through a fused function with a hand-written backward
    (see ``_FusedHeadLogps``); with ``chunk_tokens`` it works on chunks of positions and never holds more than
    ``[chunk_tokens, V]`` logits, in forward or backward. Without a backward to serve (``no_grad``, or nothing
    requires a gradient: the reference pass, evaluation) it is computed in chunks of at most ``_NOGRAD_ELEMS``
    logits whatever ``chunk_tokens`` says, at no cost. Other heads (a LoRA-wrapped head, autocast) use
    autograd, chunked under activation checkpointing when asked. Every path gives the same numbers."""
    backward = torch.is_grad_enabled() and any(x.requires_grad for x in (hidden, *head.parameters()))
    if not backward:  # nothing kept for a backward: chunks of <= _NOGRAD_ELEMS logits cost nothing
        vocab = getattr(head, "out_features", None) or getattr(getattr(head, "weight", None), "shape", (1,))[0]
        chunk_tokens = min(chunk_tokens or hidden.shape[0], max(1, _NOGRAD_ELEMS // max(int(vocab), 1)))
    if _fusable(head):
        if not backward:
            lp, lse, _ = _chunked_logps(hidden, head.weight, head.bias, targets, chunk_tokens, keep=False)
            return lp, lse
        return _FusedHeadLogps.apply(hidden, head.weight, head.bias, targets, chunk_tokens)
    if not backward and hidden.shape[0] > chunk_tokens:
        outs = [_head_logps(h, head, t) for h, t in zip(hidden.split(chunk_tokens), targets.split(chunk_tokens),
                                                         strict=True)]
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
    if chunk_tokens is None or hidden.shape[0] <= chunk_tokens:
        return _head_logps(hidden, head, targets)
    outs = [
        checkpoint(_head_logps, h, head, t, use_reentrant=False)
        for h, t in zip(hidden.split(chunk_tokens), targets.split(chunk_tokens), strict=True)
    ]
    return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


class LogProbModel(nn.Module):
    """``forward(input_ids, attention_mask, response_mask, position_ids=None, target_index=None)
    -> (token_logps, values)`` flattened over the response targets of the batch, in row-major order of the
    predicting positions (the order of ``target_index`` when given).

    ``position_ids`` marks a packed batch: the model then gets no ``attention_mask`` (see the module docstring).
    ``target_index [M]`` are flat indices into ``[N * T]`` of the positions whose logits predict a response
    token (the token at ``target_index + 1``)."""

    def __init__(self, lm: nn.Module, chunk_tokens: int | str | None = None, full_logits: bool = False):
        super().__init__()
        if not (chunk_tokens is None or chunk_tokens == "auto" or (isinstance(chunk_tokens, int) and chunk_tokens > 0)):
            raise ValueError(f"chunk_tokens must be a positive integer, 'auto' or None, not {chunk_tokens!r}")
        self.lm = lm
        self.chunk_tokens = chunk_tokens  # None: keep the head's logits; "auto": see auto_chunk
        self.full_logits = full_logits  # fall back to the model's own forward (exotic heads)
        self._body_params: int | None = None

    def _chunk(self, m: int, tokens: int, head: nn.Module) -> int | None:
        if self.chunk_tokens != "auto":
            return self.chunk_tokens  # type: ignore[return-value]
        weight = getattr(head, "weight", None)
        if weight is None or weight.ndim != 2:
            return None
        if self._body_params is None:  # the parameters every token goes through (not the embedding, not the head)
            skip = {id(p) for mod in (head, _causal_lm(self.lm).get_input_embeddings()) for p in mod.parameters()}
            self._body_params = sum(p.numel() for p in self.lm.parameters() if id(p) not in skip)
        return auto_chunk(m, tokens, self._body_params, weight.shape[1], weight.shape[0])

    @property
    def _no_split_modules(self) -> list[str] | None:
        """The decoder-layer classes of the wrapped model: what accelerate's FSDP auto-wrap shards one by one."""
        return getattr(_causal_lm(self.lm), "_no_split_modules", None)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        response_mask: Tensor,
        position_ids: Tensor | None = None,
        target_index: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        causal = _causal_lm(self.lm)
        if position_ids is None:
            model_kw = {"attention_mask": attention_mask}
        else:  # packed rows: the document structure lives in the position ids
            model_kw = {"attention_mask": None, "position_ids": position_ids}
            if segment_attention.active(causal):  # each sequence attends to itself only (segment_attention)
                model_kw["segments"] = segment_attention.segments_of(position_ids, attention_mask)
        if target_index is None:
            targets_mask = response_mask[:, 1:]
            targets = input_ids[:, 1:][targets_mask]
        else:
            targets = input_ids.reshape(-1).index_select(0, target_index + 1)
        if self.full_logits:
            logits = self.lm(input_ids=input_ids, use_cache=False, **model_kw).logits
            logits = _select(logits, response_mask, target_index).float()
            values = torch.logsumexp(logits, dim=-1)
            return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - values, values
        backbone = getattr(causal, causal.base_model_prefix)
        hidden = backbone(input_ids=input_ids, use_cache=False, **model_kw).last_hidden_state
        hidden = _select(hidden, response_mask, target_index)
        head = causal.get_output_embeddings()
        return head_logps(hidden, head, targets, self._chunk(hidden.shape[0], input_ids.numel(), head))


def _select(x: Tensor, response_mask: Tensor, target_index: Tensor | None) -> Tensor:
    """``x [N, T, D]`` at the positions that predict a response token, as ``[M, D]``."""
    if target_index is None:
        return x[:, :-1][response_mask[:, 1:]]
    return x.reshape(-1, x.shape[-1]).index_select(0, target_index)


def unflatten(flat: Tensor, targets_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Scatter flat per-token values back to left-aligned ``[N, L]`` rows (and the matching mask)."""
    counts = targets_mask.sum(dim=1)
    width = int(counts.max()) if counts.numel() else 0
    mask = torch.arange(width, device=flat.device).unsqueeze(0) < counts.unsqueeze(1)
    out = flat.new_zeros(mask.shape)
    out[mask] = flat
    return out, mask


def to_logprobs(
    token_logps: Tensor,
    values: Tensor | None,
    response_mask: Tensor,
    index: dict[str, Tensor] | None = None,
) -> LogProbs:
    """Per-sequence sums and left-aligned ``[N, L]`` token tensors from the engine's flat output.

    ``index`` (``target_seq [M]``, ``target_pos [M]``, ``token_mask [N, L]``, from the collator) is required for
    packed batches, where a row holds several sequences; without it each row of ``response_mask`` is one
    sequence. ``logps`` is the plain sum of the response-token log-probs (no length normalisation here)."""
    if index is None:
        targets_mask = response_mask[:, 1:]
        rows, mask = unflatten(token_logps, targets_mask)
        vals = unflatten(values, targets_mask)[0] if values is not None else None
    else:
        seq, pos, mask = index["target_seq"], index["target_pos"], index["token_mask"]
        rows = token_logps.new_zeros(mask.shape).index_put((seq, pos), token_logps)
        vals = None if values is None else values.new_zeros(mask.shape).index_put((seq, pos), values)
    return LogProbs(
        logps=rows.sum(dim=1), n_tokens=mask.sum(dim=1), token_logps=rows, token_mask=mask, token_values=vals
    )


INDEX_KEYS = ("target_seq", "target_pos", "token_mask")


def batch_index(batch: dict[str, Tensor]) -> dict[str, Tensor] | None:
    """The collator's per-target index tensors of ``batch``, or None for a plain padded batch."""
    return {k: batch[k] for k in INDEX_KEYS} if "target_index" in batch else None


def batch_logprobs(
    model: nn.Module, batch: dict[str, Tensor], *, with_values: bool = False, chunk_tokens: int | None = None
) -> LogProbs:
    """Response log-probs of a collated batch (contracts.md) under ``model`` (a causal LM, a peft model,
    or a ``LogProbModel``)."""
    engine = model if isinstance(model, LogProbModel) else LogProbModel(model, chunk_tokens)
    flat, values = engine(
        batch["input_ids"],
        batch["attention_mask"],
        batch["response_mask"],
        batch.get("position_ids"),
        batch.get("target_index"),
    )
    return to_logprobs(flat, values if with_values else None, batch["response_mask"], batch_index(batch))
