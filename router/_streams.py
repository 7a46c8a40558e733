"""The iterators ``stream=True`` returns, and what ``Router.close()`` does to one its reader has left paused.

A paused stream runs no code, so the cancel flag ``close()`` sets would be seen only at the reader's next read:
after the backends' close has waited for the model the stream holds, and after the ledger has closed, too late for
its ``cancelled`` record. So ``close()`` throws the closing error into each paused stream
(:meth:`ChunkStream.end_paused`): the stream records its call as cancelled while the ledger is open and lets its
model go, and its reader gets that error at its next read.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator
from types import AsyncGeneratorType, GeneratorType, TracebackType
from typing import cast

from .errors import CancelledError, RouterError
from .types import ChatCompletionChunk

_CLOSED = "the Router was closed"  # the stream's call turns it into its own message (Attempts._closing)


class ChunkStream:
    """An iterator of chunks (``Router.complete(..., stream=True)``); ``close()`` stops it, as does leaving a
    ``with`` block around it (as with the openai SDK's ``Stream``)."""

    def __init__(self, chunks: Generator[ChatCompletionChunk, None, None]) -> None:
        self._chunks = chunks
        self._ended: RouterError | None = None

    def __iter__(self) -> ChunkStream:
        return self

    def __next__(self) -> ChatCompletionChunk:
        if self._ended is not None:
            raise self._ended
        return next(self._chunks)

    def close(self) -> None:
        self._chunks.close()

    def __enter__(self) -> ChunkStream:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def end_paused(self) -> None:
        """End the stream if nobody is reading it now (``Router.close()``)."""
        # Router's own generator function made it: a generator object, whose frame says whether it runs now
        chunks = cast("GeneratorType[ChatCompletionChunk, None, None]", self._chunks)
        if chunks.gi_frame is None or chunks.gi_running:
            return
        try:
            self._chunks.throw(CancelledError(_CLOSED))
        except ValueError:  # its reader resumed it meanwhile: the cancel flag ends it
            return
        except RouterError as exc:
            self._ended = exc
        except StopIteration:
            return


class AsyncChunkStream:
    """An async iterator of chunks (``Router.acomplete(..., stream=True)``); ``aclose()`` stops it, as does
    leaving an ``async with`` block around it (as with the openai SDK's ``AsyncStream``)."""

    def __init__(self, chunks: AsyncGenerator[ChatCompletionChunk, None]) -> None:
        self._chunks = chunks
        self._ended: RouterError | None = None

    def __aiter__(self) -> AsyncChunkStream:
        return self

    async def __anext__(self) -> ChatCompletionChunk:
        if self._ended is not None:
            raise self._ended
        return await self._chunks.__anext__()

    async def aclose(self) -> None:
        await self._chunks.aclose()

    async def __aenter__(self) -> AsyncChunkStream:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def end_paused(self) -> None:
        """:meth:`ChunkStream.end_paused`, run on the stream's own event loop."""
        chunks = cast("AsyncGeneratorType[ChatCompletionChunk, None]", self._chunks)  # as in ChunkStream's
        if chunks.ag_frame is None or chunks.ag_running:
            return
        try:
            await self._chunks.athrow(CancelledError(_CLOSED))
        except RouterError as exc:
            self._ended = exc
        except (StopAsyncIteration, RuntimeError):  # ended, or resumed meanwhile (the cancel flag ends it)
            return
