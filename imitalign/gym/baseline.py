"""A bag-of-words baseline for the SFT model's held-out perplexity (README: "a bag-of-words model that knows the
prompt's topics gets 107").

The model: each response token (its words, then EOS) is drawn independently from a unigram distribution
conditioned on the prompt's two topics, ``p(w | x) = λ·p̂(w | topics(x)) + (1 − λ)·p̂(w)``, both estimated by
counting on training rows with add-``α`` smoothing over the tokenizer's vocabulary. It knows which words go with
which prompt, but nothing of order, length or structure; an LM that beats it has learnt more than word
frequencies. The defaults (λ 0.5, α 0.1) are the best of λ ∈ {0.3, 0.5, 0.7, 0.9} × α ∈ {0.01, 0.1, 0.5},
keyed by topics or by topics and length word, on fresh base-process rows (tests/test_gym_claims.py's gym):
the strongest baseline of those, so beating it means something.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from typing import Any

from imitalign.gym.task import parse_prompt


def _key(prompt: str) -> tuple[str, ...]:
    return tuple(sorted(parse_prompt(prompt).topics))


class BagOfWords:
    """The model above, fit on ``{"prompt", "response"}`` rows tokenised by ``tokenizer``."""

    def __init__(self, rows: Iterable[dict[str, str]], tokenizer: Any, *, lam: float = 0.5, alpha: float = 0.1):
        self.tok, self.lam, self.alpha, self.vocab = tokenizer, lam, alpha, len(tokenizer)
        self.by_key: dict[tuple[str, ...], Counter[int]] = {}
        self.overall: Counter[int] = Counter()
        for row in rows:
            ids = self.tokens(row["response"])
            self.by_key.setdefault(_key(row["prompt"]), Counter()).update(ids)
            self.overall.update(ids)
        self.n_all = sum(self.overall.values())

    def tokens(self, response: str) -> list[int]:
        return list(self.tok(response)["input_ids"]) + [self.tok.eos_token_id]

    def row_nll(self, row: dict[str, str]) -> tuple[float, int]:
        """``(−log p(response | prompt), tokens)`` of one row."""
        counts = self.by_key.get(_key(row["prompt"]), Counter())
        n_key = sum(counts.values())
        nll, ids = 0.0, self.tokens(row["response"])
        for t in ids:
            p_key = (counts[t] + self.alpha) / (n_key + self.alpha * self.vocab)
            p_all = (self.overall[t] + self.alpha) / (self.n_all + self.alpha * self.vocab)
            nll -= math.log(self.lam * p_key + (1 - self.lam) * p_all)
        return nll, len(ids)


def bag_of_words_perplexity(train: Iterable[dict[str, str]], heldout: Iterable[dict[str, str]], tokenizer: Any,
                            **kw: float) -> float:
    """Per-token perplexity on ``heldout`` rows of :class:`BagOfWords` fit on ``train``."""
    model = BagOfWords(train, tokenizer, **kw)
    parts = [model.row_nll(r) for r in heldout]
    return math.exp(sum(p[0] for p in parts) / max(sum(p[1] for p in parts), 1))
