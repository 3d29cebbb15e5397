"""The gym's word-level tokenizer and a tiny Llama sized to it.

One token per word: a ``tokenizers`` ``WordLevel`` model over :func:`imitalign.gym.task.vocabulary` with a
``WhitespaceSplit`` pre-tokenizer, wrapped as a ``transformers`` fast tokenizer (``<pad>`` = 0, ``<bos>`` = 1,
``<eos>`` = 2, ``<unk>`` = 3). No post-processor (encoding never adds BOS/EOS: the data layer appends EOS to
responses itself) and no chat template: a prompt is rendered as plain text, so ``prompt_ids + response_ids
+ [eos]`` is the whole sequence. ``decode`` joins tokens with single spaces (the ``tokenizers`` default when
no decoder is set), so ``decode(encode(s)) == s`` for every normalised string ``s`` (words of the vocabulary
separated by single spaces).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from imitalign.gym.task import vocabulary

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<unk>")


def build_tokenizer(model_max_length: int = 128) -> PreTrainedTokenizerFast:
    """The gym tokenizer (module docstring). Deterministic: ids depend only on the task's vocabulary."""
    words = list(SPECIAL_TOKENS) + [w for w in vocabulary() if w not in SPECIAL_TOKENS]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        model_max_length=model_max_length,
        padding_side="right",
    )


def save_tokenizer(out_dir: str | Path) -> Path:
    """Write the tokenizer with ``save_pretrained``; ``AutoTokenizer.from_pretrained(out_dir)`` loads it."""
    out = Path(out_dir)
    build_tokenizer().save_pretrained(out)
    return out


def load_tokenizer(path: str | Path) -> Any:
    """``AutoTokenizer.from_pretrained(path)`` (for symmetry with :func:`save_tokenizer`)."""
    return AutoTokenizer.from_pretrained(str(path))


def tiny_llama_config(
    vocab_size: int | None = None,
    *,
    hidden_size: int = 128,
    num_hidden_layers: int = 4,
    num_attention_heads: int = 4,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 128,
) -> dict[str, Any]:
    """A ``LlamaConfig`` as a plain dict for the gym (``LlamaConfig(**d)`` without ``model_type``, or the
    ``model.config`` of a run config, which reads ``model_type``).

    Defaults (4 layers, hidden 128, ~1.1M parameters with the 204-token vocabulary and tied embeddings) learn the
    base process in a couple of CPU minutes; tests use 1–2 layers and hidden 32–64. ``vocab_size`` defaults to
    the gym tokenizer's size.
    """
    if vocab_size is None:
        vocab_size = len(build_tokenizer())
    if hidden_size % num_attention_heads:
        raise ValueError("hidden_size must be a multiple of num_attention_heads")
    return {
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size or 4 * hidden_size,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": num_attention_heads,
        "num_key_value_heads": num_attention_heads,
        "max_position_embeddings": max_position_embeddings,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
        "pad_token_id": SPECIAL_TOKENS.index("<pad>"),
        "bos_token_id": SPECIAL_TOKENS.index("<bos>"),
        "eos_token_id": SPECIAL_TOKENS.index("<eos>"),
    }
