"""What a ``RedisCache`` stores: values as tagged payloads, and back.

A payload is a format byte and the encoded value: ``P`` pickle, ``J`` JSON
(orjson when installed), ``M`` msgpack, ``C`` a custom serializer (any
object with ``dumps``/``loads``). With a ``signing_key`` every payload,
whatever its format, is wrapped as ``S``, an HMAC-SHA256 of the inner
payload, and the inner payload.

Reading is strict, because whoever can write to the Redis chooses the bytes:

- a cache decodes only its own format: a JSON cache never unpickles, a
  pickle payload in it is refused;
- with a ``signing_key``, only a payload whose HMAC matches is decoded, and
  an unsigned one (of any format) is refused;
- a payload that fails to decode is refused too.

A refused payload is a miss, counted and logged by the cache; its bytes
are never run.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import pickle
from typing import Any

from langcluster.types import Serializer

__all__ = ["MIN_KEY_BYTES", "Codec"]

_TAGS = {"pickle": b"P", "json": b"J", "msgpack": b"M", "custom": b"C"}
_SIGNED = b"S"
_DIGEST = 32
# An HMAC key shorter than this is guessable; 32 random bytes is the norm.
MIN_KEY_BYTES = 16


def signing_key_bytes(key: bytes | str | None) -> bytes | None:
    """The signing key as bytes, checked: at least MIN_KEY_BYTES long."""
    if key is None:
        return None
    if isinstance(key, str):
        key = key.encode("utf-8", "surrogatepass")
    if not isinstance(key, bytes):
        raise TypeError(f"signing_key: must be bytes, a str or None, got {type(key).__name__}")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(
            f"signing_key: must be at least {MIN_KEY_BYTES} bytes, got {len(key)} "
            f"(os.urandom(32) makes a good one)"
        )
    return key


class Codec:
    """Turns values into payloads and back; see the module docstring."""

    def __init__(self, serializer: Serializer | Any, signing_key: bytes | str | None) -> None:
        self.signing_key = signing_key_bytes(signing_key)
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
        self.tag = _TAGS[self.kind]

    def _mac(self, data: bytes) -> bytes:
        assert self.signing_key is not None
        return hmac.new(self.signing_key, data, hashlib.sha256).digest()

    def _encode(self, value: Any) -> bytes:
        if self.kind == "pickle":
            return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        if self.kind == "json":
            try:
                import orjson

                return bytes(orjson.dumps(value))
            except ImportError:
                return json.dumps(value, separators=(",", ":")).encode()
        if self.kind == "msgpack":
            import msgpack

            return bytes(msgpack.packb(value, use_bin_type=True))
        data = self.custom.dumps(value)
        return data if isinstance(data, bytes) else str(data).encode()

    def _decode(self, body: bytes) -> Any:
        if self.kind == "pickle":
            return pickle.loads(body)
        if self.kind == "json":
            try:
                import orjson

                return orjson.loads(body)
            except ImportError:
                return json.loads(body)
        if self.kind == "msgpack":
            import msgpack

            return msgpack.unpackb(body, raw=False)
        return self.custom.loads(body)

    def dumps(self, value: Any) -> bytes:
        payload = self.tag + self._encode(value)
        if self.signing_key is None:
            return payload
        return _SIGNED + self._mac(payload) + payload

    def loads(self, payload: bytes) -> tuple[bool, Any]:
        """(True, value), or (False, why) for a payload to refuse."""
        if self.signing_key is not None:
            if payload[:1] != _SIGNED:
                return False, "an unsigned payload while signing_key is set"
            mac, payload = payload[1 : 1 + _DIGEST], payload[1 + _DIGEST :]
            if not hmac.compare_digest(mac, self._mac(payload)):
                return False, "the signature does not match"
        tag = payload[:1]
        if tag != self.tag:
            names = {v: k for k, v in _TAGS.items()}
            found = names.get(tag, "signed" if tag == _SIGNED else f"unknown ({tag!r})")
            return False, f"a {found} payload, but this cache reads {self.kind}"
        try:
            return True, self._decode(payload[1:])
        except Exception as error:  # damaged, foreign or nested too deep: a miss
            return False, f"it does not decode as {self.kind}: {type(error).__name__}: {error}"
