"""The conversation layouts of LLaMA-Factory, ShareGPT and OpenAI (read through :mod:`imitalign.data.messages`).

==================  ==========================================================================================
``sharegpt``        ``conversations``: ``{from, value}`` turns (``human``/``gpt``/``system``; keys and role
                    names as LLaMA-Factory's ``tags``). Ending on an assistant turn: a demonstration. Ending on
                    a user turn with ``chosen`` and ``rejected`` each a single ``{from, value}`` object (or a
                    string): a preference pair (LLaMA-Factory ``ranking: true``)
``messages``        the same with the column ``messages`` (OpenAI ``{role, content}``; ``content`` a string or a
                    list of text parts)
``pair_messages``   LLaMA-Factory v1 DPO: ``chosen_messages`` / ``rejected_messages``, two whole conversations
                    sharing the prompt turns
``alpaca``          ``instruction``, optional ``input`` (joined to the instruction by a blank line), ``output``
                    (a demonstration) or ``chosen``/``rejected`` (a pair); optional ``history`` of
                    ``[instruction, response]`` pairs put before it as earlier turns (context only)
==================  ==========================================================================================

Per-message ``loss_weight`` (LLaMA-Factory v1): a demonstration trains only its assistant turns with a weight
> 0, each as its own example whose prompt is everything before it (located ``file:line messages[i]``); a
non-zero weight other than 1 counts as 1 (noted). Preference and unpaired rows ignore weights.
"""

from __future__ import annotations

from typing import Any

from imitalign.data.messages import Tags, message, message_list, type_name, weighted_turns
from imitalign.data.records import DataError, DemonstrationRecord, Message, PreferenceRecord, Record

Names = dict[str, str]  # our field name -> the file's column (for messages that name the file's columns)


class Skip(Exception):
    """A row that is well-formed but unusable: counted under ``reason`` and left out."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def blank(text: str) -> bool:
    return not text.strip()


def check_prompt(prompt: list[Message]) -> None:
    if not prompt or all(blank(m["content"]) for m in prompt):
        raise Skip("empty_prompt")


def check_pair(chosen: str, rejected: str) -> None:
    if blank(chosen):
        raise Skip("empty_chosen")
    if blank(rejected):
        raise Skip("empty_rejected")
    if chosen.strip() == rejected.strip():
        raise Skip("identical_chosen_rejected")


def string(value: Any, location: str, name: str) -> str:
    if not isinstance(value, str):
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise DataError(f"{location}: field {name!r} should be a string, got {type_name(value)} ({shown})")
    return value


def with_system(prompt: list[Message], row: dict[str, Any], location: str, names: Names) -> list[Message]:
    system = row.get("system")
    if system is None or (isinstance(system, str) and not system.strip()):
        return prompt
    system = string(system, location, names.get("system", "system"))
    if prompt and prompt[0]["role"] == "system":
        return prompt
    return [{"role": "system", "content": system}, *prompt]


def single_response(value: Any, location: str, name: str, tags: Tags) -> str:
    """A response given as a string, one ``{from, value}``/``{role, content}`` object, or a one-message list;
    it must be an assistant turn."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        msgs, _ = message_list(value, location, name, tags)
        if len(msgs) != 1 or msgs[0]["role"] != "assistant":
            raise DataError(
                f"{location}: field {name!r} is a list of {len(msgs)} messages; expected a string or one assistant "
                "message (for whole conversations use the columns chosen_messages/rejected_messages, format "
                "pair_messages, or format ultrafeedback)"
            )
        return msgs[0]["content"]
    if isinstance(value, dict):
        msg, _ = message(value, location, name, tags)
        if msg["role"] != "assistant":
            raise DataError(f"{location}: field {name!r} is a {msg['role']} message; a response is an assistant turn")
        return msg["content"]
    raise DataError(f"{location}: field {name!r} should be a string or an assistant message, got {type_name(value)}")


def _expand_weighted(
    msgs: list[Message], turns: list[int], row: dict[str, Any], location: str, names: Names, field: str
) -> list[Record]:
    out: list[Record] = []
    for i in turns:
        prompt = with_system(msgs[:i], row, location, names)
        check_prompt(prompt)
        if blank(msgs[i]["content"]):
            continue
        out.append(DemonstrationRecord(prompt, msgs[i]["content"], f"{location} {field}[{i}]"))
    if not out:
        raise Skip("no_weighted_turn")
    return out


def parse_conversation(
    row: dict[str, Any], field: str, location: str, tags: Tags, names: Names, notes: Any = None
) -> tuple[list[Record], set[str]]:
    """``sharegpt`` / ``messages`` rows: a demonstration (or several, by ``loss_weight``), or a pair when the
    row has ``chosen``/``rejected`` responses to the conversation."""
    col = names.get(field, field)
    msgs, weights = message_list(row[field], location, col, tags)
    if "chosen" in row or "rejected" in row:
        for name in ("chosen", "rejected"):
            if name not in row:
                raise DataError(
                    f"{location}: the row has {('rejected' if name == 'chosen' else 'chosen')!r} but no {name!r} "
                    f"(a pair needs both; the row has fields {', '.join(map(repr, row))})"
                )
        if msgs and msgs[-1]["role"] == "assistant":
            raise DataError(
                f"{location}: {col!r} ends with an assistant turn but the row also has chosen/rejected: in a pairwise "
                f"row the conversation ends on the user turn that chosen and rejected answer"
            )
        prompt = with_system(msgs, row, location, names)
        chosen = single_response(row["chosen"], location, names.get("chosen", "chosen"), tags)
        rejected = single_response(row["rejected"], location, names.get("rejected", "rejected"), tags)
        check_prompt(prompt)
        check_pair(chosen, rejected)
        return [PreferenceRecord(prompt, chosen, rejected, location)], {field, "chosen", "rejected", "system"}
    turns = weighted_turns(msgs, weights)
    if turns is not None:
        if notes is not None and any(w not in (None, 0.0, 1.0) for w in weights):
            notes["loss_weight other than 0 or 1 counted as 1 (a weighted turn is trained, unscaled)"] += 1
        return _expand_weighted(msgs, turns, row, location, names, col), {field, "system"}
    if not msgs or msgs[-1]["role"] != "assistant":
        last = msgs[-1]["role"] if msgs else "nothing (empty list)"
        raise DataError(
            f"{location}: field {col!r} should end with an assistant turn (the response), ends with {last}; a "
            "conversation ending on a user turn needs chosen/rejected (a pair) or is a prompt (format prompt)"
        )
    prompt = with_system(msgs[:-1], row, location, names)
    check_prompt(prompt)
    if blank(msgs[-1]["content"]):
        raise Skip("empty_response")
    return [DemonstrationRecord(prompt, msgs[-1]["content"], location)], {field, "system"}


def parse_pair_messages(
    row: dict[str, Any], location: str, tags: Tags, names: Names
) -> tuple[list[Message], str, list[Message], str]:
    """``chosen_messages`` / ``rejected_messages``: ``(prompt_c, chosen, prompt_r, rejected)``."""
    out: list[Any] = []
    for name in ("chosen_messages", "rejected_messages"):
        col = names.get(name, name)
        msgs, _ = message_list(row[name], location, col, tags)
        if not msgs or msgs[-1]["role"] != "assistant":
            last = msgs[-1]["role"] if msgs else "nothing (empty list)"
            raise DataError(f"{location}: field {col!r} should end with an assistant turn, ends with {last}")
        out += [msgs[:-1], msgs[-1]["content"]]
    return out[0], out[1], out[2], out[3]


def _history(value: Any, location: str, name: str) -> list[Message]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise DataError(f"{location}: field {name!r} should be a list of [instruction, response] pairs")
    out: list[Message] = []
    for i, turn in enumerate(value):
        if not (isinstance(turn, list) and len(turn) == 2 and all(isinstance(t, str) for t in turn)):
            raise DataError(f"{location}: {name}[{i}] should be a pair [instruction, response] of strings")
        out += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
    return out


def parse_alpaca(row: dict[str, Any], location: str, names: Names) -> tuple[Record, set[str]]:
    """``alpaca`` rows: ``instruction`` (+ ``input``) and ``output`` (a demonstration) or ``chosen``/``rejected``
    (a pair), with an optional ``history``."""
    instruction = string(row["instruction"], location, names.get("instruction", "instruction"))
    extra_input = row.get("input")
    extra_input = "" if extra_input is None else string(extra_input, location, names.get("input", "input"))
    content = instruction + "\n\n" + extra_input if extra_input.strip() else instruction
    turns = [
        *_history(row.get("history"), location, names.get("history", "history")),
        {"role": "user", "content": content},
    ]
    prompt = with_system(turns, row, location, names)
    used = {"instruction", "input", "system", "history"}
    if "output" not in row and ("chosen" in row or "rejected" in row):
        chosen = string(row.get("chosen"), location, names.get("chosen", "chosen"))
        rejected = string(row.get("rejected"), location, names.get("rejected", "rejected"))
        check_prompt(prompt)
        check_pair(chosen, rejected)
        return PreferenceRecord(prompt, chosen, rejected, location), used | {"chosen", "rejected"}
    output = string(row["output"], location, names.get("output", "output"))
    check_prompt(prompt)
    if blank(output):
        raise Skip("empty_response")
    return DemonstrationRecord(prompt, output, location), used | {"output"}
