"""Which store a ledger URL names, opened without a journal."""

from __future__ import annotations

from .base import Ledger
from .errors import ledger_error
from .sqlite import SQLiteLedger
from .urls import in_memory, sqlite_file, sqlite_path, url_scheme

SCHEMES = {
    "sqlite": "sqlite:///PATH (default; one host)",
    "redis": "redis://[:PASSWORD@]HOST:PORT/DB (several processes share budgets in memory)",
    "rediss": "rediss://... (Redis over TLS)",
    "unix": "unix:///PATH/redis.sock?db=N (Redis over a socket)",
    "postgresql": "postgresql://USER:PASSWORD@HOST:PORT/DB (a fleet keeps its records in a database)",
    "postgres": "postgres://... (the same)",
}


def open_store(url: str, *, retention_days: float | None = None) -> Ledger:
    """The store a URL names, without a journal. Raises :class:`~router.errors.LedgerError` (never a driver's
    exception) naming the URL, what is wrong and the fix: an unknown scheme, a corrupt, read-only or unopenable
    SQLite file, a Redis or PostgreSQL that is down or refuses the credentials, a newer schema."""
    scheme = url_scheme(url)
    if scheme in ("", "sqlite"):
        return SQLiteLedger.from_url(url, retention_days=retention_days)
    if scheme in ("redis", "rediss", "unix"):
        from .redis import RedisLedger

        return RedisLedger.from_url(url, retention_days=retention_days)
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresLedger

        return PostgresLedger.from_url(url, retention_days=retention_days)
    raise ledger_error(url, f"unknown ledger URL scheme {scheme!r}",
                       "use one of: " + "; ".join(SCHEMES.values()), retryable=False)  # fmt: skip


__all__ = ["SCHEMES", "in_memory", "open_store", "sqlite_file", "sqlite_path", "url_scheme"]
