"""Records to token ids: the prompt/response split, one EOS, one BOS, and truncation.

**Split.** The prompt (rendered with the generation prompt) and the response text (the rest of the rendered
conversation, see :meth:`Renderer.render`) are tokenised *separately*: ``prompt_ids`` are exactly what a
sampler feeds the model at generation time, and ``response_ids`` what it should produce. For most
tokenizer/template pairs ``prompt_ids + response_ids`` equals the tokenisation of the whole text; where a BPE
merge would cross the boundary (e.g. GPT-2 with a prompt ending in ``"\\n\\n"``: alone ``[628]``, before a
word ``[198, 198]``) the split above is the definition, and ``check_boundary=True`` reports such rows.

**BOS.** Rendered text is tokenised with ``add_special_tokens=False``. If the tokenizer adds a BOS of its own
(``tok("a").input_ids`` starts with ``bos_token_id``) and the prompt does not already start with it (templates
such as Llama 3's write ``bos_token`` themselves), one BOS is put in front: never two.

**EOS.** Each response ends with exactly one ``tokenizer.eos_token_id``. If the rendered response already
ends with the tokenizer's eos token (ChatML's ``<|im_end|>`` when it is the eos token; Phi-3's template writes
``eos_token``), whitespace the template puts after it (ChatML's ``"\\n"``) is dropped and nothing is added;
otherwise EOS is appended (plain text; Llama 3's ``<|eot_id|>`` with a tokenizer whose eos is something else).

**Truncation** to ``max_length`` tokens per sequence (prompt + one response):

1. ``max_prompt_length``, when set, caps the prompt at that many tokens;
2. a prompt that still leaves no room for a response (``len(prompt) >= max_length``) loses whole earliest
   turns down to the budget of 3.; when that is not possible (its last user turn alone is that long) the row
   is dropped (``prompt_too_long``; set ``max_prompt_length`` to keep the end of such a turn instead);
3. if prompt + longest response exceeds ``max_length``, the prompt is shortened, but not below
   ``max_length // 2`` tokens (with ``max_prompt_length`` set, its cap in 1. is the prompt's only cut);
4. then responses are cut from the *right* to fit (a cut response loses its EOS);
5. a row with no response token left is dropped (``no_response_left``).

A prompt is shortened **by turns** (:mod:`imitalign.data.truncate`): whole earliest turns go first (the system
message and the last user turn stay), and only a last user turn that alone exceeds the budget is cut inside,
after its role header, keeping the end of its content. The prompt is re-rendered by the chat template, so it
never starts inside a message. Each kind of cut is counted separately (:class:`TokenizeNote`).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from imitalign.data.records import DataError, DemonstrationRecord, Message, PreferenceRecord, Record, UnpairedRecord
from imitalign.data.templates import Renderer
from imitalign.data.truncate import Shrunk, shrink_prompt

DROP_REASONS = {
    "prompt_too_long": "prompt longer than max_length on its own",
    "no_response_left": "no response token left after truncation",
}


@dataclass
class TokenizedPair:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    source: str


@dataclass
class TokenizedDemo:
    prompt_ids: list[int]
    response_ids: list[int]
    source: str


@dataclass
class TokenizedPrompt:
    prompt_ids: list[int]
    source: str


@dataclass
class TokenizedUnpaired:
    """Unpaired feedback: one response and its label; ``kl_ids`` is the response of another row (another prompt),
    whose log-ratio under this prompt estimates KTO's reference point (see :mod:`imitalign.data.unpaired`)."""

    prompt_ids: list[int]
    response_ids: list[int]
    label: bool
    source: str
    kl_ids: list[int] = field(default_factory=list)

    # the pair view (collate_pairs): rows 0..B-1 the responses, rows B..2B-1 the mismatched KL responses
    @property
    def chosen_ids(self) -> list[int]:
        return self.response_ids

    @property
    def rejected_ids(self) -> list[int]:
        return self.kl_ids


Tokenized = TokenizedPair | TokenizedDemo | TokenizedPrompt | TokenizedUnpaired


@dataclass
class TokenizeNote:
    """What tokenisation did to one record: dropped (with the reason) or kept, and how much was cut."""

    dropped: str | None = None  # a key of DROP_REASONS
    prompt_tokens: int = 0  # before truncation
    response_tokens: int = 0  # longest response, before truncation
    prompt_cut: int = 0  # tokens removed from the prompt
    turns_dropped: int = 0  # whole earliest messages removed from the prompt
    cut_inside: bool = False  # the prompt's last user turn was cut inside (after its role header)
    response_cut: int = 0  # tokens removed from the longest response's right
    responses_cut: int = 0  # how many of the row's responses were cut (a pair can have both cut)
    boundary_merge: bool = False  # prompt_ids + response_ids != tokenisation of the whole (check_boundary)

    @property
    def truncated(self) -> bool:
        return self.prompt_cut > 0 or self.response_cut > 0


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of rendered text, without the tokenizer's own special tokens."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


_ADDS_BOS: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts a BOS in front by itself (so the model expects one)."""
    try:
        return _ADDS_BOS[tokenizer]
    except (KeyError, TypeError):
        pass
    bos = tokenizer.bos_token_id
    with_special = list(tokenizer("a")["input_ids"])
    value = bos is not None and with_special[:1] == [bos] and encode(tokenizer, "a")[:1] != [bos]
    try:
        _ADDS_BOS[tokenizer] = value
    except TypeError:  # not weak-referenceable
        pass
    return value


def eos_id(tokenizer: Any) -> int:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the tokenizer has no eos token; set tokenizer.eos_token (responses must end with one)")
    return int(eos)


def response_text(tokenizer: Any, text: str) -> tuple[str, bool]:
    """The response text to tokenise and whether it already ends with the eos token (the EOS rule above)."""
    eos = tokenizer.eos_token
    if eos:
        stripped = text.rstrip()
        if stripped.endswith(eos):
            return stripped, True
    return text, False


Shrink = Callable[[int, bool], "Shrunk | None"]  # prompt -> at most n tokens by turns, cut inside allowed? (None: no)


def _fit(
    prompt: list[int], responses: list[list[int]], max_length: int, max_prompt_length: int | None, shrink: Shrink
) -> tuple[list[int], list[list[int]], TokenizeNote]:
    """Apply the truncation rule to one prompt and its response(s) (see the module docstring)."""
    note = TokenizeNote(prompt_tokens=len(prompt), response_tokens=max(map(len, responses)))

    def cut(ids: list[int], n: int, inside: bool = True) -> list[int] | None:
        if len(ids) <= n:
            return ids
        shrunk = shrink(n, inside)
        if shrunk is not None:
            note.turns_dropped, note.cut_inside = shrunk.turns_dropped, shrunk.cut_inside
            return shrunk.ids
        return None

    if max_prompt_length is not None and len(prompt) > max_prompt_length:
        capped = cut(prompt, max_prompt_length)
        if capped is None:
            note.dropped = "prompt_too_long"
            return prompt, responses, note
        prompt = capped
    longest = note.response_tokens
    if len(prompt) >= max_length:  # whole earliest turns may go; a single turn this long is not cut: dropped
        kept = None if max_prompt_length is not None else cut(prompt, max(max_length // 2, max_length - longest), False)
        if kept is None:
            note.dropped = "prompt_too_long"
            return prompt, responses, note
        prompt = kept
    if len(prompt) + longest > max_length:
        floor = min(len(prompt), max_prompt_length if max_prompt_length is not None else max_length // 2)
        prompt = cut(prompt, max(floor, max_length - longest)) or prompt
        room = max_length - len(prompt)
        note.responses_cut = sum(len(r) > room for r in responses)
        responses = [r[:room] for r in responses]
    note.prompt_cut = note.prompt_tokens - len(prompt)
    note.response_cut = note.response_tokens - max(map(len, responses))
    if min(map(len, responses)) == 0:
        note.dropped = "no_response_left"
    return prompt, responses, note


def _check_lengths(max_length: int, max_prompt_length: int | None) -> None:
    if max_length < 2:
        raise DataError(f"max_length must be at least 2, got {max_length}")
    if max_prompt_length is not None and max_prompt_length < 1:
        raise DataError(f"max_prompt_length must be at least 1, got {max_prompt_length}")


KINDS = ("preference", "demonstration", "prompt", "unpaired")
_EXPECTED = {"preference": PreferenceRecord, "demonstration": DemonstrationRecord, "unpaired": UnpairedRecord}


def _texts(rec: Record, kind: str, renderer: Renderer) -> tuple[str, list[str]]:
    """The rendered prompt and response text(s) of a record for ``kind``."""
    expected = _EXPECTED.get(kind)
    if expected is not None and not isinstance(rec, expected):
        raise DataError(f"{rec.source}: a {kind} example needs a {expected.__name__}, got {type(rec).__name__}")
    if isinstance(rec, PreferenceRecord) and kind == "preference":
        return renderer.render_many(rec.prompt, [rec.chosen, rec.rejected], rec.source)
    if isinstance(rec, (DemonstrationRecord, UnpairedRecord)) and kind in ("demonstration", "unpaired"):
        return renderer.render_many(rec.prompt, [rec.response], rec.source)
    if kind == "prompt":
        return renderer.render_prompt(rec.prompt, rec.source), []
    raise DataError(f"unknown example kind {kind!r}; known: {', '.join(KINDS)}")


def _encode_batch(tokenizer: Any, texts: list[str], chunk: int = 1024) -> list[list[int]]:
    out: list[list[int]] = []
    for i in range(0, len(texts), chunk):
        out.extend(list(ids) for ids in tokenizer(texts[i : i + chunk], add_special_tokens=False)["input_ids"])
    return out


def tokenize_records(
    records: Sequence[Record],
    kind: str,
    tokenizer: Any,
    renderer: Renderer,
    max_length: int,
    max_prompt_length: int | None = None,
    *,
    check_boundary: bool = False,
) -> list[tuple[Tokenized | None, TokenizeNote]]:
    """Tokenise many records of one ``kind`` (``preference``, ``demonstration`` or ``prompt``) at once.

    Returns one ``(example, note)`` per record, in order; ``example`` is None when the row was dropped (the
    reason in ``note.dropped``). Same result as the one-record functions below, with batched tokenisation.
    """
    _check_lengths(max_length, max_prompt_length)
    if kind not in KINDS:
        raise DataError(f"unknown example kind {kind!r}; known: {', '.join(KINDS)}")
    eos = eos_id(tokenizer) if kind != "prompt" else None
    bos = tokenizer.bos_token_id
    prepend_bos = adds_bos(tokenizer)
    rendered = [_texts(rec, kind, renderer) for rec in records]
    prompts = [p for p, _ in rendered]
    responses = [[response_text(tokenizer, r) for r in rs] for _, rs in rendered]
    flat = [text for rs in responses for text, _ in rs]
    prompt_ids = _encode_batch(tokenizer, prompts)
    response_ids = iter(_encode_batch(tokenizer, flat))
    wholes: Iterator[list[int]] = iter(())
    if check_boundary and kind != "prompt":
        wholes = iter(
            _encode_batch(tokenizer, [p + text for p, rs in zip(prompts, responses, strict=True) for text, _ in rs])
        )

    out: list[tuple[Tokenized | None, TokenizeNote]] = []
    for rec, p_ids, rs in zip(records, prompt_ids, responses, strict=True):
        if prepend_bos and p_ids[:1] != [bos]:
            p_ids = [bos, *p_ids]
        r_ids: list[list[int]] = []
        merge = False
        for _text, has_eos in rs:
            ids = next(response_ids)
            if not has_eos:
                ids.append(eos)
            elif ids[-1:] != [eos]:
                raise DataError(
                    f"{rec.source}: the response ends with {tokenizer.eos_token!r}, which does not tokenise to "
                    f"the eos id {eos}"
                )
            r_ids.append(ids)
            if check_boundary:
                whole = next(wholes)
                if prepend_bos and whole[:1] != [bos]:
                    whole = [bos, *whole]
                merge = merge or whole + ([] if has_eos else [eos]) != p_ids + ids
        shrink = _shrinker(rec.prompt, rec.source, tokenizer, renderer, bos if prepend_bos else None)
        p_ids, r_ids, note = _fit(p_ids, r_ids or [[0]], max_length, max_prompt_length, shrink)
        note.boundary_merge = merge
        if kind == "prompt":
            note.response_tokens = note.response_cut = note.responses_cut = 0
        out.append((None if note.dropped else _example(kind, rec, p_ids, r_ids), note))
    return out


def _shrinker(
    prompt: list[Message], source: str, tokenizer: Any, renderer: Renderer, bos: int | None
) -> Callable[[int], Shrunk | None]:
    """The record's prompt re-rendered within n tokens by turns (:func:`shrink_prompt`), the BOS rule applied."""

    def encode_prompt(messages: list[Message]) -> list[int]:
        ids = encode(tokenizer, renderer.render_prompt(messages, source))
        return [bos, *ids] if bos is not None and ids[:1] != [bos] else ids

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def content_ids(text: str) -> list[int]:
        return encode(tokenizer, text)

    return lambda n, inside: shrink_prompt(prompt, n, encode_prompt, content_ids, decode, cut_inside=inside)


def _example(kind: str, rec: Record, p_ids: list[int], r_ids: list[list[int]]) -> Tokenized:
    if kind == "preference":
        return TokenizedPair(p_ids, r_ids[0], r_ids[1], rec.source)
    if kind == "demonstration":
        return TokenizedDemo(p_ids, r_ids[0], rec.source)
    if kind == "unpaired":
        assert isinstance(rec, UnpairedRecord)
        return TokenizedUnpaired(p_ids, r_ids[0], rec.label, rec.source)
    return TokenizedPrompt(p_ids, rec.source)


def tokenize_pair(
    rec: PreferenceRecord,
    tokenizer: Any,
    renderer: Renderer,
    max_length: int,
    max_prompt_length: int | None = None,
    *,
    check_boundary: bool = False,
) -> tuple[TokenizedPair | None, TokenizeNote]:
    """Tokenise a preference record; ``(None, note)`` with ``note.dropped`` set when the row is dropped."""
    [(example, note)] = tokenize_records(
        [rec], "preference", tokenizer, renderer, max_length, max_prompt_length, check_boundary=check_boundary
    )
    return example, note  # type: ignore[return-value]


def tokenize_demo(
    rec: DemonstrationRecord,
    tokenizer: Any,
    renderer: Renderer,
    max_length: int,
    max_prompt_length: int | None = None,
    *,
    check_boundary: bool = False,
) -> tuple[TokenizedDemo | None, TokenizeNote]:
    """Tokenise a demonstration record; ``(None, note)`` with ``note.dropped`` set when the row is dropped."""
    [(example, note)] = tokenize_records(
        [rec], "demonstration", tokenizer, renderer, max_length, max_prompt_length, check_boundary=check_boundary
    )
    return example, note  # type: ignore[return-value]


def tokenize_prompt(
    rec: Record,
    tokenizer: Any,
    renderer: Renderer,
    max_length: int,
    max_prompt_length: int | None = None,
) -> tuple[TokenizedPrompt | None, TokenizeNote]:
    """Tokenise a record's prompt for generation (with the generation prompt). It is capped to its last
    ``max_prompt_length`` tokens when set, and dropped (``prompt_too_long``) when it leaves no room to generate."""
    [(example, note)] = tokenize_records([rec], "prompt", tokenizer, renderer, max_length, max_prompt_length)
    return example, note  # type: ignore[return-value]
