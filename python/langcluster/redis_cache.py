"""The Redis tier: ``RedisCache``, with the ``MemoryCache`` methods and async
twins, on redis-py (``pip install 'langcluster[redis]'``).

- Keys live under ``namespace``: ``<namespace>:s:<str key>``,
  ``<namespace>:b:<bytes key>``, ``<namespace>:i:<int key>``, so the three
  key types never collide. ``clear()`` removes the namespace with SCAN and
  UNLINK, never FLUSHDB.
- Batch operations are one round trip: MGET, and pipelined SETs with PX.
- Every payload starts with a format byte: ``P`` pickle, ``J`` JSON
  (orjson when installed), ``M`` msgpack, ``C`` a custom serializer (any
  object with ``dumps``/``loads``), ``S`` a pickle signed with
  HMAC-SHA256. With ``signing_key`` set, pickles are always signed, and a
  payload whose signature does not match, or an unsigned pickle, is a miss
  (counted in ``stats()["rejected"]`` and logged) and is never unpickled.
  Without it, anyone who can write to the Redis can make this process run
  code of their choosing when it unpickles: on a shared Redis, set a key,
  or use JSON or msgpack.
- ``socket_timeout_s`` bounds every call: a Redis that stalls raises
  ``CacheError`` after it, never holds the caller longer.
- A value the serializer cannot encode raises ``CacheError`` naming its
  type, and nothing is written (a batch is serialized whole before any
  command is sent).
- Redis Cluster: ``cluster=True`` (or a ``redis.cluster.RedisCluster`` as
  ``client``) runs the same class over a cluster. Keys carry no hash tag, so
  a namespace spreads over every master; batch operations are grouped per
  hash slot (one MGET, DEL or UNLINK per slot) and sent as one pipeline,
  which is one round trip per master. ``clear()`` scans every master.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import pickle
import random
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from langcluster.errors import CacheError

__all__ = ["RedisCache"]

_log = logging.getLogger("langcluster.redis")
_MISSING: Any = object()
_Key = str | bytes | int


def _redis() -> Any:
    try:
        import redis
    except ImportError:  # pragma: no cover - depends on the install
        raise CacheError("RedisCache needs redis-py: pip install 'langcluster[redis]'") from None
    return redis


class _Codec:
    """Turns values into tagged payloads and back."""

    def __init__(self, serializer: Any, signing_key: bytes | None) -> None:
        self.signing_key = signing_key
        if isinstance(serializer, str):
            if serializer not in ("pickle", "json", "msgpack"):
                raise ValueError(
                    f"serializer: must be 'pickle', 'json', 'msgpack' or an object with "
                    f"dumps/loads, got {serializer!r}"
                )
            if serializer == "msgpack":
                try:
                    import msgpack  # noqa: F401
                except ImportError:
                    raise ValueError("serializer: 'msgpack' needs the msgpack package") from None
            self.kind = serializer
            self.custom = None
        else:
            if not (
                callable(getattr(serializer, "dumps", None))
                and callable(getattr(serializer, "loads", None))
            ):
                raise TypeError("serializer: a custom serializer needs dumps() and loads()")
            self.kind = "custom"
            self.custom = serializer

    def _sign(self, data: bytes) -> bytes:
        assert self.signing_key is not None
        return hmac.new(self.signing_key, data, hashlib.sha256).digest()

    def dumps(self, value: Any) -> bytes:
        if self.kind == "pickle":
            data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
            if self.signing_key is not None:
                return b"S" + self._sign(data) + data
            return b"P" + data
        if self.kind == "json":
            try:
                import orjson

                return b"J" + bytes(orjson.dumps(value))
            except ImportError:
                return b"J" + json.dumps(value, separators=(",", ":")).encode()
        if self.kind == "msgpack":
            import msgpack

            return b"M" + bytes(msgpack.packb(value, use_bin_type=True))
        assert self.custom is not None
        data = self.custom.dumps(value)
        return b"C" + (data if isinstance(data, bytes) else data.encode())

    def loads(self, payload: bytes) -> tuple[bool, Any]:
        """(True, value), or (False, reason) for a payload to reject."""
        tag, body = payload[:1], payload[1:]
        if tag == b"S":
            if self.signing_key is None:
                return False, "a signed pickle, but no signing_key is set"
            signature, data = body[:32], body[32:]
            if not hmac.compare_digest(signature, self._sign(data)):
                return False, "the signature does not match"
            return True, pickle.loads(data)
        if tag == b"P":
            if self.signing_key is not None:
                return False, "an unsigned pickle while signing_key is set"
            return True, pickle.loads(body)
        if tag == b"J":
            try:
                import orjson

                return True, orjson.loads(body)
            except ImportError:
                return True, json.loads(body)
        if tag == b"M":
            import msgpack

            return True, msgpack.unpackb(body, raw=False)
        if tag == b"C" and self.custom is not None:
            return True, self.custom.loads(body)
        return False, f"an unknown format byte {tag!r}"


class RedisCache:
    """A cache in Redis under one namespace; see the module docstring."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        client: Any = None,
        async_client: Any = None,
        namespace: str = "langcluster",
        serializer: Any = "pickle",
        signing_key: bytes | str | None = None,
        ttl: float | None = None,
        ttl_jitter: float = 0.0,
        socket_timeout_s: float = 0.5,
        cluster: bool = False,
    ) -> None:
        if not namespace or not isinstance(namespace, str):
            raise ValueError(f"namespace: must be a non-empty str, got {namespace!r}")
        if ttl is not None and not ttl > 0:
            raise ValueError(f"ttl: must be a positive number of seconds or None, got {ttl!r}")
        if not 0 <= ttl_jitter < 1:
            raise ValueError(f"ttl_jitter: must be in [0, 1), got {ttl_jitter!r}")
        if not socket_timeout_s > 0:
            raise ValueError(f"socket_timeout_s: must be positive, got {socket_timeout_s!r}")
        key = signing_key.encode() if isinstance(signing_key, str) else signing_key
        self._codec = _Codec(serializer, key)
        self.namespace = namespace
        self._prefix = namespace.encode() + b":"
        self.ttl = ttl
        self.ttl_jitter = ttl_jitter
        self.socket_timeout_s = socket_timeout_s
        self._url = url
        redis = _redis()
        from redis.cluster import RedisCluster

        self.cluster = cluster or isinstance(client, RedisCluster)
        factory = RedisCluster if self.cluster else redis.Redis
        self._client: Any = (
            client
            if client is not None
            else factory.from_url(
                url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s
            )
        )
        self._async_client = async_client
        self._lock = threading.Lock()
        self._stats = {"hits": 0, "misses": 0, "errors": 0, "rejected": 0}

    # ------------------------------------------------------------- helpers

    def _key(self, key: _Key) -> bytes:
        if isinstance(key, str):
            return self._prefix + b"s:" + key.encode()
        if isinstance(key, bytes):
            return self._prefix + b"b:" + key
        if isinstance(key, int) and not isinstance(key, bool):
            return self._prefix + b"i:" + str(int(key)).encode()
        raise TypeError(f"key: must be str, bytes or int, got {type(key).__name__}")

    def _unkey(self, raw: bytes) -> _Key:
        body = raw[len(self._prefix) :]
        kind, rest = body[:2], body[2:]
        if kind == b"s:":
            return rest.decode()
        if kind == b"i:":
            return int(rest)
        return rest

    def _px(self, ttl: float | None) -> int | None:
        ttl = self.ttl if ttl is None else ttl
        if ttl is None:
            return None
        if not ttl > 0:
            raise ValueError(f"ttl: must be a positive number of seconds, got {ttl!r}")
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

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._stats[name] += n

    def _failed(self, error: Exception) -> CacheError:
        self._count("errors")
        return CacheError(f"redis ({self.namespace}): {type(error).__name__}: {error}")

    def _decode(self, raw: bytes | None, key: Any) -> Any:
        if raw is None:
            self._count("misses")
            return _MISSING
        ok, value = self._codec.loads(raw)
        if not ok:
            self._count("rejected")
            self._count("misses")
            _log.warning("redis (%s): rejected the payload of %r: %s", self.namespace, key, value)
            return _MISSING
        self._count("hits")
        return value

    def _found(self, keys: list[_Key], raws: list[bytes | None]) -> dict[_Key, Any]:
        """The hits of an MGET, by key."""
        found = {}
        for key, raw in zip(keys, raws, strict=True):
            value = self._decode(raw, key)
            if value is not _MISSING:
                found[key] = value
        return found

    def _fill(self, pipe: Any, mapping: Mapping[_Key, Any], ttl: float | None) -> bool:
        """Queues one SET per item (every key checked and every value
        serialized first); returns whether there was any."""
        items = [(self._key(k), self._dumps(v), self._px(ttl)) for k, v in mapping.items()]
        for name, payload, px in items:
            pipe.set(name, payload, px=px)
        return bool(items)

    def _slots(self, names: list[bytes]) -> list[list[int]]:
        """Positions of `names` grouped so each group is one command: all of
        them on a single Redis, one group per hash slot on a cluster."""
        if not self.cluster:
            return [list(range(len(names)))]
        groups: dict[int, list[int]] = {}
        keyslot = self._client.keyslot
        for i, name in enumerate(names):
            groups.setdefault(keyslot(name), []).append(i)
        return list(groups.values())

    def _mget(
        self, client: Any, names: list[bytes], with_ttl: bool = False
    ) -> tuple[Any, list[list[int]]]:
        """A pipeline with one MGET per group of `names` (then one PTTL per
        name when `with_ttl`), and the groups; `_mget_result` puts the
        replies back in the order of `names`."""
        groups = self._slots(names)
        pipe = client.pipeline(transaction=False)
        for group in groups:
            # execute_command: redis-py's cluster pipeline blocks .mget(), but
            # routes a raw MGET whose keys share a slot.
            pipe.execute_command("MGET", *[names[i] for i in group])
        if with_ttl:
            for name in names:
                pipe.execute_command("PTTL", name)
        return pipe, groups

    @staticmethod
    def _mget_result(n: int, groups: list[list[int]], replies: list[Any]) -> list[Any]:
        raws: list[Any] = [None] * n
        for group, reply in zip(groups, replies, strict=False):
            for i, raw in zip(group, reply, strict=True):
                raws[i] = raw
        return raws

    @staticmethod
    def _ttls(n: int, groups: list[list[int]], replies: list[Any]) -> list[float | None]:
        """Seconds left per name from the PTTL replies (None: no expiry)."""
        return [ms / 1000 if ms > 0 else None for ms in replies[len(groups) : len(groups) + n]]

    def _removal(self, client: Any, names: list[bytes], command: str) -> Any:
        """A pipeline with one DEL or UNLINK per group of `names`."""
        pipe = client.pipeline(transaction=False)
        for group in self._slots(names):
            pipe.execute_command(command, *[names[i] for i in group])
        return pipe

    # ------------------------------------------ used by the layered cache

    def _fetch(self, names: list[bytes]) -> tuple[list[Any], list[float | None]]:
        """Raw payloads and seconds left of `names`, in one round trip."""
        pipe, groups = self._mget(self._client, names, with_ttl=True)
        try:
            replies = pipe.execute()
        except Exception as error:
            raise self._failed(error) from error
        n = len(names)
        return self._mget_result(n, groups, replies), self._ttls(n, groups, replies)

    async def _afetch(self, names: list[bytes]) -> tuple[list[Any], list[float | None]]:
        pipe, groups = self._mget(self._async(), names, with_ttl=True)
        try:
            replies = await pipe.execute()
        except Exception as error:
            raise self._failed(error) from error
        n = len(names)
        return self._mget_result(n, groups, replies), self._ttls(n, groups, replies)

    @staticmethod
    def _store_pipe(client: Any, items: Iterable[tuple[bytes, bytes | None, int | None]]) -> Any:
        """SET (payload, PX) or DEL (payload None) per item, pipelined."""
        pipe = client.pipeline(transaction=False)
        for name, payload, px in items:
            if payload is None:
                pipe.execute_command("DEL", name)
            else:
                pipe.set(name, payload, px=px)
        return pipe

    def _store(self, items: list[tuple[bytes, bytes | None, int | None]]) -> list[Any]:
        """The replies: True per SET, 0 or 1 per DEL."""
        try:
            return list(self._store_pipe(self._client, items).execute())
        except Exception as error:
            raise self._failed(error) from error

    async def _astore(self, items: list[tuple[bytes, bytes | None, int | None]]) -> list[Any]:
        try:
            return list(await self._store_pipe(self._async(), items).execute())
        except Exception as error:
            raise self._failed(error) from error

    _UNLOCK = (
        "if redis.call('get', KEYS[1]) == ARGV[1] then "
        "return redis.call('del', KEYS[1]) end return 0"
    )

    def _lock_name(self, name: bytes) -> bytes:
        # Outside the namespace's key pattern, so keys() and clear() skip it.
        return b"langcluster-lock:" + name

    def _try_lock(self, name: bytes, token: bytes, px: int) -> bool:
        try:
            return bool(self._client.set(self._lock_name(name), token, nx=True, px=px))
        except Exception as error:
            raise self._failed(error) from error

    async def _atry_lock(self, name: bytes, token: bytes, px: int) -> bool:
        try:
            return bool(await self._async().set(self._lock_name(name), token, nx=True, px=px))
        except Exception as error:
            raise self._failed(error) from error

    def _unlock(self, name: bytes, token: bytes) -> None:
        try:
            self._client.eval(self._UNLOCK, 1, self._lock_name(name), token)
        except Exception as error:
            raise self._failed(error) from error

    async def _aunlock(self, name: bytes, token: bytes) -> None:
        try:
            await self._async().eval(self._UNLOCK, 1, self._lock_name(name), token)
        except Exception as error:
            raise self._failed(error) from error

    def _locked(self, name: bytes) -> bool:
        try:
            return bool(self._client.exists(self._lock_name(name)))
        except Exception as error:
            raise self._failed(error) from error

    async def _alocked(self, name: bytes) -> bool:
        try:
            return bool(await self._async().exists(self._lock_name(name)))
        except Exception as error:
            raise self._failed(error) from error

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

    # ----------------------------------------------------------------- sync

    def get(self, key: _Key, default: Any = None) -> Any:
        name = self._key(key)
        try:
            raw = self._client.get(name)
        except Exception as error:
            raise self._failed(error) from error
        value = self._decode(raw, key)
        return default if value is _MISSING else value

    def set(self, key: _Key, value: Any, ttl: float | None = None) -> None:
        name, payload, px = self._key(key), self._dumps(value), self._px(ttl)
        try:
            self._client.set(name, payload, px=px)
        except Exception as error:
            raise self._failed(error) from error

    def delete(self, key: _Key) -> bool:
        try:
            return bool(self._client.delete(self._key(key)))
        except Exception as error:
            raise self._failed(error) from error

    def pop(self, key: _Key, default: Any = _MISSING) -> Any:
        name = self._key(key)
        try:
            raw = self._client.getdel(name)
        except Exception as error:
            raise self._failed(error) from error
        value = self._decode(raw, key)
        if value is _MISSING:
            if default is _MISSING:
                raise KeyError(key)
            return default
        return value

    def __contains__(self, key: _Key) -> bool:
        try:
            return bool(self._client.exists(self._key(key)))
        except Exception as error:
            raise self._failed(error) from error

    def get_many(self, keys: Iterable[_Key]) -> dict[_Key, Any]:
        keys = list(keys)
        if not keys:
            return {}
        pipe, groups = self._mget(self._client, [self._key(k) for k in keys])
        try:
            replies = pipe.execute()
        except Exception as error:
            raise self._failed(error) from error
        return self._found(keys, self._mget_result(len(keys), groups, replies))

    def set_many(self, mapping: Mapping[_Key, Any], ttl: float | None = None) -> None:
        pipe = self._client.pipeline(transaction=False)
        if not self._fill(pipe, mapping, ttl):
            return
        try:
            pipe.execute()
        except Exception as error:
            raise self._failed(error) from error

    def delete_many(self, keys: Iterable[_Key]) -> int:
        names = [self._key(k) for k in keys]
        if not names:
            return 0
        try:
            return sum(self._removal(self._client, names, "DEL").execute())
        except Exception as error:
            raise self._failed(error) from error

    def _scan_pattern(self) -> bytes:
        escaped = self._prefix.replace(b"\\", b"\\\\")
        for ch in (b"*", b"?", b"[", b"]"):
            escaped = escaped.replace(ch, b"\\" + ch)
        return escaped + b"*"

    def keys(self) -> list[_Key]:
        try:
            return [
                self._unkey(k)
                for k in self._client.scan_iter(match=self._scan_pattern(), count=1000)
            ]
        except Exception as error:
            raise self._failed(error) from error

    def __len__(self) -> int:
        return len(self.keys())

    def clear(self) -> int:
        """Removes every key of the namespace (SCAN + UNLINK); returns how many."""
        removed = 0
        try:
            batch: list[bytes] = []
            for name in self._client.scan_iter(match=self._scan_pattern(), count=1000):
                batch.append(name)
                if len(batch) >= 500:
                    removed += sum(self._removal(self._client, batch, "UNLINK").execute())
                    batch.clear()
            if batch:
                removed += sum(self._removal(self._client, batch, "UNLINK").execute())
        except Exception as error:
            raise self._failed(error) from error
        return removed

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._stats)

    def close(self) -> None:
        self._client.close()

    # ---------------------------------------------------------------- async

    async def aget(self, key: _Key, default: Any = None) -> Any:
        name = self._key(key)
        try:
            raw = await self._async().get(name)
        except Exception as error:
            raise self._failed(error) from error
        value = self._decode(raw, key)
        return default if value is _MISSING else value

    async def aset(self, key: _Key, value: Any, ttl: float | None = None) -> None:
        name, payload, px = self._key(key), self._dumps(value), self._px(ttl)
        try:
            await self._async().set(name, payload, px=px)
        except Exception as error:
            raise self._failed(error) from error

    async def adelete(self, key: _Key) -> bool:
        try:
            return bool(await self._async().delete(self._key(key)))
        except Exception as error:
            raise self._failed(error) from error

    async def acontains(self, key: _Key) -> bool:
        try:
            return bool(await self._async().exists(self._key(key)))
        except Exception as error:
            raise self._failed(error) from error

    async def aget_many(self, keys: Iterable[_Key]) -> dict[_Key, Any]:
        keys = list(keys)
        if not keys:
            return {}
        pipe, groups = self._mget(self._async(), [self._key(k) for k in keys])
        try:
            replies = await pipe.execute()
        except Exception as error:
            raise self._failed(error) from error
        return self._found(keys, self._mget_result(len(keys), groups, replies))

    async def aset_many(self, mapping: Mapping[_Key, Any], ttl: float | None = None) -> None:
        pipe = self._async().pipeline(transaction=False)
        if not self._fill(pipe, mapping, ttl):
            return
        try:
            await pipe.execute()
        except Exception as error:
            raise self._failed(error) from error

    async def adelete_many(self, keys: Iterable[_Key]) -> int:
        names = [self._key(k) for k in keys]
        if not names:
            return 0
        try:
            return sum(await self._removal(self._async(), names, "DEL").execute())
        except Exception as error:
            raise self._failed(error) from error

    async def akeys(self) -> list[_Key]:
        try:
            return [
                self._unkey(k)
                async for k in self._async().scan_iter(match=self._scan_pattern(), count=1000)
            ]
        except Exception as error:
            raise self._failed(error) from error

    async def aclear(self) -> int:
        removed = 0
        client = self._async()
        try:
            batch: list[bytes] = []
            async for name in client.scan_iter(match=self._scan_pattern(), count=1000):
                batch.append(name)
                if len(batch) >= 500:
                    removed += sum(await self._removal(client, batch, "UNLINK").execute())
                    batch.clear()
            if batch:
                removed += sum(await self._removal(client, batch, "UNLINK").execute())
        except Exception as error:
            raise self._failed(error) from error
        return removed

    async def aclose(self) -> None:
        if self._async_client is not None:
            await self._async_client.aclose()
            self._async_client = None
