"""Which layout a row is in — the one place where layouts are detected — and hints that never mislead.

Detection looks at the (renamed) row's fields and settles only what they make unambiguous:

==================================================  =========================================================
fields                                              format
==================================================  =========================================================
``conversations``                                   ``sharegpt`` (SFT, or pairwise with ``chosen``/``rejected``)
``chosen_messages`` / ``rejected_messages``         ``pair_messages`` (LLaMA-Factory v1 DPO)
``messages``                                        ``messages`` (SFT, or pairwise with ``chosen``/``rejected``)
``instruction`` (+ ``output`` or ``chosen``/…)      ``alpaca`` (SFT or pairwise)
``chosen``/``rejected`` + ``prompt``                ``preference`` (strings or one assistant message each)
``chosen``/``rejected`` message lists               ``ultrafeedback``
``chosen``/``rejected`` HH strings                  ``hh``
``prompt`` + ``response`` (or ``completion``)       ``demonstration``
``prompt``                                          ``prompt`` (or the kind the caller needs)
==================================================  =========================================================

Implicit names (used only when the row lacks our own name and ``columns`` does not map it): ``completion``
(TRL's prompt–completion layout) is the ``response``; ``kto_tag`` (LLaMA-Factory) is the ``label``. A
``label`` column makes rows unpaired feedback when its values are booleans (or when ``columns`` maps it).

**Hints.** When nothing fits, :func:`readings` lists the complete configurations the column names allow: a
paired reading maps ``prompt``, ``chosen`` and ``rejected`` together; a column that is one of two siblings
(``response_j``/``response_k``) is never offered as a demonstration's ``response``, and a column named for
one side of a pair (``chosen_messages``) never as ``messages``. One reading is printed as the config to
write; several are listed and none is picked.
"""

from __future__ import annotations

import re
from typing import Any, get_args

from imitalign.config import DataFormat
from imitalign.data.records import DataError

FORMATS = tuple(f for f in get_args(DataFormat) if f != "auto")  # the layouts a row can be read as
REQUIRED: dict[str, tuple[str, ...]] = {
    "preference": ("prompt", "chosen", "rejected"),
    "ultrafeedback": ("chosen", "rejected"),
    "hh": ("chosen", "rejected"),
    "demonstration": ("prompt", "response"),
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "pair_messages": ("chosen_messages", "rejected_messages"),
    "alpaca": ("instruction",),
    "prompt": ("prompt",),
}
FIELDS = (
    "prompt",
    "chosen",
    "rejected",
    "response",
    "messages",
    "conversations",
    "chosen_messages",
    "rejected_messages",
    "instruction",
    "input",
    "output",
    "history",
    "system",
    "label",
)
IMPLICIT = {"response": "completion", "label": "kto_tag"}  # our field -> a column name that means it

_PROMPT_NAMES = ("prompt", "question", "query", "instruction", "input", "context", "text", "post", "title")
_RESPONSE_NAMES = ("response", "completion", "output", "answer", "target", "reply", "summary")
_SIBLING = re.compile(r"^(.+)[_\-.](?:[a-z]|[0-9]+)$|^(.+?)[0-9]+$", re.IGNORECASE)


def implicit_columns(row: dict[str, Any], columns: dict[str, str]) -> dict[str, str]:
    """``columns`` plus the implicit names the row uses (``completion`` -> response, ``kto_tag`` -> label)."""
    out = dict(columns)
    for ours, theirs in IMPLICIT.items():
        if ours not in out and ours not in row and theirs in row and theirs not in out.values():
            out[ours] = theirs
    return out


def detect_format(row: dict[str, Any], location: str = "", kind: str | None = None) -> str:
    """The format of a (renamed) row, from its fields; raises :class:`DataError` (with readings) when none fits.

    A row with only some of a format's fields (``chosen`` without ``rejected``) is given that format, so that
    parsing names the missing field. ``kind`` (what the caller needs) settles a row with a ``prompt`` and
    nothing else we know: with ``preference`` or ``demonstration`` its response fields are reported missing.
    """
    if "conversations" in row:
        return "sharegpt"
    if "chosen_messages" in row or "rejected_messages" in row:
        return "pair_messages"
    if "messages" in row:
        return "messages"
    if "instruction" in row:
        return "alpaca"
    if "chosen" in row or "rejected" in row:
        return _paired_format(row, location)
    if "output" in row and "prompt" not in row and "input" in row:
        return "alpaca"
    if "prompt" in row and "response" in row:
        return "demonstration"
    if "prompt" in row:
        return {"preference": "preference", "demonstration": "demonstration"}.get(kind or "", "prompt")
    known = "; ".join(f"{f}: {', '.join(REQUIRED[f])}" for f in FORMATS)
    raise DataError(
        f"{location}: cannot detect the data layout from the row's fields ({', '.join(map(repr, row))}). "
        f"Layouts and their fields — {known}.{hint(row, kind)}"
    )


def _paired_format(row: dict[str, Any], location: str) -> str:
    chosen = row.get("chosen", row.get("rejected"))
    if isinstance(chosen, list):
        first = chosen[0] if chosen and isinstance(chosen[0], dict) else {}
        if first.get("role", first.get("from")) in ("assistant", "gpt") and "prompt" in row:
            return "preference"
        return "ultrafeedback"
    if "prompt" in row:
        return "preference"
    if isinstance(chosen, str) and "\n\nAssistant:" in chosen:
        return "hh"
    raise DataError(
        f"{location}: the row has {'chosen' if 'chosen' in row else 'rejected'!r} but no 'prompt', and it is not an "
        "HH-RLHF dialogue ('\\n\\nHuman: … \\n\\nAssistant: …'), a message list, nor a 'conversations'/'messages' "
        f"conversation ending on the user turn they answer.{hint(row, 'preference')}"
    )


# ------------------------------------------------------------------------------------------------- hints


def _named(row: dict[str, Any], names: tuple[str, ...]) -> list[str]:
    lowered = {str(k).lower(): str(k) for k in row}
    return [lowered[n] for n in names if n in lowered]


def _siblings(row: dict[str, Any]) -> list[tuple[str, str]]:
    """Pairs of text columns that differ only in a one-letter or numeric suffix (``response_j``/``response_k``)."""
    groups: dict[str, list[str]] = {}
    for k, v in row.items():
        m = _SIBLING.match(str(k))
        if m and isinstance(v, (str, list)):
            groups.setdefault((m.group(1) or m.group(2)).lower(), []).append(str(k))
    return [(g[0], g[1]) for g in groups.values() if len(g) == 2]


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) for m in value)


_CHOSEN_WORDS = {"chosen", "preferred", "winner", "win", "good", "better", "accepted", "positive", "pos"}
_REJECTED_WORDS = {"rejected", "dispreferred", "loser", "lose", "bad", "worse", "negative", "neg"}


def _side(name: str, words: set[str]) -> bool:
    return bool(set(re.split(r"[_\-. ]+", name.lower())) & words)


def can_be(name: str, column: str, row: dict[str, Any]) -> bool:
    """Whether ``column`` may play our field ``name``: one of two sibling columns is never a demonstration's
    ``response`` (or ``output``), and a column named for one side of a pair never the other side nor ``messages``."""
    in_pair = any(column in s for s in _siblings(row))
    chosen, rejected = _side(column, _CHOSEN_WORDS), _side(column, _REJECTED_WORDS)
    if name in ("response", "output", "messages", "prompt"):
        return not (in_pair or chosen or rejected) or name == "response" and chosen and not in_pair
    if name == "chosen":
        return not rejected
    if name == "rejected":
        return not chosen
    return True


def readings(row: dict[str, Any], kind: str | None = None) -> list[tuple[str, dict[str, str]]]:
    """Every complete ``(kind, columns)`` configuration the row's column names allow (see the module doc)."""
    siblings = _siblings(row)
    in_pair = {c for pair in siblings for c in pair}
    chosen = [k for k in map(str, row) if _side(k, _CHOSEN_WORDS)]
    rejected = [k for k in map(str, row) if _side(k, _REJECTED_WORDS)]
    sided = set(chosen) | set(rejected)
    prompts = [p for p in _named(row, _PROMPT_NAMES) if p not in in_pair and p not in sided]
    text_pairs = [(c, r) for c in chosen for r in rejected if not _is_messages(row[c]) and not _is_messages(row[r])]
    text_pairs += [p for s in siblings for p in (s, s[::-1])]
    out: list[tuple[str, dict[str, str]]] = []
    for p in prompts:
        out += [("preference", {"prompt": p, "chosen": c, "rejected": r}) for c, r in text_pairs if p not in (c, r)]
    out += [
        ("preference", {"chosen": c, "rejected": r})  # two whole conversations (format ultrafeedback)
        for c in chosen
        for r in rejected
        if _is_messages(row[c]) and _is_messages(row[r])
    ]
    if kind != "preference":
        responses = [r for r in _named(row, _RESPONSE_NAMES) if r not in in_pair and r not in sided]
        out += [("demonstration", {"prompt": p, "response": r}) for p in prompts for r in responses if p != r]
        conv = [k for k, v in row.items() if _is_messages(v) and k not in sided and k not in in_pair]
        out += [("demonstration", {"messages": k}) for k in conv if k not in prompts]
    return [
        (k, {ours: col for ours, col in m.items() if ours != col}) for k, m in out if any(o != c for o, c in m.items())
    ]


def _yaml(mapping: dict[str, str]) -> str:
    return "columns: {" + ", ".join(f"{k}: {v}" for k, v in mapping.items()) + "}"


def hint(row: dict[str, Any], kind: str | None = None) -> str:
    """The readings of a row as text for an error message (empty when there are none)."""
    found = readings(row, kind)
    if not found:
        return ""
    if len(found) == 1:
        k, m = found[0]
        return f" The columns read as a {k} file with: {_yaml(m)} (write this under data.train)."
    lines = [f"  - {k}: {_yaml(m)}" for k, m in found]
    siblings = [s for s in _siblings(row) if any(set(s) <= set(m.values()) for _, m in found)]
    why = (
        f" (which of {' / '.join(repr(c) for c in siblings[0])} is the preferred answer the names do not say)"
        if siblings
        else ""
    )
    return (
        f" The column names allow {len(found)} readings and none is picked{why}; write the one that is true of "
        "your data under data.train:\n" + "\n".join(lines)
    )
