"""What a simulated server says: the OpenAI wire format as vLLM speaks it,
over a prefix cache and a bounded set of running requests.

The prompt of a request is rendered as ``langcluster.integrations.transport`` renders it
for routing, then cut into blocks of ``block_tokens`` tokens (a token is
four bytes of UTF-8 here), each block's id chained to the ids before it, so
equal ids mean an equal prefix. Full blocks are cached, least recently used
first out; the cached leading blocks of a prompt are its
``cached_tokens``, and only the rest is prefilled.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from langcluster.integrations.openai_body import chat_text
from langcluster.testing.fleet import held_prefix

__all__ = ["BYTES_PER_TOKEN", "PrefixCache", "answer_body", "embeddings_body", "stream_events"]

BYTES_PER_TOKEN = 4


def tokens(text: str) -> int:
    return -(-len(text.encode()) // BYTES_PER_TOKEN)


class PrefixCache:
    """A server's KV cache as block ids: ``admit`` looks a prompt up, then
    holds its full blocks, evicting the least recent."""

    def __init__(self, capacity_blocks: int, block_tokens: int) -> None:
        self.capacity_blocks = capacity_blocks
        self.block_bytes = block_tokens * BYTES_PER_TOKEN
        self.block_tokens = block_tokens
        self.blocks: OrderedDict[bytes, None] = OrderedDict()

    def ids(self, text: str) -> list[bytes]:
        data = text.encode()
        out, previous = [], b""
        for start in range(0, len(data) - self.block_bytes + 1, self.block_bytes):
            previous = hashlib.blake2b(
                previous + data[start : start + self.block_bytes], digest_size=8
            ).digest()
            out.append(previous)
        return out

    def admit(self, text: str) -> int:
        """Cached tokens of the prompt ``text``, which is then cached."""
        ids = self.ids(text)
        hit = held_prefix(ids, self.blocks)
        for block in reversed(ids):  # a prompt's first blocks are evicted last
            if block in self.blocks:
                self.blocks.move_to_end(block)
            else:
                self.blocks[block] = None
        while len(self.blocks) > self.capacity_blocks:
            self.blocks.popitem(last=False)
        return hit * self.block_tokens


def prompt_of(path: str, request: dict[str, Any]) -> str:
    """The text a request's prompt is read as (the router's rendering)."""
    if path.endswith("/chat/completions"):
        messages = request.get("messages")
        return chat_text(messages) if isinstance(messages, list) else ""
    value = request.get("prompt" if path.endswith("/completions") else "input", "")
    if isinstance(value, list):
        return "\n".join(v if isinstance(v, str) else json.dumps(v) for v in value)
    return value if isinstance(value, str) else json.dumps(value)


def reply_pieces(node_id: str, path: str, request: dict[str, Any]) -> list[str]:
    """The answer, one token per piece: which server answered, and to what."""
    if path.endswith("/chat/completions"):
        messages = request.get("messages") or [{}]
        last = messages[-1] if isinstance(messages[-1], dict) else {}
        asked = str(last.get("content", ""))
    else:
        asked = str(request.get("prompt", ""))
    pieces = re.findall(r"\S+\s*", f"[{node_id}] answer to: {asked[-60:]}")
    limit = request.get("max_completion_tokens") or request.get("max_tokens")
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
        pieces = pieces[:limit]
    return pieces


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def _head(chat: bool, answer_id: str, model: str, node_id: str) -> dict[str, Any]:
    return {
        "id": answer_id,
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": node_id,
    }


def answer_body(
    chat: bool, answer_id: str, model: str, node_id: str, pieces: list[str], finish: str, use: Any
) -> dict[str, Any]:
    """A whole (not streamed) chat completion or completion."""
    text = "".join(pieces)
    choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return {**_head(chat, answer_id, model, node_id), "choices": [choice], "usage": use}


def _event(data: Any) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


async def stream_events(
    chat: bool,
    answer_id: str,
    model: str,
    node_id: str,
    pieces: AsyncIterator[str],
    finish: str,
    use: Any | None,
) -> AsyncIterator[bytes]:
    """Server-sent events of a streamed answer: a chunk per token, the
    finish reason, the usage when asked for, then ``data: [DONE]``."""
    head = {**_head(chat, answer_id, model, node_id)}
    head["object"] = "chat.completion.chunk" if chat else "text_completion"
    first = True
    async for piece in pieces:
        if chat:
            delta = {"role": "assistant", "content": piece} if first else {"content": piece}
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
        else:
            choice = {"index": 0, "text": piece, "logprobs": None, "finish_reason": None}
        first = False
        yield _event({**head, "choices": [choice]})
    last: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish}
    if chat:
        last["delta"] = {}
    else:
        last["text"] = ""
    yield _event({**head, "choices": [last]})
    if use is not None:
        yield _event({**head, "choices": [], "usage": use})
    yield b"data: [DONE]\n\n"


def _vector(text: str, dimensions: int) -> list[float]:
    seed = hashlib.blake2b(text.encode(), digest_size=32).digest()
    data = b""
    while len(data) < dimensions:
        seed = hashlib.blake2b(seed, digest_size=32).digest()
        data += seed
    return [b / 127.5 - 1.0 for b in data[:dimensions]]


def embeddings_body(request: dict[str, Any], model: str) -> dict[str, Any]:
    """``/v1/embeddings``: a repeatable vector per input, as floats or as
    base64 of little-endian float32 (``encoding_format``)."""
    given = request.get("input", "")
    inputs = given if isinstance(given, list) and given else [given]
    dimensions = request.get("dimensions")
    if type(dimensions) is not int or not 0 < dimensions <= 4096:
        dimensions = 16
    data = []
    for i, item in enumerate(inputs):
        vector = _vector(item if isinstance(item, str) else json.dumps(item), dimensions)
        embedding: Any = vector
        if request.get("encoding_format") == "base64":
            embedding = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    used = sum(tokens(i if isinstance(i, str) else json.dumps(i)) for i in inputs)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": used, "total_tokens": used},
    }
