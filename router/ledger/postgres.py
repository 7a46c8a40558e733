"""PostgreSQL ledger: a fleet of router processes on several hosts keeps its records, hourly sums and budgets
in one database (``postgresql://USER:PASSWORD@HOST:PORT/DB?schema=router``), through psycopg 3.

Tables live in their own schema (default ``router``, created if missing): ``records`` (record ids unique),
``summary_hourly`` (kept in the same statement as the records it sums: the ``INSERT`` of the records is a CTE whose
``RETURNING`` rows, only those really inserted, are added to the sums), ``budgets``, ``holds`` (what each budget
reservation holds until it is settled, or ``released``: *Timeouts*), ``rollup_hourly`` (the coarse hourly sums the
dashboard and the report read; :mod:`router.ledger.postgres_schema` says how it stays exact) and ``meta``.
Migrations: :mod:`router.ledger.migrations`, applied under a transaction-scoped advisory lock so processes opening
a new database at once apply each step once.

Budgets: a reservation is one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE used + joules <= limit``; PostgreSQL
locks the window's row for the upsert and evaluates the ``WHERE`` on its latest committed version, so concurrent
reservations from any number of connections serialise on that row and never pass the limit. The same statement
inserts the reservation's hold (a CTE), and a settlement's deletes it. A hold carries ``expires_at`` (the call's
deadline and a margin, server time): past it the call cannot be running (its process was killed), so
``budget_used`` leaves it out and a reservation that finds no room gives it back first (``RECLAIM``), leaving it at
0 J, so a settlement arriving later counts the call in full. Each is one round trip
(``benchmarks/bench_ledger.py --reserve`` measures it against SQLite and Redis; docs/ledger.md says when a fleet
should keep budgets in Redis instead).

Connections: a small pool per ledger (``?pool=4``), opened lazily; a connection that broke (server restart) is
dropped and the call tried once more on a new one, except settlements, which must not apply twice. Every wait for
the server ends after ``?read_timeout=`` seconds (10 unless given; 0: none), as Redis's ``socket_timeout`` does:
libpq has no read timeout of its own.

Timeouts: besides ``read_timeout``, the two calls made while answering a request, ``try_reserve`` and
``budget_used``, end after ``?request_timeout_s=`` (1 s unless given, never more than ``read_timeout``): waiting for
a pooled connection (other threads may hold them all, stuck on the same server), connecting (libpq waits at least
2 s there) and waiting for the answer all count. The proxy makes them on its event loop, where a PostgreSQL that
hangs (its processes stopped, a host that froze: connections stay open and nothing answers) would hold every
request, ``/health`` and every stream in flight for as long as one of them waits: the first one fails after
``request_timeout_s``, the journaled ledger starts the outage, and the ones after it fail at once. The limit is a
deadline the calling thread keeps on the connection, so a healthy call costs no thread hop.
A reservation given up on may still run and commit on the server (it waited there on its budget's row, locked by
another transaction, on a stopped backend, or on a slow commit): a background thread releases it by id (one
statement, retried until the server answers, :mod:`router.ledger.given_up`). The release gives back what the hold
holds, once, or leaves a released hold as a tombstone where there is none yet; a reservation that arrives after it
then holds nothing (it finds the tombstone, or fails on its id, unique, when it committed meanwhile), so the hold is
given back in whichever order the two run, instead of counting as spent until the window ends.

Length: one class is the whole ledger interface for one store, beside its connection pool; the schema and the
feedback table are modules of their own (``postgres_schema``, ``postgres_feedback``), and the rest is one store's
SQL, kept together.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from itertools import chain
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from .._forks import renew_after_fork
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
from .errors import guarded, ledger_error, postgres_error
from .given_up import GivenUp
from .postgres_feedback import PRUNE_SQL, PostgresFeedback
from .postgres_schema import (
    ADD_SUMS,
    COLUMNS,
    FOLD,
    FOLDED_WHERE,
    LARGEST_INSERT,
    MIGRATIONS,
    NOW_SQL,
    RECLAIM,
    RELEASE,
    RESERVE,
    ROLLUP_BUCKET,
    ROLLUP_LOCK,
    SCHEMA_NAME,
    SCHEMA_VERSION,
    SETTLE,
    SUMMARY_COLS,
    TRY_ROLLUP_LOCK,
    UNFOLDED,
    USED,
    rollup_source,
    summary_lock_order,
)
from .rollup import RollupFolding, SummedInStore, add_rollup_sql, summary_row

T = TypeVar("T")
_RAW_SUMS = ("count(*), sum(energy_j), sum(COALESCE(input_tokens, 0)), sum(COALESCE(output_tokens, 0)), "
             "sum(COALESCE(latency_ms, 0)), sum(COALESCE(co2e_g, 0))")

READ_TIMEOUT_S = 10.0
MIN_SERVER_VERSION = 130000
"""PostgreSQL 13 (``server_version_num``): the first with ``pg_current_xact_id()`` (schema step 6)."""
REQUEST_TIMEOUT_S = 1.0
"""The longest ``try_reserve`` and ``budget_used`` wait for the server (the module's *Timeouts*)."""


class ReadTimeout(TimeoutError):
    """PostgreSQL did not answer within the URL's ``read_timeout`` or ``request_timeout_s`` (an ``OSError``: the
    store is unreachable)."""


def _connection_class(read_timeout_s: float) -> Any:
    """psycopg's ``Connection`` whose every wait for the server ends after ``read_timeout_s`` (0: never), or by its
    ``deadline`` (``time.monotonic()``; None: none) where that comes first. libpq has no read timeout, and a server
    whose processes are stopped (or a host that hangs) would hold the caller without end: its kernel still
    acknowledges what is sent, so TCP keepalives and ``tcp_user_timeout`` see nothing wrong. A wait that timed out
    leaves the connection mid-query: it is closed."""
    import psycopg
    from psycopg import errors

    class TimedConnection(psycopg.Connection):
        # set by the pool for the length of one call that must end by ``deadline``, ``limit_s`` after it began
        deadline: float | None = None
        limit_s = 0.0

        def wait(self, gen: Any, *args: Any, **kwargs: Any) -> Any:
            timeout, limit = read_timeout_s or None, f"{read_timeout_s:g} s (read_timeout)"
            if self.deadline is not None:
                left = self.deadline - time.monotonic()
                if timeout is None or left < timeout:
                    timeout, limit = left, f"{self.limit_s:g} s (request_timeout_s)"
                if left <= 0:
                    self.pgconn.finish()  # a generator may be half-run: the connection's state is unknown
                    raise ReadTimeout(f"PostgreSQL did not answer within {limit}")
            if len(args) < 2:  # (interval, timeout) positionally
                kwargs.setdefault("timeout", timeout)
            try:
                return super().wait(gen, *args, **kwargs)
            except errors._WaitTimeout as exc:
                self.pgconn.finish()
                raise ReadTimeout(f"PostgreSQL did not answer within {limit}") from exc

    return TimedConnection

_CONFLICT_STATES = frozenset({"40P01", "40001"})
"""SQLSTATEs of work PostgreSQL rolled back because it conflicted with another transaction (deadlock detected,
serialization failure): not an outage, and safe to run once more."""


class _Pool:
    """At most ``size`` connections, made when first needed and reused (LIFO). Connections are in autocommit
    mode; multi-statement work opens ``conn.transaction()``. ``connect(deadline)`` makes one (``deadline``: as
    in :meth:`run`)."""

    def __init__(self, connect: Callable[[float | None], Any], size: int) -> None:
        self._connect = connect
        self._size = size
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(size)
        self.closed = False
        self._inherited: list[Any] = []
        renew_after_fork(self)

    def _renew_after_fork(self) -> None:
        """A forked child (gunicorn --preload, multiprocessing's fork, Celery's prefork pool) connects anew: on a
        connection carried across the fork, both processes would talk in one server session, each reading replies
        meant for the other. The inherited ones are kept, never closed: closing one would end the parent's
        session. The lock and the slots are new, as a parent's thread may have held them at the fork."""
        self._inherited += self._idle
        self._idle = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self._size)

    def run(self, fn: Callable[[Any], T], *, retry: bool = True, within_s: float | None = None) -> T:
        """``fn(connection)``; where a reused connection turns out broken, once more on a new one. ``within_s``:
        the call fails with ``ReadTimeout`` unless it ends by then, waiting for a free connection included."""
        from psycopg import OperationalError

        deadline = None if within_s is None else time.monotonic() + within_s
        if not self._slots.acquire(timeout=within_s):
            raise ReadTimeout(f"no PostgreSQL connection came free within {within_s:g} s (request_timeout_s): the "
                              f"pool's (pool={self._size}) are all busy, waiting for the server")  # fmt: skip
        try:
            for attempt in (0, 1):
                with self._lock:
                    conn = self._idle.pop() if self._idle else None
                reused = conn is not None
                if conn is None:
                    conn = self._connect(deadline)
                conn.deadline, conn.limit_s = deadline, within_s
                try:
                    out = fn(conn)
                except OperationalError as exc:
                    broken = conn.closed or conn.broken
                    if not broken:
                        self._give_back(conn)
                    else:
                        with contextlib.suppress(Exception):
                            conn.close()
                    # a deadlock or serialization failure: the server rolled the work back, so running it again
                    # cannot apply it twice (whatever ``retry`` says of a connection that broke mid-commit)
                    conflict = getattr(exc, "sqlstate", None) in _CONFLICT_STATES
                    if attempt == 0 and (conflict or (broken and reused and retry)):
                        continue
                    raise
                except BaseException:
                    self._give_back(conn)
                    raise
                self._give_back(conn)
                return out
        finally:
            self._slots.release()
        raise AssertionError("unreachable")

    def _give_back(self, conn: Any) -> None:
        conn.deadline = None
        if conn.closed or conn.broken or self.closed:
            with contextlib.suppress(Exception):
                conn.close()
            return
        with self._lock:
            self._idle.append(conn)

    def close(self) -> None:
        self.closed = True
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()


def _connect_timeout_s(conninfo: str) -> int | None:
    """The connection string's ``connect_timeout`` in whole seconds, as libpq reads it (None: none given, or 0 or
    less: none)."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        seconds = int(float(str(conninfo_to_dict(conninfo)["connect_timeout"])))
    except (KeyError, ValueError, TypeError):
        return None
    return seconds if seconds > 0 else None


class PostgresLedger(RollupFolding, SummedInStore, PostgresFeedback, Retention, Ledger):
    """Records, sums and budgets in PostgreSQL, shared by every process that points at the same database and
    schema; safe across threads (a connection per concurrent call) and hosts."""

    driver_errors: tuple[type[BaseException], ...] = (OSError,)  # psycopg.Error joins once psycopg is imported
    _param = "%s"

    @guarded("open the ledger")
    def __init__(
        self, conninfo: str, *, schema: str = "router", retention_days: float | None = None, pool: int = 4,
        url: str | None = None, read_timeout_s: float = READ_TIMEOUT_S, request_timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> None:  # fmt: skip
        import psycopg

        checked_retention_days(retention_days)  # before the pool connects
        self.driver_errors = (psycopg.Error, OSError)
        self.url = url or conninfo
        if not SCHEMA_NAME.match(schema):
            raise ledger_error(self.url, f"schema {schema!r} is not a plain lower-case SQL name",
                               "use letters, digits and underscores, e.g. ?schema=router", retryable=False)
        self.schema = schema
        self._summary_table = f"{schema}.summary_hourly"
        connection = _connection_class(read_timeout_s)
        self._request_timeout_s = min(request_timeout_s, read_timeout_s or math.inf)
        given_connect_s = _connect_timeout_s(conninfo)

        def connect(deadline: float | None) -> Any:
            if deadline is None:
                return connection.connect(conninfo, autocommit=True)
            left = deadline - time.monotonic()
            if left <= 0:
                raise ReadTimeout("no time was left to connect to PostgreSQL (request_timeout_s)")
            # whole seconds, as libpq reads them (psycopg waits at least 2 s, as libpq does)
            return connection.connect(conninfo, autocommit=True,
                                      connect_timeout=str(min(math.ceil(left), given_connect_s or math.inf)))

        self._pool = _Pool(connect, max(1, pool))
        s = schema
        self._insert_sql: dict[int, str] = {}
        self._reserve_sql, self._settle_sql, self._release_sql, self._reclaim_sql, self._used_sql = (
            q.format(s=s) for q in (RESERVE, SETTLE, RELEASE, RECLAIM, USED))
        # (id, budget, window start) of each reservation a timeout gave up on
        self._given_up: GivenUp[tuple[str, str, float]] = GivenUp(self, self._release, "postgres-ledger-release")
        self._pool.run(self._migrate)
        if retention_days is not None:
            self.set_retention_days(retention_days)
        self.apply_retention()

    @classmethod
    def from_url(cls, url: str, *, retention_days: float | None = None) -> PostgresLedger:
        """``postgresql://USER:PASSWORD@HOST:PORT/DB[?schema=router&pool=4&retention_days=N&read_timeout=10&
        request_timeout_s=1]``; other query options (``sslmode``, ``connect_timeout``: 5 s unless given ...) go to
        libpq. ``request_timeout_s`` (default 1 s, never more than ``read_timeout``): the wait of the calls made
        while answering a request (the module's *Timeouts*)."""
        try:
            import psycopg  # noqa: F401
        except ImportError as exc:
            raise ledger_error(url, "the PostgreSQL driver (psycopg 3) is not installed",
                               "pip install 'router[postgresql]' (or psycopg[binary])", retryable=False) from exc
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        schema = query.pop("schema", "router")
        try:
            pool = int(query.pop("pool", "4"))
            read_timeout_s = float(query.pop("read_timeout", READ_TIMEOUT_S))
            if not 0 <= read_timeout_s < math.inf:
                raise ValueError(f"read_timeout={read_timeout_s:g}: seconds, 0 for none")
            request_timeout_s = float(query.pop("request_timeout_s", REQUEST_TIMEOUT_S))
            if not 0 < request_timeout_s < math.inf:
                raise ValueError(f"request_timeout_s={request_timeout_s:g}: a number of seconds above 0")
            stored = query.pop("retention_days", None)
            if retention_days is None and stored is not None:
                retention_days = float(stored)
        except ValueError as exc:
            raise ledger_error(url, f"a query value is not a number ({exc})", "fix the URL's query",
                               retryable=False) from exc
        query.setdefault("connect_timeout", "5")
        conninfo = urlunsplit(parts._replace(scheme="postgresql", query=urlencode(query, quote_via=quote)))
        return cls(conninfo, schema=schema, retention_days=retention_days, pool=pool, url=url,
                   read_timeout_s=read_timeout_s, request_timeout_s=request_timeout_s)

    def _translate(self, exc: BaseException, action: str) -> Exception:
        return postgres_error(self.url, exc, action)

    def _migrate(self, conn: Any) -> None:
        """Meta table, version, missing steps and new version in one transaction, under an advisory lock keyed
        by the schema so concurrent first opens wait for each other instead of racing."""
        s = self.schema
        version = int(conn.execute("SHOW server_version_num").fetchone()[0])
        if version < MIN_SERVER_VERSION:  # pg_current_xact_id(), which records' `xact` column takes, came in 13
            raise ledger_error(self.url, f"the server is PostgreSQL {version // 10000}.{version % 10000 // 100}; "
                               "the ledger needs PostgreSQL 13 or later", "upgrade the server, or use another store",
                               retryable=False)
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"router-ledger:{s}",))
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
            conn.execute(f"CREATE TABLE IF NOT EXISTS {s}.meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = conn.execute(f"SELECT value FROM {s}.meta WHERE key = 'schema_version'").fetchone()
            steps = MIGRATIONS.plan(int(row[0]) if row else 0, self.url)
            for step in steps:
                for stmt in step.payload:
                    conn.execute(stmt.format(s=s))
            if steps:
                conn.execute(f"""INSERT INTO {s}.meta (key, value) VALUES ('schema_version', %s)
                    ON CONFLICT (key) DO UPDATE SET value = excluded.value""", (str(SCHEMA_VERSION),))

    @property
    @guarded("read the schema version")
    def schema_version(self) -> int:
        row = self._one(f"SELECT value FROM {self.schema}.meta WHERE key = 'schema_version'")
        return int(row[0]) if row else 0

    @property
    def latest_schema_version(self) -> int:
        return SCHEMA_VERSION

    def _one(self, sql: str, args: Any = None) -> Any:
        return self._pool.run(lambda c: c.execute(sql, args).fetchone())

    def _all(self, sql: str, args: Any = None) -> list[Any]:
        return self._pool.run(lambda c: c.execute(sql, args).fetchall())

    # -- retention --------------------------------------------------------------------------------------
    @property
    @guarded("read a setting")
    def retention_days(self) -> float | None:
        row = self._one(f"SELECT value FROM {self.schema}.meta WHERE key = 'retention_days'")
        return stored_retention_days(row[0] if row else None, self.url)

    @guarded("store a setting")
    def set_retention_days(self, days: float | None) -> None:
        """Keep records for ``days`` (None: forever); shared by every process using this database."""
        days = checked_retention_days(days)
        if days is None:
            self._pool.run(lambda c: c.execute(f"DELETE FROM {self.schema}.meta WHERE key = 'retention_days'"))
            return
        self._pool.run(lambda c: c.execute(
            f"""INSERT INTO {self.schema}.meta (key, value) VALUES ('retention_days', %s)
            ON CONFLICT (key) DO UPDATE SET value = excluded.value""", (repr(days),)))  # fmt: skip


    @guarded("read recent calls")
    def recent_calls(self, model: str, limit: int) -> list[LedgerRecord]:
        sql = (f"SELECT {', '.join(COLUMNS)} FROM {self.schema}.records WHERE model = %s "
               "AND outcome IN ('ok', 'escalated') ORDER BY ts DESC LIMIT %s")  # the (model, ts) index
        limit = checked_count("limit", limit)
        return [LedgerRecord(**dict(zip(COLUMNS, r, strict=True))) for r in self._all(sql, (model, limit))]

    @guarded("read the latest records")
    def latest_records(self, limit: int) -> list[LedgerRecord]:
        sql = (f"SELECT {', '.join(COLUMNS)} FROM {self.schema}.records "
               "ORDER BY ts DESC, id DESC LIMIT %s")  # the (ts, id) index, read backwards
        limit = checked_count("limit", limit)
        return [LedgerRecord(**dict(zip(COLUMNS, r, strict=True))) for r in self._all(sql, (limit,))]

    @guarded("prune old records")
    def prune(self, older_than: float) -> int:
        """Delete records and their sums older than ``older_than``, and the budget counters (and holds) of windows
        that ended by then, in one transaction; the hour straddling the cut-off is summed again from what remains,
        with the summary table locked against writers meanwhile."""
        older_than = checked_time("older_than", older_than)
        s, boundary = self.schema, int(math.floor(older_than / 3600) * 3600)

        def run(c: Any) -> int:
            with c.transaction():
                c.execute(f"LOCK TABLE {s}.summary_hourly IN EXCLUSIVE MODE")
                c.execute(ROLLUP_LOCK.format(s=s))
                n = c.execute(f"DELETE FROM {s}.records WHERE ts < %s", (older_than,)).rowcount
                for sql in PRUNE_SQL:  # feedback and stored prompts go with the records
                    c.execute(sql.format(s=s), (older_than,))
                c.execute(f"DELETE FROM {s}.summary_hourly WHERE bucket <= %s", (boundary,))
                source = f"{s}.records WHERE ts >= %s AND ts < %s"
                c.execute(ADD_SUMS.format(s=s, source=source), (older_than, boundary + 3600))
                # the records not folded in stay out of it: reads add them (the rollup's module docstring)
                c.execute(f"DELETE FROM {s}.rollup_hourly WHERE bucket <= %s", (boundary,))
                c.execute(self._refill(f"WHERE ts >= %s AND ts < %s AND {FOLDED_WHERE}"), (older_than, boundary + 3600))
                old = c.execute(f"""SELECT budget FROM {s}.budgets WHERE window_start < %s
                    UNION SELECT budget FROM {s}.holds WHERE window_start < %s""", (older_than, older_than))
                ended = ended_budget_windows([b for (b,) in old.fetchall()], older_than)
                with c.cursor() as cur:  # holds and tombstones go with their window's counter
                    cur.executemany(f"DELETE FROM {s}.budgets WHERE budget = %s AND window_start <= %s", ended)
                    cur.executemany(f"DELETE FROM {s}.holds WHERE budget = %s AND window_start <= %s", ended)
            return int(n)

        return self._pool.run(run)

    @guarded("rebuild the hourly summary")
    def rebuild_summary(self) -> None:
        s = self.schema

        def run(c: Any) -> None:
            with c.transaction():
                c.execute(f"LOCK TABLE {s}.summary_hourly IN EXCLUSIVE MODE")
                c.execute(f"DELETE FROM {s}.summary_hourly")
                c.execute(ADD_SUMS.format(s=s, source=f"{s}.records"))
                c.execute(ROLLUP_LOCK.format(s=s))
                c.execute(f"DELETE FROM {s}.rollup_hourly")
                c.execute(self._refill(f"WHERE {FOLDED_WHERE}"))

        self._pool.run(run)

    def _refill(self, where: str) -> str:
        """Adds the records matching ``where`` to ``rollup_hourly`` as new rows."""
        return add_rollup_sql(f"{self.schema}.rollup_hourly", f"{self.schema}.records", ROLLUP_BUCKET,
                              where.format(s=self.schema), upsert=False)

    def _unfolded(self) -> int:
        return int(self._one(UNFOLDED.format(s=self.schema), (self.ROLLUP_FOLD_AT,))[0])  # the xact index

    def _fold_now(self) -> None:
        def run(c: Any) -> None:
            with c.transaction():
                if c.execute(TRY_ROLLUP_LOCK.format(s=self.schema)).fetchone()[0]:  # else another folds meanwhile
                    c.execute(FOLD.format(s=self.schema))

        self._pool.run(run)

    # -- records ----------------------------------------------------------------------------------------
    def _insert(self, n: int) -> str:
        """``n`` records and their sums in one statement; rows whose id is stored already change nothing."""
        sql = self._insert_sql.get(n)
        if sql is None:
            row = "(" + ", ".join(["%s"] * len(COLUMNS)) + ")"
            ins = (f"INSERT INTO {self.schema}.records ({', '.join(COLUMNS)}) VALUES " + ", ".join([row] * n)
                   + " ON CONFLICT (record_id) DO NOTHING RETURNING *")  # fmt: skip
            sql = self._insert_sql[n] = f"WITH ins AS ({ins}) " + ADD_SUMS.format(s=self.schema, source="ins")
        return sql

    @guarded("write a record")
    def record(self, rec: LedgerRecord) -> None:
        refuse_unusable_figures(self.url, (rec,))
        row = [getattr(rec, c) for c in COLUMNS]
        self._pool.run(lambda c: c.execute(self._insert(1), row))
        self._fold_if_due(1, self.driver_errors)
        self.prune_if_due(rec.ts)

    atomic_batches = True

    @guarded("write records")
    def record_many(self, recs: list[LedgerRecord]) -> None:
        """One transaction of multi-row statements (1, 2, 4 ... 256 rows each, so few shapes get prepared), the
        records in :func:`summary_lock_order`."""
        if not recs:
            return
        refuse_unusable_figures(self.url, recs)
        rows = [[getattr(r, c) for c in COLUMNS] for r in sorted(recs, key=summary_lock_order)]

        def run(c: Any) -> None:
            with c.transaction():
                at = 0
                for size in binary_chunks(len(rows), LARGEST_INSERT):
                    c.execute(self._insert(size), list(chain.from_iterable(rows[at : at + size])))
                    at += size

        self._pool.run(run)
        self._fold_if_due(len(recs), self.driver_errors)
        self.prune_if_due(max(r.ts for r in recs))

    @guarded("read records")
    def records(self, since: float = 0.0, until: float | None = None, limit: int | None = None) -> list[LedgerRecord]:
        since, until = checked_span(since, until)
        limit = checked_limit(limit)
        sql = f"SELECT {', '.join(COLUMNS)} FROM {self.schema}.records WHERE ts >= %s"
        args: list[Any] = [since]
        if until is not None:
            sql += " AND ts < %s"
            args.append(until)
        sql += " ORDER BY ts, id"
        if limit is not None:
            sql += " LIMIT %s"
            args.append(limit)
        return [LedgerRecord(**dict(zip(COLUMNS, r, strict=True))) for r in self._all(sql, args)]

    @guarded("read records")
    def iter_records(
        self, since: float = 0.0, until: float | None = None, batch: int = 10_000
    ) -> Iterator[LedgerRecord]:
        """Pages by (ts, id), one short query each, so a big export holds no connection between pages."""
        since, until = checked_span(since, until)
        batch = checked_count("batch", batch, least=1)
        cols = ", ".join(COLUMNS)
        after: tuple[float, int] | None = None
        while True:
            sql = f"SELECT {cols}, id FROM {self.schema}.records WHERE "
            args: list[Any]
            if after is None:
                sql, args = sql + "ts >= %s", [since]
            else:
                sql, args = sql + "(ts, id) > (%s, %s)", [after[0], after[1]]
            if until is not None:
                sql += " AND ts < %s"
                args.append(until)
            rows = self._all(sql + " ORDER BY ts, id LIMIT %s", [*args, batch])
            for r in rows:
                yield LedgerRecord(**dict(zip(COLUMNS, r[:-1], strict=True)))
            if len(rows) < batch:
                return
            after = (rows[-1][0], rows[-1][-1])

    @guarded("read the energy spent")
    def spent(self, *, since: float, model: str | None = None, key_hash: str | None = None) -> float:
        sql = f"SELECT COALESCE(SUM(energy_j), 0) FROM {self.schema}.records WHERE ts >= %s"
        args: list[Any] = [checked_time("since", since)]
        if model is not None:
            sql += " AND model = %s"
            args.append(model)
        if key_hash is not None:
            sql += " AND key_hash = %s"
            args.append(key_hash)
        return float(self._one(sql, args)[0])

    @guarded("read the hourly summary")
    def _stored_summary(self, lo: float, hi: float) -> list[SummaryRow]:
        sql = f"SELECT {SUMMARY_COLS} FROM {self.schema}.summary_hourly WHERE TRUE"
        args: list[Any] = []
        if not math.isinf(lo):
            sql += " AND bucket >= %s"
            args.append(int(math.ceil(lo)))
        if not math.isinf(hi):
            sql += " AND bucket < %s"
            args.append(int(math.ceil(hi)))
        return [summary_row(r) for r in self._all(sql, args)]

    def _raw_carbon_rows(self, since: float, until: float | None) -> list[tuple[Any, ...]]:
        # NULLIF: an empty zone is no zone, as in the pass over the records (carbon_report.carbon_rows)
        sql = (f"SELECT (floor(ts / 3600) * 3600)::bigint, COALESCE(NULLIF(zone, ''), '-'), "
               f"count(*) FILTER (WHERE outcome <> '{REFUSED}'), count(*) FILTER (WHERE outcome = '{REFUSED}'), "
               "sum(energy_j), sum(COALESCE(co2e_g, 0)), "
               "COALESCE(sum(energy_j * COALESCE(grid_g_per_kwh, 0)) FILTER (WHERE co2e_g IS NOT NULL), 0), "
               "count(*) FILTER (WHERE co2e_g IS NULL), COALESCE(sum(energy_j) FILTER (WHERE co2e_g IS NULL), 0) "
               f"FROM {self.schema}.records WHERE ts >= %s")
        args: list[Any] = [since]
        if until is not None:
            sql += " AND ts < %s"
            args.append(until)
        return self._all(sql + " GROUP BY 1, 2 ORDER BY 1, 2", args)

    # -- budgets ----------------------------------------------------------------------------------------
    def _rollup_source(self, lo: int, hi: int | None) -> tuple[str, list[Any]]:
        return rollup_source(self.schema, lo, hi)

    def _carbon_gap_rows(self, since: float, until: float | None, dims: tuple[str, ...] | None) -> list[SummaryRow]:
        # `co2e_g IS NULL` lets PostgreSQL read the partial index of just those records (schema step 4)
        where, args = "co2e_g IS NULL AND ts >= %s", [since]
        if until is not None:
            where += " AND ts < %s"
            args.append(until)
        return self._grouped(ROLLUP_BUCKET, f"{self.schema}.records", where, args,
                             SUMMARY_DIMS if dims is None else dims, _RAW_SUMS)

    @guarded("read the records' sums")
    def _raw_summary(
        self, since: float, until: float | None, dims: tuple[str, ...] | None, step_s: int
    ) -> list[SummaryRow]:
        where, args = "ts >= %s", [since]
        if until is not None:
            where += " AND ts < %s"
            args.append(until)
        bucket = f"(floor(ts / {step_s:d}) * {step_s:d})::bigint"
        dims = SUMMARY_DIMS if dims is None else dims
        return self._grouped(bucket, f"{self.schema}.records", where, args, dims, _RAW_SUMS)

    @guarded("reserve budget")
    def _try_reserve(self, budget: str, joules: float, limit_j: float, window_s: float,
                     hold_s: float | None) -> Reservation | None:
        start = window_start(time.time(), window_s)
        reservation_id = uuid.uuid4().hex
        args = {"id": reservation_id, "budget": budget, "start": start, "joules": joules, "limit": limit_j,
                "hold_s": hold_s}

        def reserve(c: Any) -> bool:
            if c.execute(self._reserve_sql, args).fetchone()[0]:
                return True
            # no room: holds past their expiry (their process was killed) give it back, if any
            if not c.execute(self._reclaim_sql, args).rowcount:
                return False
            return bool(c.execute(self._reserve_sql, args).fetchone()[0])

        try:
            held = self._pool.run(reserve, within_s=self._request_timeout_s)
        except self.driver_errors:
            # the statement may have reached the server and commit there later: whatever it held must not stay held
            self._given_up.add((reservation_id, budget, start))
            raise
        return Reservation(reservation_id, budget, joules, start) if held else None

    def _release(self, item: tuple[str, str, float]) -> None:
        self._pool.run(lambda c: c.execute(self._release_sql, item))

    @guarded("release the reservations given up on")
    def release_given_up(self) -> None:
        """Release now, on the calling thread, each reservation a timeout gave up on that the background thread
        has not released yet (what it does next; the two take turns). Raises ``LedgerError`` where the server does
        not answer; what is left stays queued for the thread."""
        self._given_up.release_all()

    @guarded("settle a reservation")
    def _settle(self, reservation: Reservation, actual_j: float) -> None:
        args = (reservation.id, actual_j, reservation.budget, reservation.window_start)
        self._pool.run(lambda c: c.execute(self._settle_sql, args), retry=False)

    @guarded("settle reservations")
    def _settle_many(self, settlements: list[tuple[Reservation, float]]) -> None:
        """One transaction for all of them (the same statement each, by budget counter)."""
        # by counter, so hosts settling the same budgets at once lock their rows in the same order (no deadlock)
        rows = sorted(((r.id, actual, r.budget, r.window_start) for r, actual in settlements),
                      key=lambda row: (row[2], row[3]))

        def run(c: Any) -> None:
            with c.transaction(), c.cursor() as cur:
                cur.executemany(self._settle_sql, rows)

        self._pool.run(run, retry=False)

    @guarded("read a budget")
    def budget_used(self, budget: str, window_s: float) -> float:
        start = window_start(time.time(), window_s)
        args = {"budget": budget, "start": start}
        row = self._pool.run(lambda c: c.execute(self._used_sql, args).fetchone(), within_s=self._request_timeout_s)
        return float(row[0]) if row else 0.0

    @guarded("count the budget holds")
    def hold_counts(self) -> HoldCounts:
        counts = HoldCounts()
        rows = self._all(f"SELECT joules, expires_at, {NOW_SQL} FROM {self.schema}.holds "
                         "WHERE NOT released AND joules <> 0")
        for joules, expires_at, now in rows:
            counts.add(float(joules), expires_at, float(now))
        return counts

    @guarded("list the budget counters")
    def budget_keys(self, since: float) -> list[str]:
        since = checked_time("since", since)
        rows = self._all(f"SELECT DISTINCT budget FROM {self.schema}.budgets WHERE window_start >= %s", (since,))
        return [r[0] for r in rows]

    @guarded("drop the schema")
    def drop(self) -> None:
        """Delete this ledger's schema and everything in it (tests, and starting over)."""
        self._pool.run(lambda c: c.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE"))

    def _close(self) -> None:
        self._pool.close()
