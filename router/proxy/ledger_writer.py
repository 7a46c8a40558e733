"""Ledger records written by a background thread, so a slow disk never stalls the proxy's event loop.

A SQLite commit is ~0.03 ms most of the time but several milliseconds when the WAL is checkpointed (and a Redis
write is a network round trip); on the event loop that shows up as p99 latency for every request in flight.
:class:`BackgroundLedger` hands records to one thread that writes them, in order. Budget reservations
(``try_reserve``) and reads (``budget_used``) stay synchronous: a reservation must be atomic and answer before
the model is called. Settlements (``settle``: the hold replaced by what the call used) are queued like records
and applied by the same thread, one ``settle_many`` per group: a reservation holds its estimate until then
(normally ``interval_s`` longer), so budgets read a little high while settlements queue, and a call that used
more than its estimate is charged that much later (the overspend bound of reserve-then-settle counts the
requests in flight, and a settlement still queued is in flight). With a budgeted model this took the SQLite
proxy's median CPU per request at concurrency 64 from 0.517 to 0.397 ms, together with the one-statement SQLite
reservation (``python benchmarks/ab_proxy.py --budget``; benchmarks/README.md, *Proxy*). Settlements queue apart
from the records: before a budget refuses a request the Router applies the queued ones at once, on its own thread
(:meth:`BackgroundLedger.settle_queued`), and reserves again, so the holds of calls that have ended never refuse a
call the budget has room for. Reads that report on records (``records``, ``totals``, ``summary``, the carbon
report's rows) and on the store (``hold_counts``, ``integrity_problems``: ``router ledger doctor``'s) first wait for
the queue to drain, so they see every record and settlement handed over before them; ``spent``, ``budget_used`` and
``recent_calls`` do not wait (they are read on the request path) and can trail by what is still queued.

Group commit: handing a record over is a ``deque.append`` that wakes nobody while the writer is busy; the writer
takes everything queued, writes it, then pauses ``interval_s`` (default 20 ms) so the next records gather, and
sleeps on an event only when the queue is empty (so a lone record is written at once). Waking a thread for every
record (the first version, on a ``queue.SimpleQueue``) cost two context switches and a GIL hand-off per request:
more proxy CPU than writing the record inline. An inner ledger whose ``record_many`` is all-or-nothing
(``atomic_batches``: SQLite, Redis) is given whole batches, and a failed batch is retried record by record;
otherwise each record is written with ``record``, so a failure never writes a record twice.

Why 20 ms: a SQLite commit has a fixed cost (the WAL frames of every page it touched, the WAL index, and a share of
the checkpoints) that a group of records shares. At concurrency 64 the writer thread took 31-32 µs of CPU per
request with 5 ms pauses (~15 records per commit) and 15-24 µs with 20 ms (~60), with fewer thread switches
(0.32-0.36 -> 0.08-0.24 per request); the interval only bounds how long a record waits while records keep coming.

Nothing acknowledged is lost: ``record`` first appends the record to this process's journal
(:mod:`router.ledger.journal`: one ``write(2)`` of a JSON line, so it survives a ``kill -9`` as soon as ``record``
returns) and only then queues it; the thread's store write tells the journal which records arrived. Records still
queued when the process dies, or that the store did not take (down, locked), are replayed from the journal into the
store (by this process's replay thread, or by the next process that opens the ledger), idempotently by record id.
Settlements are journaled the same way before they queue (in the same write as the records where deferred), so a
call whose settlement was still queued at a ``kill -9`` counts against its budgets when the journal is replayed, not
only until its hold expires. Under ``router serve`` the records made on the event loop's thread are appended
together, once per loop iteration, rather than one ``write(2)`` each (:meth:`BackgroundLedger.defer_journal`): every
write released the GIL, and taking it back behind the writer thread cost the loop ~25 µs per request, 7 % of the
proxy's throughput at concurrency 64 (``python benchmarks/ab_proxy.py``; benchmarks/README.md, *Proxy*). The
server's protocol appends them before any response bytes leave (``router.proxy.server.BEFORE_SEND``), so still
nothing is acknowledged before its record is in the journal. ``journal=False`` turns the journal off (then a
``kill -9`` loses what was queued, up to ``interval_s`` plus one write's worth). Set ``proxy.ledger_writes:
inline`` in the config to write on the request path.

Length: one writer and every way into it (records, settlements, flush, close, the journal's deferral), which
share its queues and thread; split, each part would need the others' state.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..config import JournalSettings
from ..ledger import Feedback, Ledger, LedgerRecord, Reservation, StoredPrompt, SummaryRow
from ..ledger.base import HoldCounts
from ..ledger.journal import Journal, Segment, Settlement, journal_folder
from ..ledger.journaled import JournaledLedger
from ..ledger.stores import in_memory

log = logging.getLogger("router.proxy")
_STOP = object()
_STORE_REPORTS = frozenset({"carbon_rows"})
"""Reads some stores add (found through ``__getattr__``) that report on the records, so wait for the queue as
``summary`` does: ``carbon_rows`` is the carbon report's and the dashboard's query."""


class _Queued:
    """Records handed over together, with the journal segment they were appended to: the records deferred on the
    loop's thread go over as one item, not one each."""

    __slots__ = ("recs", "seg")

    def __init__(self, recs: list[LedgerRecord], seg: Segment | None) -> None:
        self.recs = recs
        self.seg = seg


class BackgroundLedger(Ledger):
    """``inner`` written by one thread; with ``journal`` (default: the journal settings' defaults) ``inner`` is
    put behind a :class:`~router.ledger.journaled.JournaledLedger` unless it is one already."""

    def __init__(
        self, inner: Ledger, *, interval_s: float = 0.02, journal: JournalSettings | bool = True
    ) -> None:
        self.journaled: JournaledLedger | None = None
        if isinstance(inner, JournaledLedger):
            self.journaled = inner
        elif (journal is True or (isinstance(journal, JournalSettings) and journal.enabled)) and not (
                inner.url and in_memory(inner.url)):
            settings = journal if isinstance(journal, JournalSettings) else JournalSettings()
            folder = journal_folder(settings, inner.url) if inner.url else settings.folder
            if folder is None:
                raise ValueError("a ledger without a URL needs JournalSettings(folder=...) for its journal")
            self.journaled = JournaledLedger(inner, Journal(folder, settings, url=inner.url))
        self.inner: Ledger = self.journaled or inner
        self.url = self.inner.url
        self.interval_s = interval_s
        self.deferred = 0  # records the store did not take at once: in the journal, replayed later
        self._pending: deque[Any] = deque()  # append/popleft are atomic: no lock on the request path
        # settlements queue apart from the records, so that a refusal can apply them without waiting for the
        # writer; whoever applies them (the writer, or a refusal) takes them under this lock: each is applied
        # once, and once the lock is had every settlement taken before is applied
        self._settlements: deque[tuple[Reservation, float, Segment | None]] = deque()  # with its journal segment
        self._settle_lock = threading.Lock()
        self._wake = threading.Event()
        self._sleeping = False
        self._closed = False
        self.written = 0
        self.failed = 0
        self.settled = 0
        self.failed_settlements = 0
        self._defer_thread: int | None = None
        self._unjournaled: list[LedgerRecord] = []
        self._unjournaled_settlements: list[Settlement] = []
        self._journal_scheduled = False
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pending, settlements = self._pending, self._settlements
        while True:
            if not pending and not settlements:
                self._sleeping = True
                if not pending and not settlements:  # re-check after announcing the sleep: we are woken from here on
                    self._wake.wait()
                self._wake.clear()
                self._sleeping = False
            batch: list[_Queued] = []
            while pending:
                item = pending.popleft()
                if isinstance(item, _Queued):
                    batch.append(item)
                    continue
                self._write(batch)  # markers apply to what was handed over before them
                self._apply_settlements(everything_before=True)
                batch = []
                if item is _STOP:
                    return
                item.set()  # a flush() marker
            self._write(batch)
            self._apply_settlements()
            time.sleep(self.interval_s)  # group commit: let the next records gather

    def _write(self, batch: list[_Queued]) -> None:
        if not batch:
            return
        if self.journaled is not None:
            at = 0
            while at < len(batch):  # one delivery per journal segment (a rotation can fall inside a batch)
                seg = batch[at].seg
                end = at
                while end < len(batch) and batch[end].seg is seg:
                    end += 1
                recs = [rec for q in batch[at:end] for rec in q.recs]
                try:
                    stored = self.journaled.deliver(recs, seg)
                    self.written += stored
                    self.deferred += len(recs) - stored
                except Exception:
                    self.failed += len(recs)
                    log.exception("could not write %d ledger records (and the journal has not got them)", len(recs))
                at = end
            return
        recs = [rec for q in batch for rec in q.recs]
        if self.inner.atomic_batches and len(recs) > 1:  # all or nothing: safe to retry one by one below
            try:
                self.inner.record_many(recs)
                self.written += len(recs)
                return
            except Exception:
                log.exception("could not write %d ledger records in one batch; writing them one by one", len(recs))
        for rec in recs:
            try:
                self.inner.record(rec)
                self.written += 1
            except Exception:
                self.failed += 1
                log.exception("%s: could not write the ledger record", getattr(rec, "request_id", "?"))

    def _apply_settlements(self, everything_before: bool = False) -> int:
        """Apply every settlement queued now; how many this call took. ``everything_before``: also wait for those
        another thread took and is applying, so that every settlement handed over before this call is applied when
        it returns."""
        queued = self._settlements
        if not queued and not everything_before:  # the writer's usual case: no lock to take
            return 0
        with self._settle_lock:
            taken = []
            while queued:
                taken.append(queued.popleft())
            self._apply(taken)
        return len(taken)

    def _apply(self, settlements: list[tuple[Reservation, float, Segment | None]]) -> None:
        if not settlements:
            return
        if self.journaled is None:
            self._settle_group(settlements, lambda pairs: self.inner.settle_many(pairs))
            return
        journaled = self.journaled
        at = 0
        while at < len(settlements):  # one delivery per journal segment, each told how it went (as for records)
            seg = settlements[at][2]
            end = at
            while end < len(settlements) and settlements[end][2] is seg:
                end += 1
            self._settle_group(settlements[at:end], functools.partial(journaled.deliver_settlements, seg=seg))
            at = end

    def _settle_group(self, settlements: list[tuple[Reservation, float, Segment | None]],
                      settle: Callable[[list[Settlement]], None]) -> None:
        try:
            settle([(reservation, actual_j) for reservation, actual_j, _ in settlements])
            self.settled += len(settlements)
        except Exception:  # the holds stay at their estimates: budgets err on the side of refusing
            self.failed_settlements += len(settlements)
            log.exception("could not settle %d budget reservations", len(settlements))

    def _hand_over(self, item: Any) -> None:
        self._pending.append(item)
        self._wake_writer()

    def _wake_writer(self) -> None:
        if self._sleeping:  # only the first record after the writer went to sleep pays for waking it
            self._sleeping = False
            self._wake.set()

    def record(self, rec: LedgerRecord) -> None:
        """On disk in the journal when this returns (a ``kill -9`` then loses nothing), or, made on the thread
        given to :meth:`defer_journal`, by :meth:`journal_pending`; in the store once the writer thread has
        written it."""
        if self._closed:
            self.inner.record(rec)
            return
        if self._defer_thread is not None and threading.get_ident() == self._defer_thread:
            self._unjournaled.append(rec)
            if not self._journal_scheduled:  # at the latest in the loop's next iteration
                self._journal_scheduled = True
                asyncio.get_running_loop().call_soon(self.journal_pending)
            return
        recs = [rec]
        self._hand_over(_Queued(recs, self.journaled.append(recs) if self.journaled is not None else None))

    def defer_journal(self, on: bool) -> None:
        """With ``on``, called on a running event loop: records made on its thread wait for
        :meth:`journal_pending` (scheduled on the loop at the first of them; the server also calls it before
        sending any response bytes), which appends them to the journal in one write. Only for a server that
        calls ``journal_pending`` before every send (``router serve``'s protocol does): otherwise an answer
        could leave before its record is in the journal. Off: the pending records are appended at once, and
        records are again appended as they are made."""
        if on and self.journaled is None:
            return  # no journal: nothing to group
        self.journal_pending()
        self._defer_thread = threading.get_ident() if on else None

    def journal_pending(self) -> None:
        """Append the records and settlements deferred on the loop's thread in one write and hand them to the
        writer thread. Never raises: a journal that cannot be written leaves them to the store write (logged)."""
        self._journal_scheduled = False
        recs, settlements = self._unjournaled, self._unjournaled_settlements
        if not recs and not settlements:
            return
        self._unjournaled, self._unjournaled_settlements = [], []
        seg: Segment | None = None
        if self.journaled is not None:
            try:
                seg = self.journaled.append(recs, settlements)
            except Exception:  # closed meanwhile: the store write is what is left (JournaledLedger.append's rule)
                log.exception("could not append %d ledger records and %d settlements to the journal; writing them "
                              "to the store", len(recs), len(settlements))
        self._settlements.extend((reservation, actual_j, seg) for reservation, actual_j in settlements)
        if recs:
            self._hand_over(_Queued(recs, seg))
        else:
            self._wake_writer()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every record handed over so far is written (or, the store being unavailable, left to the
        journal's replay)."""
        if self._closed or not self._thread.is_alive():
            return True
        if self._defer_thread == threading.get_ident():
            self.journal_pending()
        done = threading.Event()
        self._hand_over(done)
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

    def summary(
        self, since: float = 0.0, until: float | None = None, dims: Sequence[str] | None = None
    ) -> list[SummaryRow]:
        self.flush()
        return self.inner.summary(since, until, dims)

    def summary_totals(
        self, since: float = 0.0, until: float | None = None, dims: Sequence[str] | None = None
    ) -> list[SummaryRow]:
        self.flush()
        return self.inner.summary_totals(since, until, dims)

    def carbon_gap_rows(
        self, since: float = 0.0, until: float | None = None, dims: Sequence[str] | None = None
    ) -> list[SummaryRow]:
        self.flush()
        return self.inner.carbon_gap_rows(since, until, dims)

    def raw_summary(
        self, since: float, until: float | None = None, dims: Sequence[str] | None = None, step_s: int = 3600
    ) -> list[SummaryRow]:
        self.flush()
        return self.inner.raw_summary(since, until, dims, step_s)

    def recent_calls(self, model: str, limit: int) -> list[LedgerRecord]:
        # no flush: read while deciding; it can trail by the records still queued
        return self.inner.recent_calls(model, limit)

    def latest_records(self, limit: int) -> list[LedgerRecord]:
        self.flush()
        return self.inner.latest_records(limit)

    def prune(self, older_than: float) -> int:
        self.flush()
        return self.inner.prune(older_than)

    # -- the store's own state (``router ledger doctor``): read once what was handed over is in it -------------
    @property
    def schema_version(self) -> int | None:
        return self.inner.schema_version

    @property
    def latest_schema_version(self) -> int | None:
        return self.inner.latest_schema_version

    def integrity_problems(self) -> list[str]:
        self.flush()
        return self.inner.integrity_problems()

    def _stored_summary(self, lo: float, hi: float) -> list[SummaryRow]:
        self.flush()
        return self.inner.stored_summary(lo, hi)

    def rebuild_summary(self) -> None:
        self.flush()
        self.inner.rebuild_summary()

    def hold_counts(self) -> HoldCounts | None:
        """The store's holds once the settlements queued before this call are applied: a call whose settlement
        is still queued has ended, and counting its hold as "may be running" would have a caller that waits for
        the holds to settle (a test, ``router ledger doctor``) wait on this writer's pause, or read a hold the
        store is about to drop."""
        self.flush()
        return self.inner.hold_counts()

    # -- budgets: reservations synchronous and atomic in the inner ledger; settlements queued -----------
    def try_reserve(self, budget: str, joules: float, limit_j: float, window_s: float,
                    hold_s: float | None = None) -> Reservation | None:
        return self.inner.try_reserve(budget, joules, limit_j, window_s, hold_s)

    def _settle(self, reservation: Reservation, actual_j: float) -> None:
        """Queued for the writer (one ``settle_many`` per group, not a write on the request path per request).
        Until it is applied the reservation keeps holding its estimate; ``flush`` waits for it. ``settle`` checked
        the figure first, on the caller's thread: a bad one is the caller's error, never queued."""
        if self._closed:
            self.inner.settle(reservation, actual_j)
            return
        if self._defer_thread is not None and threading.get_ident() == self._defer_thread:
            self._unjournaled_settlements.append((reservation, actual_j))  # journaled with the call's record
            if not self._journal_scheduled:
                self._journal_scheduled = True
                asyncio.get_running_loop().call_soon(self.journal_pending)
            return
        seg = self.journaled.append([], [(reservation, actual_j)]) if self.journaled is not None else None
        self._settlements.append((reservation, actual_j, seg))
        self._wake_writer()

    def settle_queued(self) -> bool:
        """Apply on this thread the settlements still queued for the writer (a refusal's path: one transaction,
        not a wait for the writer's next group); when it returns, every settlement handed over before it is
        applied, whichever thread took it. ``True``: budgets may have more room now than a reservation just
        found, even where the writer or a concurrent refusal applied what was queued. Never raises: a store that
        fails leaves the holds at their estimates (logged), and the refusal stands."""
        if self._closed:  # settlements are applied at once from here on, and close() applied the queued ones
            return False
        if self._defer_thread == threading.get_ident():
            self.journal_pending()  # the settlements deferred on this thread queue behind their journal write
        self._apply_settlements(everything_before=True)
        return True

    def budget_used(self, budget: str, window_s: float) -> float:
        return self.inner.budget_used(budget, window_s)

    def budget_keys(self, since: float) -> list[str]:
        # no flush: a settlement still queued changes a counter's figure, not whether it has one
        return self.inner.budget_keys(since)

    # -- feedback and stored prompts: written at once by the caller's thread (never on the event loop) ----------
    def add_feedback(self, feedback: Feedback) -> None:
        self.inner.add_feedback(feedback)

    def feedback(self, request_id: str | None = None, since: float = 0.0,
                 until: float | None = None) -> list[Feedback]:
        return self.inner.feedback(request_id, since, until)

    def request_record(self, request_id: str) -> LedgerRecord | None:
        """Sees the records handed over before it (a client may score an answer the moment it arrives)."""
        self.flush()
        return self.inner.request_record(request_id)

    def store_prompt(self, prompt: StoredPrompt) -> None:
        self.inner.store_prompt(prompt)

    def prompts(self, since: float = 0.0, until: float | None = None,
                request_id: str | None = None) -> list[StoredPrompt]:
        return self.inner.prompts(since, until, request_id)

    def prompt_summary(self) -> tuple[int, float | None]:
        return self.inner.prompt_summary()

    def delete_prompts(self, *, before: float | None = None, request_id: str | None = None) -> int:
        return self.inner.delete_prompts(before=before, request_id=request_id)

    def __getattr__(self, name: str) -> Any:  # anything ledger-specific (e.g. SQLite's retention settings)
        if name in ("inner", "journaled"):
            raise AttributeError(name)
        extra = getattr(self.inner, name)
        if name not in _STORE_REPORTS:
            return extra

        @functools.wraps(extra)
        def after_flush(*args: Any, **kwargs: Any) -> Any:  # a report sees every record handed over before it
            self.flush()
            return extra(*args, **kwargs)

        return after_flush

    def close(self) -> None:
        if self._unjournaled or self._unjournaled_settlements:  # a server stopped with deferral on: these count
            self.journal_pending()
        self._defer_thread = None
        if not self._closed:
            self._closed = True
            self._hand_over(_STOP)
            self._thread.join(timeout=30)
        self.inner.close()


def ledger_state(ledger: Ledger) -> dict[str, Any]:
    """What ``/health`` and ``/metrics`` say of the ledger: with a journal in front of the store, whether the store is
    available (``store``: ``ok`` or ``unavailable``, ``unavailable_since`` its outage's start) and how many of this
    process's records may not be in it yet (``journal_pending``); without one, ``{}`` (each write is the store's)."""
    journaled = ledger if isinstance(ledger, JournaledLedger) else getattr(ledger, "journaled", None)
    if not isinstance(journaled, JournaledLedger):
        return {}
    since = journaled.unavailable_since
    state: dict[str, Any] = {"store": "ok" if since is None else "unavailable", "journal_pending": journaled.pending()}
    if since is not None:
        state["unavailable_since"] = round(since, 3)
    return state
