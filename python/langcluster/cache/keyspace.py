"""Where a ``RedisCache`` keeps its keys in Redis.

A key of namespace ``ns`` is stored under ``lc:<n>:<ns>:s:<str key>``,
``...:b:<bytes key>`` or ``...:i:<int key>``, where ``<n>`` is the length
of ``ns`` in UTF-8 bytes. The length makes the layout prefix-free: no
namespace's names start with another's (``app`` does not see ``app:prod``'s
keys, and a key of ``a`` can never read as a key of ``b``), and the three
key types never collide. The compute locks of ``LayeredCache.get_or_set``
live outside that pattern, so listing and clearing a namespace skip them.
There are no braces, so Redis Cluster spreads a namespace over every master.
"""

from __future__ import annotations

from langcluster._checks import text
from langcluster.types import Key

__all__ = ["Keyspace"]


class Keyspace:
    """The Redis names of one namespace's keys, and back."""

    __slots__ = ("namespace", "prefix")

    def __init__(self, namespace: str) -> None:
        encoded = text("namespace", namespace).encode()
        self.namespace = namespace
        self.prefix = b"lc:%d:%s:" % (len(encoded), encoded)

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
