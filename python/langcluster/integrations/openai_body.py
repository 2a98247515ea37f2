"""Routing keys read from OpenAI-style request bodies.

A chat is rendered as one text, role and content of each message in order,
so that equal conversations give equal text and a longer turn of a chat
starts with the text of the turn before it: what a prefix-aware balancer
needs to find the server that already holds the prefix. The simulated
servers of ``langcluster.testing`` render prompts the same way, so their
cache blocks and ``PrefixAware``'s blocks line up.
"""

from __future__ import annotations

import json
from typing import Any

from langcluster._core import read_prompt_fast

__all__ = ["PromptText", "chat_text", "read_prompt", "read_slowly"]

# The OpenAI paths whose bodies carry a prompt, and the field that holds it.
_FIELDS = (("/chat/completions", "messages"), ("/completions", "prompt"), ("/embeddings", "input"))
_FIELD_OF: dict[str, str | None] = {}  # each path's field, as found
_UNSEEN = ""


def _part_text(part: Any) -> str:
    if isinstance(part, str):
        return part
    if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
        return str(part["text"])
    # An image, audio or file part: its JSON, so equal parts give equal text.
    return json.dumps(part, sort_keys=True, separators=(",", ":"), default=str)


def _content(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(_part_text(part) for part in content)
    return _part_text(content)


def chat_text(messages: list[Any]) -> str:
    """The conversation as one text: ``<|role|>\\ncontent\\n`` per message."""
    out = []
    for message in messages:
        if isinstance(message, dict):
            out.append(f"<|{message.get('role', '')}|>\n{_content(message.get('content'))}\n")
        else:
            out.append(f"<||>\n{_content(message)}\n")
    return "".join(out)


def _plain(value: Any) -> str:
    """``prompt`` or ``input``: a text, a list of texts, token ids or lists of them."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(_plain(v) if isinstance(v, str | list) else str(v) for v in value)
    return json.dumps(value, default=str)


class PromptText:
    """What a request body says about routing: ``whole`` is the entire
    prompt (for a prefix-aware balancer), ``head`` the conversation before
    its newest message (for a hashing balancer: the same for every request
    that continues the same history); ``head`` is ``whole`` when there is no
    history. Each is rendered when first asked for."""

    __slots__ = ("_cut", "_head", "_messages", "_whole")

    def __init__(
        self, whole: str | None, messages: list[Any] | None = None, cut: int | None = None
    ) -> None:
        self._whole = whole
        self._head: str | None = whole if cut is None else None
        self._messages = messages
        self._cut = cut  # where ``head`` ends in ``whole``, when known

    @property
    def whole(self) -> str:
        if self._whole is None:
            self._whole = _render(self._messages or [])
        return self._whole

    @property
    def head(self) -> str:
        if self._head is None and self._cut is not None and self._whole is not None:
            self._head = self._whole[: self._cut]
        if self._head is None:
            messages = self._messages or []
            self._head = _render(messages[:-1]) if len(messages) > 1 else self.whole
        return self._head


def _render(messages: list[Any]) -> str:
    try:
        return chat_text(messages)
    except RecursionError:  # a part nested past Python's depth: no text to route by
        return ""


def read_prompt(path: str, body: bytes) -> PromptText | None:
    """The prompt of an OpenAI-style request to ``path``, or None when the
    path is not one of chat completions, completions or embeddings, or the
    body is not a JSON object holding the prompt field. Never raises."""
    field = _FIELD_OF.get(path, _UNSEEN)
    if field is _UNSEEN:
        field = next((f for suffix, f in _FIELDS if path.endswith(suffix)), None)
        if len(_FIELD_OF) < 256:  # the paths a service calls are few
            _FIELD_OF[path] = field
    if field is None:
        return None
    # The shapes clients send are read in Rust without building the body;
    # the rest (image parts, odd types, bodies that are not JSON) here.
    fast = read_prompt_fast(field, body) if isinstance(body, bytes) else None
    if fast is not None:
        return PromptText(fast[0], cut=fast[1])
    return read_slowly(field, body)


def read_slowly(field: str, body: bytes) -> PromptText | None:
    """``read_prompt`` in Python, for every shape of body (the rules)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        return None
    if not isinstance(data, dict) or field not in data:
        return None
    value = data[field]
    if field == "messages":
        return PromptText(None, value) if isinstance(value, list) and value else None
    try:
        return PromptText(_plain(value))
    except RecursionError:  # lists nested past Python's depth
        return None
