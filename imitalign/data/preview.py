"""``imitalign data preview CONFIG``: the first examples as the model will see them.

Each example is decoded from its token ids (special tokens shown as text): the prompt, then each response
after a ``⟦RESPONSE⟧`` marker (``⟦CHOSEN⟧`` / ``⟦REJECTED⟧`` for pairs, ``⟦DESIRABLE⟧`` / ``⟦UNDESIRABLE⟧`` for
unpaired feedback) up to ``⟦END⟧``, newlines shown
as ``↵``, the token counts and the ids on either side of the boundary; then the data report (rows skipped,
truncated and dropped, per reason, with locations). This is the tool to reach for when a chat template
misbehaves: a doubled BOS, a missing EOS or a boundary in the wrong place is visible at a glance.
"""

from __future__ import annotations

from typing import Any

from imitalign.config import DataConfig
from imitalign.data.dataset import build_datasets
from imitalign.data.tokenize import TokenizedDemo, TokenizedPair, TokenizedUnpaired

_DIM, _GREEN, _RED, _RESET = "\x1b[2m", "\x1b[32m", "\x1b[31m", "\x1b[0m"


def _text(tokenizer: Any, ids: list[int], visible_whitespace: bool) -> str:
    text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return text.replace("\n", "↵\n").replace("\t", "→") if visible_whitespace else text


def preview(
    data_cfg: DataConfig,
    tokenizer: Any,
    kind: str,
    n: int = 3,
    *,
    seed: int = 0,
    color: bool = False,
    visible_whitespace: bool = True,
    max_rows: int | None = None,
) -> str:
    """A printable preview of the first ``n`` training examples and the data report.

    ``max_rows`` limits how many rows are read (the counts then cover only those rows); ``color`` adds ANSI
    colours (prompt dim, chosen/response green, rejected red).
    """
    if max_rows is not None:
        data_cfg = data_cfg.model_copy(update={"train": data_cfg.train.model_copy(update={"limit": max_rows})})
    train, _, report = build_datasets(data_cfg, tokenizer, kind, seed=seed, check_boundary=True, log=False)

    def paint(text: str, code: str) -> str:
        return f"{code}{text}{_RESET}" if color else text

    out: list[str] = []
    for i, ex in enumerate(train[:n], start=1):
        prompt = paint(_text(tokenizer, ex.prompt_ids, visible_whitespace), _DIM)
        if isinstance(ex, TokenizedPair):
            parts = [("CHOSEN", ex.chosen_ids, _GREEN), ("REJECTED", ex.rejected_ids, _RED)]
        elif isinstance(ex, TokenizedDemo):
            parts = [("RESPONSE", ex.response_ids, _GREEN)]
        elif isinstance(ex, TokenizedUnpaired):
            parts = [("DESIRABLE", ex.response_ids, _GREEN) if ex.label else ("UNDESIRABLE", ex.response_ids, _RED)]
        else:
            parts = []
        counts = ", ".join([f"prompt {len(ex.prompt_ids)}", *(f"{m.lower()} {len(ids)}" for m, ids, _ in parts)])
        out.append(f"━━ example {i} · {ex.source} · tokens: {counts}")
        if not parts:
            out.append(prompt + "⟦END⟧")
        for j, (marker, ids, code) in enumerate(parts):
            head = prompt if j == 0 else "(same prompt) …"
            out.append(f"{head}⟦{marker}⟧{paint(_text(tokenizer, ids, visible_whitespace), code)}⟦END⟧")
            out.append(f"   (boundary ids: …{ex.prompt_ids[-3:]} ⟦{marker}⟧ {ids[:3]}…, last {ids[-1:]})")
        out.append("")
    if not train:
        out.append("(no examples)")
    eos = tokenizer.eos_token
    out.append(f"eos token: {eos!r} (id {tokenizer.eos_token_id}); bos token: {tokenizer.bos_token!r}")
    out.append(report.summary())
    return "\n".join(out)
