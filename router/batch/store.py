"""Where batches live: files, batches and their lines, in SQLite (one host) or PostgreSQL (a fleet).

Several workers share the queue through **leases**: a worker claims lines by writing its name and a lease expiry
on them in one statement (SQLite: one write transaction; PostgreSQL: ``FOR UPDATE SKIP LOCKED``), renews the
lease while it runs them, and writes a result only while it still holds the line. A worker that dies (``kill -9``)
stops renewing; when its leases expire another worker claims those lines and runs them again (``attempts``
counts every claim, and the output line says when a line ran more than once). A line has one result, so each
``custom_id`` appears once in the output. Lease times are the system clock's (they are about processes being
alive), batch times the scheduler's clock (which a test or a replay may drive).

The batch object is kept as OpenAI's JSON (``doc``); its request counts are counted from the lines when read.
Errors: :class:`~router.errors.BatchStoreError` (a 503) naming the store, never a driver's exception. A PostgreSQL
store that is down is an outage, not a failure for good: it reconnects when the server is back.

Length: one class serves both databases (their placeholders and table prefix set at open, a branch only where
the two differ), so a change to the schema or a lease rule is made once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .._forks import renew_after_fork
from .._sqlite_forks import HeldForFork, keep_inherited
from ..errors import BatchStoreError, ConfigError, LedgerError
from ..ledger.errors import first_line, postgres_error, redact
from ..ledger.stores import sqlite_file as ledger_sqlite_file
from ..ledger.stores import sqlite_path as ledger_sqlite_path
from ..ledger.stores import url_scheme
from ..ledger.urls import sqlite_url

log = logging.getLogger("router.batch")

ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")

_TABLES = [
    """CREATE TABLE IF NOT EXISTS {p}files (id TEXT PRIMARY KEY, key_hash TEXT, purpose TEXT NOT NULL,
        filename TEXT NOT NULL, bytes BIGINT NOT NULL, created_at BIGINT NOT NULL, content {blob} NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS {p}batches (id TEXT PRIMARY KEY, key_hash TEXT, key_sha256 TEXT,
        status TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION NOT NULL,
        doc TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS {i}batches_status ON {p}batches (status)",
    """CREATE TABLE IF NOT EXISTS {p}lines (batch_id TEXT NOT NULL, idx INTEGER NOT NULL, custom_id TEXT NOT NULL,
        body TEXT NOT NULL, state TEXT NOT NULL, lease_owner TEXT, lease_until DOUBLE PRECISION,
        attempts INTEGER NOT NULL DEFAULT 0, result TEXT, PRIMARY KEY (batch_id, idx))""",
    "CREATE INDEX IF NOT EXISTS {i}lines_state ON {p}lines (batch_id, state)",
]


@dataclass(frozen=True)
class Line:
    batch_id: str
    idx: int
    custom_id: str
    body: dict[str, Any]
    attempts: int


class BatchStore(HeldForFork):
    """Files, batches and lines in one SQL database (see the module docstring). Thread-safe.

    A PostgreSQL store reconnects by itself: a connection the server dropped is replaced at the next call, and
    while the server is down each call raises :class:`~router.errors.BatchStoreError` (503). With
    ``wait_if_down`` the first failure of an outage is logged, and its end; the calls in between would repeat it
    every poll."""

    def __init__(self, url: str, *, wait_if_down: bool = False, retry_after_s: float | None = None) -> None:
        """``wait_if_down``: a PostgreSQL server that is down or unreachable, now or later, is an outage, logged
        once (``router serve`` starts so, its Batch API answering 503 until the server is back); otherwise (the
        CLI), and always at start for what a person must fix (credentials, a missing database), an error.
        ``retry_after_s``: what an error that may pass by itself (not one a person must fix) tells a client to
        wait (the proxy's ``Retry-After``)."""
        self.url = url
        self._wait_if_down = wait_if_down
        self._retry_after_s = retry_after_s
        self._lock = threading.RLock()
        self._conn: Any = None
        self._inherited: list[Any] = []
        self._down_since: float | None = None
        renew_after_fork(self)
        path = sqlite_path(url)  # a URL of another kind is a ConfigError, not a store that could not open
        if path is None:
            parts = urlsplit(url)
            query = dict(parse_qsl(parts.query))
            self._schema = query.pop("schema", "router")
            query.setdefault("connect_timeout", "5")
            self._conninfo = parts._replace(scheme="postgresql",
                                            query="&".join(f"{k}={v}" for k, v in query.items())).geturl()
            self.kind, self.mark, self.prefix = "postgres", "%s", f"{self._schema}.batch_"
            try:
                import psycopg  # noqa: F401
            except ImportError as exc:
                raise BatchStoreError(f"batch store {redact(url)}: the PostgreSQL driver (psycopg 3) is not "
                                      "installed; fix: pip install 'router[postgresql]' (or psycopg[binary])") from exc
            try:
                with self._lock:
                    self._connection()
            except BatchStoreError as exc:
                if not (wait_if_down and exc.retryable):
                    raise
            return
        try:
            self._open_sqlite(path)
        except LedgerError:
            raise
        except Exception as exc:
            raise self._error("open the batch store", exc) from exc

    # -- connections -----------------------------------------------------------------------------------------
    def _locks_held_for_fork(self) -> list[Any]:
        """SQLite's: a fork waits for the statement in flight (:class:`~router._sqlite_forks.HeldForFork`).
        PostgreSQL's child drops its inherited connection whatever it was doing, so a fork never waits for it."""
        return [self._lock] if getattr(self, "kind", None) == "sqlite" else []  # kind: set once open

    def _renew_after_fork(self) -> None:
        """A forked child (gunicorn --preload, multiprocessing's fork, Celery's prefork pool) connects anew, with a
        new lock (a parent's thread may have held it at the fork). PostgreSQL: on the connection carried across the
        fork, both processes would talk in one server session, each reading replies meant for the other. SQLite:
        its file locks belong to the process that took them, so the child must write on a connection opened there
        (:meth:`_hold_for_fork` saw to it that none was inside a statement). The inherited one is kept, never
        closed: closing it would end the parent's session, or act on SQLite's state of the parent copied with it;
        a ``:memory:`` database is its connection, so the child keeps its copy."""
        self._lock = threading.RLock()
        kind = getattr(self, "kind", None)  # kind: set once open
        if kind == "postgres" and self._conn is not None:
            self._inherited.append(self._conn)
            self._conn = None
        elif kind == "sqlite" and self._conn is not None and str(self._sqlite_file) != ":memory:":
            keep_inherited(self._conn)
            self._conn = self._connect_sqlite()

    def _open_sqlite(self, path: Path) -> None:
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
        self._sqlite_file = path
        self.kind, self.mark, self.prefix = "sqlite", "?", ""
        self._conn = self._connect_sqlite()
        self._conn.execute("PRAGMA journal_mode=WAL")  # kept in the file: every connection to it is in WAL mode
        with self._tx() as c:
            for stmt in _TABLES:
                c.execute(stmt.format(p="", i="", blob="BLOB"))

    def _connect_sqlite(self) -> sqlite3.Connection:
        return sqlite3.connect(self._sqlite_file, timeout=30, check_same_thread=False, isolation_level=None)

    def _connection(self) -> Any:
        """The open connection (the lock held); for PostgreSQL a new one, its tables made if missing, where there
        is none or the last one broke."""
        conn = self._conn
        if self.kind == "sqlite" or (conn is not None and not conn.closed and not conn.broken):
            return conn
        self._drop()
        import psycopg

        try:
            conn = psycopg.connect(self._conninfo, autocommit=True)
        except (psycopg.Error, OSError) as exc:
            raise self._failure("open the batch store", exc) from exc
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"router-batch:{self._schema}",))
                conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self._schema}")
                for stmt in _TABLES:
                    conn.execute(stmt.format(p=self.prefix, i="batch_", blob="BYTEA"))
        except (psycopg.Error, OSError) as exc:
            with contextlib.suppress(Exception):
                conn.close()
            raise self._failure("open the batch store", exc) from exc
        self._conn = conn
        if self._down_since is not None:
            log.warning("batch store %s is back after %.0f s", redact(self.url), time.time() - self._down_since)
            self._down_since = None
        return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _pg_transaction(self, stack: contextlib.ExitStack) -> Any:
        """A transaction begun on a live connection. One the server dropped since its last use (a restart) fails
        at BEGIN, before anything ran, so it is replaced and the call goes on."""
        import psycopg

        conn = self._connection()
        try:
            stack.enter_context(conn.transaction())
            return conn
        except psycopg.OperationalError:
            if not conn.broken:
                raise
        self._drop()
        conn = self._connection()
        stack.enter_context(conn.transaction())
        return conn

    @property
    def unavailable(self) -> bool:
        """True during an outage: the PostgreSQL server could not be reached at the last call."""
        return self._down_since is not None

    def _error(self, action: str, exc: BaseException) -> BatchStoreError:
        err = BatchStoreError(f"batch store {redact(self.url)}: could not {action}: {first_line(exc)}; fix: check "
                              "the store (`batch.store_url` in the config) and retry")
        if self.kind == "postgres":  # the ledger's reading of PostgreSQL's errors: down, or a person must act
            err.retryable = postgres_error(self.url, exc, action).retryable
        if err.retryable:
            err.retry_after_s = self._retry_after_s
        return err

    def _failure(self, action: str, exc: BaseException) -> BatchStoreError:
        """``exc`` as a BatchStoreError; a PostgreSQL connection that could not be made or broke is dropped (the
        next call makes a new one) and, in a store that waits for the server, starts an outage, logged once."""
        err = self._error(action, exc)
        if self.kind == "postgres" and (self._conn is None or self._conn.closed or self._conn.broken):
            self._drop()
            if self._wait_if_down and self._down_since is None:
                self._down_since = time.time()
                log.warning("%s; the Batch API answers 503 and the scheduler waits until it is back", err.message)
        return err

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Any]:
        """One transaction (SQLite: ``BEGIN IMMEDIATE``, the write lock across processes from the start)."""
        with self._lock:
            try:
                if self.kind == "sqlite":
                    conn = self._conn
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        yield conn
                        conn.execute("COMMIT")
                    except BaseException:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                        raise
                else:
                    with contextlib.ExitStack() as stack:
                        yield self._pg_transaction(stack)
            except LedgerError:
                raise
            except (sqlite3.Error, OSError) as exc:
                raise self._failure("write", exc) from exc
            except Exception as exc:
                if type(exc).__module__.startswith("psycopg"):
                    raise self._failure("write", exc) from exc
                raise

    def _sql(self, text: str) -> str:
        return text.replace("{p}", self.prefix).replace("?", self.mark)

    def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._tx() as c:
            return list(c.execute(self._sql(sql), args).fetchall())

    # -- files -----------------------------------------------------------------------------------------------
    def put_file(self, file: dict[str, Any], content: bytes, key_hash: str | None) -> None:
        sql = self._sql("INSERT INTO {p}files (id, key_hash, purpose, filename, bytes, created_at, content) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING")
        with self._tx() as c:
            c.execute(sql, (file["id"], key_hash, file["purpose"], file["filename"], file["bytes"],
                            file["created_at"], content))

    def get_file(self, file_id: str) -> tuple[dict[str, Any], str | None] | None:
        rows = self._all("SELECT id, key_hash, purpose, filename, bytes, created_at FROM {p}files WHERE id = ?",
                         (file_id,))
        if not rows:
            return None
        fid, key_hash, purpose, filename, size, created = rows[0]
        return ({"id": fid, "object": "file", "bytes": int(size), "created_at": int(created), "filename": filename,
                 "purpose": purpose, "status": "processed", "status_details": None}, key_hash)

    def file_content(self, file_id: str) -> bytes | None:
        rows = self._all("SELECT content FROM {p}files WHERE id = ?", (file_id,))
        return bytes(rows[0][0]) if rows else None

    def list_files(self, key_hash: str | None, after: str | None = None, limit: int = 10_000, order: str = "desc",
                   purpose: str | None = None) -> tuple[list[dict[str, Any]], bool]:
        """A page of a key's files by creation time (``order``: ``desc``, newest first, or ``asc``), of one
        ``purpose`` when given; ``after``: the last id of the previous page. ``(files, more after them)``."""
        args: tuple[Any, ...] = (key_hash,)
        sql = "SELECT id FROM {p}files WHERE key_hash IS NOT DISTINCT FROM ?"
        if purpose is not None:
            sql += " AND purpose = ?"
            args += (purpose,)
        cmp, direction = ("<", "DESC") if order == "desc" else (">", "ASC")
        if after is not None:
            got = self._all("SELECT created_at FROM {p}files WHERE id = ? AND key_hash IS NOT DISTINCT FROM ?",
                            (after, key_hash))
            if got:
                sql += f" AND (created_at {cmp} ? OR (created_at = ? AND id {cmp} ?))"
                args += (got[0][0], got[0][0], after)
        rows = self._all(sql + f" ORDER BY created_at {direction}, id {direction} LIMIT ?", (*args, limit + 1))
        files = [found[0] for r in rows[:limit] if (found := self.get_file(r[0])) is not None]
        return files, len(rows) > limit

    def delete_file(self, file_id: str) -> None:
        with self._tx() as c:
            c.execute(self._sql("DELETE FROM {p}files WHERE id = ?"), (file_id,))

    # -- batches ---------------------------------------------------------------------------------------------
    def create_batch(self, doc: dict[str, Any], lines: list[tuple[str, dict[str, Any]]], key_hash: str | None,
                     key_sha256: str | None) -> None:
        """The batch and all its lines in one transaction."""
        insert = self._sql("INSERT INTO {p}batches (id, key_hash, key_sha256, status, created_at, expires_at, doc) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)")
        line_sql = self._sql("INSERT INTO {p}lines (batch_id, idx, custom_id, body, state) VALUES (?, ?, ?, ?, ?)")
        rows = [(doc["id"], i, cid, json.dumps(body), "pending") for i, (cid, body) in enumerate(lines)]
        with self._tx() as c:
            c.execute(insert, (doc["id"], key_hash, key_sha256, doc["status"], doc["created_at"],
                               doc["expires_at"] or doc["created_at"], json.dumps(doc)))
            if rows:
                if self.kind == "sqlite":
                    c.executemany(line_sql, rows)
                else:
                    with c.cursor() as cur:
                        cur.executemany(line_sql, rows)

    def get_batch(self, batch_id: str) -> tuple[dict[str, Any], str | None, str | None] | None:
        """``(batch object with its request counts, key id, key digest)``."""
        rows = self._all("SELECT doc, key_hash, key_sha256 FROM {p}batches WHERE id = ?", (batch_id,))
        if not rows:
            return None
        doc = json.loads(rows[0][0])
        counts = self.counts(batch_id)
        doc["request_counts"] = {"total": sum(counts.values()), "completed": counts.get("ok", 0),
                                 "failed": counts.get("failed", 0)}
        return doc, rows[0][1], rows[0][2]

    def list_batches(self, key_hash: str | None, after: str | None = None, limit: int = 20,
                     ) -> tuple[list[dict[str, Any]], bool]:
        """Newest first, OpenAI's cursor (``after``: the last id of the previous page)."""
        args: tuple[Any, ...] = (key_hash,)
        sql = "SELECT id, created_at FROM {p}batches WHERE key_hash IS NOT DISTINCT FROM ?"
        if after is not None:
            got = self._all("SELECT created_at FROM {p}batches WHERE id = ? AND key_hash IS NOT DISTINCT FROM ?",
                            (after, key_hash))
            if got:
                sql += " AND (created_at < ? OR (created_at = ? AND id < ?))"
                args += (got[0][0], got[0][0], after)
        rows = self._all(sql + " ORDER BY created_at DESC, id DESC LIMIT ?", (*args, limit + 1))
        docs = [found[0] for r in rows[:limit] if (found := self.get_batch(r[0])) is not None]
        return docs, len(rows) > limit

    def all_batches(self, limit: int = 100) -> list[dict[str, Any]]:
        """Every key's batches, newest first (``router batch list``)."""
        rows = self._all("SELECT id FROM {p}batches ORDER BY created_at DESC, id DESC LIMIT ?", (limit,))
        return [got[0] for r in rows if (got := self.get_batch(r[0])) is not None]

    def active_batches(self) -> list[str]:
        marks = ", ".join("?" * len(ACTIVE))
        return [r[0] for r in self._all(f"SELECT id FROM {{p}}batches WHERE status IN ({marks}) ORDER BY created_at",
                                        ACTIVE)]

    def update_batch(self, batch_id: str, changes: dict[str, Any], *, only_from: tuple[str, ...] | None = None
                     ) -> bool:
        """Apply ``changes`` to the batch object (and its status column), only while its status is one of
        ``only_from`` when given; ``True`` when it changed (one worker wins a transition)."""
        with self._tx() as c:
            row = c.execute(self._sql("SELECT doc FROM {p}batches WHERE id = ?"), (batch_id,)).fetchone()
            if row is None:
                return False
            doc = json.loads(row[0])
            if only_from is not None and doc["status"] not in only_from:
                return False
            doc.update(changes)
            c.execute(self._sql("UPDATE {p}batches SET doc = ?, status = ? WHERE id = ?"),
                      (json.dumps(doc), doc["status"], batch_id))
            return True

    # -- lines -----------------------------------------------------------------------------------------------
    def counts(self, batch_id: str) -> dict[str, int]:
        rows = self._all("SELECT state, COUNT(*) FROM {p}lines WHERE batch_id = ? GROUP BY state", (batch_id,))
        return {state: int(n) for state, n in rows}

    def claim(self, batch_id: str, owner: str, n: int, lease_s: float) -> list[Line]:
        """Up to ``n`` lines to run: pending ones (a line put back to be retried: once its time has come), or
        running ones whose lease expired (their worker died)."""
        now = time.time()
        pick = ("SELECT idx FROM {p}lines WHERE batch_id = ? AND ((state = 'pending' AND (lease_until IS NULL OR "
                "lease_until < ?)) OR (state = 'running' AND lease_until < ?)) ORDER BY idx LIMIT ?")
        if self.kind == "postgres":
            pick += " FOR UPDATE SKIP LOCKED"
        with self._tx() as c:
            idxs = [r[0] for r in c.execute(self._sql(pick), (batch_id, now, now, n)).fetchall()]
            if not idxs:
                return []
            marks = ", ".join(self.mark * 1 for _ in idxs)
            c.execute(self._sql(f"UPDATE {{p}}lines SET state = 'running', lease_owner = ?, lease_until = ?, "
                                f"attempts = attempts + 1 WHERE batch_id = ? AND idx IN ({marks})"),
                      (owner, now + lease_s, batch_id, *idxs))
            rows = c.execute(self._sql(f"SELECT idx, custom_id, body, attempts FROM {{p}}lines WHERE batch_id = ? "
                                       f"AND idx IN ({marks}) ORDER BY idx"), (batch_id, *idxs)).fetchall()
        return [Line(batch_id, int(i), cid, json.loads(body), int(a)) for i, cid, body, a in rows]

    def renew(self, owner: str, lease_s: float, lines: Iterable[tuple[str, int]]) -> None:
        """Extend ``owner``'s leases on ``lines`` (``(batch_id, idx)``), the ones it is running: a line it claimed
        but lost track of (a claim or a result the store failed to confirm) is left to lapse and be run again."""
        until = time.time() + lease_s
        by_batch: dict[str, list[int]] = {}
        for batch_id, idx in lines:
            by_batch.setdefault(batch_id, []).append(idx)
        with self._tx() as c:
            for batch_id, idxs in by_batch.items():
                marks = ", ".join(self.mark for _ in idxs)
                c.execute(self._sql(f"UPDATE {{p}}lines SET lease_until = ? WHERE batch_id = ? AND idx IN ({marks}) "
                                    "AND lease_owner = ? AND state = 'running'"), (until, batch_id, *idxs, owner))

    def finish(self, line: Line, owner: str, state: str, result: dict[str, Any] | None, *,
               not_before: float | None = None) -> bool:
        """Store a line's one result while ``owner`` still holds it; ``False`` when another worker took it over.
        ``state`` ``pending`` (no result) puts the line back in the queue instead, to be claimed again from
        ``not_before`` (system clock) on: a retry after an outage."""
        with self._tx() as c:
            cur = c.execute(self._sql("UPDATE {p}lines SET state = ?, result = ?, lease_owner = NULL, "
                                      "lease_until = ? WHERE batch_id = ? AND idx = ? AND state = 'running' AND "
                                      "lease_owner = ?"),
                            (state, None if result is None else json.dumps(result), not_before, line.batch_id,
                             line.idx, owner))
            return bool(cur.rowcount)

    def fail_pending(self, batch_id: str, make_result: Any) -> int:
        """Every line not yet claimed gets its failure result (``make_result(idx, custom_id)``): a cancelled or
        expired batch."""
        with self._tx() as c:
            rows = c.execute(self._sql("SELECT idx, custom_id FROM {p}lines WHERE batch_id = ? AND "
                                       "state = 'pending'"), (batch_id,)).fetchall()
            for idx, cid in rows:
                c.execute(self._sql("UPDATE {p}lines SET state = 'failed', result = ? WHERE batch_id = ? AND "
                                    "idx = ? AND state = 'pending'"),
                          (json.dumps(make_result(int(idx), cid)), batch_id, idx))
        return len(rows)

    def results(self, batch_id: str) -> list[tuple[str, dict[str, Any]]]:
        """``(state, output line)`` of every finished line, in input order."""
        rows = self._all("SELECT state, result FROM {p}lines WHERE batch_id = ? AND result IS NOT NULL ORDER BY idx",
                         (batch_id,))
        return [(state, json.loads(result)) for state, result in rows]

    def close(self) -> None:
        with self._lock:
            self._drop()


def sqlite_path(url: str) -> Path | None:
    """The SQLite file a store URL names (as for a ledger: ``sqlite:///PATH`` or a plain path), None for PostgreSQL.
    Any other URL (``redis://``, a typo) is a ConfigError: taken as a path, it would make a file named after the URL."""
    if url_scheme(url) in ("postgresql", "postgres"):
        return None
    with contextlib.suppress(LedgerError):  # a malformed sqlite: URL: the batch store's own error, below
        path = ledger_sqlite_path(url)
        if path is not None:
            return path
    raise ConfigError(f"batch store {redact(url)}: not a batch store URL; fix: give sqlite:///PATH, a file path or "
                      "postgresql://... (--store or `batch.store_url` in the config; Redis is not a batch store)")


def default_store_url(ledger_url: str) -> str:
    """Beside a SQLite ledger (``ledger.sqlite3`` -> ``batches.sqlite3``), the ledger's database for PostgreSQL,
    else in the user data dir."""
    if url_scheme(ledger_url) in ("postgresql", "postgres"):
        return ledger_url
    path = ledger_sqlite_file(ledger_url)
    if path is not None:
        return sqlite_url(path.with_name("batches.sqlite3"))
    from ..user_dirs import user_data_folder

    folder = user_data_folder("name the batch store (batch.store_url in the config)")
    return sqlite_url(folder / "batches.sqlite3")


__all__ = ["ACTIVE", "BatchStore", "Line", "default_store_url", "sqlite_path"]
