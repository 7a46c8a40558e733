"""What ``Router.close()`` waits for: the calls running in other threads and tasks, so each writes its ledger
record before the ledger closes; and the typed error every call gets once closing has begun."""

from __future__ import annotations

import threading
from types import TracebackType

from .backends.base import Cancel
from .errors import RouterClosedError

CLOSE_WAIT_S = 5.0
"""How long ``close()`` waits for running calls to end by themselves, and then again for those it cancelled to
record what they produced (a local model stops at its next token)."""


def closed_error() -> RouterClosedError:
    return RouterClosedError("this Router has been closed: it calls no model and records nothing more; make calls "
                             "before close(), or create a new Router")


class InFlight:
    """The running calls of one Router (each with its request's cancel flag, where it has one)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._calls: dict[int, Cancel | None] = {}
        self._count = 0
        self.closing = False

    def check_open(self) -> None:
        if self.closing:
            raise closed_error()

    def running(self, cancel: Cancel | None = None) -> _Running:
        """``with in_flight.running(cancel):`` around one call; refused once closing has begun."""
        with self._cond:
            self.check_open()
            self._count += 1
            self._calls[self._count] = cancel
            return _Running(self, self._count)

    def _done(self, token: int) -> None:
        with self._cond:
            del self._calls[token]
            if not self._calls:
                self._cond.notify_all()

    def drain(self, wait_s: float = CLOSE_WAIT_S) -> int:
        """Refuse new calls; wait up to ``wait_s`` for the running ones to end, then cancel those still running
        and wait up to ``wait_s`` more for them to record it. Returns how many calls are still running."""
        with self._cond:
            self.closing = True
            if not self._cond.wait_for(lambda: not self._calls, wait_s):
                for cancel in self._calls.values():
                    if cancel is not None:
                        cancel.set()
                self._cond.wait_for(lambda: not self._calls, wait_s)
            return len(self._calls)


class _Running:
    """One running call (a class, not ``contextlib.contextmanager``: this is on every request)."""

    __slots__ = ("calls", "token")

    def __init__(self, calls: InFlight, token: int) -> None:
        self.calls = calls
        self.token = token

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.calls._done(self.token)
