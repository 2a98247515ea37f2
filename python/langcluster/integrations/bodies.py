"""The bodies of the answers the cluster transports hand over: each
reports how it ended (to the node's in-flight count and its breaker), its
first chunk (a stream's time to first token), and lets the next request in
when it ends (``leave``, set once the answer is handed over)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx

from langcluster._http import AsyncStreamBase, SyncStreamBase, header

__all__ = ["AsyncBody", "SyncBody", "hand_over", "streamed"]


def streamed(response: httpx.Response) -> bool:
    """Whether an answer is an event stream, whose first chunk is its first
    token (a JSON answer's first chunk comes at its end)."""
    kind = header(response.headers, "content-type")
    return kind is not None and kind.startswith("text/event-stream")


class _Ends:
    """What both bodies do when they end: ``end(error)`` for the node, then
    ``leave()`` once, however many ways the body ends."""

    def __init__(
        self,
        end: Callable[[BaseException | None], None],
        first: Callable[[], None] | None,
    ) -> None:
        self._end = end
        self._first = first
        self.leave: Callable[[], None] | None = None

    def _ended(self, error: BaseException | None) -> None:
        try:
            self._end(error)
        finally:
            leave, self.leave = self.leave, None
            if leave is not None:
                leave()


class AsyncBody(_Ends, AsyncStreamBase):
    def __init__(
        self,
        inner: httpx.AsyncByteStream,
        end: Callable[[BaseException | None], None],
        first: Callable[[], None] | None = None,
    ):
        super().__init__(end, first)
        self._inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                if self._first is not None and chunk:
                    first, self._first = self._first, None
                    first()
                yield chunk
        except BaseException as error:
            self._ended(error)
            raise

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._ended(None)


class SyncBody(_Ends, SyncStreamBase):
    def __init__(
        self,
        inner: httpx.SyncByteStream,
        end: Callable[[BaseException | None], None],
        first: Callable[[], None] | None = None,
    ):
        super().__init__(end, first)
        self._inner = inner

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self._inner:
                if self._first is not None and chunk:
                    first, self._first = self._first, None
                    first()
                yield chunk
        except BaseException as error:
            self._ended(error)
            raise

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._ended(None)


def hand_over(response: Any, leave: Callable[[], None]) -> None:
    """The answer goes to the caller: its body lets the next request in
    when it ends; an answer read already (a refusal handed over when no
    node did better) has nothing in flight."""
    stream = response.stream
    if isinstance(stream, AsyncBody | SyncBody) and not response.is_closed:
        stream.leave = leave
    else:
        leave()
