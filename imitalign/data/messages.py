"""Message lists as toolkits write them: ``{role, content}`` (OpenAI, TRL), ``{from, value}`` (ShareGPT,
LLaMA-Factory), with ``content`` a string or a list of typed parts, and a per-message ``loss_weight``.

- **Keys and role names** follow LLaMA-Factory's ``dataset_info.json`` ``tags`` (``role_tag``, ``content_tag``,
  ``user_tag``, ``assistant_tag``, ``system_tag``, ``observation_tag``, ``function_tag``), given as
  ``DataSource.tags``. Without tags a message may use ``role``/``content`` or ``from``/``value``, and the
  role names ``user``/``human``, ``assistant``/``gpt``, ``system``.
- **Content** is a string, or a list of parts ``{"type": "text", "text": …}`` (OpenAI) or
  ``{"type": "text", "value": …}`` (LLaMA-Factory v1); the text parts are concatenated. Any other part
  (``image_url``, ``input_audio``, ``video_url``, a tool call …) is refused, naming its type and where it is.
- **Tool turns** (``observation``, ``function_call``, ``tool``, or an assistant turn carrying ``tool_calls``)
  are refused likewise: imitalign trains on text conversations.
- **``loss_weight``** (LLaMA-Factory v1): kept per message so that a demonstration trains only its weighted
  assistant turns (:func:`weighted_turns`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imitalign.data.records import ROLES, DataError, Message

TAG_NAMES = ("role_tag", "content_tag", "user_tag", "assistant_tag", "system_tag", "observation_tag", "function_tag")
_DEFAULT_ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}
_TOOL_ROLES = ("observation", "function_call", "function", "tool", "tool_call", "ipython")


@dataclass(frozen=True)
class Tags:
    """LLaMA-Factory's ``tags``: which keys hold a message's role and content, and the role names."""

    role_tag: str | None = None  # None: "role", else "from"
    content_tag: str | None = None  # None: "content", else "value"
    user_tag: str | None = None
    assistant_tag: str | None = None
    system_tag: str | None = None
    observation_tag: str = "observation"
    function_tag: str = "function_call"

    @classmethod
    def from_config(cls, tags: dict[str, str] | None) -> Tags:
        tags = dict(tags or {})
        unknown = sorted(set(tags) - set(TAG_NAMES))
        if unknown:
            raise DataError(f"tags: unknown key(s) {', '.join(map(repr, unknown))}; known: {', '.join(TAG_NAMES)}")
        return cls(**tags)

    def roles(self) -> dict[str, str]:
        """The file's role names -> ours (tool roles are refused elsewhere)."""
        out = dict(_DEFAULT_ROLES)
        for tag, ours in ((self.user_tag, "user"), (self.assistant_tag, "assistant"), (self.system_tag, "system")):
            if tag is not None:
                out[tag] = ours
        return out


def type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def text_of(content: Any, location: str, where: str) -> str:
    """The text of a message's content: a string, or the concatenated text of a list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            at = f"{where}[{j}]"
            if isinstance(part, str):
                texts.append(part)
                continue
            if not isinstance(part, dict):
                raise DataError(
                    f"{location}: {at} should be a content part {{'type': 'text', …}}, got {type_name(part)}"
                )
            kind = part.get("type", "text" if ("text" in part or "value" in part) else None)
            if kind != "text":
                raise DataError(
                    f"{location}: {at} is a {kind!r} part; only text parts ('type': 'text') are supported — imitalign "
                    "trains on text conversations, so drop rows with images, audio or tool calls before training"
                )
            text = part.get("text", part.get("value"))
            if not isinstance(text, str):
                raise DataError(
                    f"{location}: {at}: a text part needs a string 'text' (or 'value'), got {type_name(text)}"
                )
            texts.append(text)
        return "".join(texts)
    shown = repr(content)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    raise DataError(
        f"{location}: {where} should be a string or a list of text parts, got {type_name(content)} ({shown})"
    )


def _keys(m: dict[str, Any], tags: Tags) -> tuple[str, str]:
    role_key = tags.role_tag or ("role" if "role" in m else "from" if "from" in m else "role")
    content_key = tags.content_tag or ("content" if "content" in m else "value" if "value" in m else "content")
    return role_key, content_key


def message(m: Any, location: str, where: str, tags: Tags) -> tuple[Message, float | None]:
    """One validated message and its ``loss_weight`` (None when it has none)."""
    if not isinstance(m, dict):
        raise DataError(f'{location}: {where} should be a message {{"role": ..., "content": ...}}, got {type_name(m)}')
    role_key, content_key = _keys(m, tags)
    if role_key not in m or content_key not in m:
        raise DataError(
            f"{location}: {where} should have {role_key!r} and {content_key!r} keys, has "
            f"{', '.join(map(repr, m)) or 'none'} (other keys: set data.train.tags, e.g. "
            "{role_tag: from, content_tag: value})"
        )
    raw_role = m[role_key]
    if raw_role in (tags.observation_tag, tags.function_tag, *_TOOL_ROLES) or m.get("tool_calls"):
        what = (
            "tool call"
            if m.get("tool_calls") or raw_role in (tags.function_tag, "function_call", "tool_call")
            else ("tool result")
        )
        raise DataError(
            f"{location}: {where} is a {what} turn ({role_key} {raw_role!r}); tool turns are not supported — "
            "imitalign trains on text conversations, so drop such rows before training"
        )
    role = tags.roles().get(str(raw_role), raw_role)
    if role not in ROLES:
        known = ", ".join(sorted(tags.roles()))
        raise DataError(
            f"{location}: {where}.{role_key} is {raw_role!r}; expected one of {known} (map other names with "
            "data.train.tags, e.g. {user_tag: human, assistant_tag: gpt})"
        )
    content = text_of(m[content_key], location, f"{where}.{content_key}")
    weight = m.get("loss_weight")
    if weight is not None and (isinstance(weight, bool) or not isinstance(weight, (int, float))):
        raise DataError(f"{location}: {where}.loss_weight should be a number, got {type_name(weight)}")
    return {"role": role, "content": content}, None if weight is None else float(weight)


def message_list(value: Any, location: str, name: str, tags: Tags | None = None) -> tuple[list[Message], list]:
    """A validated message list and the per-message loss weights (None where absent). ``name`` is the file's
    column, so that errors read ``chosen_messages[0].content``."""
    tags = tags or Tags()
    if not isinstance(value, list):
        raise DataError(f"{location}: field {name!r} should be a list of messages, got {type_name(value)}")
    out, weights = [], []
    for i, m in enumerate(value):
        msg, w = message(m, location, f"{name}[{i}]", tags)
        out.append(msg)
        weights.append(w)
    return out, weights


def weighted_turns(msgs: list[Message], weights: list[float | None]) -> list[int] | None:
    """Indices of the assistant turns to train on, by ``loss_weight``: those with a weight > 0; None when no
    message of the list carries a weight (then the final assistant turn is the response, as usual)."""
    if all(w is None for w in weights):
        return None
    return [i for i, (m, w) in enumerate(zip(msgs, weights, strict=True)) if m["role"] == "assistant" and (w or 0) > 0]
