"""Which store a ledger URL names, opened without a journal."""

from __future__ import annotations

from pathlib import Path

from .base import Ledger
from .errors import ledger_error

SCHEMES = {
    "sqlite": "sqlite:///PATH (default; one host)",
    "redis": "redis://[:PASSWORD@]HOST:PORT/DB (several processes share budgets in memory)",
    "rediss": "rediss://... (Redis over TLS)",
    "unix": "unix:///PATH/redis.sock?db=N (Redis over a socket)",
    "postgresql": "postgresql://USER:PASSWORD@HOST:PORT/DB (a fleet keeps its records in a database)",
    "postgres": "postgres://... (the same)",
}


def url_scheme(url: str) -> str:
    """The scheme of a store URL in lower case (schemes are case-insensitive); "" for a plain path."""
    return url.split("://", 1)[0].lower() if "://" in url else ""


def sqlite_path(url: str) -> Path | None:
    """The SQLite file a store URL names, or None when it names another store (``redis://``, ``postgresql://``,
    an unknown scheme). The one rule for "is this SQLite", so that opening the ledger, its journal folder, the
    batch store beside it, the CLI and the dashboard never disagree: ``sqlite:///PATH`` (the scheme in any case,
    the query left out) or a plain path (``:memory:`` included). ``sqlite:`` with fewer than three slashes
    (``sqlite:/x``, ``sqlite://x``, ``sqlite:x``) is a ``LedgerError``: taken as a path it would make a new, empty
    ledger named after the URL."""
    scheme = url_scheme(url)
    if scheme == "sqlite" and url[len("sqlite://") :].startswith("/"):
        return Path(url[len("sqlite:///") :].split("?", 1)[0])
    if scheme == "sqlite" or url[: len("sqlite:")].lower() == "sqlite:":
        raise ledger_error(url, "not a SQLite ledger URL", "write sqlite:///PATH: three slashes, then the path "
                           "(sqlite:////var/lib/router/ledger.sqlite3 for an absolute one)", retryable=False)
    return Path(url) if scheme == "" else None


def in_memory(url: str) -> bool:
    """Whether ``url`` names a SQLite database in the process's memory (``:memory:``). Such a ledger gets no journal:
    its records end with the process whatever happens, and a journal folder beside it (``./:memory:.journal``)
    would replay one process's records into the next one's fresh database."""
    path = sqlite_path(url)
    return path is not None and str(path) == ":memory:"


def open_store(url: str, *, retention_days: float | None = None) -> Ledger:
    """The store a URL names, without a journal. Raises :class:`~router.errors.LedgerError` (never a driver's
    exception) naming the URL, what is wrong and the fix: an unknown scheme, a corrupt, read-only or unopenable
    SQLite file, a Redis or PostgreSQL that is down or refuses the credentials, a newer schema."""
    scheme = url_scheme(url)
    if scheme in ("", "sqlite"):
        from .sqlite import SQLiteLedger

        return SQLiteLedger.from_url(url, retention_days=retention_days)
    if scheme in ("redis", "rediss", "unix"):
        from .redis import RedisLedger

        return RedisLedger.from_url(url, retention_days=retention_days)
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresLedger

        return PostgresLedger.from_url(url, retention_days=retention_days)
    raise ledger_error(url, f"unknown ledger URL scheme {scheme!r}",
                       "use one of: " + "; ".join(SCHEMES.values()), retryable=False)  # fmt: skip
