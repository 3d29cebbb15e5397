"""Whether a model keeps packed sequences apart — checked on the model itself before training packs.

Packed batches (``imitalign.data.collate.collate_pairs_packed``) rely on ``transformers`` building a
block-diagonal causal mask from ``position_ids`` when no 2D attention mask is given (``masking_utils``'s
packed-sequence detection, used by sdpa, eager and flex attention; flash-attention 2 derives ``cu_seqlens``
from the same position ids). A model whose attention ignores that (remote code, an old architecture) would
let packed sequences attend to each other — silently wrong numbers. :func:`check_packing` runs two short
sequences padded and packed through the model and compares the log-probs.
"""

from __future__ import annotations

import torch
from torch import nn

from imitalign.data.collate import collate_pairs, collate_pairs_packed
from imitalign.data.tokenize import TokenizedPair
from imitalign.model.logprobs import batch_logprobs


class PackingUnsupported(RuntimeError):
    """The model's attention does not separate packed sequences."""


@torch.no_grad()
def check_packing(model: nn.Module, pad_id: int, *, atol: float = 1e-3, seed: int = 0) -> float:
    """Largest absolute difference between padded and packed per-token log-probs of 4 random sequences packed
    into 2 rows; raises :class:`PackingUnsupported` above ``atol`` (a leak shows as O(1) differences).
    The model is put in eval mode for the check (dropout) and restored afterwards."""
    vocab = model.get_input_embeddings().weight.shape[0]
    g = torch.Generator().manual_seed(seed)

    def ids(n: int) -> list[int]:
        return torch.randint(1, vocab, (n,), generator=g).tolist()

    items = [TokenizedPair(ids(5), ids(7), ids(4), "check"), TokenizedPair(ids(3), ids(6), ids(9), "check")]
    was_training = model.training
    model.eval()
    try:
        padded = batch_logprobs(model, collate_pairs(items, pad_id))
        packed = batch_logprobs(model, collate_pairs_packed(items, pad_id, row_width=24))
    finally:
        model.train(was_training)
    diff = float((padded.token_logps - packed.token_logps).abs().max())
    if not diff <= atol:
        raise PackingUnsupported(
            f"packed sequences are not kept apart by this model's attention (log-probs differ by {diff:.3g} "
            "between padded and packed batches): set train.packing=false"
        )
    return diff
