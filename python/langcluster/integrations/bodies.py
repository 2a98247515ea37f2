"""The bodies of the answers the cluster transports hand over: each
reports how it ended (to the node's in-flight count and its breaker), its
first chunk (a stream's time to first token), and lets the next request in
when it ends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import httpx

__all__ = ["AsyncBody", "AsyncLeave", "SyncBody", "SyncLeave", "streamed"]


def streamed(response: httpx.Response) -> bool:
    """Whether an answer is an event stream, whose first chunk is its first
    token (a JSON answer's first chunk comes at its end)."""
    kind: str = response.headers.get("content-type", "")
    return kind.startswith("text/event-stream")


class AsyncBody(httpx.AsyncByteStream):
    def __init__(
        self,
        inner: httpx.AsyncByteStream,
        end: Callable[[BaseException | None], None],
        first: Callable[[], None] | None = None,
    ):
        self._inner = inner
        self._end = end
        self._first = first

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                if self._first is not None and chunk:
                    first, self._first = self._first, None
                    first()
                yield chunk
        except BaseException as error:
            self._end(error)
            raise

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._end(None)


class SyncBody(httpx.SyncByteStream):
    def __init__(
        self,
        inner: httpx.SyncByteStream,
        end: Callable[[BaseException | None], None],
        first: Callable[[], None] | None = None,
    ):
        self._inner = inner
        self._end = end
        self._first = first

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self._inner:
                if self._first is not None and chunk:
                    first, self._first = self._first, None
                    first()
                yield chunk
        except BaseException as error:
            self._end(error)
            raise

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._end(None)


class _LeaveOnce:
    """Calls ``leave`` once, however many ways the body ends."""

    def __init__(self, leave: Callable[[], None]):
        self._leave: Callable[[], None] | None = leave

    def _left(self) -> None:
        leave, self._leave = self._leave, None
        if leave is not None:
            leave()


class AsyncLeave(_LeaveOnce, httpx.AsyncByteStream):
    """An answer's body that lets the next request in when it ends."""

    def __init__(self, inner: httpx.AsyncByteStream, leave: Callable[[], None]):
        super().__init__(leave)
        self._inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except BaseException:
            self._left()
            raise

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._left()


class SyncLeave(_LeaveOnce, httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, leave: Callable[[], None]):
        super().__init__(leave)
        self._inner = inner

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._inner
        except BaseException:
            self._left()
            raise

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._left()
