"""Ledgers: where every request's energy is written and budgets are read from."""

from __future__ import annotations

from pathlib import Path

from .base import (
    BUCKET_S,
    Ledger,
    LedgerRecord,
    Reservation,
    SummaryRow,
    aggregate,
    hash_key,
    new_record_id,
    totals_from_summary,
    window_start,
)
from .errors import ledger_error, redact
from .journal import Journal, JournalSettings
from .journaled import JournaledLedger
from .sqlite import SQLiteLedger

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
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
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


def open_ledger(
    url: str,
    *,
    retention_days: float | None = None,
    journal: JournalSettings | bool | str | Path | None = None,
) -> Ledger:
    """``sqlite:///PATH`` (default), ``redis://HOST:PORT/DB`` (several processes share budgets) or
    ``postgresql://USER:PASSWORD@HOST:PORT/DB`` (a fleet's records in one database).

    ``retention_days`` (the config's ``ledger_retention_days``) prunes older records; None keeps the setting
    already stored with the ledger (default: keep everything).

    ``journal``: put a local append-only journal in front of the store (:class:`JournaledLedger`): True for the
    default settings (folder beside a SQLite file, else in the user data dir), a folder, or
    :class:`JournalSettings`. With a journal, a store that is down when the ledger opens is not an error: records
    wait in the journal and the store is opened again in the background (a corrupt or misconfigured store still
    raises)."""
    if journal is None or journal is False:
        return open_store(url, retention_days=retention_days)
    if journal is True:
        settings = JournalSettings()
    elif isinstance(journal, JournalSettings):
        settings = journal
    else:
        settings = JournalSettings(folder=Path(journal))
    return JournaledLedger.open(url, settings, retention_days=retention_days)


__all__ = [
    "BUCKET_S",
    "Journal",
    "JournalSettings",
    "JournaledLedger",
    "Ledger",
    "LedgerRecord",
    "Reservation",
    "SQLiteLedger",
    "SummaryRow",
    "aggregate",
    "hash_key",
    "new_record_id",
    "open_ledger",
    "open_store",
    "redact",
    "totals_from_summary",
    "window_start",
]
