"""Charging a process-wide counter to the requests that run at once in the process: :class:`FairShare`.

Shared by the CPU-time and RAPL meters (:mod:`router.energy.meters`) and the NVML meter
(:mod:`router.energy.nvml`), in a module of its own so that neither imports the other for it.

A share renews itself in a forked child (gunicorn --preload, Celery's prefork pool; see
:func:`~router._forks.renew_after_fork`), so every meter that splits a counter with one is renewed with it: the
child gets a lock of its own (a request of the parent's may hold this one at the fork, and every request of the
child would wait for it forever) and no span open (the parent's requests are not the child's: counted there,
each would split every child request's figure with a request that never ends). A span opened before the fork
and closed in the child (by the thread that forked, the one thread a child has) was never counted there, so
closing it leaves the child's count as it is.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .._forks import renew_after_fork

Counters = tuple[float, ...] | Callable[[], tuple[float, ...]]
Mark = tuple[int, tuple[float, ...]]
"""Where a span opened: the share's fork generation then, and each counter's running share per span."""


class FairShare:
    """Splits cumulative quantities equally among the spans open at each moment (a processor-sharing clock).

    Why: process CPU time (and a GPU's energy counter) is one number for the whole process (or device), but
    several requests may run at once in it, and per-request figures must add up to the total. Between two
    start/stop events with ``n`` spans open, each span is charged ``1/n`` of what the counters advanced. Every
    ``enter``/``leave`` is O(1) under one lock, so it stays within the per-request metering budget. Values are
    a tuple of counters (e.g. CPU seconds and wall seconds)."""

    __slots__ = ("_lock", "_active", "_per_span", "_last", "_generation", "__weakref__")

    def __init__(self, width: int) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self._per_span = [0.0] * width
        self._last: list[float] | None = None
        self._generation = 0
        """Forks this share has been renewed through: a span whose mark names an earlier one is not counted in
        ``_active``."""
        renew_after_fork(self)

    def _renew_after_fork(self) -> None:
        """In a forked child (see the module docstring): a new lock and no span open. The running shares stay,
        so a span the forking thread itself opened before the fork still closes against its mark, and the new
        generation keeps it from lowering the child's count."""
        self._lock = threading.Lock()
        self._active = 0
        self._last = None
        self._generation += 1

    def _advance(self, values: tuple[float, ...]) -> None:
        last = self._last
        if self._active and last is not None:
            n = self._active
            per = self._per_span
            for i, v in enumerate(values):
                per[i] += (v - last[i]) / n
        self._last = list(values)

    def enter(self, values: Counters) -> tuple[Mark, int]:
        """Open a span; returns its mark and how many spans are open now (itself included).

        Pass the counters as a function so they are read under the lock: read outside it, a thread can
        arrive with a reading older than one already applied, and the backwards step would charge a
        negative share."""
        with self._lock:
            self._advance(values() if callable(values) else values)
            self._active += 1
            return (self._generation, tuple(self._per_span)), self._active

    def leave(self, values: Counters, mark: Mark) -> tuple[tuple[float, ...], int]:
        """Close a span; returns its share of each counter since its mark, and how many spans were open
        just before it closed (itself included). ``values`` as in :meth:`enter`."""
        generation, start = mark
        with self._lock:
            self._advance(values() if callable(values) else values)
            if generation == self._generation:
                n = self._active
                self._active = max(0, n - 1)
            else:  # opened before a fork: not among the child's open spans, though it ran beside them
                n = self._active + 1
            return tuple(p - m for p, m in zip(self._per_span, start, strict=True)), n

    @property
    def active(self) -> int:
        return self._active
