"""A ledger that never drops an acknowledged record: a local journal in front of any store.

``record()`` appends the record to this process's journal (:mod:`router.ledger.journal`) and then writes it to
the store. When the store is unavailable (``LedgerError``: down, locked, unreachable) the record stays in the
journal and the call still succeeds; a background thread (every ``replay_interval_s``) and every open replay
the journal into the store, idempotently by record id, and delete what reached it. Journals left by dead
processes in the same folder are replayed too.

Once a write has failed, the store is treated as unavailable until the replay thread has written to it again
(where no record or settlement waits, a write that changes nothing): records go to the journal only (no request
waits for the store's timeout again) and reservations are refused at once.

Budgets while the store is unavailable **fail closed**: ``try_reserve`` raises ``LedgerError`` (HTTP 503),
because a budget that cannot be read cannot be enforced, and admitting requests against it could overspend
without bound. Requests for models without a budget go on, their records journaled. A settlement is journaled
too, before it goes to the store: one that cannot reach the store waits in memory and is retried with the
replay, and one that a crash kept from the store is applied when the journal is replayed (a hold expires
``HOLD_MARGIN_S`` after its call's deadline, so without it a killed process's calls would stop counting against
their budgets once their holds expired); stores settle a reservation once, by its id, so applying it again
changes nothing. Reads (``records``, ``totals`` ...)
raise ``LedgerError`` while the store is down, and do not include records still in the journal; ``budget_used``,
``request_record`` and ``recent_calls`` (the reads made while answering requests) raise at once while the store is
known to be down, and the Router then leaves models under a budget out where another model can answer, skips the
request ids it cannot check for their owner (answering under its own), and keeps its energy estimates as they were.
Every ``LedgerError`` of a store that may come back says to retry after ``replay_interval_s`` (``retry_after_s``,
the proxy's ``Retry-After``), when the replay thread next checks it.

A store that is down when the ledger is opened is not an error (a corrupt or misconfigured one is): the
journal takes records and the store is opened again by the replay thread.

Length: every method shares the one outage state (since when, why, the settlements waiting for the store), so
the journal's side of each ledger call stays in this module; the journal file itself is :mod:`.journal`.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .._forks import renew_after_fork
from ..config import JournalSettings
from ..errors import LedgerError
from .base import HoldCounts, Ledger, LedgerRecord, Reservation, SummaryRow
from .errors import closed_error, ledger_error, redact, wrapped_parts
from .feedback import Feedback, StoredPrompt
from .journal import Journal, Segment, Settlement, journal_folder, other_spelling_folders
from .replay import ReplayResult, replay_folder, replay_segment, unreadable_error

log = logging.getLogger("router.ledger")
T = TypeVar("T")

# A settlement of nothing against a budget window that never exists: a write on every store (SQLite takes its
# write lock, Redis runs the settle script, PostgreSQL an UPDATE) that changes nothing.
_PROBE = [(Reservation("journal-probe", "journal:probe", 0.0, 0.0), 0.0)]


class JournaledLedger(Ledger):
    """``store`` behind ``journal``. ``connect`` opens the store again after it was unavailable at open."""

    def __init__(
        self,
        store: Ledger | None,
        journal: Journal,
        *,
        connect: Callable[[], Ledger] | None = None,
        url: str | None = None,
        background: bool = True,
    ) -> None:
        if store is None and connect is None:
            raise ValueError("a JournaledLedger needs a store or a way to open one")
        self.store = store
        self.journal = journal
        self._connect = connect
        self.url = url or (store.url if store is not None else journal.url)
        self.atomic_batches = True  # a failed delivery writes nothing twice: ids are unique in every store
        self._unsettled: list[tuple[Reservation, float]] = []
        self._settle_lock = threading.Lock()
        self._lock = threading.Lock()  # one replay at a time
        self._outage_since: float | None = None if store is not None else time.time()
        self._outage_cause = "" if store is not None else "the store has been unavailable since the ledger opened"
        """What started the outage, for the errors that refuse at once while it lasts."""
        self.replayed = 0
        self._unreadable_logged: set[str] = set()  # journal files another user's: said once each, not per replay
        self._opened = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        at_open = self.replay()
        if at_open.unreadable:  # records this process cannot replay: a person must act, and now, not in a log line
            self.journal.close()
            raise at_open.unreadable[0]
        self._opened = True
        if background:
            self._start_replaying()
            renew_after_fork(self)

    def _start_replaying(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="ledger-journal-replay", daemon=True)
        self._thread.start()

    def _renew_after_fork(self) -> None:
        """New locks in a forked child: a parent's thread may have held them at the fork."""
        self._lock = threading.Lock()
        self._settle_lock = threading.Lock()
        self._stop = threading.Event()

    def _restart_after_fork(self) -> None:
        """A forked child (gunicorn --preload, multiprocessing's fork, Celery's prefork pool) has none of the
        parent's threads: without a replay thread of its own, the child's first failed write would leave its store
        unavailable to it for good (records kept in the journal only, budgets refused)."""
        if not self.closed:
            self._start_replaying()

    @classmethod
    def open(cls, url: str, settings: JournalSettings, *, retention_days: float | None = None) -> JournaledLedger:
        """The store ``url`` names behind a journal in ``journal_folder(settings, url)``. Raises ``LedgerError`` for
        a store that needs a person (corrupt, read-only, refused credentials, unknown scheme), not for one that
        is down."""
        from .stores import open_store

        def connect() -> Ledger:
            return open_store(url, retention_days=retention_days)

        store: Ledger | None
        try:
            store = connect()
        except LedgerError as exc:
            if not exc.retryable:
                raise
            log.warning("%s; journaling records until it is back", exc)
            store = None
        try:
            return cls(store, Journal(journal_folder(settings, url), settings, url=url), connect=connect, url=url)
        except LedgerError:
            if store is not None:
                store.close()
            raise

    # -- the store, or why there is none --------------------------------------------------------------
    def _store(self) -> Ledger:
        if self.closed:
            raise closed_error(self.url)
        store = self.store
        if store is not None:
            return store
        if self._connect is not None:
            try:
                self.store = store = self._connect()
                return store
            except LedgerError as exc:
                what, fix = wrapped_parts(exc, "bring it back")
                raise ledger_error(self.url, f"the store is unavailable ({what})",
                                   f"{fix}; records are kept in the journal at {self.journal.folder} until then"
                                   ) from exc  # fmt: skip
        raise closed_error(self.url)  # closing: the store is gone already

    def _outage(self, exc: LedgerError, cause: str) -> None:
        """An outage starts, unless one has; ``cause`` says how it showed ("the store did not answer ..."), for
        the errors that refuse at once while it lasts."""
        if self._outage_since is None:
            self._outage_cause = cause  # first: a reader that sees the outage reads its cause
            self._outage_since = time.time()
            log.warning("%s; records go to the journal at %s until it is back", exc, self.journal.folder)

    # -- records ----------------------------------------------------------------------------------------
    def record(self, rec: LedgerRecord) -> None:
        self.deliver([rec], self.append([rec]))

    def record_many(self, recs: list[LedgerRecord]) -> None:
        if recs:
            self.deliver(recs, self.append(recs))

    def append(self, recs: list[LedgerRecord], settlements: list[Settlement] | None = None) -> Segment | None:
        """The journal half of ``record`` (and of ``settle``): on disk (kill -9 safe) when this returns. None where
        the journal itself cannot be written (full disk): then ``deliver`` must reach the store or raise (and
        ``deliver_settlements`` keeps what misses it in memory)."""
        if self.closed:  # not the closed journal's error, logged as if the disk had failed
            raise closed_error(self.url, "write records")
        try:
            return self.journal.append_many(recs, settlements)
        except LedgerError as exc:
            log.error("%s; writing straight to the store", exc)
            return None

    def deliver(self, recs: list[LedgerRecord], seg: Segment | None) -> int:
        """The store half: write ``recs`` (appended to ``seg``) and tell the journal how it went; returns how
        many reached the store. A store that is unavailable leaves them to the replay; a batch the store
        refuses for one bad record is written one record at a time (ids make rewriting harmless), and the bad
        one is set aside by the replay. Raises only where records are in no journal (``seg`` None) and missed
        the store."""
        if self._outage_since is not None and seg is not None:
            # a known outage: do not make every request wait for the store's timeout (SQLite's lock wait is
            # 30 s by default); the replay thread finds out when it is back
            self.journal.done(seg, len(recs), stored=False)
            return 0
        try:
            self._store().record_many(recs)
            stored = len(recs)
        except LedgerError as exc:
            if not exc.record_rejected:
                if seg is None:
                    raise
                self.journal.done(seg, len(recs), stored=False)
                self._outage(exc, "the store did not answer the last write")
                return 0
            stored = self._one_by_one(recs)
        except Exception:  # noqa: BLE001 - a store that broke its contract (a raw error): same treatment
            log.exception("ledger %s: a batch of %d records failed; writing them one by one", redact(self.url),
                          len(recs))
            stored = self._one_by_one(recs)
        if seg is not None:
            self.journal.done(seg, len(recs), stored=stored == len(recs))
        elif stored < len(recs):
            raise ledger_error(self.url, f"{len(recs) - stored} records reached neither the journal nor the store",
                               "see the log for why", retryable=False)  # fmt: skip
        return stored

    def _one_by_one(self, recs: list[LedgerRecord]) -> int:
        stored = 0
        for rec in recs:
            try:
                self._store().record_many([rec])
                stored += 1
            except Exception:  # noqa: BLE001 - logged; the journal keeps the record for the replay
                log.exception("ledger %s: could not write record %s", redact(self.url), rec.record_id)
        return stored

    # -- replay -----------------------------------------------------------------------------------------
    def replay(self) -> ReplayResult:
        """Move journaled records into the store: this process's segments that missed it, then those of dead
        processes (in a default folder, those of the store's other URLs' folders too: :func:`.other_spelling_folders`).
        Idempotent; stops quietly (returning what it did) while the store is unavailable."""
        if self.closed:  # not an outage to log and wait out
            raise closed_error(self.url, "replay the journal")
        result = ReplayResult()
        with self._lock:
            try:
                store = self._store()
                if self._outage_since is not None:
                    # with nothing to replay nothing below writes, and an open connection object (or a store
                    # that still serves reads, like SQLite under another's write lock) proves nothing
                    store.settle_many(_PROBE)
                self._settle_pending(store)
                self.journal.rotate()
                for seg in self.journal.sealed_ready():
                    if seg.dirty:
                        try:
                            n, aside = replay_segment(seg.path, store.record_many, store.settle_many)
                        except PermissionError as exc:  # another user's rejected.jsonl: said below, segment kept
                            result.unreadable.append(unreadable_error(self.url, self.journal.folder, exc))
                            continue
                        result.records += n
                        result.set_aside += aside
                        result.files += 1
                    self.journal.discard(seg)
                dead = replay_folder(self.journal.folder, store.record_many, store.settle_many,
                                     skip=self.journal.owns, url=self.url)
                for other in other_spelling_folders(self.journal.url, self.journal.folder):
                    dead.add(replay_folder(other, store.record_many, store.settle_many, url=self.url))
            except LedgerError as exc:
                if exc.record_rejected:
                    raise
                self._outage(exc, "the store did not answer the journal's replay")
                result.failed.append(str(exc))
                return result
        result.add(dead)
        for error in result.unreadable:
            if self._opened and str(error) not in self._unreadable_logged:
                self._unreadable_logged.add(str(error))
                log.error("%s", error)
        self.replayed += result.records
        if self._outage_since is not None:
            log.warning("ledger %s is back after %.0f s; %d journaled records replayed", redact(self.url),
                        time.time() - self._outage_since, result.records)  # fmt: skip
            self._outage_since = None
        return result

    def _settle_pending(self, store: Ledger) -> None:
        with self._settle_lock:
            pending, self._unsettled = self._unsettled, []
        if pending:
            try:
                store.settle_many(pending)
            except LedgerError:
                with self._settle_lock:
                    self._unsettled[:0] = pending
                raise

    def _loop(self) -> None:
        interval = self.journal.settings.replay_interval_s
        while not self._stop.wait(interval):
            try:
                self.replay()
            except Exception:  # the thread must outlive any one failure
                log.exception("ledger journal replay failed")

    @property
    def unavailable(self) -> bool:
        """True while the store is known to be unavailable."""
        return self._outage_since is not None

    @property
    def unavailable_since(self) -> float | None:
        """When the store's outage began (Unix time), or None while it is available."""
        return self._outage_since

    def pending(self) -> int:
        """Records of this process that may not be in the store yet."""
        return self.journal.pending()

    # -- budgets: fail closed while the store is unavailable ----------------------------------------------
    def try_reserve(self, budget: str, joules: float, limit_j: float, window_s: float,
                    hold_s: float | None = None) -> Reservation | None:
        # the base's checks, then _try_reserve: a bad argument is the caller's BadRequestError even during an
        # outage. Defined here, public, so that the retry hint (below) wraps it
        return super().try_reserve(budget, joules, limit_j, window_s, hold_s)

    def _try_reserve(self, budget: str, joules: float, limit_j: float, window_s: float,
                     hold_s: float | None) -> Reservation | None:
        if self.closed:  # not "while the store is unavailable": nothing will bring it back
            raise closed_error(self.url, "reserve budget")
        try:
            if self._outage_since is not None:  # known down: refuse at once rather than after a timeout
                raise ledger_error(self.url, self._outage_cause, "bring it back")
            return self._store().try_reserve(budget, joules, limit_j, window_s, hold_s)
        except LedgerError as exc:
            what, fix = wrapped_parts(exc, "bring the store back")
            raise ledger_error(self.url, f"budget {budget!r} cannot be enforced while the store is unavailable "
                               f"({what})", f"{fix}; requests for models without a budget go on",
                               retryable=exc.retryable) from exc  # fmt: skip

    def _settle(self, reservation: Reservation, actual_j: float) -> None:
        self._settle_many([(reservation, actual_j)])

    def _settle_many(self, settlements: list[tuple[Reservation, float]]) -> None:
        """Journaled, then applied now, or kept and retried with the replay while the store is unavailable. The
        figures were checked by ``settle``/``settle_many`` before this: a bad one never reaches the journal, where
        its replay would fail on every try."""
        if self.closed:  # kept in memory, they would be lost without a word
            raise closed_error(self.url, "settle reservations")
        self.deliver_settlements(settlements, self.append([], settlements))

    def deliver_settlements(self, settlements: list[Settlement], seg: Segment | None) -> None:
        """The store half of ``settle_many`` for ``settlements`` appended to ``seg`` (None: in no journal): applied
        now, or kept in memory and retried with the replay while the store is unavailable (and the segment,
        marked for replay, keeps them through a crash). A store that refuses them for good (an error that is not
        an outage) raises, and they are not replayed: the replay would fail the same way, and the holds stay at
        their estimates (budgets err towards refusing)."""
        if self.closed:
            raise closed_error(self.url, "settle reservations")
        stored = False
        to_replay = True
        try:
            if self._outage_since is None:
                self._store().settle_many(settlements)
                stored = True
        except LedgerError as exc:
            if not exc.retryable:
                to_replay = False
                raise
            self._outage(exc, "the store did not answer the last write")
        except Exception:
            to_replay = False  # a store that broke its contract (a raw error): as one that refuses them
            raise
        finally:
            if seg is not None:
                self.journal.done(seg, len(settlements), stored=stored or not to_replay, settlements=True)
        if not stored:
            with self._settle_lock:
                self._unsettled.extend(settlements)

    def budget_used(self, budget: str, window_s: float) -> float:
        """Raises ``LedgerError`` at once while the store is known to be unavailable (as ``try_reserve``: what
        cannot be reserved is not worth a read that may wait for the store's timeout); a read that fails starts
        an outage, ended by the replay."""
        return self._request_path_read(f"read budget {budget!r}", "a budget read",
                                       lambda store: store.budget_used(budget, window_s))

    def _request_path_read(self, what: str, read_name: str, read: Callable[[Ledger], T]) -> T:
        """``read(store)`` for a read the Router makes while answering a request: raises ``LedgerError`` at once
        while the store is known to be unavailable (a hung store would otherwise hold every request for its
        timeout), and a read that fails starts an outage, ended by the replay."""
        if self.closed:
            raise closed_error(self.url, what)
        if self._outage_since is not None:
            raise ledger_error(self.url, f"could not {what}: {self._outage_cause}",
                               "bring it back; requests for models without a budget go on")
        try:
            return read(self._store())
        except LedgerError as exc:
            if exc.retryable:
                self._outage(exc, f"the store did not answer {read_name}")
            raise

    # -- reads and the rest go to the store --------------------------------------------------------------
    def budget_keys(self, since: float) -> list[str]:
        return self._store().budget_keys(since)

    def records(self, since: float = 0.0, until: float | None = None, limit: int | None = None) -> list[LedgerRecord]:
        return self._store().records(since, until, limit)

    def iter_records(
        self, since: float = 0.0, until: float | None = None, batch: int = 10_000
    ) -> Iterator[LedgerRecord]:
        return self._store().iter_records(since, until, batch)

    def spent(self, *, since: float, model: str | None = None, key_hash: str | None = None) -> float:
        return self._store().spent(since=since, model=model, key_hash=key_hash)

    def totals(self, by: str = "model", since: float = 0.0) -> list[dict[str, Any]]:
        return self._store().totals(by, since)

    def summary(
        self, since: float = 0.0, until: float | None = None, dims: Sequence[str] | None = None
    ) -> list[SummaryRow]:
        return self._store().summary(since, until, dims)

    def summary_totals(
        self, since: float = 0.0, until: float | None = None, dims: Sequence[str] | None = None
    ) -> list[SummaryRow]:
        return self._store().summary_totals(since, until, dims)

    def carbon_gap_rows(
        self, since: float = 0.0, until: float | None = None, dims: Sequence[str] | None = None
    ) -> list[SummaryRow]:
        return self._store().carbon_gap_rows(since, until, dims)

    def _stored_summary(self, lo: float, hi: float) -> list[SummaryRow]:
        return self._store()._stored_summary(lo, hi)

    def raw_summary(
        self, since: float, until: float | None = None, dims: Sequence[str] | None = None, step_s: int = 3600
    ) -> list[SummaryRow]:
        return self._store().raw_summary(since, until, dims, step_s)

    def recent_calls(self, model: str, limit: int) -> list[LedgerRecord]:
        """Fails fast while the store is known to be unavailable, as :meth:`budget_used`: the energy estimates
        read it every few seconds while requests are answered."""
        return self._request_path_read(f"read {model}'s recent calls", "a read",
                                       lambda store: store.recent_calls(model, limit))

    def latest_records(self, limit: int) -> list[LedgerRecord]:
        return self._store().latest_records(limit)

    def prune(self, older_than: float) -> int:
        return self._store().prune(older_than)

    @property
    def schema_version(self) -> int | None:
        return self._store().schema_version

    @property
    def latest_schema_version(self) -> int | None:
        return self._store().latest_schema_version

    def integrity_problems(self) -> list[str]:
        return self._store().integrity_problems()

    def hold_counts(self) -> HoldCounts | None:
        return self._store().hold_counts()

    def rebuild_summary(self) -> None:
        self._store().rebuild_summary()

    # -- feedback and stored prompts: straight to the store (not journaled: a client told 503 can retry) ------
    def add_feedback(self, feedback: Feedback) -> None:
        self._store().add_feedback(feedback)

    def feedback(self, request_id: str | None = None, since: float = 0.0,
                 until: float | None = None) -> list[Feedback]:
        return self._store().feedback(request_id, since, until)

    def request_record(self, request_id: str) -> LedgerRecord | None:
        """Raises ``LedgerError`` at once while the store is known to be unavailable, as :meth:`budget_used` does:
        the Router reads it on the request path (a chosen request id's owner), where a read that waits for the
        store's timeout would hold up every such request; a read that fails starts an outage too."""
        return self._request_path_read("read a request's record", "a read",
                                       lambda store: store.request_record(request_id))

    def store_prompt(self, prompt: StoredPrompt) -> None:
        self._store().store_prompt(prompt)

    def prompts(self, since: float = 0.0, until: float | None = None,
                request_id: str | None = None) -> list[StoredPrompt]:
        return self._store().prompts(since, until, request_id)

    def prompt_summary(self) -> tuple[int, float | None]:
        return self._store().prompt_summary()

    def delete_prompts(self, *, before: float | None = None, request_id: str | None = None) -> int:
        return self._store().delete_prompts(before=before, request_id=request_id)

    def __getattr__(self, name: str) -> Any:  # store-specific extras (SQLite's retention setting, Redis clear)
        if name in ("store", "journal", "_connect"):
            raise AttributeError(name)
        return getattr(self._store(), name)

    def _close(self) -> None:
        """Stop the replay thread, move what can go to the store, release the journal (what could not be
        stored stays on disk for the next open), close the store."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.journal.rotate(force=True)
        self.replay()
        self.journal.close()
        if self.store is not None:
            self.store.close()
            self.store = None
            self._connect = None


def _with_retry_hint(method: Callable[..., T]) -> Callable[..., T]:
    """``method``, whose retryable ``LedgerError`` says when to try again (``retry_after_s``, the proxy's
    ``Retry-After``): nobody knows when the store is back, but the replay thread checks it every
    ``replay_interval_s``, and while an outage is known the request-path calls refuse at once until that check
    has found it back. An error a person must fix, or one for a record the store refuses, gets none."""

    @functools.wraps(method)
    def hinted(self: JournaledLedger, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except LedgerError as exc:
            if exc.retryable and not exc.record_rejected and exc.retry_after_s is None:
                exc.retry_after_s = self.journal.settings.replay_interval_s
            raise

    return hinted


# every public call, so that none (a new one included) raises a store's outage without the hint
for _name, _method in list(vars(JournaledLedger).items()):
    if inspect.isfunction(_method) and not _name.startswith("_"):
        setattr(JournaledLedger, _name, _with_retry_hint(_method))
del _name, _method



def journal_folder_of(ledger: Ledger) -> Path | None:
    """The journal folder behind ``ledger`` (None without one)."""
    journal = getattr(ledger, "journal", None)
    return journal.folder if isinstance(journal, Journal) else None
