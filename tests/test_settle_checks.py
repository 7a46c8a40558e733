"""A settlement's figure is checked before anything stores it: by every store (the shared suite's
``check_a_bad_settlement_is_refused_and_stores_nothing``), and by the in-memory ledger and the proxy's ledger
writer below.

A NaN ``actual_j`` (a broken meter's) went into the budget's counter: SQLite failed the write as a ``LedgerError``,
Redis failed its script, and an infinite figure left the budget refusing everything until its window ended; the
proxy's writer queued the bad figure and journaled it, so the caller never heard of it and the replay met it
again."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conformance.ledger_suite import check_a_bad_settlement_is_refused_and_stores_nothing

from router.errors import BadRequestError
from router.ledger import JournalSettings, Ledger, SQLiteLedger, open_ledger
from router.proxy.ledger_writer import BackgroundLedger


def test_the_in_memory_ledger_refuses_a_bad_settlement() -> None:
    opened: list[Ledger] = []

    def open_store(name: str) -> Ledger:
        opened.append(open_ledger("sqlite:///:memory:"))
        return opened[-1]

    check_a_bad_settlement_is_refused_and_stores_nothing(open_store)
    for led in opened:
        led.close()


def test_the_proxy_ledger_writer_refuses_a_bad_settlement_before_journaling_or_queueing_it(tmp_path: Path) -> None:
    """The writer used to journal and queue any figure: the caller's ``settle`` returned, the writer thread's
    ``settle_many`` failed later (logged, the hold left at its estimate), and the journal kept the NaN line for
    the replay to meet."""
    journal = tmp_path / "journal"
    led = BackgroundLedger(SQLiteLedger(tmp_path / "l.sqlite3"), journal=JournalSettings(folder=journal))
    try:
        hold = led.try_reserve("b", 10.0, 100.0, 3600)
        assert hold is not None
        with pytest.raises(BadRequestError, match="actual_j=nan") as refused:
            led.settle(hold, math.nan)
        assert refused.value.param == "actual_j"
        with pytest.raises(BadRequestError, match=r"settlements\[1\]"):
            led.settle_many([(hold, 4.0), (hold, -1.0)])
        assert led.flush() and led.failed_settlements == 0 and led.settled == 0, "nothing was queued"
        journaled = b"".join(p.read_bytes() for p in journal.rglob("*.jsonl"))
        assert b"settlement" not in journaled, journaled
        assert led.budget_used("b", 3600) == 10.0, "the hold is as it was"
        led.settle(hold, 4.0)
        assert led.flush() and led.settled == 1
        assert led.budget_used("b", 3600) == 4.0
    finally:
        led.close()
