"""Reservations a timeout gave up on, released by id once the store answers (Redis and PostgreSQL).

A reservation that fails with a driver error (``request_timeout_s`` ran out, the connection broke) may still have
reached the server, and may run there later (a server paused, a budget row locked by another transaction): its
client reported it failed, so nobody settles it, and its joules would count as spent until the window ends. The
ledger queues each such reservation here; a background thread releases them, oldest first, retrying (up to 5 s
apart) while the server does not answer, and the ledger's ``release_given_up()`` does the same on the calling
thread. The store's release leaves a tombstone, so it gives the joules back in whichever order the server runs the
reservation and its release.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from .._forks import renew_after_fork
from ..errors import LedgerError

T = TypeVar("T")
LONGEST_PAUSE_S = 5.0


class Releasing(Protocol):
    """The ledger that owns the queue: its ``release_given_up()`` raises ``LedgerError`` where the store does not
    answer, and a closed ledger's thread stops."""

    closed: bool

    def release_given_up(self) -> None: ...


class GivenUp(Generic[T]):
    """The queue of one ledger's reservations given up on (``T``: what its store's release needs), and the thread
    that empties it. ``release_one(item)`` releases one on the store (raising the driver's error when the store does
    not answer); it must be harmless to run twice for one item."""

    def __init__(self, owner: Releasing, release_one: Callable[[T], object], thread_name: str) -> None:
        self._owner = owner
        self._release_one = release_one
        self._thread_name = thread_name
        self._items: deque[T] = deque()
        self._release_lock = threading.Lock()  # one releaser at a time
        self._thread_lock = threading.Lock()  # guards _releasing, so an item added as the thread ends is not left
        self._releasing = False
        renew_after_fork(self)

    def _renew_after_fork(self) -> None:
        """A forked child (gunicorn --preload, multiprocessing's fork, Celery's prefork pool) has none of the
        parent's threads: were the parent's releasing at the fork, the child would never start one of its own and
        the reservations it gives up on would hold their budgets until the window ends. The items queued before
        the fork are the parent's to release; the locks are new, as a parent's thread may have held them."""
        self._items = deque()
        self._release_lock = threading.Lock()
        self._thread_lock = threading.Lock()
        self._releasing = False

    def add(self, item: T) -> None:
        """Queue ``item`` and make sure the thread runs."""
        self._items.append(item)
        with self._thread_lock:
            if not self._releasing:
                self._releasing = True
                threading.Thread(target=self._release_in_background, name=self._thread_name, daemon=True).start()

    def release_all(self) -> None:
        """Release every queued item, oldest first, on the calling thread; the one whose release raises stays
        queued, with those after it."""
        with self._release_lock:
            while self._items:
                self._release_one(self._items[0])
                self._items.popleft()

    def _release_in_background(self) -> None:
        pause_s = 0.1
        emptied = False
        try:
            while not emptied and not self._owner.closed:
                try:
                    self._owner.release_given_up()
                except LedgerError:
                    time.sleep(pause_s)
                    pause_s = min(2 * pause_s, LONGEST_PAUSE_S)
                    continue
                with self._thread_lock:  # an item added after this sees the flag down and starts a new thread
                    emptied = not self._items
                    if emptied:
                        self._releasing = False
        finally:
            if not emptied:  # closed, or an unexpected error: a later add starts a new thread
                with self._thread_lock:
                    self._releasing = False
