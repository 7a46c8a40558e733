"""One way to fail: every ledger turns its driver's exceptions (``sqlite3``, ``redis``, ``psycopg``, ``OSError``)
into a :class:`~router.errors.LedgerError` that names the store's URL (password masked), what is wrong and the
fix, so neither ``Router()``, a request nor ``router ledger`` ever shows a raw driver exception.

Each store lists the exceptions it translates (``driver_errors``) and says what one means (``_translate``);
:func:`guarded` wraps a public method (or generator) so that translation happens in one place.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from ..errors import LedgerError

F = TypeVar("F", bound=Callable[..., Any])


_QUERY_SECRET = re.compile(r"(?i)(^|&)((?:ssl)?password=)[^&]*")
"""A secret given as a URL parameter: libpq takes ``?password=`` and ``?sslpassword=``, redis-py ``?password=``."""


def redact(url: str) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db``, and ``?password=secret`` ->
    ``?password=***`` (messages, logs and files never show a password); anything without one comes back unchanged."""
    masked = redact_userinfo(url)
    base, sep, query = masked.partition("?")
    return base + sep + _QUERY_SECRET.sub(r"\1\2***", query) if sep else masked


def redact_userinfo(url: str) -> str:
    """:func:`redact` of the password before the host only: what journal folders are named by (a folder must keep
    its name across releases, or records journaled before an upgrade would not be replayed)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def ledger_error(
    url: str,
    what: str,
    fix: str,
    *,
    retryable: bool = True,
    record_rejected: bool = False,
) -> LedgerError:
    """``ledger URL: what is wrong; fix: what to do``, with the flags a journal acts on."""
    err = LedgerError(f"ledger {redact(url)}: {what}; fix: {fix}")
    err.problem, err.fix = what, fix
    err.retryable = retryable
    err.record_rejected = record_rejected
    return err


def wrapped_parts(exc: LedgerError, default_fix: str) -> tuple[str, str]:
    """``(what is wrong, the fix)`` of ``exc`` for an error that wraps it and names the URL itself: the problem
    without its URL and fix, and the fix ``exc`` gives (``default_fix`` where it gives none), so the wrapped
    message says each once."""
    return exc.problem or exc.message, exc.fix or default_fix


def closed_error(url: str, action: str | None = None) -> LedgerError:
    """The error for a ledger used after its ``close()``: the caller closed it, so nothing will bring it back
    (unlike a store that went away) and the message says so."""
    what = "this ledger was closed (close() was called on it)"
    return ledger_error(url, f"could not {action}: {what}" if action else what,
                        "open a new one (open_ledger, or a new Router) to use the store after closing it",
                        retryable=False)  # fmt: skip


def guarded(action: str) -> Callable[[F], F]:
    """Translate the store's driver exceptions raised by a method into ``LedgerError``, and refuse a call on a
    closed ledger (``closed_error``: Redis and PostgreSQL would silently connect again). ``action`` completes
    "could not ..." in the message. Generators are wrapped so that errors raised while iterating are translated
    too. The wrapper costs one Python call (~0.1 µs) and an attribute read on the non-failing path."""

    def deco(fn: F) -> F:
        if inspect.isgeneratorfunction(fn):

            @functools.wraps(fn)
            def gen_wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
                if self.closed:
                    raise closed_error(self.url, action)
                try:
                    yield from fn(self, *args, **kwargs)
                except self.driver_errors as exc:
                    raise self._translate(exc, action) from exc

            return gen_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            if self.closed:
                raise closed_error(self.url, action)
            try:
                return fn(self, *args, **kwargs)
            except self.driver_errors as exc:
                raise self._translate(exc, action) from exc

        return wrapper  # type: ignore[return-value]

    return deco


def first_line(exc: BaseException) -> str:
    """The driver's own message, on one line (psycopg's run over several)."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].strip()


def _sqlite_error_name(exc: BaseException) -> str:
    """SQLite's result code name (Python 3.11+) or, before that, one inferred from the message."""
    name = getattr(exc, "sqlite_errorname", None)
    if name:
        return str(name)
    text = str(exc).lower()
    for needle, code in (
        ("not a database", "SQLITE_NOTADB"), ("malformed", "SQLITE_CORRUPT"), ("readonly", "SQLITE_READONLY"),
        ("unable to open", "SQLITE_CANTOPEN"), ("locked", "SQLITE_BUSY"), ("full", "SQLITE_FULL"),
        ("disk i/o", "SQLITE_IOERR"), ("constraint", "SQLITE_CONSTRAINT"), ("closed", "SQLITE_MISUSE"),
    ):  # fmt: skip
        if needle in text:
            return code
    return "SQLITE_ERROR"


def sqlite_error(url: str, path: Path, exc: BaseException, action: str) -> LedgerError:
    """What an SQLite failure means for the person running the router, and what fixes it."""
    if os.path.isdir(path):  # SQLite says only "unable to open database file", which reads as a missing folder
        return ledger_error(url, f"could not {action}: {path} is a directory, not a ledger file",
                            f"name a file inside it, e.g. sqlite:///{path / 'ledger.sqlite3'}",
                            retryable=False)  # fmt: skip
    if isinstance(exc, OSError):
        return ledger_error(url, f"could not {action}: cannot create or open {path}: "
                            f"{exc.strerror or first_line(exc)}",
                            "point ROUTER_LEDGER_URL (or the config's ledger_url) at a path in a folder this "
                            "user can write", retryable=False)  # fmt: skip
    name = _sqlite_error_name(exc)
    detail = f"could not {action}: {first_line(exc)} ({name})"
    if name in ("SQLITE_NOTADB", "SQLITE_CORRUPT") or name.startswith("SQLITE_CORRUPT"):
        return ledger_error(url, f"{detail}: the file is corrupt",
                            f"run `router ledger doctor --ledger {url}`; if it cannot repair it, move "
                            f"{path} aside (a new ledger is made on the next start) or restore a backup",
                            retryable=False)  # fmt: skip
    if name.startswith("SQLITE_READONLY"):
        folder = " (the folder, which must hold the -wal and -shm files)" if "DIRECTORY" in name else ""
        return ledger_error(url, f"{detail}: the file or its folder is read-only{folder}",
                            f"make {path} and {path.parent} writable by this user, or point "
                            "ROUTER_LEDGER_URL elsewhere", retryable=False)  # fmt: skip
    if name.startswith("SQLITE_CANTOPEN"):
        return ledger_error(url, f"{detail}: the file cannot be opened",
                            f"check that {path.parent} exists and this user may read and write it",
                            retryable=False)  # fmt: skip
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return ledger_error(url, f"{detail}: another connection holds the write lock",
                            "wait for it to finish (a long report, a backup) or raise ?timeout_s=")
    if name.startswith("SQLITE_FULL"):
        return ledger_error(url, f"{detail}: the disk is full", f"free space on the disk of {path}")
    if name.startswith("SQLITE_CONSTRAINT") or isinstance(exc, sqlite3.IntegrityError):
        return ledger_error(url, f"{detail}: the record is incomplete",
                            "this is a bug in the caller: every required field must be set",
                            retryable=False, record_rejected=True)  # fmt: skip
    if isinstance(exc, sqlite3.ProgrammingError) and "closed" in str(exc).lower():  # closed during this call
        return closed_error(url, action)
    return ledger_error(url, detail, f"run `router ledger doctor --ledger {url}`")


def redis_error(url: str, exc: BaseException, action: str) -> LedgerError:
    """What a Redis failure means, and what fixes it."""
    import redis

    detail = f"could not {action}: {first_line(exc)}"
    text = str(exc)
    if isinstance(exc, redis.AuthenticationError) or "NOAUTH" in text or "WRONGPASS" in text:
        return ledger_error(url, f"{detail}: Redis refused the credentials",
                            "put the right password in the URL (redis://:PASSWORD@HOST:PORT/DB) or the "
                            "username too (redis://USER:PASSWORD@...)", retryable=False)  # fmt: skip
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError | OSError):
        return ledger_error(url, f"{detail}: Redis is down or unreachable",
                            "start Redis (or fix the host and port in the URL); records wait in the journal "
                            "meanwhile where one is configured")  # fmt: skip
    # NOPERM, or its form inside a script: the URL's user lacks a command or the ledger's keys. Not an outage that
    # ends by itself, so `router serve` refuses to start (as for refused credentials) instead of journaling
    if isinstance(exc, redis.exceptions.NoPermissionError) or "The user executing the script can't" in text:
        return ledger_error(url, f"{detail}: the URL's Redis user may not run a command the ledger needs, or not on "
                            "its keys",
                            "grant that user the ledger's keys and commands (ACL SETUSER USER ~PREFIX* +@all); a user "
                            "without write commands (+@all -@write) can read a ledger another process keeps up to "
                            "date (`router ledger budgets`, reports), nothing more", retryable=False)  # fmt: skip
    if isinstance(exc, redis.ReadOnlyError) or text.startswith("READONLY"):
        return ledger_error(url, f"{detail}: the server is a read-only replica",
                            "point the URL at the primary", retryable=False)  # fmt: skip
    if "DB index is out of range" in text:
        return ledger_error(url, f"{detail}: the URL's database number is past the server's `databases` setting",
                            "use a database below that setting (0 to 15 with Redis's default of 16) or raise "
                            "`databases` in redis.conf", retryable=False)  # fmt: skip
    if text.startswith("OOM"):
        return ledger_error(url, f"{detail}: Redis is out of memory (maxmemory)",
                            "raise maxmemory, prune the ledger (`router ledger prune`) or set a retention")
    return ledger_error(url, detail, "check the Redis server's log")


# libpq's and psycopg's messages (lower-cased) for a URL they cannot use as written (a query option they do not
# know, a port or an option's value they cannot read: `invalid sslmode value`, `bad value for connect_timeout`); their
# other errors may be an outage
_LIBPQ_URL_FAULTS = re.compile(r"invalid uri|invalid port number|invalid \w+ value|bad value for ")


def postgres_error(url: str, exc: BaseException, action: str) -> LedgerError:
    """What a PostgreSQL failure means, and what fixes it (libpq's messages, and SQLSTATE classes)."""
    import psycopg

    detail = f"could not {action}: {first_line(exc)}"
    text = str(exc).lower()
    state = getattr(exc, "sqlstate", None) or ""
    if not state and _LIBPQ_URL_FAULTS.search(text):  # libpq's, before any connection
        return ledger_error(url, f"{detail}: the URL itself is not valid",
                            "correct the URL: postgresql://USER:PASSWORD@HOST:PORT/DB with a port from 1 to 65535, and "
                            "query options that are libpq's (sslmode, connect_timeout, options, ...) or the "
                            "router's (schema, pool, read_timeout, request_timeout_s, retention_days)",
                            retryable=False)  # fmt: skip
    if "password authentication failed" in text or "no password supplied" in text or state == "28P01":
        return ledger_error(url, f"{detail}: PostgreSQL refused the credentials",
                            "put the right user and password in the URL (postgresql://USER:PASSWORD@HOST:PORT/DB)",
                            retryable=False)  # fmt: skip
    if state.startswith("28") or "pg_hba.conf" in text or ("role" in text and "does not exist" in text):
        return ledger_error(url, f"{detail}: PostgreSQL does not let this user in",
                            "create the role or allow it in pg_hba.conf", retryable=False)  # fmt: skip
    if state == "3D000" or ("database" in text and "does not exist" in text):
        return ledger_error(url, f"{detail}: the database does not exist",
                            "create it (createdb NAME) or fix the database name in the URL",
                            retryable=False)  # fmt: skip
    if state == "42501":
        return ledger_error(url, f"{detail}: the user lacks a privilege",
                            "GRANT the user CREATE on the database (for the schema) and use of the schema",
                            retryable=False)  # fmt: skip
    if "unrecognized configuration parameter" in text or "invalid connection option" in text or state == "22023":
        return ledger_error(url, f"{detail}: the URL's options are not valid", "fix the URL's query options",
                            retryable=False)  # fmt: skip
    if state == "25006":
        return ledger_error(url, f"{detail}: the server is a read-only standby",
                            "point the URL at the primary", retryable=False)  # fmt: skip
    if state.startswith("23"):
        return ledger_error(url, f"{detail}: the record is incomplete",
                            "this is a bug in the caller: every required field must be set",
                            retryable=False, record_rejected=True)  # fmt: skip
    if state.startswith("40"):  # rolled back for a conflict with another writer, and already tried again
        return ledger_error(url, f"{detail}: the transaction conflicted with another writer's (PostgreSQL rolled "
                            "it back)", "nothing to fix if it is rare; if it repeats, look for another program "
                            "locking the ledger's tables")  # fmt: skip
    if isinstance(exc, psycopg.OperationalError | OSError) or state.startswith(("08", "57")):
        return ledger_error(url, f"{detail}: PostgreSQL is down or unreachable",
                            "start PostgreSQL (or fix the host and port in the URL); records wait in the "
                            "journal meanwhile where one is configured")  # fmt: skip
    if state == "53100":
        return ledger_error(url, f"{detail}: the database's disk is full", "free space on the database server")
    return ledger_error(url, detail, "check the PostgreSQL server's log")
