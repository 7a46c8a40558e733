"""What keeps the drivers' promises: an awaited step bounded by the request's deadline, and nothing but a typed
error leaving the library."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

from ._output import Call
from .backends.base import waiting_for_turn
from .errors import DeadlineExceededError, InternalError, RouterError

log = logging.getLogger("router")
T = TypeVar("T")


def within_deadline(call: Call, step: Awaitable[T]) -> Awaitable[T]:
    """One step of a call (a whole answer, or a stream's next event) to await, bounded exactly by the request's
    deadline, unless the backend bounds its own waits (``Backend.bounds_itself``): then ``step`` itself, with no
    coroutine around it (every resumption of the call would pass through it). The bound is per step, never around
    a ``yield``: a cancel scope left open across a yield would cancel whatever the consumer happens to be
    awaiting."""
    if call.backend.bounds_itself:
        return step
    remaining = call.request.remaining()
    if remaining is None:
        return step
    return _within(call, step, remaining)


async def _within(call: Call, step: Awaitable[T], remaining: float) -> T:
    """``step`` awaited within ``remaining`` seconds, or the request's :class:`DeadlineExceededError`."""
    scope = asyncio.timeout(remaining)
    try:
        async with scope:
            return await step
    except TimeoutError:
        if not scope.expired():
            raise
        if waiting_for_turn(call.request):  # still queued behind other calls: the model never began on it
            error = DeadlineExceededError(
                f"{call.model}: the request's deadline passed while waiting for the model (other calls were using "
                "it); raise `deadline_s` or send fewer calls at once")
            error.never_started = True  # type: ignore[attr-defined]
            raise error from None
        raise DeadlineExceededError(
            f"{call.model}: the request's deadline passed while the model was answering; raise `deadline_s` "
            "or use a faster model") from None


def guarded(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; anything that is not a :class:`RouterError` becomes an :class:`InternalError` (logged)."""
    try:
        return fn(*args, **kwargs)
    except RouterError:
        raise
    except Exception as exc:
        raise internal(getattr(fn, "__name__", "router"), exc) from exc


def internal(where: str, exc: BaseException) -> InternalError:
    log.error("internal error in %s", where, exc_info=exc)
    return InternalError(f"internal error ({type(exc).__name__}) in {where}; the log has the details")
