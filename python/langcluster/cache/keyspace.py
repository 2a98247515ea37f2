"""Where a ``RedisCache`` keeps its keys in Redis.

A key of namespace ``ns`` is stored under ``ns:s:<str key>``,
``ns:b:<bytes key>`` or ``ns:i:<int key>``, so the three key types never
collide; the compute locks of ``LayeredCache.get_or_set`` live outside that
pattern, so listing and clearing the namespace skip them.
"""

from __future__ import annotations

from langcluster._checks import text
from langcluster.types import Key

__all__ = ["Keyspace"]


class Keyspace:
    """The Redis names of one namespace's keys, and back."""

    __slots__ = ("namespace", "prefix")

    def __init__(self, namespace: str) -> None:
        text("namespace", namespace)
        self.namespace = namespace
        self.prefix = namespace.encode() + b":"

    def name(self, key: Key) -> bytes:
        """The Redis name of ``key``."""
        if isinstance(key, str):
            return self.prefix + b"s:" + text("key", key, empty=True).encode()
        if isinstance(key, bytes):
            return self.prefix + b"b:" + key
        if isinstance(key, int) and not isinstance(key, bool):
            return self.prefix + b"i:" + str(int(key)).encode()
        raise TypeError(f"key: must be str, bytes or int, got {type(key).__name__}")

    def key(self, name: bytes) -> Key:
        """The key stored under the Redis name ``name``."""
        body = name[len(self.prefix) :]
        kind, rest = body[:2], body[2:]
        if kind == b"s:":
            return rest.decode()
        if kind == b"i:":
            return int(rest)
        return rest

    def pattern(self) -> bytes:
        """A SCAN pattern matching every name of the namespace."""
        escaped = self.prefix.replace(b"\\", b"\\\\")
        for ch in (b"*", b"?", b"[", b"]"):
            escaped = escaped.replace(ch, b"\\" + ch)
        return escaped + b"*"

    @staticmethod
    def lock_name(name: bytes) -> bytes:
        """Where the compute lock of the key stored at ``name`` lives."""
        return b"langcluster-lock:" + name
