"""The Redis tier: ``RedisCache`` on redis-py (``pip install 'langcluster[redis]'``).

Every operation is written once, as a flow (``langcluster._flow``) that
yields the Redis round trips it needs; ``get`` drives it in the calling
thread on redis-py's sync client, ``aget`` on the running loop on its async
client.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from langcluster._checks import flag, fraction, seconds, text
from langcluster._counters import Counters
from langcluster._flow import Effect, Flow, adrive, drive
from langcluster._sentinel import MISSING
from langcluster.cache.codec import Codec
from langcluster.cache.keyspace import Keyspace
from langcluster.errors import CacheError
from langcluster.types import Key, Serializer

__all__ = ["RedisCache"]

_log = logging.getLogger(__name__)
# A write for Redis: the name, the payload (None: delete) and PX (None: no expiry).
Item = tuple[bytes, bytes | None, int | None]
_UNLOCK = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)


def _redis() -> Any:
    try:
        import redis
    except ImportError:  # pragma: no cover - depends on the install
        raise CacheError("RedisCache needs redis-py: pip install 'langcluster[redis]'") from None
    return redis


class _Command(Effect):
    """One round trip: ``send(client)`` issues a command or executes a
    pipeline on the sync client, or returns its awaitable on the async one.
    A failure becomes a ``CacheError`` (and is counted)."""

    __slots__ = ("cache", "send")

    def __init__(self, cache: RedisCache, send: Callable[[Any], Any]) -> None:
        self.cache = cache
        self.send = send

    def run(self) -> Any:
        try:
            return self.send(self.cache._client)
        except Exception as error:
            raise self.cache._failed(error) from error

    async def arun(self) -> Any:
        try:
            return await self.send(self.cache._async())
        except Exception as error:
            raise self.cache._failed(error) from error


class _Scan(Effect):
    """Every name matching ``pattern`` (SCAN; on a cluster, every master)."""

    __slots__ = ("cache", "pattern")

    def __init__(self, cache: RedisCache, pattern: bytes) -> None:
        self.cache = cache
        self.pattern = pattern

    def run(self) -> list[bytes]:
        try:
            return list(self.cache._client.scan_iter(match=self.pattern, count=1000))
        except Exception as error:
            raise self.cache._failed(error) from error

    async def arun(self) -> list[bytes]:
        client = self.cache._async()
        try:
            return [name async for name in client.scan_iter(match=self.pattern, count=1000)]
        except Exception as error:
            raise self.cache._failed(error) from error


class RedisCache:
    """A cache in Redis under one namespace, with the ``MemoryCache``
    methods and async twins (``aget``, ``aset``, ``aget_many``, ...).

    ``RedisCache(url="redis://127.0.0.1:6379/0", *, client=None,
    async_client=None, namespace="langcluster", serializer="pickle",
    signing_key=None, ttl=None, ttl_jitter=0.0, socket_timeout_s=0.5,
    cluster=False)``

    - Keys live under ``namespace`` (``keyspace`` maps them to Redis names;
      the key types never collide). ``clear()`` removes the namespace with
      SCAN and UNLINK, never FLUSHDB.
    - Batch operations are one round trip: MGET, and pipelined SETs with PX.
    - ``serializer`` is ``"pickle"``, ``"json"`` (orjson when installed),
      ``"msgpack"`` or an object with ``dumps``/``loads``. The cache decodes
      only its own format: a JSON cache never unpickles a payload found in
      Redis. With ``signing_key`` (bytes or str, at least 16 bytes) every
      payload is signed with HMAC-SHA256, and one whose signature does not
      match, or an unsigned one, is refused. A refused payload (of another
      format, unsigned, forged, or that does not decode) is a miss, counted
      in ``stats()["rejected"]`` and logged, and is never run. Pickle
      without a key trusts everyone who can write to the Redis: on a shared
      Redis, set a key or use JSON or msgpack (docs/deployment.md).
    - ``ttl`` (seconds) is the default lifetime of an entry; ``ttl_jitter``
      (a fraction below 1) spreads expiries by up to that much either way.
    - ``socket_timeout_s`` bounds every call: a Redis that stalls raises
      ``CacheError`` after it, never holds the caller longer. Every Redis
      failure is a ``CacheError`` (and counted in ``stats()["errors"]``).
    - A value the serializer cannot encode raises ``CacheError`` naming its
      type, and nothing is written (a batch is serialized whole before any
      command is sent).
    - Redis Cluster: ``cluster=True`` (or a ``redis.cluster.RedisCluster`` as
      ``client``) runs the same class over a cluster. Keys carry no hash
      tag, so a namespace spreads over every master; batch operations are
      grouped per hash slot (one MGET, DEL or UNLINK per slot) and sent as
      one pipeline, which is one round trip per master. ``clear()`` scans
      every master.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        client: Any = None,
        async_client: Any = None,
        namespace: str = "langcluster",
        serializer: Serializer | Any = "pickle",
        signing_key: bytes | str | None = None,
        ttl: float | None = None,
        ttl_jitter: float = 0.0,
        socket_timeout_s: float = 0.5,
        cluster: bool = False,
    ) -> None:
        self.keyspace = Keyspace(namespace)
        seconds("ttl", ttl, optional=True)
        fraction("ttl_jitter", ttl_jitter, below_one=True)
        seconds("socket_timeout_s", socket_timeout_s)
        text("url", url)
        flag("cluster", cluster)
        self._codec = Codec(serializer, signing_key)
        self.namespace = namespace
        self.ttl = ttl
        self.ttl_jitter = ttl_jitter
        self.socket_timeout_s = socket_timeout_s
        self._url = url
        redis = _redis()
        from redis.cluster import RedisCluster

        self.cluster = cluster or isinstance(client, RedisCluster)
        factory = RedisCluster if self.cluster else redis.Redis
        try:
            self._client: Any = (
                client
                if client is not None
                else factory.from_url(
                    url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s
                )
            )
        except ValueError as error:  # redis-py's word for a URL it cannot read
            raise ValueError(f"url: {error}") from None
        except Exception as error:  # a cluster client asks a node for the slots at once
            raise CacheError(f"redis ({namespace}): cannot reach {url}: {error}") from error
        self._async_client = async_client
        self._stats = Counters("hits", "misses", "errors", "rejected")
        self._count = self._stats.add

    # ----------------------------------------------------------- values

    def _px(self, ttl: float | None) -> int | None:
        ttl = self.ttl if ttl is None else seconds("ttl", ttl)
        if ttl is None:
            return None
        if self.ttl_jitter:
            ttl *= random.uniform(1 - self.ttl_jitter, 1 + self.ttl_jitter)
        return max(1, round(ttl * 1000))

    def _dumps(self, value: Any) -> bytes:
        try:
            return self._codec.dumps(value)
        except Exception as error:
            raise CacheError(
                f"value: cannot serialize a {type(value).__name__} with the "
                f"{self._codec.kind} serializer: {error}"
            ) from error

    def _items(self, mapping: Mapping[Key, Any], ttl: float | None) -> list[Item]:
        """The writes of `mapping`: every key checked and every value
        serialized before anything is sent."""
        px = self._px(ttl)
        return [(self.keyspace.name(k), self._dumps(v), px) for k, v in mapping.items()]

    def _decode(self, raw: bytes | None, key: Any) -> Any:
        """The value of a payload, or MISSING (counted as a miss)."""
        if raw is None:
            self._count("misses")
            return MISSING
        ok, value = self._codec.loads(raw)
        if not ok:
            self._count("rejected")
            self._count("misses")
            _log.warning("redis (%s): rejected the payload of %r: %s", self.namespace, key, value)
            return MISSING
        self._count("hits")
        return value

    def _failed(self, error: Exception) -> CacheError:
        self._count("errors")
        return CacheError(f"redis ({self.namespace}): {type(error).__name__}: {error}")

    # ------------------------------------------------------- round trips

    def _command(self, send: Callable[[Any], Any]) -> _Command:
        return _Command(self, send)

    def _groups(self, names: list[bytes]) -> list[list[int]]:
        """Positions of `names` grouped so each group is one command: all of
        them on a single Redis, one group per hash slot on a cluster."""
        if not self.cluster:
            return [list(range(len(names)))]
        groups: dict[int, list[int]] = {}
        keyslot = self._client.keyslot
        for i, name in enumerate(names):
            groups.setdefault(keyslot(name), []).append(i)
        return list(groups.values())

    def _pipeline(self, fill: Callable[[Any], None]) -> _Command:
        """One round trip: a pipeline (no transaction) that ``fill`` queues
        commands on."""

        def send(client: Any) -> Any:
            pipe = client.pipeline(transaction=False)
            fill(pipe)
            return pipe.execute()

        return _Command(self, send)

    def _mget(
        self, names: list[bytes], with_ttl: bool = False
    ) -> Flow[tuple[list[Any], list[Any]]]:
        """The payloads of `names` in their order (one MGET per group; a
        raw MGET, since redis-py's cluster pipeline refuses ``.mget()`` but
        routes a raw one whose keys share a slot), and with `with_ttl`
        their PTTLs in seconds (None: no expiry)."""
        groups = self._groups(names)

        def fill(pipe: Any) -> None:
            for group in groups:
                pipe.execute_command("MGET", *[names[i] for i in group])
            if with_ttl:
                for name in names:
                    pipe.execute_command("PTTL", name)

        replies = yield self._pipeline(fill)
        raws: list[Any] = [None] * len(names)
        for group, reply in zip(groups, replies, strict=False):
            for i, raw in zip(group, reply, strict=True):
                raws[i] = raw
        ttls = [ms / 1000 if ms > 0 else None for ms in replies[len(groups) :]]
        return raws, ttls

    def _removal(self, names: list[bytes], command: str) -> _Command:
        """One DEL or UNLINK per group of `names`, pipelined."""

        def fill(pipe: Any) -> None:
            for group in self._groups(names):
                pipe.execute_command(command, *[names[i] for i in group])

        return self._pipeline(fill)

    # ------------------------------------------ used by the layered cache

    def _fetch(self, names: list[bytes]) -> Flow[tuple[list[Any], list[Any]]]:
        """Raw payloads and seconds left of `names`, in one round trip."""
        return (yield from self._mget(names, with_ttl=True))

    def _store(self, items: list[Item]) -> Flow[list[Any]]:
        """Writes `items` in one round trip; the replies: True per SET, 0 or
        1 per DEL."""

        def fill(pipe: Any) -> None:
            for name, payload, px in items:
                if payload is None:
                    pipe.execute_command("DEL", name)
                else:
                    pipe.set(name, payload, px=px)

        return list((yield self._pipeline(fill)))

    def _try_lock(self, name: bytes, token: bytes, px: int) -> Flow[bool]:
        lock = self.keyspace.lock_name(name)
        return bool((yield self._command(lambda c: c.set(lock, token, nx=True, px=px))))

    def _unlock(self, name: bytes, token: bytes) -> Flow[None]:
        lock = self.keyspace.lock_name(name)
        yield self._command(lambda c: c.eval(_UNLOCK, 1, lock, token))

    def _publish(self, channel: bytes, message: bytes) -> Flow[None]:
        yield self._command(lambda c: c.publish(channel, message))

    def _async(self) -> Any:
        if self._async_client is None:
            redis = _redis()
            factory = redis.asyncio.RedisCluster if self.cluster else redis.asyncio.Redis
            self._async_client = factory.from_url(
                self._url,
                socket_timeout=self.socket_timeout_s,
                socket_connect_timeout=self.socket_timeout_s,
            )
        return self._async_client

    # ------------------------------------------------------------ flows

    def _get(self, key: Key, default: Any) -> Flow[Any]:
        name = self.keyspace.name(key)
        raw = yield self._command(lambda c: c.get(name))
        value = self._decode(raw, key)
        return default if value is MISSING else value

    def _set(self, key: Key, value: Any, ttl: float | None) -> Flow[None]:
        ((name, payload, px),) = self._items({key: value}, ttl)
        yield self._command(lambda c: c.set(name, payload, px=px))

    def _delete(self, key: Key) -> Flow[bool]:
        name = self.keyspace.name(key)
        return bool((yield self._command(lambda c: c.delete(name))))

    def _pop(self, key: Key, default: Any) -> Flow[Any]:
        name = self.keyspace.name(key)
        raw = yield self._command(lambda c: c.getdel(name))
        value = self._decode(raw, key)
        if value is MISSING:
            if default is MISSING:
                raise KeyError(key)
            return default
        return value

    def _contains(self, key: Key) -> Flow[bool]:
        name = self.keyspace.name(key)
        return bool((yield self._command(lambda c: c.exists(name))))

    def _get_many(self, keys: Iterable[Key]) -> Flow[dict[Key, Any]]:
        keys = list(keys)
        if not keys:
            return {}
        raws, _ = yield from self._mget([self.keyspace.name(k) for k in keys])
        found = {}
        for key, raw in zip(keys, raws, strict=True):
            value = self._decode(raw, key)
            if value is not MISSING:
                found[key] = value
        return found

    def _set_many(self, mapping: Mapping[Key, Any], ttl: float | None) -> Flow[None]:
        items = self._items(mapping, ttl)
        if items:
            yield from self._store(items)

    def _delete_many(self, keys: Iterable[Key]) -> Flow[int]:
        names = [self.keyspace.name(k) for k in keys]
        if not names:
            return 0
        return sum((yield self._removal(names, "DEL")))

    def _keys(self) -> Flow[list[Key]]:
        names = yield _Scan(self, self.keyspace.pattern())
        return [self.keyspace.key(name) for name in names]

    def _clear(self) -> Flow[int]:
        names = yield _Scan(self, self.keyspace.pattern())
        removed = 0
        for start in range(0, len(names), 500):
            removed += sum((yield self._removal(names[start : start + 500], "UNLINK")))
        return removed

    # ------------------------------------------------------ sync and async

    def get(self, key: Key, default: Any = None) -> Any:
        """The value stored under `key`, or `default`."""
        return drive(self._get(key, default))

    async def aget(self, key: Key, default: Any = None) -> Any:
        return await adrive(self._get(key, default))

    def set(self, key: Key, value: Any, ttl: float | None = None) -> None:
        """Stores `value` under `key` for `ttl` seconds (default: the cache's)."""
        drive(self._set(key, value, ttl))

    async def aset(self, key: Key, value: Any, ttl: float | None = None) -> None:
        await adrive(self._set(key, value, ttl))

    def delete(self, key: Key) -> bool:
        """Removes `key`; whether it was there."""
        return drive(self._delete(key))

    async def adelete(self, key: Key) -> bool:
        return await adrive(self._delete(key))

    def pop(self, key: Key, default: Any = MISSING) -> Any:
        """Removes `key` and returns its value (GETDEL); `default` if it was
        absent, else KeyError."""
        return drive(self._pop(key, default))

    async def apop(self, key: Key, default: Any = MISSING) -> Any:
        return await adrive(self._pop(key, default))

    def __contains__(self, key: Key) -> bool:
        return drive(self._contains(key))

    async def acontains(self, key: Key) -> bool:
        return await adrive(self._contains(key))

    def get_many(self, keys: Iterable[Key]) -> dict[Key, Any]:
        """The entries found among `keys`, in one round trip."""
        return drive(self._get_many(keys))

    async def aget_many(self, keys: Iterable[Key]) -> dict[Key, Any]:
        return await adrive(self._get_many(keys))

    def set_many(self, mapping: Mapping[Key, Any], ttl: float | None = None) -> None:
        """Stores every item of `mapping`, in one round trip."""
        drive(self._set_many(mapping, ttl))

    async def aset_many(self, mapping: Mapping[Key, Any], ttl: float | None = None) -> None:
        await adrive(self._set_many(mapping, ttl))

    def delete_many(self, keys: Iterable[Key]) -> int:
        """Removes `keys`, in one round trip; how many were there."""
        return drive(self._delete_many(keys))

    async def adelete_many(self, keys: Iterable[Key]) -> int:
        return await adrive(self._delete_many(keys))

    def keys(self) -> list[Key]:
        """The keys of the namespace (SCAN)."""
        return drive(self._keys())

    async def akeys(self) -> list[Key]:
        return await adrive(self._keys())

    def __len__(self) -> int:
        return len(self.keys())

    async def alen(self) -> int:
        return len(await self.akeys())

    def clear(self) -> int:
        """Removes every key of the namespace (SCAN + UNLINK); returns how many."""
        return drive(self._clear())

    async def aclear(self) -> int:
        return await adrive(self._clear())

    def stats(self) -> dict[str, int]:
        """``hits``, ``misses``, ``errors`` and ``rejected`` payloads."""
        return self._stats.snapshot()

    def close(self) -> None:
        """Closes the sync client's connections."""
        self._client.close()

    async def aclose(self) -> None:
        """Closes the async client's connections."""
        if self._async_client is not None:
            await self._async_client.aclose()
            self._async_client = None
