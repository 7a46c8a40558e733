"""What a SQLite store (the ledger, the batch store) does around a fork (:mod:`router._forks`): SQLite keeps its file
locks per process and file, shared by every connection of that process, so a child must not inherit a statement
half-done (its copy of those locks would fail each write of the child's own connections as "database is locked",
or make them wait for ever), nor go on using a connection the parent made (SQLite: a connection used in a child
process must be opened there).

:class:`HeldForFork` waits, in the parent just before the fork, for the store's statements in flight and holds off
new ones until the fork is done; the store's ``_renew_after_fork`` then opens connections of its own in the child
and hands the inherited ones to :func:`keep_inherited`.
"""

from __future__ import annotations

import sqlite3
from typing import Any

_INHERITED: list[sqlite3.Connection] = []
"""The connections a forked child inherited from its parent, kept open for the child's life and never used: SQLite's
close of one acts on the parent's state copied with it (its file locks, which the child's own connections share; a
checkpoint where it finds itself the file's last user)."""


def keep_inherited(*connections: sqlite3.Connection | None) -> None:
    """Keep the connections a forked child inherited (each once) from being closed, by the child or its garbage
    collector."""
    for conn in {id(c): c for c in connections if c is not None}.values():
        _INHERITED.append(conn)


class HeldForFork:
    """The parent's side of a fork for an object whose statements run under the locks :meth:`_locks_held_for_fork`
    names (each taken by every statement on its connection): the fork waits for those in flight, a write at most as
    long as its connection's timeout, and no new one starts until the fork is done."""

    _held_for_fork: list[Any]

    def _locks_held_for_fork(self) -> list[Any]:
        """The locks (``threading.Lock`` or ``RLock``) that every statement of this object runs under, each once."""
        raise NotImplementedError

    def _hold_for_fork(self) -> None:
        self._held_for_fork = self._locks_held_for_fork()
        for lock in self._held_for_fork:
            lock.acquire()

    def _release_after_fork(self) -> None:
        for lock in reversed(self._held_for_fork):
            lock.release()
        self._held_for_fork = []

