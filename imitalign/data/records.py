"""The records every row format is parsed into (docs/contracts.md, "Records").

A record is the format-independent view of one row: the prompt as a list of chat messages, the response(s) as
plain strings, where the row came from (``"path:line"``) and every other column of the row, kept untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": str}

ROLES = ("system", "user", "assistant")


class DataError(ValueError):
    """A problem with the data (a file, a row, a field), with a message naming where and what to fix."""


@dataclass(frozen=True)
class PreferenceRecord:
    prompt: list[Message]  # the conversation up to (not including) the final assistant turn
    chosen: str  # final assistant turn, chosen
    rejected: str  # final assistant turn, rejected
    source: str  # "path:line" (1-based line of JSON Lines) or "path[index]" (0-based row of a JSON array, ...)
    extra: dict[str, Any] = field(default_factory=dict)  # every other column, kept


@dataclass(frozen=True)
class DemonstrationRecord:
    prompt: list[Message]
    response: str
    source: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PromptRecord:
    prompt: list[Message]
    source: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class UnpairedRecord:
    """Unpaired feedback (the KTO layout): one response and whether it is desirable."""

    prompt: list[Message]
    response: str
    label: bool  # True: desirable, False: undesirable
    source: str
    extra: dict[str, Any] = field(default_factory=dict)


Record = PreferenceRecord | DemonstrationRecord | PromptRecord | UnpairedRecord
