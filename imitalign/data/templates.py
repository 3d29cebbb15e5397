"""Rendering a conversation to text: chat templates, or plain text for tokenizers without one.

``Renderer(tokenizer, chat_template, system_prompt)``; ``chat_template`` (``DataConfig.chat_template``) is

- ``auto``: the tokenizer's own template when it has one, else plain text;
- ``none``: plain text;
- a template shipped with imitalign (``chatml``, ``llama3``, ``qwen2_5``, ``zephyr``: our own small versions
  of those formats, without tool calls, in ``imitalign/data/chat_templates/``);
- a path to a ``.jinja`` file (e.g. a model's template copied from its ``tokenizer_config.json``).

Templates are rendered as ``tokenizer.apply_chat_template`` renders them (so ``bos_token``, ``eos_token``,
``raise_exception`` and ``strftime_now`` behave as in ``transformers``). For speed the template compiled by
``transformers`` is called directly (``apply_chat_template`` spends most of its time copying messages); the
first rendering is compared with ``apply_chat_template`` and, should they ever differ (or the internal
function move), every rendering goes through ``apply_chat_template``.

**Plain text.** A single user turn renders as its content followed by one newline, and the response follows
directly (``"Name three colours.\\nRed, green and blue."``). Anything else (several turns, or a system turn)
renders as ``"{system}\\n\\nHuman: {user}\\n\\nAssistant: {assistant}\\n\\nHuman: …\\n\\nAssistant:"`` and the
response follows after one space. The prompt never ends in whitespace that a byte-level BPE would merge with
the response's first word, so tokenising prompt and response apart gives the same ids as tokenising the whole.

**The boundary.** :meth:`Renderer.render` renders the prompt *with* the generation prompt and the full
conversation *without* it, checks that the first is a prefix of the second, and returns the prompt text and
the rest (the response text, with whatever the template puts around it: end-of-turn tokens, a think block).
A template that breaks the prefix property (e.g. one whose generation prompt opens a ``<think>`` block that
the rendered conversation does not contain) raises a :class:`TemplateError` naming the template.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

from imitalign.data.records import DataError, Message

_SHIPPED_DIR = "chat_templates"


class TemplateError(DataError):
    """A chat template that cannot be used (unknown, missing, failing, or breaking the prompt/response split)."""


def shipped_templates() -> list[str]:
    """Names of the chat templates shipped in ``imitalign/data/chat_templates``."""
    folder = resources.files("imitalign.data").joinpath(_SHIPPED_DIR)
    return sorted(p.name[: -len(".jinja")] for p in folder.iterdir() if p.name.endswith(".jinja"))


def load_template(name: str) -> str:
    """The text of a shipped template (by name) or of a ``.jinja`` file (by path)."""
    if name in shipped_templates():
        return resources.files("imitalign.data").joinpath(_SHIPPED_DIR, f"{name}.jinja").read_text(encoding="utf-8")
    path = Path(name).expanduser()
    if path.is_file():
        return path.read_text(encoding="utf-8")
    if name.endswith((".jinja", ".j2", ".jinja2")) or "/" in name or "\\" in name:
        raise TemplateError(f"chat template file not found: {name}")
    raise TemplateError(
        f"unknown chat template {name!r}; use auto, none, one of {', '.join(shipped_templates())}, "
        "or a path to a .jinja file"
    )


def _compile(template: str) -> Any:
    """The template compiled in ``transformers``' own jinja environment, or None if that is unavailable."""
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template

        return _compile_jinja_template(template)
    except Exception:  # an internal function: any change sends rendering through apply_chat_template
        return None


def _plain_prompt(messages: list[Message]) -> str:
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"].rstrip() + "\n"
    names = {"user": "Human: ", "assistant": "Assistant: ", "system": ""}
    turns = [names[m["role"]] + m["content"].strip() for m in messages]
    return "\n\n".join([*turns, "Assistant:"])


def _plain_full(messages: list[Message], response: str) -> str:
    prompt = _plain_prompt(messages)
    sep = " " if prompt.endswith("Assistant:") and not response[:1].isspace() else ""
    return prompt + sep + response


class Renderer:
    """Renders prompts and conversations to text for one tokenizer and one template setting."""

    def __init__(self, tokenizer: Any, chat_template: str = "auto", system_prompt: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.template: str | None
        if chat_template == "none":
            self.template, self.name = None, "plain"
        elif chat_template == "auto":
            own = getattr(tokenizer, "chat_template", None)
            if isinstance(own, dict):  # several named templates: the default one
                own = own.get("default")
            self.template = own if isinstance(own, str) and own.strip() else None
            self.name = "the tokenizer's chat template" if self.template else "plain"
        else:
            self.template = load_template(chat_template)
            self.name = f"chat template {chat_template!r}"
        self._compiled = _compile(self.template) if self.template is not None else None
        self._checked = False
        special = getattr(tokenizer, "special_tokens_map", {}) or {}
        self._kwargs = {k: v for k, v in special.items() if isinstance(v, (str, list))}

    @property
    def is_plain(self) -> bool:
        return self.template is None

    def _messages(self, messages: list[Message]) -> list[Message]:
        if self.system_prompt and not (messages and messages[0]["role"] == "system"):
            return [{"role": "system", "content": self.system_prompt}, *messages]
        return messages

    def _apply(self, messages: list[Message], add_generation_prompt: bool, source: str) -> str:
        try:
            if self._compiled is not None:
                text = self._compiled.render(
                    messages=messages,
                    tools=None,
                    documents=None,
                    add_generation_prompt=add_generation_prompt,
                    **self._kwargs,
                )
                if not self._checked:
                    if text != self._public(messages, add_generation_prompt):
                        self._compiled = None
                        return self._public(messages, add_generation_prompt)
                    self._checked = True
                return text
            return self._public(messages, add_generation_prompt)
        except Exception as e:  # jinja errors and the template's own raise_exception
            where = f"{source}: " if source else ""
            raise TemplateError(f"{where}{self.name} failed to render the conversation: {e}") from None

    def _public(self, messages: list[Message], add_generation_prompt: bool) -> str:
        text = self.tokenizer.apply_chat_template(
            messages, chat_template=self.template, tokenize=False, add_generation_prompt=add_generation_prompt
        )
        if not isinstance(text, str):  # some versions return a list for batched input
            raise TypeError(f"apply_chat_template returned {type(text).__name__}, not text")
        return text

    def render_prompt(self, messages: list[Message], source: str = "") -> str:
        """The prompt as text, ending with the generation prompt (e.g. ``<|im_start|>assistant\\n``)."""
        messages = self._messages(messages)
        if self.template is None:
            return _plain_prompt(messages)
        return self._apply(messages, True, source)

    def render_full(self, messages: list[Message], response: str, source: str = "") -> str:
        """The whole conversation as text: the prompt turns and the response as the final assistant turn."""
        messages = self._messages(messages)
        if self.template is None:
            return _plain_full(messages, response)
        return self._apply([*messages, {"role": "assistant", "content": response}], False, source)

    def render(self, messages: list[Message], response: str, source: str = "") -> tuple[str, str]:
        """``(prompt_text, response_text)`` with ``prompt_text + response_text == render_full(...)``.

        Raises :class:`TemplateError` when the rendered prompt is not a prefix of the rendered conversation.
        """
        prompt = self.render_prompt(messages, source)
        return prompt, self._rest(prompt, self.render_full(messages, response, source), source)

    def render_many(self, messages: list[Message], responses: list[str], source: str = "") -> tuple[str, list[str]]:
        """Like :meth:`render` for several responses to one prompt (the prompt is rendered once)."""
        prompt = self.render_prompt(messages, source)
        return prompt, [self._rest(prompt, self.render_full(messages, r, source), source) for r in responses]

    def _rest(self, prompt: str, full: str, source: str) -> str:
        if not full.startswith(prompt):
            k = len(os.path.commonprefix([prompt, full]))
            where = f"{source}: " if source else ""
            raise TemplateError(
                f"{where}{self.name} breaks the prompt/response split: the prompt rendered with the generation "
                f"prompt is not a prefix of the rendered conversation. They differ at character {k}: prompt "
                f"…{prompt[max(0, k - 30) : k + 30]!r} vs conversation …{full[max(0, k - 30) : k + 30]!r}. "
                "Use another template (data.chat_template) or fix this one."
            )
        return full[len(prompt) :]

    def __repr__(self) -> str:
        return f"Renderer({self.name})"
