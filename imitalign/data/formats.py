"""Row formats: turning rows into records, with errors that name the file, line and field.

Formats (``DataSource.format``; ``auto`` detects one from the first row):

==================  ==========================================================================================
``preference``      ``prompt`` (string or message list), ``chosen``, ``rejected`` (strings, or a one-message
                    assistant list as in TRL's conversational format)
``ultrafeedback``   ``chosen``/``rejected`` are message lists that include the prompt turns; the prompt is
                    their shared prefix, the responses their final assistant turns
``hh``              Anthropic HH-RLHF: ``chosen``/``rejected`` strings of ``"\\n\\nHuman: …\\n\\nAssistant: …"``
                    turns; the prompt is the dialogue before the last ``"\\n\\nAssistant:"`` (as messages),
                    the responses the (stripped) text after it
``demonstration``   ``prompt`` (string or message list), ``response``
``messages``        ``messages``: a message list whose last turn is the assistant response
``alpaca``          ``instruction``, optional ``input``, ``output``; the user turn is the instruction, plus
                    ``"\\n\\n" + input`` when the input is not empty
``prompt``          ``prompt`` only
==================  ==========================================================================================

Any format may carry a ``system`` string column (put first as a system message). ``columns`` renames: it maps
our field name to the file's column name (``{"prompt": "question", "response": "answer"}``). Every column
that is not consumed is kept in ``record.extra``.

Two kinds of problems:

- **errors** (:class:`DataError`, raised at the first bad row): a missing or misspelt field (the message lists
  the row's fields and suggests the closest), a wrong type, a message list that is not a list of
  ``{"role", "content"}`` turns, a format that cannot be detected;
- **skipped rows** (counted per reason in :class:`ParseStats`, with the first locations, and logged as one
  warning summary): an empty (or whitespace-only) prompt, chosen, rejected or response; chosen identical to
  rejected; HH or UltraFeedback rows whose chosen and rejected conversations disagree before the final turn.
  With ``strict=True`` the first skipped row raises a :class:`DataError` instead. Nothing is dropped silently.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from imitalign.data.records import (
    ROLES,
    DataError,
    DemonstrationRecord,
    Message,
    PreferenceRecord,
    PromptRecord,
    Record,
)

logger = logging.getLogger("imitalign.data")

FORMATS = ("preference", "ultrafeedback", "hh", "demonstration", "messages", "alpaca", "prompt")
REQUIRED: dict[str, tuple[str, ...]] = {
    "preference": ("prompt", "chosen", "rejected"),
    "ultrafeedback": ("chosen", "rejected"),
    "hh": ("chosen", "rejected"),
    "demonstration": ("prompt", "response"),
    "messages": ("messages",),
    "alpaca": ("instruction", "output"),
    "prompt": ("prompt",),
}
OPTIONAL: dict[str, tuple[str, ...]] = {"alpaca": ("input",)}
FIELDS = ("prompt", "chosen", "rejected", "response", "messages", "instruction", "input", "output", "system")
# Column names people use for our fields, to suggest a `columns` mapping when a field is missing.
_SYNONYMS: dict[str, tuple[str, ...]] = {
    "prompt": ("question", "query", "instruction", "input", "text", "context", "conversation"),
    "response": ("completion", "output", "answer", "target", "reply", "chosen"),
    "chosen": ("chosen_response", "preferred", "winner", "good", "response_chosen", "accepted"),
    "rejected": ("rejected_response", "dispreferred", "loser", "bad", "response_rejected"),
    "messages": ("conversations", "conversation", "dialog", "dialogue", "chat", "turns"),
    "output": ("response", "completion", "answer"),
    "instruction": ("prompt", "question", "query"),
}
SKIP_REASONS = {
    "empty_prompt": "empty prompt",
    "empty_chosen": "empty chosen response",
    "empty_rejected": "empty rejected response",
    "empty_response": "empty response",
    "identical_chosen_rejected": "chosen identical to rejected",
    "prompt_mismatch": "chosen and rejected disagree before their final assistant turn",
}
N_EXAMPLES = 3  # locations kept per reason

_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLE = {"Human": "user", "Assistant": "assistant"}
_SHAREGPT_ROLE = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}


class Skip(Exception):
    """A row that is well-formed but unusable: counted under ``reason`` and left out."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class ParseStats:
    """What happened to the rows of one source: counts per skip reason with the first locations."""

    source: str = ""
    format: str = ""
    rows_read: int = 0
    parsed: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> first locations
    notes: Counter[str] = field(default_factory=Counter)  # observations that changed no count

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def skip(self, reason: str, location: str) -> None:
        self.skipped[reason] += 1
        seen = self.examples.setdefault(reason, [])
        if len(seen) < N_EXAMPLES:
            seen.append(location)

    def summary(self) -> str:
        head = f"{self.source} (format {self.format}): {self.rows_read} rows read, {self.parsed} parsed"
        if not self.skipped:
            return head + ", none skipped"
        lines = [head + f", {self.n_skipped} skipped:"]
        for reason, n in self.skipped.most_common():
            where = ", ".join(self.examples.get(reason, []))
            lines.append(f"  {n} × {SKIP_REASONS.get(reason, reason)} [{reason}] (e.g. {where})")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- helpers


def _suggest(name: str, keys: Iterable[str]) -> str | None:
    keys = [str(k) for k in keys]
    lowered = {k.lower(): k for k in keys}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    if close:
        return lowered[close[0]]
    return next((lowered[s] for s in _SYNONYMS.get(name, ()) if s in lowered), None)


def _missing(location: str, name: str, row: dict[str, Any], fmt: str, columns: dict[str, str]) -> DataError:
    col = columns.get(name, name)
    what = f"field {name!r}" + (f" (mapped to column {col!r})" if col != name else "")
    fields = ", ".join(repr(k) for k in row) or "none"
    msg = f"{location}: missing {what} for format {fmt!r}; the row has fields {fields}"
    close = _suggest(col, row)
    if close is not None:
        msg += f". Did you mean {close!r}? (map it with columns: {{{name}: {close}}})"
    return DataError(msg)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _string(value: Any, location: str, name: str) -> str:
    if not isinstance(value, str):
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise DataError(f"{location}: field {name!r} should be a string, got {_type_name(value)} ({shown})")
    return value


def _messages(value: Any, location: str, name: str) -> list[Message]:
    """A validated message list: dicts with a known role and string content (ShareGPT from/value accepted)."""
    if not isinstance(value, list):
        raise DataError(f"{location}: field {name!r} should be a list of messages, got {_type_name(value)}")
    out: list[Message] = []
    for i, m in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(m, dict):
            raise DataError(
                f'{location}: {where} should be a message {{"role": ..., "content": ...}}, got {_type_name(m)}'
            )
        if "role" not in m and "from" in m:  # ShareGPT style
            role, content = _SHAREGPT_ROLE.get(str(m["from"]), m["from"]), m.get("value")
        else:
            if "role" not in m or "content" not in m:
                raise DataError(
                    f"{location}: {where} should have 'role' and 'content' keys, has {', '.join(map(repr, m))}"
                )
            role, content = m["role"], m["content"]
        if role not in ROLES:
            raise DataError(f"{location}: {where}.role is {role!r}; expected one of {', '.join(ROLES)}")
        out.append({"role": role, "content": _string(content, location, f"{where}.content")})
    return out


def _prompt(value: Any, location: str, name: str = "prompt") -> list[Message]:
    if isinstance(value, list):
        return _messages(value, location, name)
    return [{"role": "user", "content": _string(value, location, name)}]


def _response(value: Any, location: str, name: str, fmt: str) -> str:
    """A response: a string, or a list holding exactly one assistant message."""
    if isinstance(value, list):
        msgs = _messages(value, location, name)
        if len(msgs) != 1 or msgs[0]["role"] != "assistant":
            hint = (
                " (use format 'ultrafeedback' for lists that include the prompt turns)" if fmt == "preference" else ""
            )
            raise DataError(
                f"{location}: field {name!r} is a list of {len(msgs)} messages; expected a string or one "
                f"assistant message{hint}"
            )
        return msgs[0]["content"]
    return _string(value, location, name)


def _blank(text: str) -> bool:
    return not text.strip()


def _with_system(prompt: list[Message], row: dict[str, Any], location: str) -> list[Message]:
    system = row.get("system")
    if system is None or (isinstance(system, str) and not system.strip()):
        return prompt
    system = _string(system, location, "system")
    if prompt and prompt[0]["role"] == "system":
        return prompt
    return [{"role": "system", "content": system}, *prompt]


def _check_prompt(prompt: list[Message]) -> None:
    if not prompt or all(_blank(m["content"]) for m in prompt):
        raise Skip("empty_prompt")


def _check_pair(chosen: str, rejected: str) -> None:
    if _blank(chosen):
        raise Skip("empty_chosen")
    if _blank(rejected):
        raise Skip("empty_rejected")
    if chosen.strip() == rejected.strip():
        raise Skip("identical_chosen_rejected")


# ----------------------------------------------------------------------------------------------- formats


def split_hh(text: str) -> tuple[list[Message], str]:
    """Split one HH-RLHF string into (prompt messages, final assistant response).

    Turns are delimited by ``"\\n\\nHuman:"`` / ``"\\n\\nAssistant:"`` (the first may lack its blank line);
    contents are stripped; consecutive turns of the same role are joined with a blank line (a handful of real
    rows repeat ``Assistant:``); text before the first marker counts as a user turn. Raises ``ValueError`` when
    there is no Assistant turn.
    """
    if text.lstrip().startswith(("Human:", "Assistant:")):  # some copies drop the leading blank line
        text = "\n\n" + text.lstrip()
    cut = text.rfind("\n\nAssistant:")
    if cut < 0:
        raise ValueError("no '\\n\\nAssistant:' turn")
    head, response = text[:cut], text[cut + len("\n\nAssistant:") :]
    parts = _HH_TURN.split(head)
    turns: list[tuple[str, str]] = []
    if parts[0].strip():
        turns.append(("user", parts[0].strip()))
    for marker, content in zip(parts[1::2], parts[2::2], strict=True):
        role, content = _HH_ROLE[marker], content.strip()
        if turns and turns[-1][0] == role:
            turns[-1] = (role, (turns[-1][1] + "\n\n" + content).strip())
        else:
            turns.append((role, content))
    return [{"role": r, "content": c} for r, c in turns], response.strip()


def _final_turn(msgs: list[Message], location: str, name: str) -> tuple[list[Message], str]:
    if not msgs or msgs[-1]["role"] != "assistant":
        last = msgs[-1]["role"] if msgs else "nothing (empty list)"
        raise DataError(f"{location}: field {name!r} should end with an assistant turn, ends with {last}")
    return msgs[:-1], msgs[-1]["content"]


def _conversation_pair(
    prompt_c: list[Message], chosen: str, prompt_r: list[Message], rejected: str, row: dict[str, Any], location: str
) -> PreferenceRecord:
    """A pair from two whole conversations (UltraFeedback messages, HH strings): they must share the prompt
    (else the row is skipped as ``prompt_mismatch``); the row's ``system`` goes in front."""
    if prompt_c != prompt_r:
        raise Skip("prompt_mismatch")
    prompt = _with_system(prompt_c, row, location)
    _check_prompt(prompt)
    _check_pair(chosen, rejected)
    return PreferenceRecord(prompt, chosen, rejected, location)


def _parse(row: dict[str, Any], fmt: str, location: str) -> tuple[Record, set[str]]:
    """Parse a (renamed) row; returns the record without extra and the set of consumed fields."""
    if fmt == "preference":
        prompt = _with_system(_prompt(row["prompt"], location), row, location)
        chosen = _response(row["chosen"], location, "chosen", fmt)
        rejected = _response(row["rejected"], location, "rejected", fmt)
        _check_prompt(prompt)
        _check_pair(chosen, rejected)
        return PreferenceRecord(prompt, chosen, rejected, location), {"prompt", "chosen", "rejected", "system"}
    if fmt == "ultrafeedback":
        prompt_c, chosen = _final_turn(_messages(row["chosen"], location, "chosen"), location, "chosen")
        prompt_r, rejected = _final_turn(_messages(row["rejected"], location, "rejected"), location, "rejected")
        return _conversation_pair(prompt_c, chosen, prompt_r, rejected, row, location), {"chosen", "rejected", "system"}
    if fmt == "hh":
        chosen_text = _string(row["chosen"], location, "chosen")
        rejected_text = _string(row["rejected"], location, "rejected")
        try:
            prompt_c, chosen = split_hh(chosen_text)
            prompt_r, rejected = split_hh(rejected_text)
        except ValueError as e:
            raise DataError(f"{location}: an HH row's chosen and rejected need an Assistant turn: {e}") from None
        return _conversation_pair(prompt_c, chosen, prompt_r, rejected, row, location), {"chosen", "rejected", "system"}
    if fmt == "demonstration":
        prompt = _with_system(_prompt(row["prompt"], location), row, location)
        response = _response(row["response"], location, "response", fmt)
        _check_prompt(prompt)
        if _blank(response):
            raise Skip("empty_response")
        return DemonstrationRecord(prompt, response, location), {"prompt", "response", "system"}
    if fmt == "messages":
        prompt, response = _final_turn(_messages(row["messages"], location, "messages"), location, "messages")
        prompt = _with_system(prompt, row, location)
        _check_prompt(prompt)
        if _blank(response):
            raise Skip("empty_response")
        return DemonstrationRecord(prompt, response, location), {"messages", "system"}
    if fmt == "alpaca":
        instruction = _string(row["instruction"], location, "instruction")
        extra_input = row.get("input")
        extra_input = "" if extra_input is None else _string(extra_input, location, "input")
        output = _string(row["output"], location, "output")
        content = instruction + "\n\n" + extra_input if extra_input.strip() else instruction
        prompt = _with_system([{"role": "user", "content": content}], row, location)
        _check_prompt(prompt)
        if _blank(output):
            raise Skip("empty_response")
        return DemonstrationRecord(prompt, output, location), {"instruction", "input", "output", "system"}
    if fmt == "prompt":
        prompt = _with_system(_prompt(row["prompt"], location), row, location)
        _check_prompt(prompt)
        return PromptRecord(prompt, location), {"prompt", "system"}
    raise DataError(f"unknown data format {fmt!r}; known: auto, {', '.join(FORMATS)}")


def detect_format(row: dict[str, Any], location: str = "", kind: str | None = None) -> str:
    """The format of a (renamed) row, from its fields; raises :class:`DataError` when none fits.

    A row with only some of a format's fields (``chosen`` without ``rejected``, ``instruction`` without
    ``output``) is given that format, so that parsing names the missing field and suggests a close column.
    ``kind`` (``preference``/``demonstration``/``prompt``, what the caller needs) settles a row that has a
    ``prompt`` and nothing else we know: with ``preference`` or ``demonstration`` its response fields are
    reported missing instead of the row being read as a bare prompt.
    """
    if "chosen" in row or "rejected" in row:
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
            f"{location}: the row has {'chosen' if 'chosen' in row else 'rejected'!r} but no 'prompt', and it is not "
            "an HH-RLHF dialogue ('\\n\\nHuman: … \\n\\nAssistant: …') nor a message list; add or map a 'prompt' "
            f"column, or name the format (the row has fields {', '.join(map(repr, row))})"
        )
    if "messages" in row:
        return "messages"
    if "instruction" in row or ("output" in row and "prompt" not in row and "input" in row):
        return "alpaca"
    if "prompt" in row and "response" in row:
        return "demonstration"
    if "prompt" in row:
        return {"preference": "preference", "demonstration": "demonstration"}.get(kind or "", "prompt")
    known = "; ".join(f"{f}: {', '.join(REQUIRED[f])}" for f in FORMATS)
    hints = [
        f"{k!r} → {name!r}?"
        for name in ("prompt", "response", "chosen", "rejected", "messages")
        if (k := _suggest(name, row)) is not None and k != name
    ]
    hint = f" Possible mapping: {', '.join(hints)} (DataSource.columns: {{our_name: file_column}})." if hints else ""
    raise DataError(
        f"{location}: cannot detect the data format from the row's fields ({', '.join(map(repr, row))}). "
        f"Formats and their fields — {known}.{hint}"
    )


def check_columns(columns: dict[str, str]) -> None:
    """Reject a ``columns`` mapping whose keys are not our field names (with a suggestion)."""
    for ours in columns:
        if ours not in FIELDS:
            close = difflib.get_close_matches(ours, FIELDS, n=1)
            hint = f" — did you mean {close[0]!r}?" if close else ""
            raise DataError(
                f"columns: {ours!r} is not a field name{hint} (the mapping is our name -> the file's column; "
                f"our names: {', '.join(FIELDS)})"
            )


def rename(row: dict[str, Any], columns: dict[str, str]) -> dict[str, Any]:
    """Apply a ``columns`` mapping (our name -> file column). A mapped column that the row lacks leaves our
    field missing (it does not fall back to a column that happens to carry our name)."""
    if not columns:
        return row
    out = {k: v for k, v in row.items() if k not in columns.values()}
    for ours, col in columns.items():
        if col in row:
            out[ours] = row[col]
        else:
            out.pop(ours, None)
    return out


def parse_row(row: dict[str, Any], fmt: str, location: str, columns: dict[str, str] | None = None) -> Record:
    """Parse one raw row in a named format; raises :class:`DataError` (bad row) or :class:`Skip`."""
    columns = columns or {}
    renamed = rename(row, columns)
    for name in REQUIRED[fmt]:
        if name not in renamed:
            raise _missing(location, name, row, fmt, columns)
    record, used = _parse(renamed, fmt, location)
    system = renamed.get("system")
    if isinstance(system, str) and system.strip() and record.prompt[:1] != [{"role": "system", "content": system}]:
        used = used - {"system"}  # the prompt had its own system turn: keep the column in extra
    consumed = {columns.get(u, u) for u in used}
    return dataclasses.replace(record, extra={k: v for k, v in row.items() if k not in consumed})


def parse_rows(
    rows: Iterable[tuple[str, dict[str, Any]]],
    fmt: str = "auto",
    columns: dict[str, str] | None = None,
    *,
    source: str = "",
    strict: bool = False,
    warn: bool = True,
    kind: str | None = None,
) -> tuple[list[Record], ParseStats]:
    """Parse ``(location, row)`` pairs into records.

    The format is ``fmt`` or, for ``auto``, detected from the first row and then required of every row.
    Returns the records and the :class:`ParseStats`; logs one warning summarising skipped rows (``warn``).
    ``strict`` turns the first skipped row into a :class:`DataError`; ``kind`` (what the caller needs) helps
    detection name missing fields (see :func:`detect_format`).
    """
    columns = dict(columns or {})
    check_columns(columns)
    if fmt != "auto" and fmt not in FORMATS:
        raise DataError(f"unknown data format {fmt!r}; known: auto, {', '.join(FORMATS)}")
    stats = ParseStats(source=source, format=fmt)
    records: list[Record] = []
    for location, row in rows:
        stats.rows_read += 1
        if stats.format == "auto":
            stats.format = detect_format(rename(row, columns), location, kind)
        try:
            records.append(parse_row(row, stats.format, location, columns))
        except Skip as s:
            if strict:
                raise DataError(
                    f"{location}: {SKIP_REASONS.get(s.reason, s.reason)} [{s.reason}] (strict mode: no row may be "
                    "skipped)"
                ) from None
            stats.skip(s.reason, location)
    stats.parsed = len(records)
    if stats.rows_read == 0:
        raise DataError(f"{source or 'data'}: no rows")
    if warn and stats.skipped:
        logger.warning("skipped rows — %s", stats.summary())
    return records, stats
