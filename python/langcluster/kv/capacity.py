"""How much a model server's KV cache holds, as it reports it, in a
``PrefixAware`` balancer's blocks.

- vLLM: ``GET /metrics`` has the gauge ``vllm:cache_config_info`` whose
  labels give ``num_gpu_blocks`` and ``block_size`` (tokens a block).
- SGLang: ``GET /get_server_info`` (``/server_info`` in newer releases)
  gives ``max_total_num_tokens``.
- A node's ``metadata["kv_tokens"]`` says it directly, for any server.

A balancer's block is ``token_block_size`` tokens when it reads prompts as
token ids (a ``tokenizer``), else ``block_size`` bytes of text, taken as a
quarter as many tokens.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import httpx

from langcluster._core import Balancer
from langcluster.node import Node

__all__ = ["balancer_blocks", "kv_tokens", "read_metrics_tokens", "read_server_info_tokens"]

_log = logging.getLogger(__name__)
BYTES_PER_TOKEN = 4
_CACHE_INFO = re.compile(r"^vllm:cache_config_info\{(?P<labels>[^}]*)\}", re.MULTILINE)
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def read_metrics_tokens(text: str) -> int | None:
    """The tokens vLLM's ``/metrics`` says its GPU cache holds, or None."""
    match = _CACHE_INFO.search(text)
    if match is None:
        return None
    labels = dict(_LABEL.findall(match.group("labels")))
    try:
        blocks, size = int(labels["num_gpu_blocks"]), int(labels["block_size"])
    except (KeyError, ValueError):
        return None
    return blocks * size if blocks > 0 and size > 0 else None


def read_server_info_tokens(body: bytes) -> int | None:
    """The tokens SGLang's server info says its cache holds, or None."""
    try:
        info = json.loads(body)
    except (ValueError, RecursionError):
        return None
    tokens = info.get("max_total_num_tokens") if isinstance(info, dict) else None
    if isinstance(tokens, int) and not isinstance(tokens, bool) and tokens > 0:
        return tokens
    return None


async def kv_tokens(node: Node, client: httpx.AsyncClient, *, scheme: str = "http") -> int | None:
    """The tokens node ``node``'s KV cache holds: its ``metadata["kv_tokens"]``,
    else what vLLM's metrics or SGLang's server info report; None when
    nothing says (errors are logged, never raised)."""
    given = node.metadata.get("kv_tokens")
    if isinstance(given, int) and not isinstance(given, bool) and given > 0:
        return given
    base = f"{scheme}://{node.address}" + (f":{node.port}" if node.port else "")
    for path in ("/metrics", "/get_server_info", "/server_info"):
        try:
            response = await client.get(base + path)
        except httpx.HTTPError as error:
            _log.debug("KV capacity of %s: %s: %s", node.id, path, error)
            return None
        if response.status_code != 200:
            continue
        if path == "/metrics":
            tokens = read_metrics_tokens(response.text)
        else:
            tokens = read_server_info_tokens(response.content)
        if tokens:
            return tokens
    return None


def balancer_blocks(balancer: Balancer, tokens: int) -> int:
    """``tokens`` of a server's cache in ``balancer``'s blocks (at least 1)."""
    settings: Any = getattr(balancer, "settings", {})
    if settings.get("tokenizer"):
        per_block = int(settings["token_block_size"])
    else:
        per_block = max(1, int(settings["block_size"]) // BYTES_PER_TOKEN)
    return max(1, tokens // per_block)
