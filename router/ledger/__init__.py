"""Ledgers: where every request's energy is written and budgets are read from."""

from __future__ import annotations

from pathlib import Path

from ..config import JournalSettings
from ..keys import hash_key
from .base import (
    BUCKET_S,
    Ledger,
    LedgerRecord,
    Reservation,
    SummaryRow,
    aggregate,
    new_record_id,
    totals_from_summary,
    window_start,
)
from .errors import redact
from .feedback import Feedback, StoredPrompt
from .journal import Journal, journal_folder
from .journaled import JournaledLedger
from .sqlite import SQLiteLedger
from .stores import SCHEMES, in_memory, open_store


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
    raises). An in-memory SQLite ledger (``:memory:``) has none (:func:`~router.ledger.stores.in_memory`)."""
    if (journal is None or journal is False or (isinstance(journal, JournalSettings) and not journal.enabled)
            or in_memory(url)):
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
    "Feedback",
    "Journal",
    "JournalSettings",
    "journal_folder",
    "JournaledLedger",
    "Ledger",
    "LedgerRecord",
    "Reservation",
    "SQLiteLedger",
    "StoredPrompt",
    "SummaryRow",
    "aggregate",
    "hash_key",
    "new_record_id",
    "open_ledger",
    "SCHEMES",
    "open_store",
    "redact",
    "totals_from_summary",
    "window_start",
]
