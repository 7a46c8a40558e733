"""A settlement's figure is checked before anything stores it: by every store (the shared suite's
``check_a_bad_settlement_is_refused_and_stores_nothing``), by the in-memory ledger and the proxy's ledger writer
below, and a meter that reads NaN on the request path leaves the call counted at its card's estimate.

A NaN ``actual_j`` (a broken meter's) went into the budget's counter: SQLite failed the write as a ``LedgerError``,
Redis failed its script, and an infinite figure left the budget refusing everything until its window ended; the
proxy's writer queued the bad figure and journaled it, so the caller never heard of it and the replay met it
again."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conformance.ledger_suite import check_a_bad_settlement_is_refused_and_stores_nothing
from test_budgets import REVIEW, policy, setup

from router import Router, RouterConfig
from router.energy import EnergyReading, Meter
from router.energy.base import MeterSpan
from router.errors import BadRequestError
from router.ledger import JournalSettings, Ledger, LedgerRecord, Reservation, SQLiteLedger, open_ledger
from router.ledger.journal import encode, encode_settlement
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


class NanReadingMeterFault(Meter):
    """Fault injection: a meter whose every reading is NaN joules (an energy counter read that failed)."""

    name = "nan-fault"

    def start(self) -> MeterSpan:
        return _NanSpan()


class _NanSpan(MeterSpan):
    def stop(self) -> EnergyReading:
        return EnergyReading(math.nan, "measured", "nan-fault", "injected NaN")


@pytest.mark.parametrize("fails", [False, True], ids=["answered", "failed"])
def test_a_meter_that_reads_nan_leaves_the_call_counted_at_its_cards_estimate(tmp_path: Path, fails: bool) -> None:
    """A local model (the shipped ONNX sentiment specialist, 1 J a call by its card, held at 4 J until measured)
    under a budget, metered by a meter that reads NaN: the request is answered (or fails with the backend's error,
    not the ledger's), its record carries the card's estimate as ``estimated:token-profile``, and the budget is
    settled to that estimate, so it has all its room left and still refuses past its limit."""
    from router.backends import FaultInjectingBackend, create_backend
    from router.cards import load_cards
    from router.errors import BackendError

    root = setup(tmp_path, policy("reject", 10, per=3600))
    config = RouterConfig.load(models_dir=root / "models", policies_dir=root / "policies", default_policy="t",
                               ledger_url=f"sqlite:///{root / 'ledger.sqlite3'}")
    backends = None
    if fails:
        cards = load_cards(root / "models")  # both fail: no fallback answers
        backends = {name: FaultInjectingBackend(create_backend(cards[name]), fail_after_events=0)
                    for name in ("spec-a", "spec-b")}
    with Router(config, meter=NanReadingMeterFault(), backends=backends) as router:
        for _ in range(3):
            if fails:
                with pytest.raises(BackendError, match="injected"):
                    router.complete(REVIEW, model="spec-a")
            else:
                assert router.complete(REVIEW).routing.model == "spec-a"
        recs = [r for r in router.ledger.records() if r.model == "spec-a"]
        assert [r.outcome for r in recs] == ["error" if fails else "ok"] * 3
        assert all(r.energy_source == "estimated:token-profile" and r.energy_j == 1.0 for r in recs), recs
        assert math.isclose(router.ledger.budget_used("model:spec-a:3600s", 3600), 3.0), "settled to the estimates"
        assert router.ledger.try_reserve("model:spec-a:3600s", 7.0, 10.0, 3600) is not None, "its room is all there"
        assert router.ledger.try_reserve("model:spec-a:3600s", 0.5, 10.0, 3600) is None, "the budget still refuses"


def test_a_journal_settlement_an_older_release_wrote_with_a_nan_figure_is_set_aside_not_replayed(
        tmp_path: Path) -> None:
    """A dead process of an older release (which journaled any figure) left a segment with a NaN settlement among
    a good one and a record. ``settle_many`` now refuses the NaN with a ``BadRequestError``, which the replay
    does not expect: opening the ledger raised it, and the segment (its record too) stayed unreplayed for good.
    The line is set aside as one the store refuses; the rest of the segment is replayed."""
    store = SQLiteLedger(tmp_path / "l.sqlite3")
    hold = store.try_reserve("b", 10.0, 100.0, 3600)
    assert hold is not None
    store.close()
    folder = tmp_path / "l.journal"
    folder.mkdir()
    dead = folder / "j-otherhost-999999-1000.jsonl"
    rec = LedgerRecord(request_id="q0", model="m", tier="small", energy_j=1.0, energy_source="estimated:x")
    lost = Reservation("gone", "b", 4.0, hold.window_start)
    dead.write_bytes(encode_settlement((lost, math.nan)) + encode_settlement((hold, 3.0)) + encode(rec))
    led = open_ledger(f"sqlite:///{tmp_path / 'l.sqlite3'}", journal=JournalSettings(folder=folder))
    try:
        assert [r.request_id for r in led.records()] == ["q0"] and not dead.exists()
        assert led.budget_used("b", 3600) == 3.0, "the good settlement is applied"
        assert b"NaN" in (folder / "rejected.jsonl").read_bytes()
    finally:
        led.close()
