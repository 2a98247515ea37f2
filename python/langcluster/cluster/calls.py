"""A ``Cluster`` call as one flow (``langcluster._flow``): the cache, then
failover, with the observers (metrics, traces) told of its outcome;
``call`` drives it on the running loop, ``call_sync`` in the caller's
thread."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from langcluster._core import MemoryCache
from langcluster._flow import Effect, Flow
from langcluster._observe import FAILED, failed
from langcluster._sentinel import MISSING
from langcluster.types import Key

if TYPE_CHECKING:
    from langcluster.cache import Cache
    from langcluster.cluster.facade import Cluster

__all__ = ["call_flow"]


class _CacheOp(Effect):
    """``get`` or ``set`` on the cluster's cache: direct on a MemoryCache
    (it never blocks), ``aget``/``aset`` on a loop for the others."""

    __slots__ = ("args", "cache", "name")

    def __init__(self, cache: Cache, name: str, *args: Any) -> None:
        self.cache = cache
        self.name = name
        self.args = args

    def run(self) -> Any:
        return getattr(self.cache, self.name)(*self.args)

    async def arun(self) -> Any:
        if isinstance(self.cache, MemoryCache):
            return getattr(self.cache, self.name)(*self.args)
        return await getattr(self.cache, "a" + self.name)(*self.args)


def call_flow(
    cluster: Cluster,
    fn: Callable[[Any], Any],
    key: Key | None,
    cache_key: Key | None,
    ttl: float | None,
) -> Flow[Any]:
    """The one source of ``Cluster.call`` and ``Cluster.call_sync``."""
    hooks = cluster._observers.calls
    token: Any = FAILED
    if hooks is not None:
        try:
            token = hooks[0](cluster.service)
        except Exception:
            failed(hooks[0])
    outcome, failure = "error", None
    try:
        cluster._count("calls")
        cache = cluster.cache if cache_key is not None else None
        if cache is not None:
            found = yield _CacheOp(cache, "get", cache_key, MISSING)
            if found is not MISSING:
                cluster._count("cache_hits")
                outcome = "cache_hit"
                return found
        try:
            result = yield from cluster.failover._call(fn, key)
        except Exception:
            cluster._count("errors")
            raise
        if cache is not None:
            yield _CacheOp(cache, "set", cache_key, result, ttl)
        outcome = "success"
        return result
    except BaseException as error:
        failure = error
        raise
    finally:
        if token is not FAILED:
            try:
                hooks[1](token, outcome, failure)  # type: ignore[index]
            except Exception:
                failed(hooks[1])  # type: ignore[index]
