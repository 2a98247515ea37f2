"""``LangClusterCache``: a LangChain LLM cache (``langchain_core``
``BaseCache``) over any langcluster cache (``pip install
'langcluster[langchain]'``).

    from langchain_core.globals import set_llm_cache
    set_llm_cache(LangClusterCache(LayeredCache(MemoryCache(10_000), RedisCache(url))))

- Every generation of a call is kept, serialized with langchain_core's own
  ``dumps``, and read back with ``loads`` limited to generation and message
  classes, so ``ChatGeneration`` and its ``AIMessage`` come back as they were.
- The key is a SHA-256 of the model's description (``llm_string``) and the
  prompt, under ``namespace``; ``clear()`` removes only keys of that
  namespace, so the cache may be shared with other uses.
- ``alookup``/``aupdate``/``aclear`` call the cache's async methods
  directly (a ``MemoryCache`` needs no I/O and is called in place): no
  executor hop.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any

try:
    from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
    from langchain_core.load import Serializable, dumps, loads
    from langchain_core.messages import (
        AIMessage,
        AIMessageChunk,
        ChatMessage,
        FunctionMessage,
        HumanMessage,
        SystemMessage,
        ToolMessage,
    )
    from langchain_core.outputs import (
        ChatGeneration,
        ChatGenerationChunk,
        Generation,
        GenerationChunk,
    )
except ImportError as missing:  # pragma: no cover - depends on the install
    raise ImportError(
        "LangClusterCache needs langchain-core: pip install 'langcluster[langchain]'"
    ) from missing

from langcluster._checks import seconds
from langcluster.cache import Cache, LayeredCache, MemoryCache, RedisCache

__all__ = ["LangClusterCache"]

_log = logging.getLogger(__name__)
_ALLOWED: list[type[Serializable]] = [
    Generation, GenerationChunk, ChatGeneration, ChatGenerationChunk, AIMessage,
    AIMessageChunk, HumanMessage, SystemMessage, ChatMessage, FunctionMessage, ToolMessage,
]  # fmt: skip
# langchain_core marks `loads` beta and warns on every call; the function
# under the marker is the same code, without a warning per cache hit.
_loads: Any = getattr(loads, "__wrapped__", loads)


class LangClusterCache(BaseCache):
    """A LangChain cache over a ``MemoryCache``, ``RedisCache`` or
    ``LayeredCache``; see the module docstring."""

    def __init__(
        self, cache: Cache, *, namespace: str = "langchain", ttl: float | None = None
    ) -> None:
        if not isinstance(cache, MemoryCache | RedisCache | LayeredCache):
            raise TypeError(
                f"cache: must be a MemoryCache, RedisCache or LayeredCache, "
                f"got {type(cache).__name__}"
            )
        if not namespace or not isinstance(namespace, str) or ":" in namespace:
            raise ValueError(f"namespace: must be a non-empty str without ':', got {namespace!r}")
        seconds("ttl", ttl, optional=True)
        self.cache = cache
        self.namespace = namespace
        self.ttl = ttl
        self._prefix = namespace + ":"

    def _key(self, prompt: str, llm_string: str) -> str:
        digest = hashlib.sha256()
        digest.update(llm_string.encode())
        digest.update(b"\0")
        digest.update(prompt.encode())
        return self._prefix + digest.hexdigest()

    @staticmethod
    def _encode(return_val: RETURN_VAL_TYPE) -> str:
        return dumps(list(return_val))

    def _decode(self, stored: Any) -> RETURN_VAL_TYPE | None:
        if stored is None:
            return None
        try:
            generations = _loads(stored, allowed_objects=_ALLOWED)
        except Exception as error:  # a foreign or damaged entry is a miss
            _log.warning("langchain cache (%s): unreadable entry: %s", self.namespace, error)
            return None
        if not isinstance(generations, list):
            return None
        return generations

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        return self._decode(self.cache.get(self._key(prompt, llm_string)))

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        self.cache.set(self._key(prompt, llm_string), self._encode(return_val), self.ttl)

    async def alookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        key = self._key(prompt, llm_string)
        if isinstance(self.cache, MemoryCache):
            return self._decode(self.cache.get(key))
        return self._decode(await self.cache.aget(key))

    async def aupdate(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        key, text = self._key(prompt, llm_string), self._encode(return_val)
        if isinstance(self.cache, MemoryCache):
            self.cache.set(key, text, self.ttl)
        else:
            await self.cache.aset(key, text, self.ttl)

    def _mine(self, keys: Sequence[Any]) -> list[str]:
        return [k for k in keys if isinstance(k, str) and k.startswith(self._prefix)]

    def clear(self, **kwargs: Any) -> None:
        """Removes this namespace's entries, and nothing else."""
        cache = self.cache
        if isinstance(cache, LayeredCache):
            keys = {*self._mine(cache.l2.keys()), *self._mine(cache.l1.keys())}
            cache.delete_many(sorted(keys))
        else:
            cache.delete_many(self._mine(cache.keys()))

    async def aclear(self, **kwargs: Any) -> None:
        cache = self.cache
        if isinstance(cache, MemoryCache):
            cache.delete_many(self._mine(cache.keys()))
        elif isinstance(cache, RedisCache):
            await cache.adelete_many(self._mine(await cache.akeys()))
        else:
            keys = {*self._mine(await cache.l2.akeys()), *self._mine(cache.l1.keys())}
            await cache.adelete_many(sorted(keys))
