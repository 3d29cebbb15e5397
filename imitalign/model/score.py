"""Sequence-scoring models: an LM backbone with a scalar head, read at each row's last real token.

``ScoreModel`` wraps ``AutoModelForSequenceClassification(num_labels=1)`` (kept as ``.lm``, so the trainer
saves it with ``save_pretrained`` like a policy) and returns one scalar per row,

    s(x, y) = w · h_T + b,      T = the last position with attention_mask = 1,

where ``h`` are the backbone's final hidden states. The position comes from ``attention_mask`` — never from
pad ids, which may equal EOS (then ``transformers``' own pooling, which looks for the last non-pad id,
would read the token *before* the response's EOS). With a pad id distinct from every real token, as in the
gym, the two agree, and a saved model reloaded with ``AutoModelForSequenceClassification`` gives the same
logits on right-padded batches.

Used by objectives of kind ``reward_pair`` (Bradley–Terry: ``−log σ(s(x,y_w) − s(x,y_l))``) and
``classifier`` (discriminator BCE on the logit ``s``), and by the reward kinds ``bradley_terry`` and
``classifier`` (:mod:`imitalign.reward.models`).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerBase

from imitalign.config import ModelConfig
from imitalign.model.load import (
    check_tokenizer_fit,
    config_from,
    enable_gradient_checkpointing,
    from_pretrained,
    load_tokenizer,
    lora_config,
    model_kwargs,
    resolve_dtype,
)

log = logging.getLogger(__name__)

HEAD_NAMES = ("score", "classifier")


def last_token_index(attention_mask: Tensor) -> Tensor:
    """``[N]`` index of each row's last position with ``attention_mask = 1`` (right or left padding; 0 for an
    all-padding row)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.to(positions.dtype)).argmax(dim=1)


def _base(model: nn.Module) -> nn.Module:
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def score_head(model: nn.Module) -> nn.Module:
    """The scalar head of a ``*ForSequenceClassification`` (``score`` on decoder LMs)."""
    base = _base(model)
    for name in HEAD_NAMES:
        head = getattr(base, name, None)
        if isinstance(head, nn.Module):
            return head
    raise ValueError(
        f"{type(base).__name__} has no score head (looked for {', '.join(HEAD_NAMES)}); "
        "use a decoder-only model (Llama, Qwen, Mistral, GPT-2, ...)"
    )


class ScoreModel(nn.Module):
    """``forward(input_ids, attention_mask) -> [N]`` float32 scores (module docstring)."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm
        score_head(lm)  # fail now, not in the first step

    def forward(self, input_ids: Tensor, attention_mask: Tensor, **_: Any) -> Tensor:
        base = _base(self.lm)
        backbone = getattr(base, base.base_model_prefix)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        last = hidden[rows, last_token_index(attention_mask)]
        return score_head(self.lm)(last).squeeze(-1).float()


def _apply_lora(model: nn.Module, cfg: ModelConfig) -> nn.Module:
    from peft import get_peft_model

    head = next(n for n in HEAD_NAMES if isinstance(getattr(model, n, None), nn.Module))
    # the fresh head trains in full
    return get_peft_model(model, lora_config(cfg, "SEQ_CLS", modules_to_save=[head]))


def load_score_lm(cfg: ModelConfig, tok: PreTrainedTokenizerBase, seed: int) -> nn.Module:
    """``AutoModelForSequenceClassification`` with one label: from ``cfg.name_or_path`` (a reward-model folder,
    or a causal-LM folder whose backbone is kept and whose head is initialised from ``model.init_seed`` /
    ``seed``), or built from ``cfg.config`` (weights from the seed) — as :func:`imitalign.model.load.load_causal_lm`."""
    dtype = resolve_dtype(cfg.dtype)
    kwargs = {**model_kwargs(cfg), "num_labels": 1}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed if cfg.init_seed is not None else seed)
        if cfg.name_or_path is not None:
            model = from_pretrained(AutoModelForSequenceClassification, cfg.name_or_path, dtype=dtype, **kwargs)
        else:
            config = config_from(cfg, tok)
            config.num_labels = 1
            kwargs.pop("num_labels")
            model = AutoModelForSequenceClassification.from_config(config, dtype=dtype, **kwargs)
    check_tokenizer_fit(model, tok)
    return model


def load_score_model(cfg: ModelConfig, seed: int) -> tuple[ScoreModel, PreTrainedTokenizerBase]:
    """Tokenizer and :class:`ScoreModel` for a ``model`` config section (LoRA and gradient checkpointing as
    for policies; under LoRA the head is trained in full)."""
    tok = load_tokenizer(cfg)
    lm = load_score_lm(cfg, tok, seed)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(lm)
    if cfg.lora is not None:
        if cfg.gradient_checkpointing:
            lm.enable_input_require_grads()
        lm = _apply_lora(lm, cfg)
    return ScoreModel(lm), tok


@torch.no_grad()
def score_batch(model: ScoreModel, batch: dict[str, Tensor]) -> Tensor:
    """Scores of a collated batch (contracts.md "Batches"), on the model's device, in eval mode."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        return model(batch["input_ids"].to(device), batch["attention_mask"].to(device)).cpu()
    finally:
        model.train(was_training)
