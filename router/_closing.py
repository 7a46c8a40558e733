"""What ``Router.close()`` waits for: the calls running in other threads and tasks, so each writes its ledger
record before the ledger closes; and the typed error every call gets once closing has begun."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
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
    """The running calls of one Router (each with its request's cancel flag, where it has one). A plain lock and
    an event rather than a ``threading.Condition``: every request passes here twice, and the condition's
    pure-Python enter, exit and notify showed in ``benchmarks/ab_proxy.py``'s profile of the proxy."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[int, Cancel | None] = {}
        self._tokens = itertools.count()
        self._idle = threading.Event()
        """Set once closing has begun and no call is running."""
        self.closing = False

    def count(self) -> int:
        """How many calls are running."""
        with self._lock:
            return len(self._calls)

    def check_open(self) -> None:
        if self.closing:
            raise closed_error()

    def running(self, cancel: Cancel | None = None) -> _Running:
        """``with in_flight.running(cancel):`` around one call; refused once closing has begun."""
        token = next(self._tokens)
        with self._lock:
            self.check_open()
            self._calls[token] = cancel
        return _Running(self, token)

    def _done(self, token: int) -> None:
        with self._lock:
            del self._calls[token]
            if self.closing and not self._calls:
                self._idle.set()

    def drain(self, wait_s: float | None = None, *, cancelling: Callable[[], None] | None = None) -> int:
        """Refuse new calls; wait up to ``wait_s`` (default :data:`CLOSE_WAIT_S`) for the running ones to end,
        then cancel those still running (and call ``cancelling``: what else ends them, such as ending streams
        nobody reads) and wait up to ``wait_s`` more for them to record it. Returns how many calls are still
        running."""
        if wait_s is None:
            wait_s = CLOSE_WAIT_S
        with self._lock:
            self.closing = True
            if not self._calls:
                self._idle.set()
        if not self._idle.wait(wait_s):
            with self._lock:
                cancels = [c for c in self._calls.values() if c is not None]
            for cancel in cancels:
                cancel.set()
            if cancelling is not None:
                cancelling()
            self._idle.wait(wait_s)
        with self._lock:
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
