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

__all__ = [
    "BYTES_PER_TOKEN",
    "PrefixCache",
    "answer_body",
    "embeddings_body",
    "metrics_text",
    "server_info",
    "stream_events",
    "tokenize",
    "tokenize_answer",
]

BYTES_PER_TOKEN = 4


def tokens(text: str) -> int:
    return -(-len(text.encode()) // BYTES_PER_TOKEN)


def tokenize(text: str) -> list[int]:
    """The simulated servers' tokenizer: each four bytes of the text's
    UTF-8, little-endian, one token id (the last zero-padded). Give it to
    ``PrefixAware(tokenizer=...)`` and the router's token blocks are the
    servers' blocks."""
    data = text.encode()
    data += b"\0" * (-len(data) % BYTES_PER_TOKEN)
    return list(struct.unpack(f"<{len(data) // BYTES_PER_TOKEN}I", data))


class PrefixCache:
    """A server's KV cache as block ids: ``admit`` looks a prompt up, then
    holds its full blocks, evicting the least recent. With ``events`` on, it
    keeps what it stored and evicted as vLLM's KV events describe it (a
    block's id is the server's own hash; its tokens are ``tokenize``'s)."""

    def __init__(self, capacity_blocks: int, block_tokens: int) -> None:
        self.capacity_blocks = capacity_blocks
        self.block_bytes = block_tokens * BYTES_PER_TOKEN
        self.block_tokens = block_tokens
        self.blocks: OrderedDict[bytes, None] = OrderedDict()
        self.events: list[Any] | None = None
        self._tokens: dict[bytes, list[int]] = {}

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
        new = [b not in self.blocks for b in ids]
        for block in reversed(ids):  # a prompt's first blocks are evicted last
            if block in self.blocks:
                self.blocks.move_to_end(block)
            else:
                self.blocks[block] = None
        evicted = []
        while len(self.blocks) > self.capacity_blocks:
            evicted.append(self.blocks.popitem(last=False)[0])
        if self.events is not None:
            self._record(text, ids, new, evicted)
        return hit * self.block_tokens

    def _record(self, text: str, ids: list[bytes], new: list[bool], evicted: list[bytes]) -> None:
        from langcluster.testing.fleet import KvEvent, stored_events

        assert self.events is not None
        stored = stored_events([int.from_bytes(b, "little") for b in ids], new)
        self.events += stored
        if stored:
            all_tokens = tokenize(text)
            size = self.block_tokens
            for j, block in enumerate(ids):
                if new[j]:
                    self._tokens[block] = all_tokens[j * size : (j + 1) * size]
        for block in evicted:
            self._tokens.pop(block, None)
        if evicted:
            gone = tuple(int.from_bytes(b, "little") for b in evicted)
            self.events.append(KvEvent("removed", gone))

    def block_tokens_of(self, block: int) -> list[int]:
        """The token ids of the cached block the server names ``block``."""
        return self._tokens.get(block.to_bytes(8, "little"), [])

    def clear(self) -> None:
        """Empties the cache, as a restart does."""
        self.blocks.clear()
        self._tokens.clear()


def prompt_of(path: str, request: dict[str, Any]) -> str:
    """The text a request's prompt is read as (the router's rendering)."""
    if path.endswith("/chat/completions"):
        messages = request.get("messages")
        return chat_text(messages) if isinstance(messages, list) else ""
    value = request.get("prompt" if path.endswith("/completions") else "input", "")
    if isinstance(value, list):
        return "\n".join(v if isinstance(v, str) else json.dumps(v) for v in value)
    return value if isinstance(value, str) else json.dumps(value)


def server_info(model: str, cache: PrefixCache) -> dict[str, Any]:
    """What SGLang's server and model info say, as far as routers read it."""
    return {
        "model_path": model,
        "served_model_name": model,
        "is_generation": True,
        "max_total_num_tokens": cache.capacity_blocks * cache.block_tokens,
        "page_size": cache.block_tokens,
    }


def tokenize_answer(path: str, body: bytes, model: str) -> tuple[int, dict[str, str], Any]:
    """vLLM's ``/tokenize`` and ``/v1/(chat/)completions/render``: the
    prompt's token ids (``tokenize``), which routers that route by tokens
    ask for."""
    try:
        request = json.loads(body or b"{}")
    except (ValueError, RecursionError):
        request = None
    if not isinstance(request, dict):
        return 400, {}, {"error": {"message": "the body is not a JSON object", "type": "invalid"}}
    chat = "messages" in request
    ids = tokenize(prompt_of("/chat/completions" if chat else "/completions", request))
    if path == "/tokenize":
        answer = {"count": len(ids), "max_model_len": 1 << 20, "tokens": ids, "token_strs": None}
        return 200, {}, answer
    return 200, {}, {"model": request.get("model", model), "token_ids": ids, "features": None}


def metrics_text(cache: PrefixCache) -> str:
    """vLLM's ``cache_config_info`` gauge, in Prometheus' text format."""
    labels = f'block_size="{cache.block_tokens}",num_gpu_blocks="{cache.capacity_blocks}"'
    return (
        "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig\n"
        "# TYPE vllm:cache_config_info gauge\n"
        f"vllm:cache_config_info{{{labels}}} 1.0\n"
    )


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
