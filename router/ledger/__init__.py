"""Ledgers: where every request's energy is written and budgets are read from."""

from __future__ import annotations

from .base import (
    BUCKET_S,
    Ledger,
    LedgerRecord,
    Reservation,
    SummaryRow,
    aggregate,
    hash_key,
    totals_from_summary,
    window_start,
)
from .sqlite import SQLiteLedger


def open_ledger(url: str, *, retention_days: float | None = None) -> Ledger:
    """``sqlite:///PATH`` (default) or ``redis://HOST:PORT/DB`` (several processes share budgets).

    ``retention_days`` (the config's ``ledger_retention_days``) prunes older records; None keeps the setting
    already stored with the ledger (default: keep everything)."""
    if url.startswith("redis://") or url.startswith("rediss://") or url.startswith("unix://"):
        from .redis import RedisLedger

        return RedisLedger.from_url(url, retention_days=retention_days)
    return SQLiteLedger.from_url(url, retention_days=retention_days)


__all__ = [
    "BUCKET_S",
    "Ledger",
    "LedgerRecord",
    "Reservation",
    "SQLiteLedger",
    "SummaryRow",
    "aggregate",
    "hash_key",
    "open_ledger",
    "totals_from_summary",
    "window_start",
]
