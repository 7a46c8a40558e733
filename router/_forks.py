"""What a forked child (gunicorn --preload, multiprocessing's fork, Celery's prefork pool) renews of the objects
its parent made: a fork copies no thread, and copies connections, open files and locks that the parent's threads
go on using (or held at the fork).

An object calls :func:`renew_after_fork` once it is made. In the child, before ``fork()`` returns there, every
object still alive gets, in the order they were made, ``_renew_after_fork()`` (new locks, connections, files;
no thread started), and only then, again in that order, ``_restart_after_fork()`` (its threads). So no thread
of the child runs before everything it may use is renewed, whatever order the objects were made in (a store a
journaled ledger opened again after an outage is made after that ledger). Either method may be left out.

An object whose state a fork must not copy half-changed (a SQLite connection inside a statement: SQLite keeps its
file locks per process, and the child's copy of that state would block its own new connections for good) also
has ``_hold_for_fork()``, called in the parent just before the fork (it waits for what is in flight and holds it
off), and ``_release_after_fork()``, called in the parent right after; the child renews instead.
"""

from __future__ import annotations

import itertools
import logging
import os
import weakref

log = logging.getLogger(__name__)

_made = itertools.count()
_LIVE: weakref.WeakValueDictionary[int, object] = weakref.WeakValueDictionary()
"""Keyed by the order of making; a dict keeps that order."""


def renew_after_fork(obj: object) -> None:
    """Have a forked child call ``obj._renew_after_fork()`` and then ``obj._restart_after_fork()`` (those it
    has), as long as ``obj`` is alive; kept by a weak reference."""
    _LIVE[next(_made)] = obj


_HELD: list[object] = []
"""The objects ``_before_fork`` held, released after the fork in the parent (one made meanwhile was not held)."""


def _before_fork() -> None:
    for obj in [obj for _, obj in sorted(_LIVE.items())]:
        # looked up on the class: a wrapper that forwards unknown attributes to its store (the journaled ledger)
        # would otherwise hold that store a second time, waiting for ever on a lock it has just taken
        hold = getattr(type(obj), "_hold_for_fork", None)
        if hold is not None:
            hold(obj)
            _HELD.append(obj)


def _after_fork_in_parent() -> None:
    while _HELD:
        obj = _HELD.pop()
        type(obj)._release_after_fork(obj)  # type: ignore[attr-defined]


def _after_fork_in_child() -> None:
    _HELD.clear()  # renewed instead
    live = [obj for _, obj in sorted(_LIVE.items())]
    for phase in ("_renew_after_fork", "_restart_after_fork"):
        for obj in live:
            hook = getattr(obj, phase, None)
            if hook is None:
                continue
            try:
                hook()
            except Exception:  # one object that cannot renew must not leave the others unrenewed
                log.exception("could not renew %r in a forked child", obj)


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)
