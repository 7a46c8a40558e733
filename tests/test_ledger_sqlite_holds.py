"""SQLite budget holds (schema steps 8 and 9): a file of an earlier schema upgrades without losing a record, a
counter or a hold and then settles each reservation once; a hold nobody settled stays held until its expiry (one
reserved without ``hold_s``: until a prune drops it with its window's counter)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from forking import in_a_forked_child

from router.ledger import LedgerRecord, SQLiteLedger
from router.ledger.base import Reservation, window_start
from router.ledger.doctor import diagnose
from router.ledger.sqlite_schema import MIGRATIONS

DAY_S = 86_400
_V7_COLUMNS = [
    "ts", "request_id", "model", "tier", "reason", "input_tokens", "output_tokens", "latency_ms",
    "energy_j", "energy_source", "policy", "task", "outcome", "key_hash", "error", "attempt", "co2e_g", "record_id",
    "estimated_j", "grid_g_per_kwh", "zone",
]  # fmt: skip


def _records(n: int, now: float) -> list[LedgerRecord]:
    return [LedgerRecord(request_id=f"r{i}", model=["a", "b"][i % 2], tier="small", energy_j=1.5 + i,
                         energy_source="measured:nvml", input_tokens=i, output_tokens=2 * i, latency_ms=10.0 + i,
                         policy="p", task="chat", key_hash=f"k{i % 3}", co2e_g=0.001 * i, grid_g_per_kwh=300.0,
                         zone="PL", estimated_j=2.0 + i, ts=now - 3 * 86_400 + i * 1_000.0)
            for i in range(n)]


def _v7_file(path: Path, recs: list[LedgerRecord], budgets: list[tuple[str, float, float]]) -> None:
    """A ledger file as schema version 7 wrote it: its records (the summary trigger fired for each), and budget
    counters with no holds (a call in flight there held its joules in the counter alone)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    for step in MIGRATIONS.steps[:7]:
        for stmt in step.payload:
            conn.execute(stmt)
    conn.execute("PRAGMA user_version=7")
    insert = f"INSERT INTO records ({', '.join(_V7_COLUMNS)}) VALUES ({', '.join('?' for _ in _V7_COLUMNS)})"
    conn.executemany(insert, [tuple(getattr(r, c) for c in _V7_COLUMNS) for r in recs])
    conn.executemany("INSERT INTO budgets (budget, window_start, used_j) VALUES (?, ?, ?)", budgets)
    conn.close()


def _v8_file(path: Path, recs: list[LedgerRecord], holds: list[tuple[str, str, float, float]]) -> None:
    """A ledger file as schema version 8 wrote it: its records, and holds with no expiry (reservations of calls in
    flight, or of a process that died), whose trigger charged the counters."""
    _v7_file(path, recs, [])
    conn = sqlite3.connect(path, isolation_level=None)
    for stmt in MIGRATIONS.steps[7].payload:
        conn.execute(stmt)
    conn.execute("PRAGMA user_version=8")
    conn.executemany("INSERT INTO holds (id, budget, window_start, joules) VALUES (?, ?, ?, ?)", holds)
    conn.close()


def test_a_version_8_file_upgrades_keeping_its_holds_which_count_until_their_window_ends(tmp_path: Path) -> None:
    """Schema step 9 gives holds an expiry: the holds a version 8 file has keep theirs (none: counted until their
    window ends) and settle once as before; the holds reserved after the upgrade with ``hold_s`` stop counting
    at their expiry."""
    db = tmp_path / "v8.sqlite3"
    now = time.time()
    recs = _records(40, now)
    day = window_start(now, DAY_S)
    _v8_file(db, recs, [("in-flight", "model:a:86400s", day, 5.0), ("of-a-dead-process", "model:a:86400s", day, 6.0),
                        ("yesterday", "model:a:86400s", day - DAY_S, 7.0)])
    led = SQLiteLedger(db)
    try:
        assert led.schema_version == 9
        assert led.records() == recs, "every record, every field, as written"
        assert sorted(_holds(db)) == [("in-flight", "model:a:86400s"), ("of-a-dead-process", "model:a:86400s"),
                                      ("yesterday", "model:a:86400s")]
        assert led.budget_used("model:a:86400s", DAY_S) == pytest.approx(11.0), "the counter is kept"
        counts = led.hold_counts()
        assert (counts.unbounded, counts.unbounded_j, counts.live, counts.expired) == (3, 18.0, 0, 0)

        led.settle(Reservation("in-flight", "model:a:86400s", 5.0, day), 2.0)
        led.settle(Reservation("in-flight", "model:a:86400s", 5.0, day), 2.0)
        assert led.budget_used("model:a:86400s", DAY_S) == pytest.approx(8.0), "settled once: 2 + 6 J"

        brief = led.try_reserve("model:a:86400s", 10.0, 20.0, DAY_S, hold_s=0.2)
        assert brief is not None and led.budget_used("model:a:86400s", DAY_S) == pytest.approx(18.0)
        time.sleep(0.4)
        assert led.budget_used("model:a:86400s", DAY_S) == pytest.approx(8.0), "past its expiry: not counted"
        assert led.try_reserve("model:a:86400s", 12.0, 20.0, DAY_S) is not None, "its room given back"
        assert led.budget_used("model:a:86400s", DAY_S) == pytest.approx(20.0), "the dead process's 6 J still held"
        led.settle(brief, 3.0)  # late: counted in full, once
        led.settle(brief, 3.0)
        assert led.budget_used("model:a:86400s", DAY_S) == pytest.approx(23.0)
    finally:
        led.close()
    report = diagnose(f"sqlite:///{db}", replay=False)
    assert not report.problems, report.problems


def _holds(path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT id, budget FROM holds ORDER BY id").fetchall()


def test_a_version_7_file_upgrades_keeping_every_record_and_counter_and_settles_each_reservation_once(
        tmp_path: Path) -> None:
    """Settling a reservation twice (a retry, a journal's replay) charged its budget twice on SQLite."""
    db = tmp_path / "v7.sqlite3"
    now = time.time()
    recs = _records(60, now)
    day = window_start(now, DAY_S)
    _v7_file(db, recs, [("model:a:86400s", day, 3.0), ("model:a:86400s", day - DAY_S, 40.0)])
    led = SQLiteLedger(db)
    try:
        assert led.schema_version == led.latest_schema_version == 9
        assert led.records() == recs, "every record, every field, as written"
        totals = {t["group"]: t for t in led.totals("model")}
        assert totals["a"]["requests"] == 30 and totals["b"]["requests"] == 30
        assert totals["a"]["energy_j"] == pytest.approx(sum(r.energy_j for r in recs if r.model == "a"))
        report = diagnose(led.url, ledger=led, replay=False)
        assert not report.problems, report.problems
        assert any("schema version 9 (this router writes 9)" in f.text for f in report.findings)

        assert led.budget_used("model:a:86400s", DAY_S) == pytest.approx(3.0), "the counter is kept"
        # a reservation the previous version made has no hold: its settlement changes nothing, so its estimate
        # stays charged (as when its process dies before settling), never more
        led.settle(Reservation("made-before-the-upgrade", "model:a:86400s", 3.0, day), 1.0)
        assert led.budget_used("model:a:86400s", DAY_S) == pytest.approx(3.0)

        held = led.try_reserve("model:a:86400s", 10.0, 20.0, DAY_S)
        assert held is not None and _holds(db) == [(held.id, "model:a:86400s")]
        assert led.budget_used("model:a:86400s", DAY_S) == pytest.approx(13.0)
        assert led.try_reserve("model:a:86400s", 7.5, 20.0, DAY_S) is None, "13 + 7.5 J pass the 20 J limit"
        assert len(_holds(db)) == 1, "a refused reservation holds nothing"
        led.settle(held, 4.0)
        led.settle(held, 4.0)
        led.settle_many([(held, 9.0), (held, 9.0)])
        assert led.budget_used("model:a:86400s", DAY_S) == pytest.approx(7.0), "settled once: 3 + 4 J"
        assert _holds(db) == []
    finally:
        led.close()
    again = SQLiteLedger(db)
    assert again.records() == recs and again.budget_used("model:a:86400s", DAY_S) == pytest.approx(7.0)
    again.close()


def test_a_hold_nobody_settled_stays_held_until_a_prune_drops_it_with_its_window(tmp_path: Path) -> None:
    """What a process that dies between a call's reservation and its settlement leaves: the hold, committed with
    the counter. Another process (a journal's replay) settles it once; the holds of windows that ended go with
    their counters."""
    db = tmp_path / "l.sqlite3"
    dying = SQLiteLedger(db)
    settled_later = dying.try_reserve("model:m:86400s", 5.0, 100.0, DAY_S)
    never_settled = dying.try_reserve("model:m:86400s", 6.0, 100.0, DAY_S)
    assert settled_later is not None and never_settled is not None
    dying.close()  # committed: as after a kill -9

    led = SQLiteLedger(db)
    try:
        assert led.budget_used("model:m:86400s", DAY_S) == pytest.approx(11.0)
        led.settle_many([(settled_later, 2.0), (settled_later, 2.0)])
        assert led.budget_used("model:m:86400s", DAY_S) == pytest.approx(8.0), "the other one's 6 J still held"
        assert _holds(db) == [(never_settled.id, "model:m:86400s")]
        led.prune(time.time() + 2 * DAY_S)  # the window ended a day ago
        assert _holds(db) == []
        assert led.budget_keys(0.0) == []
        led.settle(never_settled, 1.0)  # its window is gone: nothing to settle, nothing created
        assert led.budget_keys(0.0) == []
    finally:
        led.close()


def _wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_a_child_forked_while_the_ledger_waits_to_write_works_on_connections_of_its_own(tmp_path: Path) -> None:
    """A SQLite ledger opened before the process forks (gunicorn --preload, multiprocessing's fork, Celery's prefork
    pool), forked while one of the parent's threads was writing (waiting for the file's write lock, held by
    another connection here): the child's first write waited for ever on the ledger's lock, held by a thread that
    does not exist in the child; with a lock of its own, its new connections failed every write as "database is
    locked", SQLite's copy of the parent's statement in flight blocking them. Now the fork waits for the write in
    flight, and the child writes, reserves and settles on connections of its own; the parent goes on."""
    db = tmp_path / "forked.sqlite3"
    led = SQLiteLedger(db, timeout_s=10)
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # the file's write lock, as a prune or backup in another process holds it
    writer = threading.Thread(target=led.record, args=(_record("parent"),))
    writer.start()
    _wait_until(led._lock.locked, "the parent's writer never started its write")
    threading.Timer(0.5, holder.execute, ("COMMIT",)).start()  # the other process finishes, during the fork

    def in_the_child() -> None:  # a failed assert or an exception ends the child with exit code 1
        led.record(_record("child"))
        held = led.try_reserve("model:m:86400s", 5.0, 100.0, DAY_S)
        assert held is not None
        led.settle(held, 2.0)
        led.settle(held, 2.0)
        assert led.budget_used("model:m:86400s", DAY_S) == pytest.approx(2.0)
        assert {r.request_id for r in led.records()} == {"parent", "child"}
        led.close()

    try:
        in_a_forked_child(in_the_child, "the child wrote on connections of its own", timeout_s=20)
        writer.join(30)
        assert sorted(r.request_id for r in led.records()) == ["child", "parent"]
        assert led.budget_used("model:m:86400s", DAY_S) == pytest.approx(2.0)
        assert led.integrity_problems() == []
        led.record(_record("parent, after the child"))
        assert len(led.records()) == 3
    finally:
        holder.close()
        led.close()


def _record(request_id: str) -> LedgerRecord:
    return LedgerRecord(request_id=request_id, model="m", tier="small", energy_j=1.0, energy_source="estimated:x",
                        ts=time.time())
