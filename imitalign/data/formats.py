"""Row formats: turning rows into records, with errors that name the file, line and field.

Formats (``DataSource.format``; ``auto`` detects one from the first row, :mod:`imitalign.data.detect`):

==================  ==========================================================================================
``preference``      ``prompt`` (string or message list), ``chosen``, ``rejected`` (strings, or a one-message
                    assistant list as in TRL's conversational format)
``ultrafeedback``   ``chosen``/``rejected`` are message lists that include the prompt turns; the prompt is
                    their shared prefix, the responses their final assistant turns
``pair_messages``   the same with the columns ``chosen_messages``/``rejected_messages`` (LLaMA-Factory v1)
``hh``              Anthropic HH-RLHF: ``chosen``/``rejected`` strings of ``"\\n\\nHuman: …\\n\\nAssistant: …"``
                    turns; the prompt is the dialogue before the last ``"\\n\\nAssistant:"`` (as messages),
                    the responses the (stripped) text after it
``demonstration``   ``prompt`` (string or message list), ``response`` (or TRL's ``completion``)
``messages``        ``messages``: a message list whose last turn is the assistant response; or ending on a user
                    turn, with ``chosen``/``rejected`` responses (see :mod:`imitalign.data.layouts_llamafactory`)
``sharegpt``        the same with ``conversations`` of ``{from, value}`` turns (ShareGPT, LLaMA-Factory)
``alpaca``          ``instruction``, optional ``input``, ``output`` (or ``chosen``/``rejected``), optional
                    ``history``; the user turn is the instruction, plus ``"\\n\\n" + input`` when not empty
``prompt``          ``prompt`` only
==================  ==========================================================================================

Messages may be ``{role, content}`` or ``{from, value}`` (other keys and role names through ``tags``, as in
LLaMA-Factory's ``dataset_info.json``), ``content`` a string or a list of text parts; a non-text part or a
tool turn is refused naming its type and row (:mod:`imitalign.data.messages`).

**Unpaired feedback.** A row of a demonstration layout with a ``label`` (booleans; LLaMA-Factory's ``kto_tag``
is read as the label; any column through ``columns: {label: my_column}``) is an :class:`UnpairedRecord`:
desirable when true, undesirable when false.

Any format may carry a ``system`` string column (put first as a system message). ``columns`` renames: it maps
our field name to the file's column name (``{"prompt": "question", "response": "answer"}``). Every column
that is not consumed is kept in ``record.extra``.

Two kinds of problems:

- **errors** (:class:`DataError`, raised at the first bad row): a missing or misspelt field (the message lists
  the row's fields and the configurations its columns allow), a wrong type, a bad message; each names the
  file's own column and the layout that was assumed;
- **skipped rows** (counted per reason in :class:`ParseStats`, with the first locations, and logged as one
  warning summary): an empty (or whitespace-only) prompt, chosen, rejected or response; chosen identical to
  rejected; HH or UltraFeedback rows whose chosen and rejected conversations disagree before the final turn;
  a ``loss_weight`` conversation with no weighted assistant turn.
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

from imitalign.data.detect import FIELDS, FORMATS, REQUIRED, can_be, detect_format, hint, implicit_columns
from imitalign.data.layouts_llamafactory import (
    Skip,
    blank,
    check_pair,
    check_prompt,
    parse_alpaca,
    parse_conversation,
    parse_pair_messages,
    single_response,
    string,
    with_system,
)
from imitalign.data.messages import Tags, message_list
from imitalign.data.records import (
    DataError,
    DemonstrationRecord,
    Message,
    PreferenceRecord,
    PromptRecord,
    Record,
    UnpairedRecord,
)

logger = logging.getLogger("imitalign.data")

__all__ = ["FIELDS", "FORMATS", "REQUIRED", "ParseStats", "Skip", "detect_format", "parse_row", "parse_rows"]

SKIP_REASONS = {
    "empty_prompt": "empty prompt",
    "empty_chosen": "empty chosen response",
    "empty_rejected": "empty rejected response",
    "empty_response": "empty response",
    "identical_chosen_rejected": "chosen identical to rejected",
    "prompt_mismatch": "chosen and rejected disagree before their final assistant turn",
    "no_weighted_turn": "no assistant turn with loss_weight > 0",
}
N_EXAMPLES = 3  # locations kept per reason

_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLE = {"Human": "user", "Assistant": "assistant"}


@dataclass
class ParseStats:
    """What happened to the rows of one source: counts per skip reason with the first locations."""

    source: str = ""
    format: str = ""
    rows_read: int = 0
    parsed: int = 0  # rows that gave records
    records: int = 0  # records made (a loss_weight conversation gives one per weighted turn)
    skipped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> first locations
    notes: Counter[str] = field(default_factory=Counter)  # observations that changed no count
    labels: Counter[str] = field(default_factory=Counter)  # unpaired rows: "desirable" / "undesirable"

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
    return lowered[close[0]] if close else None


def _missing(
    location: str, name: str, row: dict[str, Any], fmt: str, columns: dict[str, str], kind: str | None
) -> DataError:
    col = columns.get(name, name)
    what = f"field {name!r}" + (f" (mapped to column {col!r})" if col != name else "")
    fields = ", ".join(repr(k) for k in row) or "none"
    msg = f"{location}: missing {what} for format {fmt!r}; the row has fields {fields}"
    close = _suggest(col, row)
    readings = hint(row, kind)
    if readings:
        msg += "." + readings
    elif close is not None and close not in columns.values() and can_be(name, close, row):
        msg += f". Did you mean {close!r}? (map it with columns: {{{name}: {close}}})"
    return DataError(msg)


def _prompt(value: Any, location: str, name: str, tags: Tags) -> list[Message]:
    if isinstance(value, list):
        return message_list(value, location, name, tags)[0]
    return [{"role": "user", "content": string(value, location, name)}]


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
    prompt_c: list[Message],
    chosen: str,
    prompt_r: list[Message],
    rejected: str,
    row: dict[str, Any],
    location: str,
    names: dict[str, str],
) -> PreferenceRecord:
    """A pair from two whole conversations (UltraFeedback messages, HH strings): they must share the prompt
    (else the row is skipped as ``prompt_mismatch``); the row's ``system`` goes in front."""
    if prompt_c != prompt_r:
        raise Skip("prompt_mismatch")
    prompt = with_system(prompt_c, row, location, names)
    check_prompt(prompt)
    check_pair(chosen, rejected)
    return PreferenceRecord(prompt, chosen, rejected, location)


_PAIR_USED = {"chosen", "rejected", "system"}


def _parse_paired(
    row: dict[str, Any], fmt: str, location: str, tags: Tags, names: dict[str, str]
) -> tuple[Record, set[str]]:
    if fmt == "preference":
        prompt = with_system(
            _prompt(row["prompt"], location, names.get("prompt", "prompt"), tags), row, location, names
        )
        chosen = single_response(row["chosen"], location, names.get("chosen", "chosen"), tags)
        rejected = single_response(row["rejected"], location, names.get("rejected", "rejected"), tags)
        check_prompt(prompt)
        check_pair(chosen, rejected)
        return PreferenceRecord(prompt, chosen, rejected, location), {"prompt", *_PAIR_USED}
    if fmt == "pair_messages":
        parts = parse_pair_messages(row, location, tags, names)
        used = {"chosen_messages", "rejected_messages", "system"}
        return _conversation_pair(*parts, row, location, names), used
    if fmt == "ultrafeedback":
        c, r = names.get("chosen", "chosen"), names.get("rejected", "rejected")
        prompt_c, chosen = _final_turn(message_list(row["chosen"], location, c, tags)[0], location, c)
        prompt_r, rejected = _final_turn(message_list(row["rejected"], location, r, tags)[0], location, r)
        return _conversation_pair(prompt_c, chosen, prompt_r, rejected, row, location, names), _PAIR_USED
    chosen_text = string(row["chosen"], location, names.get("chosen", "chosen"))  # hh
    rejected_text = string(row["rejected"], location, names.get("rejected", "rejected"))
    try:
        prompt_c, chosen = split_hh(chosen_text)
        prompt_r, rejected = split_hh(rejected_text)
    except ValueError as e:
        raise DataError(f"{location}: an HH row's chosen and rejected need an Assistant turn: {e}") from None
    return _conversation_pair(prompt_c, chosen, prompt_r, rejected, row, location, names), _PAIR_USED


def _parse(
    row: dict[str, Any], fmt: str, location: str, tags: Tags, names: dict[str, str], notes: Counter[str]
) -> tuple[list[Record], set[str]]:
    """Parse a (renamed) row; returns the records without extra and the set of consumed fields."""
    if fmt in ("preference", "pair_messages", "ultrafeedback", "hh"):
        record, used = _parse_paired(row, fmt, location, tags, names)
        return [record], used
    if fmt in ("messages", "sharegpt"):
        return parse_conversation(row, fmt if fmt == "messages" else "conversations", location, tags, names, notes)
    if fmt == "alpaca":
        record, used = parse_alpaca(row, location, names)
        return [record], used
    if fmt == "demonstration":
        prompt = with_system(
            _prompt(row["prompt"], location, names.get("prompt", "prompt"), tags), row, location, names
        )
        response = single_response(row["response"], location, names.get("response", "response"), tags)
        check_prompt(prompt)
        if blank(response):
            raise Skip("empty_response")
        return [DemonstrationRecord(prompt, response, location)], {"prompt", "response", "system"}
    if fmt == "prompt":
        prompt = with_system(
            _prompt(row["prompt"], location, names.get("prompt", "prompt"), tags), row, location, names
        )
        check_prompt(prompt)
        return [PromptRecord(prompt, location)], {"prompt", "system"}
    raise DataError(f"unknown data format {fmt!r}; known: auto, {', '.join(FORMATS)}")


_TRUE = (True, 1, "true", "True", "1", "yes")
_FALSE = (False, 0, "false", "False", "0", "no")


def _label(value: Any, location: str, name: str) -> bool:
    if isinstance(value, bool) or value in (0, 1) or value in _TRUE[2:] + _FALSE[2:]:
        return value in _TRUE
    raise DataError(
        f"{location}: field {name!r} is the unpaired-feedback label and should be true or false, got {value!r} (if "
        f"{name!r} is not feedback, leave it unmapped or map another column with columns: {{label: ...}})"
    )


def _with_label(
    records: list[Record], row: dict[str, Any], location: str, names: dict[str, str], explicit: bool
) -> tuple[list[Record], bool]:
    """Demonstrations become unpaired feedback when the row has a label (booleans; any value when mapped). An
    unmapped boolean ``label`` on rows that are not demonstrations (a pair file's own column) is left in extra."""
    if "label" not in row or not (explicit or isinstance(row["label"], bool)):
        return records, False
    if not explicit and not all(isinstance(r, DemonstrationRecord) for r in records):
        return records, False
    label = _label(row["label"], location, names.get("label", "label"))
    out: list[Record] = []
    for r in records:
        if not isinstance(r, DemonstrationRecord):
            raise DataError(
                f"{location}: a {names.get('label', 'label')!r} label belongs to rows with one response (unpaired "
                f"feedback), but this row is a {type(r).__name__.removesuffix('Record').lower()} row"
            )
        out.append(UnpairedRecord(r.prompt, r.response, label, r.source))
    return out, True


# LLaMA-Factory's dataset_info.json column roles that have another name here
_LLAMAFACTORY_NAMES = {"query": "input", "kto_tag": "label"}


def check_columns(columns: dict[str, str]) -> None:
    """Reject a ``columns`` mapping whose keys are not our field names (with a suggestion)."""
    for ours in columns:
        if ours not in FIELDS:
            close = (
                [_LLAMAFACTORY_NAMES[ours]]
                if ours in _LLAMAFACTORY_NAMES
                else difflib.get_close_matches(ours, FIELDS, n=1)
            )
            hint_ = f" — did you mean {close[0]!r}?" if close else ""
            raise DataError(
                f"columns: {ours!r} is not a field name{hint_} (the mapping is our name -> the file's column; "
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


def _required(fmt: str, row: dict[str, Any]) -> tuple[str, ...]:
    if fmt == "alpaca" and "output" not in row and ("chosen" in row or "rejected" in row):
        return ("instruction", "chosen", "rejected")
    if fmt == "alpaca":
        return ("instruction", "output")
    return REQUIRED[fmt]


def parse_row(
    row: dict[str, Any],
    fmt: str,
    location: str,
    columns: dict[str, str] | None = None,
    *,
    tags: Tags | None = None,
    kind: str | None = None,
    notes: Counter[str] | None = None,
) -> list[Record]:
    """Parse one raw row in a named format into its records (one, or one per weighted turn); raises
    :class:`DataError` (bad row, naming the assumed layout) or :class:`Skip`."""
    given = columns or {}
    columns = implicit_columns(row, given)
    renamed = rename(row, columns)
    for name in _required(fmt, renamed):
        if name not in renamed:
            raise _missing(location, name, row, fmt, columns, kind)
    try:
        records, used = _parse(renamed, fmt, location, tags or Tags(), columns, Counter() if notes is None else notes)
        records, labelled = _with_label(records, renamed, location, columns, "label" in given)
    except DataError as e:
        raise DataError(f"{e} [read as format {fmt!r}; another layout: set data.train.format]") from None
    if labelled:
        used = used | {"label"}
    system = renamed.get("system")
    if isinstance(system, str) and system.strip() and records[0].prompt[:1] != [{"role": "system", "content": system}]:
        used = used - {"system"}  # the prompt had its own system turn: keep the column in extra
    consumed = {columns.get(u, u) for u in used}
    extra = {k: v for k, v in row.items() if k not in consumed}
    return [dataclasses.replace(r, extra=dict(extra)) for r in records]


def parse_rows(
    rows: Iterable[tuple[str, dict[str, Any]]],
    fmt: str = "auto",
    columns: dict[str, str] | None = None,
    *,
    source: str = "",
    strict: bool = False,
    warn: bool = True,
    kind: str | None = None,
    tags: dict[str, str] | None = None,
) -> tuple[list[Record], ParseStats]:
    """Parse ``(location, row)`` pairs into records.

    The format is ``fmt`` or, for ``auto``, detected from the first row and then required of every row.
    Returns the records and the :class:`ParseStats`; logs one warning summarising skipped rows (``warn``).
    ``strict`` turns the first skipped row into a :class:`DataError`; ``kind`` (what the caller needs) helps
    detection name missing fields (see :func:`detect_format`); ``tags`` are LLaMA-Factory's message tags.
    """
    columns = dict(columns or {})
    check_columns(columns)
    message_tags = Tags.from_config(tags)
    if fmt != "auto" and fmt not in FORMATS:
        raise DataError(f"unknown data format {fmt!r}; known: auto, {', '.join(FORMATS)}")
    stats = ParseStats(source=source, format=fmt)
    records: list[Record] = []
    for location, row in rows:
        stats.rows_read += 1
        if stats.format == "auto":
            stats.format = detect_format(rename(row, implicit_columns(row, columns)), location, kind)
        try:
            made = parse_row(row, stats.format, location, columns, tags=message_tags, kind=kind, notes=stats.notes)
        except Skip as s:
            if strict:
                raise DataError(
                    f"{location}: {SKIP_REASONS.get(s.reason, s.reason)} [{s.reason}] (strict mode: no row may be "
                    "skipped)"
                ) from None
            stats.skip(s.reason, location)
            continue
        stats.parsed += 1
        records += made
        for r in made:
            if isinstance(r, UnpairedRecord):
                stats.labels["desirable" if r.label else "undesirable"] += 1
    stats.records = len(records)
    if stats.rows_read == 0:
        raise DataError(f"{source or 'data'}: no rows")
    if warn and stats.skipped:
        logger.warning("skipped rows — %s", stats.summary())
    return records, stats
