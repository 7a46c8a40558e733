"""SQLite ledger (WAL): the single-host default. Each record is its own committed transaction, so a crash
(even kill -9) loses nothing that ``record`` returned from.

Durability: WAL with ``synchronous=NORMAL`` survives a crash of the process (the committed transaction is in
the WAL file, which the OS keeps through a kill -9); a power cut may lose the transactions written since the
last checkpoint. ``durable=True`` switches to ``synchronous=FULL`` (an fsync per record) for that case.

The schema and its numbered migrations are in :mod:`router.ledger.sqlite_schema`; opening an older file
upgrades it in one transaction. Record ids are unique: writing a stored record again changes nothing. Each budget
reservation has a row in ``holds`` until it is settled (step 8), so settling it again changes nothing either; a hold
not settled within its ``hold_s`` (its process was killed) stops counting (step 9).

Forks (gunicorn --preload, multiprocessing's fork): a fork waits for the ledger's statements in flight, and the
child opens connections of its own (:meth:`SQLiteLedger._renew_after_fork`).

Length: one class is the whole ledger interface for one store (records, budgets, sums, retention, migrations on
open); its schema and its feedback table are already modules of their own, and splitting the class further would
scatter one store's SQL.
"""

from __future__ import annotations

import contextlib
import operator
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .._forks import renew_after_fork
from .._sqlite_forks import HeldForFork, keep_inherited
from .arguments import (
    checked_count,
    checked_limit,
    checked_retention_days,
    checked_span,
    checked_time,
    stored_retention_days,
)
from .base import (
    REFUSED,
    SUMMARY_DIMS,
    HoldCounts,
    Ledger,
    LedgerRecord,
    Reservation,
    Retention,
    SummaryRow,
    binary_chunks,
    ended_budget_windows,
    refuse_unusable_figures,
    window_start,
)
from .errors import guarded, ledger_error, sqlite_error
from .rollup import ROLLUP_UPTO, RollupFolding, SummedInStore, summary_row
from .sqlite_feedback import PRUNE_SQL, SQLiteFeedback
from .sqlite_schema import (
    BUCKET_SQL,
    MIGRATIONS,
    RECLAIM,
    RESERVE,
    SCHEMA_VERSION,
    SETTLE_COUNTER,
    SETTLE_HOLD,
    SUMMARY_COLS,
    UNFOLDED_SQL,
    USED,
    fold_sql,
    rollup_source,
    rollup_sql,
    summarise_sql,
)
from .urls import sqlite_path, sqlite_url, url_scheme

__all__ = ["SCHEMA_VERSION", "SQLiteLedger"]

_COLUMNS = [
    "ts", "request_id", "model", "tier", "reason", "input_tokens", "output_tokens", "latency_ms",
    "energy_j", "energy_source", "policy", "task", "outcome", "key_hash", "error", "attempt", "co2e_g", "record_id",
    "estimated_j", "grid_g_per_kwh", "zone",
]  # fmt: skip

_RAW_SUMS = ("COUNT(*), SUM(energy_j), SUM(COALESCE(input_tokens, 0)), SUM(COALESCE(output_tokens, 0)), "
             "SUM(COALESCE(latency_ms, 0)), SUM(COALESCE(co2e_g, 0))")

_values = operator.itemgetter(*_COLUMNS)
"""A record's values in column order, from its ``__dict__`` (``vars(rec)``): the journal's encoding has read that
dictionary already, and an attribute read of a record whose dictionary exists is a full lookup (type, then
dictionary) per name, where this is one C call of 21 dictionary lookups: ~2,700 instructions per record less."""
_MARKS = "(" + ", ".join("?" * len(_COLUMNS)) + ")"  # one row's placeholders
_LARGEST_INSERT = 256  # rows in one INSERT statement (21 columns: 5,376 parameters, SQLite allows 32,766)
REQUEST_TIMEOUT_S = 1.0  # the longest a reservation waits for another connection's write lock (see the class)
URL_OPTIONS = ("retention_days", "durable", "timeout_s", "request_timeout_s")  # the query a sqlite:/// URL takes
_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no")


class SQLiteLedger(HeldForFork, SQLiteFeedback, RollupFolding, SummedInStore, Retention, Ledger):
    """One SQLite file in WAL mode; safe across threads (each connection behind its own lock) and processes
    (SQLite's own locking; a budget reservation is one statement, its hold's ``INSERT``, whose trigger charges
    the counter: SQLite applies it atomically).

    Three connections, so that the calls made while answering a request (on the proxy's event loop) never
    queue behind a write that waits for the file's write lock (another process's ``router ledger prune``, a
    backup, a batch of the writer thread): the reads made per request (``budget_used``, ``spent``,
    ``recent_calls``, ``request_record``) have their own, which in WAL mode no writer blocks; reservations
    (``try_reserve``) have their own, which waits at most ``request_timeout_s`` (default 1 s, never more than
    ``timeout_s``) for the write lock and then fails with the retryable ``LedgerError`` (HTTP 503); everything
    else (records, settlements, retention, maintenance) waits up to ``timeout_s``, off the request path. A
    ``:memory:`` database exists once per connection, so it gets one connection for all of them.

    ``retention_days``: when given, it is stored in the file (so every process sees the same setting) and
    records older than that are pruned on open and then once an hour of writing. ``timeout_s``: how long a
    statement waits for another process's write lock before failing with a (retryable) ``LedgerError``."""

    driver_errors = (sqlite3.Error, OSError)
    _columns = _COLUMNS
    _summary_table, _param = "summary_hourly", "?"

    @guarded("open the ledger")
    def __init__(
        self,
        path: str | Path,
        *,
        timeout_s: float = 30.0,
        retention_days: float | None = None,
        durable: bool = False,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> None:
        checked_retention_days(retention_days)  # before the file is created or opened
        self.path = Path(path)
        self.url = sqlite_url(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._synchronous = f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}"  # per connection
        self._timeout_s = timeout_s
        self._request_timeout_s = min(request_timeout_s, timeout_s)
        self._lock = threading.Lock()
        self._conn = conn = self._connect(timeout_s)
        self._read_conn = self._reserve_conn = conn
        self._read_lock = self._reserve_lock = self._lock
        try:
            conn.execute("PRAGMA journal_mode=WAL")  # kept in the file: every connection to it is in WAL mode
            self._check_writable()
            self._migrate()
            self._open_request_connections()
        except BaseException:
            for c in {id(c): c for c in (conn, self._read_conn, self._reserve_conn)}.values():
                c.close()
            raise
        renew_after_fork(self)
        self._inserts: dict[int, str] = {}
        self._insert = self._insert_rows(1)
        if retention_days is not None:
            self.set_retention_days(retention_days)
        self.apply_retention()

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> SQLiteLedger:
        """``sqlite:///PATH[?retention_days=N&durable=1&timeout_s=S&request_timeout_s=S]``; keyword arguments win
        over the query."""
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        path = sqlite_path(url)
        if path is None:
            raise ledger_error(url, "not a SQLite ledger URL", "open it with open_ledger, which opens the store its "
                               "scheme names", retryable=False)
        query = dict(parse_qsl(urlsplit(url).query)) if url_scheme(url) == "sqlite" else {}
        # a misspelt option (`?durabel=1`, `?retention-days=30`) would otherwise leave the ledger without the
        # durability or retention the operator asked for, and nothing would say so
        unknown = sorted(set(query) - set(URL_OPTIONS))
        if unknown:
            raise ledger_error(url, f"unknown query option {', '.join(map(repr, unknown))}: a SQLite ledger URL takes "
                               f"{', '.join(URL_OPTIONS)}", "correct the spelling, or drop the option",
                               retryable=False)
        durable = query.get("durable", "1").lower()
        if durable not in _TRUE + _FALSE:
            raise ledger_error(url, f"durable={query['durable']} is neither on ({'/'.join(_TRUE)}) nor off "
                               f"({'/'.join(_FALSE)})", "write durable=1 for an fsync per record, or drop it",
                               retryable=False)
        try:
            if "retention_days" in query:
                kwargs.setdefault("retention_days", float(query["retention_days"]))
            for name in ("timeout_s", "request_timeout_s"):
                if name in query:
                    kwargs.setdefault(name, float(query[name]))
                    if not 0 <= kwargs[name] <= 86_400:  # NaN too: a lock wait must be a real number of seconds
                        raise ValueError(f"{name}={query[name]} is not from 0 to 86400 seconds")
        except ValueError as exc:
            raise ledger_error(url, f"a query value is not a number in range ({exc})", "fix the URL's query",
                               retryable=False) from exc
        if "durable" in query:
            kwargs.setdefault("durable", durable in _TRUE)
        return cls(path, **kwargs)

    def _connect(self, timeout_s: float) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=timeout_s, check_same_thread=False, isolation_level=None)
        try:
            conn.execute(self._synchronous)
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_request_connections(self) -> None:
        """The connections of the calls made while answering a request (the class docstring): a ``:memory:``
        database exists once per connection, so it keeps the one it has."""
        if str(self.path) == ":memory:":
            return
        self._read_conn = self._connect(self._request_timeout_s)
        self._read_conn.execute("PRAGMA query_only=1")
        self._read_lock = threading.Lock()
        self._reserve_conn = self._connect(self._request_timeout_s)
        self._reserve_lock = threading.Lock()

    def _locks_held_for_fork(self) -> list[threading.Lock]:
        """A fork waits for this ledger's statements in flight (:class:`~router._sqlite_forks.HeldForFork`; a
        write waits at most ``timeout_s`` for another process's lock)."""
        return list({id(lock): lock for lock in (self._lock, self._read_lock, self._reserve_lock)}.values())

    def _renew_after_fork(self) -> None:
        """A forked child (gunicorn --preload, multiprocessing's fork, Celery's prefork pool) opens connections
        of its own, with new locks: a parent's thread may have held a lock, or been inside a statement on a
        connection, at the fork, and SQLite's file locks belong to the process that took them, so the child would
        wait for ever, or write on the parent's connection without holding its locks (SQLite: a connection used in
        a child process must be opened there). :meth:`_hold_for_fork` saw to it that none was inside a statement.
        The inherited connections are kept open for the child's life, never used: SQLite's close of one acts on
        the parent's state copied with it (its file locks, which the child's own connections share, as SQLite
        keeps them per process and file; a checkpoint where it finds itself the file's last user)."""
        self._lock = threading.Lock()
        self._read_lock = self._reserve_lock = self._lock
        if self.closed or str(self.path) == ":memory:":  # a ``:memory:`` database is its connection, copied
            return
        keep_inherited(self._conn, self._read_conn, self._reserve_conn)
        self._conn = self._read_conn = self._reserve_conn = self._connect(self._timeout_s)
        self._open_request_connections()

    def _translate(self, exc: BaseException, action: str) -> Exception:
        return sqlite_error(self.url, self.path, exc, action)

    def _check_writable(self) -> None:
        """A read-only file in WAL mode opens and reads fine and fails at the first write: say so at open."""
        if str(self.path) == ":memory:":
            return
        effective = os.access in os.supports_effective_ids
        if not os.access(self.path, os.W_OK, effective_ids=effective):
            raise sqlite3.OperationalError("attempt to write a readonly database")

    def _migrate(self) -> None:
        """The missing schema steps and the new version in one write transaction. The version is read again
        inside it: a process that opened the same new file at the same moment has applied them already."""
        with self._lock:
            if self._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
                return
            with self._write_transaction():
                version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
                steps = MIGRATIONS.plan(version, self.url)
                for step in steps:
                    for stmt in step.payload:
                        self._conn.execute(stmt)
                if steps:
                    self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @contextlib.contextmanager
    def _write_transaction(self) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (the write lock across processes from the start), rolled back when
        anything inside, or the commit itself, fails. Call it holding ``self._lock``."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @property
    @guarded("read the schema version")
    def schema_version(self) -> int:
        with self._lock:
            return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    @property
    def latest_schema_version(self) -> int:
        return SCHEMA_VERSION

    @guarded("check the file's integrity")
    def integrity_problems(self) -> list[str]:
        """``PRAGMA integrity_check``: empty when SQLite finds the file sound."""
        with self._lock:
            rows = [r[0] for r in self._conn.execute("PRAGMA integrity_check").fetchall()]
        return [] if rows == ["ok"] else rows

    @guarded("rebuild the hourly summary")
    def rebuild_summary(self) -> None:
        with self._lock, self._write_transaction():
            self._conn.execute("DELETE FROM summary_hourly")
            self._conn.execute(summarise_sql(""))
            self._conn.execute("DELETE FROM rollup_hourly")
            self._conn.execute(rollup_sql(""))
            self._conn.execute("UPDATE meta SET value = COALESCE((SELECT MAX(id) FROM records), 0) WHERE key = ?",
                               (ROLLUP_UPTO,))

    # -- retention --------------------------------------------------------------------------------------
    @guarded("read a setting")
    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    @guarded("store a setting")
    def set_meta(self, key: str, value: str | None) -> None:
        with self._lock:
            if value is None:
                self._conn.execute("DELETE FROM meta WHERE key = ?", (key,))
            else:
                self._conn.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (key, value),
                )

    @property
    def retention_days(self) -> float | None:
        return stored_retention_days(self.get_meta("retention_days"), self.url)

    def set_retention_days(self, days: float | None) -> None:
        """Keep records for ``days`` (None: forever). Stored in the file, applied on open and hourly."""
        days = checked_retention_days(days)
        self.set_meta("retention_days", None if days is None else repr(days))


    @guarded("read recent calls")
    def recent_calls(self, model: str, limit: int) -> list[LedgerRecord]:
        sql = (f"SELECT {', '.join(_COLUMNS)} FROM records WHERE model = ? AND outcome IN ('ok', 'escalated') "
               "ORDER BY ts DESC LIMIT ?")  # the (model, ts) index: the newest rows of one model
        limit = checked_count("limit", limit)
        with self._read_lock:
            rows = self._read_conn.execute(sql, (model, limit)).fetchall()
        return [LedgerRecord(**dict(zip(_COLUMNS, r, strict=True))) for r in rows]

    @guarded("read the latest records")
    def latest_records(self, limit: int) -> list[LedgerRecord]:
        sql = f"SELECT {', '.join(_COLUMNS)} FROM records ORDER BY ts DESC, id DESC LIMIT ?"  # the ts index
        limit = checked_count("limit", limit)
        with self._lock:
            rows = self._conn.execute(sql, (limit,)).fetchall()
        return [LedgerRecord(**dict(zip(_COLUMNS, r, strict=True))) for r in rows]

    @guarded("prune old records")
    def prune(self, older_than: float) -> int:
        """Delete records (and their hourly summaries, feedback and stored prompts) older than ``older_than``, and
        the budget counters of windows that ended by then, in one transaction. The hour that straddles the cut-off
        is re-summarised from the records that remain."""
        older_than = checked_time("older_than", older_than)
        boundary = int(older_than) - int(older_than) % 3600
        with self._lock, self._write_transaction():
            self._fold()  # the straddling hour re-summed below then holds every record left in it, none twice
            n = self._conn.execute("DELETE FROM records WHERE ts < ?", (older_than,)).rowcount
            for sql in PRUNE_SQL:
                self._conn.execute(sql, (older_than,))
            self._conn.execute("DELETE FROM summary_hourly WHERE bucket <= ?", (boundary,))
            self._conn.execute(summarise_sql("WHERE ts >= ? AND ts < ?"), (older_than, boundary + 3600))
            self._conn.execute("DELETE FROM rollup_hourly WHERE bucket <= ?", (boundary,))
            self._conn.execute(rollup_sql("WHERE ts >= ? AND ts < ?"), (older_than, boundary + 3600))
            old = self._conn.execute("SELECT budget FROM budgets WHERE window_start < ? UNION "
                                     "SELECT budget FROM holds WHERE window_start < ?", (older_than, older_than))
            ended = ended_budget_windows([b for (b,) in old.fetchall()], older_than)
            self._conn.executemany("DELETE FROM budgets WHERE budget = ? AND window_start <= ?", ended)
            # the holds of reservations never settled (their process died) go with their window's counter
            self._conn.executemany("DELETE FROM holds WHERE budget = ? AND window_start <= ?", ended)
        return int(n)

    # -- records ----------------------------------------------------------------------------------------
    @guarded("write a record")
    def record(self, rec: LedgerRecord) -> None:
        refuse_unusable_figures(self.url, (rec,))
        row = _values(vars(rec))
        with self._lock:
            self._conn.execute(self._insert, row)
            self._fold_if_due(1, (sqlite3.OperationalError,))
        self.prune_if_due(rec.ts)

    atomic_batches = True

    @guarded("write records")
    def record_many(self, recs: list[LedgerRecord]) -> None:
        """The batch in one transaction, as multi-row ``INSERT`` statements of 1, 2, 4 ... 256 rows (37 records:
        32 + 4 + 1). Why not ``executemany``: Python's sqlite3 releases and retakes the GIL around every row's
        step, and in the proxy each retake waits for the event loop's thread: the writer thread switched 0.59-0.73
        times per request with it, 0.35-0.49 times with this (benchmarks/README.md, *Proxy*). Nine statement
        shapes at most are prepared and cached. A batch of one power of two is a single statement, which
        SQLite commits atomically by itself."""
        if not recs:
            return
        refuse_unusable_figures(self.url, recs)
        chunks = binary_chunks(len(recs), _LARGEST_INSERT)
        with self._lock:
            if len(chunks) == 1:
                self._conn.execute(self._insert_rows(chunks[0]), _parameters(recs))
            else:
                with self._write_transaction():
                    at = 0
                    for size in chunks:
                        self._conn.execute(self._insert_rows(size), _parameters(recs[at:at + size]))
                        at += size
            self._fold_if_due(len(recs), (sqlite3.OperationalError,))
        self.prune_if_due(max(r.ts for r in recs))

    def _unfolded(self) -> int:
        return int(self._conn.execute(UNFOLDED_SQL).fetchone()[0])  # two index lookups

    def _fold_now(self) -> None:
        with self._write_transaction():
            self._fold()

    def _fold(self) -> None:
        """Adds the records after ``rollup_upto`` to ``rollup_hourly``; call it in a write transaction."""
        for sql in fold_sql():
            self._conn.execute(sql)

    def _insert_rows(self, n: int) -> str:
        sql = self._inserts.get(n)
        if sql is None:
            sql = self._inserts[n] = (
                f"INSERT INTO records ({', '.join(_COLUMNS)}) VALUES "
                + ", ".join([_MARKS] * n)
                + " ON CONFLICT (record_id) DO NOTHING"
            )
        return sql

    @guarded("read records")
    def records(self, since: float = 0.0, until: float | None = None, limit: int | None = None) -> list[LedgerRecord]:
        since, until = checked_span(since, until)
        limit = checked_limit(limit)
        sql, args = self._select(since, until)
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
        return [LedgerRecord(**dict(zip(_COLUMNS, r, strict=True))) for r in rows]

    def _select(self, since: float, until: float | None) -> tuple[str, list[Any]]:
        sql = f"SELECT {', '.join(_COLUMNS)} FROM records WHERE ts >= ?"
        args: list[Any] = [since]
        if until is not None:
            sql += " AND ts < ?"
            args.append(until)
        return sql + " ORDER BY ts, id", args

    @guarded("read records")
    def iter_records(
        self, since: float = 0.0, until: float | None = None, batch: int = 10_000
    ) -> Iterator[LedgerRecord]:
        """Pages by (ts, id) so a big export neither holds the lock for long nor all rows in memory."""
        since, until = checked_span(since, until)
        batch = checked_count("batch", batch, least=1)
        after: tuple[float, int] = (since, -1)
        cols = ", ".join(_COLUMNS)
        while True:
            sql = f"SELECT {cols}, id FROM records WHERE (ts > ? OR (ts = ? AND id > ?))"
            args: list[Any] = [after[0], after[0], after[1]]
            if after == (since, -1):
                sql = f"SELECT {cols}, id FROM records WHERE ts >= ?"
                args = [since]
            if until is not None:
                sql += " AND ts < ?"
                args.append(until)
            sql += " ORDER BY ts, id LIMIT ?"
            args.append(batch)
            with self._lock:
                rows = self._conn.execute(sql, args).fetchall()
            for r in rows:
                yield LedgerRecord(**dict(zip(_COLUMNS, r[:-1], strict=True)))
            if len(rows) < batch:
                return
            after = (rows[-1][0], rows[-1][-1])

    @guarded("read the energy spent")
    def spent(self, *, since: float, model: str | None = None, key_hash: str | None = None) -> float:
        sql = "SELECT COALESCE(SUM(energy_j), 0) FROM records WHERE ts >= ?"
        args: list[Any] = [checked_time("since", since)]
        if model is not None:
            sql += " AND model = ?"
            args.append(model)
        if key_hash is not None:
            sql += " AND key_hash = ?"
            args.append(key_hash)
        with self._read_lock:
            return float(self._read_conn.execute(sql, args).fetchone()[0])

    def _carbon_gap_rows(self, since: float, until: float | None, dims: tuple[str, ...] | None) -> list[SummaryRow]:
        # `co2e_g IS NULL` lets SQLite read the partial index of just those records (schema step 6)
        where, args = "co2e_g IS NULL AND ts >= ?", [since]
        if until is not None:
            where += " AND ts < ?"
            args.append(until)
        return self._grouped(BUCKET_SQL.format(t=""), "records", where, args,
                             SUMMARY_DIMS if dims is None else dims, _RAW_SUMS)

    @guarded("read the hourly summary")
    def _stored_summary(self, lo: float, hi: float) -> list[SummaryRow]:
        sql = f"SELECT {SUMMARY_COLS} FROM summary_hourly WHERE bucket >= ?"
        args: list[Any] = [lo]
        if hi != float("inf"):
            sql += " AND bucket < ?"
            args.append(hi)
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
        return [summary_row(r) for r in rows]

    def _raw_carbon_rows(self, since: float, until: float | None) -> list[tuple[Any, ...]]:
        # NULLIF: an empty zone is no zone, as in the pass over the records (carbon_report.carbon_rows)
        sql = (f"SELECT {BUCKET_SQL.format(t='')} AS b, COALESCE(NULLIF(zone, ''), '-'), "
               f"SUM(outcome != '{REFUSED}'), SUM(outcome = '{REFUSED}'), SUM(energy_j), "
               "SUM(COALESCE(co2e_g, 0)), SUM(energy_j * COALESCE(grid_g_per_kwh, 0) * (co2e_g IS NOT NULL)), "
               "SUM(co2e_g IS NULL), SUM(energy_j * (co2e_g IS NULL)) FROM records WHERE ts >= ?")
        args: list[Any] = [since]
        if until is not None:
            sql += " AND ts < ?"
            args.append(until)
        with self._lock:
            return self._conn.execute(sql + " GROUP BY 1, 2 ORDER BY 1, 2", args).fetchall()

    def _rollup_source(self, lo: int, hi: int | None) -> tuple[str, list[Any]]:
        return rollup_source(lo, hi)

    def _all(self, sql: str, args: Any = ()) -> list[Any]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    @guarded("read the records' sums")
    def _raw_summary(
        self, since: float, until: float | None, dims: tuple[str, ...] | None, step_s: int
    ) -> list[SummaryRow]:
        """Summed by SQLite over the time index: a busy hour's ~40,000 records in ~30 ms, where building a
        record object for each and summing in Python took ~250 ms."""
        where, args = "ts >= ?", [since]
        if until is not None:
            where += " AND ts < ?"
            args.append(until)
        bucket = f"(CAST(ts AS INTEGER) - (CAST(ts AS INTEGER) % {step_s:d}))"  # the summary trigger's, per step
        return self._grouped(bucket, "records", where, args, SUMMARY_DIMS if dims is None else dims, _RAW_SUMS)

    @guarded("reserve budget")
    def _try_reserve(self, budget: str, joules: float, limit_j: float, window_s: float,
                     hold_s: float | None) -> Reservation | None:
        """One statement where the budget has room, so one write transaction that SQLite makes atomic across
        threads and processes: the reservation's hold goes in only where the window's counter stays within
        ``limit_j``, and a trigger adds its joules to the counter (or creates it); the number of rows inserted says
        whether it did (schema step 8). Where it finds no room, the holds past their expiry (step 9) are given back
        and it tries once more."""
        now = time.time()
        start = window_start(now, window_s)
        reservation_id = uuid.uuid4().hex
        expires_at = None if hold_s is None else now + hold_s
        args = (reservation_id, budget, start, joules, limit_j, expires_at)
        with self._reserve_lock:
            conn = self._reserve_conn
            held = conn.execute(RESERVE, args).rowcount == 1
            if not held and conn.execute(RECLAIM, (budget, start, now)).rowcount:
                held = conn.execute(RESERVE, args).rowcount == 1
        return Reservation(reservation_id, budget, joules, start) if held else None

    @guarded("settle a reservation")
    def _settle(self, reservation: Reservation, actual_j: float) -> None:
        self._settle_in_one_transaction([(reservation, actual_j)])

    @guarded("settle reservations")
    def _settle_many(self, settlements: list[tuple[Reservation, float]]) -> None:
        """One transaction for all of them, in order."""
        self._settle_in_one_transaction(settlements)

    def _settle_in_one_transaction(self, settlements: list[tuple[Reservation, float]]) -> None:
        """In one transaction, each settlement deletes its reservation's hold and, only where there was one, moves
        the window's counter by what the call used less what the hold still held (0 J once it expired and was given
        back): a reservation settled already (before, or earlier in the same batch) changes nothing."""
        conn = self._conn
        with self._lock, self._write_transaction():
            for reservation, actual_j in settlements:
                for (held_j,) in conn.execute(SETTLE_HOLD, (reservation.id,)).fetchall():
                    conn.execute(SETTLE_COUNTER, (actual_j - held_j, reservation.budget, reservation.window_start))

    @guarded("read a budget")
    def budget_used(self, budget: str, window_s: float) -> float:
        now = time.time()
        with self._read_lock:
            row = self._read_conn.execute(USED, (budget, window_start(now, window_s), now)).fetchone()
        return float(row[0]) if row else 0.0

    @guarded("count the budget holds")
    def hold_counts(self) -> HoldCounts:
        counts = HoldCounts()
        now = time.time()
        with self._read_lock:
            rows = self._read_conn.execute("SELECT joules, expires_at FROM holds WHERE joules <> 0").fetchall()
        for joules, expires_at in rows:
            counts.add(float(joules), expires_at, now)
        return counts

    @guarded("list the budget counters")
    def budget_keys(self, since: float) -> list[str]:
        since = checked_time("since", since)
        with self._read_lock:
            rows = self._read_conn.execute(
                "SELECT DISTINCT budget FROM budgets WHERE window_start >= ?", (since,)
            ).fetchall()
        return [r[0] for r in rows]

    @guarded("close the ledger")
    def _close(self) -> None:
        for lock, conn in ((self._read_lock, self._read_conn), (self._reserve_lock, self._reserve_conn),
                           (self._lock, self._conn)):
            with lock:
                conn.close()  # closing a connection twice (one for all, ``:memory:``) does nothing


def _parameters(recs: list[LedgerRecord]) -> list[Any]:
    """One multi-row ``INSERT``'s parameters: each record's values in column order, in one flat list (a list
    extended by a tuple copies it in C, where ``chain.from_iterable`` steps through every value)."""
    params: list[Any] = []
    for values in map(_values, map(vars, recs)):
        params += values
    return params

