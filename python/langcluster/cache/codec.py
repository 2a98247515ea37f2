"""What a ``RedisCache`` stores: values as tagged payloads, and back.

Every payload starts with a format byte: ``P`` pickle, ``J`` JSON (orjson
when installed), ``M`` msgpack, ``C`` a custom serializer (any object with
``dumps``/``loads``), ``S`` a pickle signed with HMAC-SHA256. With a
``signing_key``, pickles are always signed, and a payload whose signature
does not match, or an unsigned pickle, is refused and never unpickled.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import pickle
from typing import Any

from langcluster.types import Serializer

__all__ = ["Codec"]


class Codec:
    """Turns values into tagged payloads and back; see the module docstring."""

    def __init__(self, serializer: Serializer | Any, signing_key: bytes | None) -> None:
        self.signing_key = signing_key
        self.custom: Any = None
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
            self.kind: str = serializer
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
        data = self.custom.dumps(value)
        return b"C" + (data if isinstance(data, bytes) else data.encode())

    def loads(self, payload: bytes) -> tuple[bool, Any]:
        """(True, value), or (False, reason) for a payload to refuse."""
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
