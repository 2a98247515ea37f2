"""The messages processes exchange through ``SharedState``: small, binary,
versioned, and signed when a key is given.

    b"LC" | version (1 byte) | kind (1 byte; bit 7: signed) | value (u64: a
    deadline in ms since the epoch, or a health status's code) | origin (8
    bytes) | node id length (u16) | node id (UTF-8) | payload (ROUTES only:
    a router's journal of picks, up to ``MAX_PAYLOAD`` bytes) | HMAC-SHA256
    of all before it, its first 16 bytes (when signed)

A message that is malformed, of another version, unsigned or badly signed
where a key is set, is refused by ``decode`` (None): it is data from the
network, never trusted.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct
from dataclasses import dataclass

__all__ = ["MAX_NODE_ID", "MAX_PAYLOAD", "VERSION", "Kind", "Message", "decode", "encode"]

VERSION = 1
MAX_NODE_ID = 1024  # bytes
MAX_PAYLOAD = 1 << 20  # bytes
_HEAD = struct.Struct(">2sBBQ8sH")
_SIGNED = 0x80
_MAC = 16


class Kind(enum.IntEnum):
    EJECT = 1  # the node is out until the deadline, then on trial
    CLOSE = 2  # a trial succeeded: the node is back everywhere
    HEALTH = 3  # the health checker's verdict; the value is the status's code
    ROUTES = 4  # what a PrefixAware router routed (its journal, as the payload)


@dataclass(frozen=True)
class Message:
    kind: Kind
    node_id: str
    deadline_ms: int
    origin: bytes  # 8 bytes naming the process that sent it
    payload: bytes = b""


def encode(message: Message, key: bytes | None) -> bytes:
    node = message.node_id.encode("utf-8", "surrogatepass")
    if len(node) > MAX_NODE_ID:
        raise ValueError(f"node_id: longer than {MAX_NODE_ID} bytes")
    if len(message.payload) > MAX_PAYLOAD:
        raise ValueError(f"payload: longer than {MAX_PAYLOAD} bytes")
    kind = int(message.kind) | (_SIGNED if key is not None else 0)
    deadline = max(0, min(message.deadline_ms, 2**64 - 1))
    head = _HEAD.pack(b"LC", VERSION, kind, deadline, message.origin, len(node))
    body = head + node + message.payload
    if key is None:
        return body
    return body + hmac.new(key, body, hashlib.sha256).digest()[:_MAC]


def decode(data: bytes, key: bytes | None) -> Message | None:
    """The message, or None for anything that is not a valid one (to the
    key, when one is set)."""
    if not isinstance(data, bytes) or len(data) < _HEAD.size:
        return None
    magic, version, kind, deadline, origin, length = _HEAD.unpack_from(data)
    if magic != b"LC" or version != VERSION or length > MAX_NODE_ID:
        return None
    end = _HEAD.size + length
    signed = bool(kind & _SIGNED)
    body = len(data) - (_MAC if signed else 0)
    if body < end or body - end > MAX_PAYLOAD:
        return None
    if key is not None:
        expected = hmac.new(key, data[:body], hashlib.sha256).digest()[:_MAC]
        if not signed or not hmac.compare_digest(expected, data[body:]):
            return None
    try:
        node_id = data[_HEAD.size : end].decode("utf-8")
        message = Message(Kind(kind & ~_SIGNED), node_id, deadline, origin, data[end:body])
    except ValueError:  # not UTF-8, or a kind this version does not know
        return None
    if message.payload and message.kind is not Kind.ROUTES:
        return None  # only a journal carries one
    return message
