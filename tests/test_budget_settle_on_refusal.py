"""A budget under `router serve` (SQLite ledger, records and settlements written by the background writer) seen by
an openai SDK client: the holds of calls that have answered are settled before the budget refuses a call.

A call's reservation holds its estimate until the writer thread settles it to the joules the call used (one
group write, ~20 ms later). Four back-to-back calls on a 40 J hour used ~11 J, yet the fourth was refused with
"is spent (35 J of 40 J)" and a Retry-After at the hour's end: three finished calls were still held at ~12 J
each. A refusal now first settles what is queued and reserves again; a budget that is spent still refuses."""

from __future__ import annotations

import re
import sqlite3
import threading
from pathlib import Path

import openai
import pytest
from servers.procs import models_dir, policies_dir, remote_card, router_serve, upstream
from test_budgets import REVIEW, policy, setup

from router import Router, RouterConfig
from router.errors import BudgetExhaustedError
from router.ledger import LedgerRecord, Reservation, SQLiteLedger
from router.proxy.ledger_writer import BackgroundLedger

pytestmark = pytest.mark.slow

BUDGET_J = 40.0
ASK = [{"role": "user", "content": "hi"}]


def _config(tmp_path: Path, up: str, ledger: Path) -> Path:
    models = models_dir(tmp_path / "models", {"remote-echo": remote_card("remote-echo", up, "echo")},
                        specialist=False)
    policies = policies_dir(tmp_path / "policies", {"capped": (
        "name: capped\naccuracy: {min_accuracy: 0.0}\nallowed_models: [remote-echo]\non_budget_exhausted: reject\n"
        f"budgets: [{{model: remote-echo, joules: {BUDGET_J:g}, per: hour}}]\n")})
    config = tmp_path / "config.yaml"
    config.write_text(f"models_dir: {models}\npolicies_dir: {policies}\ndefault_policy: capped\n"
                      f"ledger_url: 'sqlite:///{ledger}'\njournal: {{folder: {tmp_path / 'journal'}}}\n")
    return config


def test_a_refusal_settles_the_finished_calls_holds_first_and_a_spent_budget_still_refuses(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.sqlite3"
    with upstream(tmp_path) as up, router_serve(_config(tmp_path, up, ledger), tmp_path) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-none", max_retries=0, timeout=30)
        for _ in range(4):  # back to back: the earlier calls' settlements are still queued when the next reserves
            answer = client.chat.completions.create(model="router", messages=ASK)
            assert answer.choices[0].message.content
        answered = 4
        refusal: openai.RateLimitError | None = None
        while refusal is None and answered < 40:  # now spend the budget for real
            try:
                client.chat.completions.create(model="router", messages=ASK)
                answered += 1
            except openai.RateLimitError as exc:
                refusal = exc
    assert refusal is not None, f"{answered} calls answered under a {BUDGET_J:g} J budget"
    with sqlite3.connect(ledger) as db:
        (used,) = db.execute("SELECT sum(energy_j) FROM records WHERE outcome = 'ok'").fetchone()
        (count,) = db.execute("SELECT count(*) FROM records WHERE outcome = 'ok'").fetchone()
    # SQL sums the records in its own order: 25 calls of 1.6 J read 40.000000000000014, the budget's counter 40
    assert count == answered and used <= BUDGET_J * (1 + 1e-9), (count, used)
    message = refusal.message
    need = re.search(r"the call needs ~([\d.]+) J", message)
    assert need is not None, message
    # refused only where the joules the answered calls used and the call's hold do not fit the budget
    assert used + float(need.group(1)) > BUDGET_J * 0.99, (used, message)
    assert "spent or held by calls in flight" in message, message
    assert 0 < int(refusal.response.headers["retry-after"]) <= 3600


class StalledStore(SQLiteLedger):
    """TEST DOUBLE: a SQLite ledger whose record writes stall until ``go`` is set, as a WAL checkpoint or a slow
    disk stalls the background writer: the settlements handed over meanwhile wait behind it."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.go = threading.Event()

    def record(self, rec: LedgerRecord) -> None:
        self.go.wait()
        super().record(rec)

    def record_many(self, recs: list[LedgerRecord]) -> None:
        self.go.wait()
        super().record_many(recs)


def test_a_reservation_that_finds_no_room_settles_the_queued_holds_and_reserves_again(tmp_path: Path) -> None:
    """A local model is held at 4x its card's 1 J until it has been measured, while the decision counts the card's
    1 J: with a 6 J budget the second and third calls' decisions see room, and their 4 J holds fit only once the
    earlier calls' holds are settled to the joules they used. Those settlements wait behind a stalled record
    write; the reservation applies them and reserves again. Other traffic holding 5 J is still refused."""
    root = setup(tmp_path, policy("reject", 6, per=3600))
    config = RouterConfig.load(models_dir=root / "models", policies_dir=root / "policies", default_policy="t")
    store = StalledStore(root / "ledger.sqlite3")
    ledger = BackgroundLedger(store, journal=False)
    router = Router(config, ledger=ledger)
    try:
        for _ in range(3):
            assert router.complete(REVIEW).routing.model == "spec-a"
        store.go.set()
        assert ledger.flush() and ledger.failed_settlements == 0
        # other traffic, still running, holds 5 J of what the three calls left
        assert ledger.try_reserve("model:spec-a:3600s", 5.0, 6.0, 3600) is not None
        with pytest.raises(BudgetExhaustedError, match="spent or held by calls in flight"):
            router.complete(REVIEW)
    finally:
        store.go.set()
        router.close()


def test_refusals_and_the_writer_apply_each_queued_settlement_once(tmp_path: Path) -> None:
    """Several refusals settling what is queued while the writer thread settles too: SQLite counts a settlement
    applied twice twice, so the counter ends at what the calls used only if each is applied exactly once."""
    ledger = BackgroundLedger(SQLiteLedger(tmp_path / "ledger.sqlite3"), journal=False)
    budget, calls = "model:m:3600s", 400
    holds = [ledger.try_reserve(budget, 1.0, float(calls), 3600) for _ in range(calls)]
    assert all(h is not None for h in holds)
    start = threading.Barrier(5)
    errors: list[BaseException] = []

    def settle_half(part: list[Reservation | None]) -> None:
        start.wait()
        for hold in part:
            assert hold is not None
            ledger.settle(hold, 0.25)

    def refuse() -> None:
        start.wait()
        try:
            for _ in range(200):
                assert ledger.settle_queued()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=settle_half, args=(holds[i::2],)) for i in range(2)]
    threads += [threading.Thread(target=refuse) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert ledger.flush()
        assert ledger.settled == calls and ledger.failed_settlements == 0
        assert ledger.budget_used(budget, 3600) == pytest.approx(calls * 0.25)
    finally:
        ledger.close()
