"""Turn-aware prompt truncation: a rendered prompt never starts inside a message.

A prompt longer than its token budget loses whole turns first, earliest first: the system message (if any)
and the last user turn are kept, and the kept conversation starts on a user turn. Only when the system message
and the last user turn alone exceed the budget is that user turn cut inside — after its role header, which
the chat template writes as usual: the turn keeps the *end* of its content (the part next to the response).
If the system message, the role header and an empty user turn still exceed the budget, the system message goes
too; if even that does not fit, the prompt cannot be kept (the row is dropped as ``prompt_too_long``).

Each candidate is rendered by the chat template and tokenised, so what the model sees is always a
well-formed conversation; the search is a bisection over the turn boundaries, then over the content tokens
kept (a few renderings per truncated row; rows that fit are never re-rendered).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from imitalign.data.records import Message

Encode = Callable[[list[Message]], list[int]]  # prompt messages -> token ids of the rendered prompt


@dataclass
class Shrunk:
    ids: list[int]
    turns_dropped: int  # whole messages removed from the front (system kept unless it alone was too long)
    cut_inside: bool  # the last user turn was cut inside, after its role header


def _largest(lo: int, hi: int, fits: Callable[[int], bool]) -> int | None:
    """The largest ``n`` in ``[lo, hi]`` with ``fits(n)``, for a ``fits`` that is true up to some n (bisection)."""
    if not fits(lo):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _cut_content(
    system: list[Message],
    turn: Message,
    budget: int,
    encode: Encode,
    content_ids: Callable[[str], list[int]],
    decode: Callable[[list[int]], str],
) -> list[int] | None:
    ids = content_ids(turn["content"])

    def render(n: int) -> list[int]:
        kept = decode(ids[len(ids) - n :]) if n else ""
        return encode([*system, {"role": turn["role"], "content": kept}])

    cache: dict[int, list[int]] = {}

    def fits(n: int) -> bool:
        cache[n] = render(n)
        return len(cache[n]) <= budget

    n = _largest(0, len(ids), fits)
    return None if n is None else cache.get(n) or render(n)


def shrink_prompt(
    messages: list[Message],
    budget: int,
    encode: Encode,
    content_ids: Callable[[str], list[int]],
    decode: Callable[[list[int]], str],
    *,
    cut_inside: bool = True,
) -> Shrunk | None:
    """The prompt ``messages`` rendered within ``budget`` tokens by dropping whole earliest turns, else (with
    ``cut_inside``) by cutting inside the last user turn (see the module docstring); None when nothing fits."""
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    rest = messages[len(system) :]
    users = [i for i, m in enumerate(rest) if m["role"] == "user"] or [max(len(rest) - 1, 0)]
    last = users[-1]
    starts = [i for i in users if i > 0]  # candidate first kept turn, a user turn, after dropping rest[:i]
    encoded: dict[int, list[int]] = {}

    def fits(k: int) -> bool:  # k: how many of the candidate starts are NOT used (fewer dropped turns = larger k)
        start = starts[len(starts) - 1 - k] if k < len(starts) else 0
        encoded[start] = encode([*system, *rest[start:]])
        return len(encoded[start]) <= budget

    k = _largest(0, len(starts) - 1, fits) if starts else None
    if k is not None:
        start = starts[len(starts) - 1 - k]
        return Shrunk(encoded[start], start, False)
    if not rest or not cut_inside:
        return None
    tail = rest[last:]
    if len(tail) == 1:  # the last user turn alone (with the system message) is over budget: cut inside it
        for sys in (system, []):
            ids = _cut_content(sys, tail[0], budget, encode, content_ids, decode)
            if ids is not None:
                return Shrunk(ids, last + len(system) - len(sys), True)
    return None
