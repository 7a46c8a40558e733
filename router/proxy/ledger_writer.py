"""Ledger records written by a background thread, so a slow disk never stalls the proxy's event loop.

A SQLite commit is ~0.03 ms most of the time but several milliseconds when the WAL is checkpointed (and a Redis
write is a network round trip); on the event loop that shows up as p99 latency for every request in flight.
:class:`BackgroundLedger` puts records on a queue that one thread writes, in order. Budget reservations
(``try_reserve`` / ``settle`` / ``budget_used``) stay synchronous: they must be atomic and answer before the
model is called. Reads that report on records (``records``, ``totals``, ``summary``) first wait for the queue
to drain, so they see every record handed over before them; ``spent`` does not wait (it may be read on the
request path) and can trail by the records still queued.

The trade: a record is durable when the thread has written it (normally well under a millisecond later), not
when ``record`` returns. Shutdown (``close``) drains the queue; a ``kill -9`` can lose what was still queued.
Set ``extra.proxy.ledger_writes: inline`` in the config to write on the request path instead.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from typing import Any

from ..ledger import Ledger, LedgerRecord, Reservation, SummaryRow

log = logging.getLogger("router.proxy")
_STOP = object()


class BackgroundLedger(Ledger):
    def __init__(self, inner: Ledger) -> None:
        self.inner = inner
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self.written = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            try:
                self.inner.record(item)
                self.written += 1
            except Exception:
                self.failed += 1
                log.exception("%s: could not write the ledger record", getattr(item, "request_id", "?"))

    def record(self, rec: LedgerRecord) -> None:
        if self._closed:
            self.inner.record(rec)
            return
        self._queue.put(rec)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every record handed over so far is written."""
        if self._closed or not self._thread.is_alive():
            return True
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    # -- reads: see every record handed over before them ----------------------------------------------
    def records(self, since: float = 0.0, until: float | None = None, limit: int | None = None) -> list[LedgerRecord]:
        self.flush()
        return self.inner.records(since, until, limit)

    def iter_records(
        self, since: float = 0.0, until: float | None = None, batch: int = 10_000
    ) -> Iterator[LedgerRecord]:
        self.flush()
        return self.inner.iter_records(since, until, batch)

    def spent(self, *, since: float, model: str | None = None, key_hash: str | None = None) -> float:
        # no flush: this may be read on the request path; it can trail by the records still queued
        return self.inner.spent(since=since, model=model, key_hash=key_hash)

    def totals(self, by: str = "model", since: float = 0.0) -> list[dict[str, Any]]:
        self.flush()
        return self.inner.totals(by, since)

    def summary(self, since: float = 0.0, until: float | None = None) -> list[SummaryRow]:
        self.flush()
        return self.inner.summary(since, until)

    def prune(self, older_than: float) -> int:
        self.flush()
        return self.inner.prune(older_than)

    # -- budgets: synchronous and atomic in the inner ledger -------------------------------------------
    def try_reserve(self, budget: str, joules: float, limit_j: float, window_s: float) -> Reservation | None:
        return self.inner.try_reserve(budget, joules, limit_j, window_s)

    def settle(self, reservation: Reservation, actual_j: float) -> None:
        self.inner.settle(reservation, actual_j)

    def budget_used(self, budget: str, window_s: float) -> float:
        return self.inner.budget_used(budget, window_s)

    def __getattr__(self, name: str) -> Any:  # anything ledger-specific (e.g. SQLite's retention settings)
        return getattr(self.inner, name)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            self._thread.join(timeout=30)
        self.inner.close()
