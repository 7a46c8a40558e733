"""SQLite ledger durability: a kill -9 loses no committed record, v1 files migrate to the current schema,
retention; the request path never waits behind another connection's write lock."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers.procs import router_serve, wait_for_record
from test_budgets import REVIEW, policy, setup

from router.batch.store import default_store_url
from router.errors import ConfigError, LedgerError
from router.ledger import LedgerRecord, SQLiteLedger, open_ledger
from router.ledger.sqlite import SCHEMA_VERSION
from router.ledger.sqlite_schema import MIGRATIONS
from router.ledger.urls import sqlite_path

CHILD = """
import sys, time
from router.ledger import LedgerRecord, SQLiteLedger
led = SQLiteLedger(sys.argv[1])
i = 0
while True:
    led.record(LedgerRecord(request_id=f"c{i}", model="smollm2-135m", tier="small", energy_j=1.0,
                            energy_source="estimated:cpu-time", input_tokens=i, ts=time.time()))
    print(f"c{i}", flush=True)  # only after record() returned: this one is committed
    i += 1
"""


def test_kill_9_loses_no_committed_record(tmp_path: Path) -> None:
    db = tmp_path / "ledger.sqlite3"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(db)], stdout=subprocess.PIPE, text=True)
    committed: list[str] = []
    assert proc.stdout is not None
    deadline = time.time() + 60
    while len(committed) < 300 and time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        committed.append(line.strip())
    os.kill(proc.pid, signal.SIGKILL)  # mid-write: the child never stops writing on its own
    # the rest through the same reader (communicate() would read the pipe beneath the lines it has buffered)
    committed += [x.strip() for x in proc.stdout.read().splitlines(keepends=True) if x.endswith("\n")]
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    assert len(committed) >= 300, f"child wrote only {len(committed)} records"
    led = SQLiteLedger(db)
    stored = {r.request_id for r in led.records()}
    missing = [c for c in committed if c not in stored]
    assert not missing, f"{len(missing)} committed records lost, e.g. {missing[:5]}"
    assert led.totals("model")[0]["requests"] == len(stored), "the summary survived the crash as well"
    led.close()


def _v1_file(path: Path, n: int) -> None:
    """A ledger file exactly as schema version 1 wrote it."""
    conn = sqlite3.connect(path, isolation_level=None)
    for stmt in MIGRATIONS.steps[0].payload:
        conn.execute(stmt)
    conn.execute("PRAGMA user_version=1")
    for i in range(n):
        conn.execute(
            "INSERT INTO records (ts, request_id, model, tier, energy_j, energy_source, outcome, input_tokens, "
            "output_tokens, latency_ms) VALUES (?, ?, ?, 'small', ?, 'estimated:cpu-time', 'ok', 5, 7, 10.0)",
            (1_700_000_000 + i * 900.0, f"old{i}", ["a", "b"][i % 2], 1.5),
        )
    conn.close()


def test_v1_file_migrates_to_current(tmp_path: Path) -> None:
    db = tmp_path / "v1.sqlite3"
    _v1_file(db, 20)
    led = SQLiteLedger(db)
    assert led.schema_version == SCHEMA_VERSION == 9
    totals = {t["group"]: t for t in led.totals("model")}
    assert totals["a"]["requests"] == 10 and totals["b"]["requests"] == 10
    assert totals["a"]["energy_j"] == pytest.approx(15.0)
    assert totals["a"]["output_tokens"] == 70, "the summary table was backfilled from the old records"
    led.record(LedgerRecord("new", "a", "small", 2.0, "estimated:cpu-time", ts=1_700_000_000 + 5.0))
    assert {t["group"]: t["requests"] for t in led.totals("model")}["a"] == 11
    led.close()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "future.sqlite3"
    SQLiteLedger(db).close()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(LedgerError, match="newer than this router knows") as info:
        SQLiteLedger(db)
    assert not info.value.retryable and "upgrade router" in str(info.value)


def test_retention_is_stored_and_applied_on_open(tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite3"
    led = SQLiteLedger(db)
    now = time.time()
    for i, age_days in enumerate([40, 20, 5, 0.1]):
        led.record(LedgerRecord(f"r{i}", "m", "small", 1.0, "estimated:cpu-time", ts=now - age_days * 86400))
    led.close()
    led = open_ledger(f"sqlite:///{db}?retention_days=30")
    assert [r.request_id for r in led.records()] == ["r1", "r2", "r3"]
    led.close()
    led = SQLiteLedger(db, retention_days=10)  # a stricter setting replaces the stored one
    assert led.retention_days == 10.0
    assert [r.request_id for r in led.records()] == ["r2", "r3"]
    led.close()
    again = SQLiteLedger(db)  # another process, no setting of its own: uses the stored one
    assert again.retention_days == 10.0
    again.set_retention_days(None)
    assert again.retention_days is None
    again.close()


def test_a_bad_retention_is_refused_before_the_file_exists_and_a_stored_one_is_ignored(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``?retention_days=nan`` used to be stored and then fail every later open of the ledger (``int(nan)`` in the
    prune), the CLI's ``retention --off`` included."""
    db = tmp_path / "r.sqlite3"
    with pytest.raises(ConfigError, match="retention_days=nan"):
        open_ledger(f"sqlite:///{db}?retention_days=nan")
    assert not db.exists()
    led = SQLiteLedger(db)
    led.record(LedgerRecord("r0", "m", "small", 1.0, "estimated:cpu-time", ts=time.time() - 400 * 86400))
    led.set_meta("retention_days", "nan")  # what an older version let through
    led.close()
    with caplog.at_level(logging.WARNING, logger="router.ledger"):
        again = SQLiteLedger(db)
    assert again.retention_days is None and [r.request_id for r in again.records()] == ["r0"]
    assert "ignoring the stored retention setting 'nan'" in caplog.text
    again.set_retention_days(30)
    assert again.apply_retention() == 1 and again.retention_days == 30.0
    again.close()


def test_iter_records_pages_through_equal_timestamps(tmp_path: Path) -> None:
    led = SQLiteLedger(tmp_path / "p.sqlite3")
    for i in range(25):
        led.record(LedgerRecord(f"r{i}", "m", "small", 1.0, "estimated:cpu-time", ts=1_700_000_000.0 + i // 10))
    assert [r.request_id for r in led.iter_records(batch=4)] == [f"r{i}" for i in range(25)]
    led.close()


def test_every_field_lands_in_its_column(tmp_path: Path) -> None:
    """The rows are built from each record's ``__dict__`` by column name: every field, all set apart from its
    default and from each other, reads back as written, through ``record`` and through ``record_many``."""
    def rec(i: int) -> LedgerRecord:
        return LedgerRecord(request_id=f"req-{i}", model=f"m{i}", tier="large", energy_j=1.5 + i,
                            energy_source="measured:x", outcome="escalated", reason=f"why {i}", input_tokens=11 + i,
                            output_tokens=22 + i, latency_ms=3.25 + i, policy="eco", task="qa", key_hash=f"k{i}",
                            error=f"e{i}", attempt=2, co2e_g=0.5 + i, ts=1000.0 + i, record_id=f"id-{i}",
                            estimated_j=7.5 + i, grid_g_per_kwh=130.5 + i, zone=f"Z{i}")  # fmt: skip

    led = SQLiteLedger(tmp_path / "l.sqlite3")
    recs = [rec(i) for i in range(5)]
    vars(recs[1])  # as the journal's encoding does: the dictionary exists before the write
    led.record(recs[0])
    led.record_many(recs[1:2])  # one statement
    led.record_many(recs[2:])  # 2 + 1 rows: two statements in one transaction
    assert led.records() == recs


@pytest.mark.parametrize("size", [1, 8, 37, 300])
def test_a_failed_batch_writes_nothing(tmp_path: Path, size: int) -> None:
    """``record_many`` is all or nothing at every size (one statement, or several in one transaction): the
    proxy's background writer relies on that to retry a failed batch record by record without duplicates."""
    led = SQLiteLedger(tmp_path / "l.sqlite3")
    good = [LedgerRecord(request_id=f"r{i}", model="m", tier="small", energy_j=1.0, energy_source="estimated:x",
                         ts=1000.0 + i) for i in range(size)]
    bad = LedgerRecord(request_id="bad", model=None, tier="small", energy_j=1.0,  # type: ignore[arg-type]
                       energy_source="estimated:x", ts=5000.0)
    with pytest.raises(LedgerError, match="incomplete") as info:
        led.record_many([*good[: size // 2], bad, *good[size // 2:]])
    assert info.value.record_rejected and isinstance(info.value.__cause__, sqlite3.IntegrityError)
    assert led.records() == []
    led.record_many(good)
    assert [r.request_id for r in led.records()] == [f"r{i}" for i in range(size)]
    assert led.summary()[0].requests == size  # the hourly summary (kept by the trigger) counts each row once


def _outcome_within(seconds: float, call: Callable[[], Any]) -> Any:
    """``call()``'s result, or the exception it raised, from a thread given ``seconds``: failing the test (not
    hanging it for the ledger's 30 s busy timeout) when the call is still waiting then."""
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(call())
        except Exception as exc:  # handed back to the test, which asserts on it
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert box, f"still waiting after {seconds} s"
    return box[0]


def test_the_request_path_does_not_wait_behind_a_held_write_lock(tmp_path: Path) -> None:
    """Another process holds the file's write lock (``router ledger prune``, ``BEGIN EXCLUSIVE``) while a writer
    (the proxy's background thread) waits for it with the default 30 s timeout: a budget read still answers (WAL:
    writers do not block readers), and a reservation fails within ``request_timeout_s`` (1 s) with the retryable
    error the proxy answers 503 for, rather than holding the event loop for 30 s or more."""
    path = tmp_path / "l.sqlite3"
    led = SQLiteLedger(path)  # timeout_s: the default 30 s
    assert led.try_reserve("b", 10.0, 100.0, 3600) is not None
    led.record(_rec_at(1))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    writer = threading.Thread(target=led.record, args=(_rec_at(2),), daemon=True)
    try:
        writer.start()  # waits for the held lock, up to 30 s
        deadline = time.time() + 10
        while not led._lock.locked() and time.time() < deadline:  # the writer is inside its wait
            time.sleep(0.01)
        assert led._lock.locked()
        assert _outcome_within(5, lambda: led.budget_used("b", 3600)) == 10.0
        assert _outcome_within(5, lambda: led.spent(since=0.0)) == 1.0
        found = _outcome_within(5, lambda: led.request_record("q1"))
        assert isinstance(found, LedgerRecord) and found.request_id == "q1"
        refused = _outcome_within(5, lambda: led.try_reserve("b", 1.0, 100.0, 3600))
        assert isinstance(refused, LedgerError) and refused.retryable, refused
        assert "another connection holds the write lock" in str(refused)
    finally:
        holder.execute("COMMIT")
        holder.close()
    writer.join(30)
    assert [r.request_id for r in led.records()] == ["q1", "q2"], "the writer's record went in once the lock went"
    assert led.try_reserve("b", 1.0, 100.0, 3600) is not None and led.budget_used("b", 3600) == 11.0
    led.close()


def test_request_timeout_comes_from_the_url_and_memory_ledgers_keep_one_database(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    led = SQLiteLedger.from_url(f"sqlite:///{path}?request_timeout_s=0.05")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        refused = _outcome_within(5, lambda: led.try_reserve("b", 1.0, 100.0, 3600))
        assert isinstance(refused, LedgerError) and refused.retryable, refused
    finally:
        holder.execute("COMMIT")
        holder.close()
    led.close()
    memory = SQLiteLedger(":memory:")  # a second connection would open a second, empty database
    memory.record(_rec_at(1))
    assert memory.try_reserve("b", 3.0, 100.0, 3600) is not None
    assert memory.budget_used("b", 3600) == 3.0 and memory.request_record("q1") is not None
    memory.close()
    with pytest.raises(LedgerError, match="closed"):
        memory.budget_used("b", 3600)
    for bad in ("timeout_s=nan", "request_timeout_s=-1", "timeout_s=1e9"):  # a lock wait in seconds, in range
        with pytest.raises(LedgerError, match="not from 0 to 86400 seconds") as err:
            SQLiteLedger.from_url(f"sqlite:///{path}?{bad}")
        assert not err.value.retryable


def test_a_misspelt_url_option_is_refused_not_dropped(tmp_path: Path) -> None:
    """docs/ledger.md lists the four options a sqlite:/// URL takes. `?durabel=1` or `?durable=on` opened a ledger
    without the fsync per record asked for (and `?retention-days=30` one that kept everything), saying nothing."""
    path = tmp_path / "l.sqlite3"
    for bad, named in (("durabel=1", "'durabel'"), ("retention-days=30&durable=1", "'retention-days'"),
                       ("durable=on", "durable=on")):
        with pytest.raises(LedgerError, match=f"{named}.*; fix: ") as err:
            open_ledger(f"sqlite:///{path}?{bad}", journal=False)
        assert not err.value.retryable
    assert not path.exists(), "refused before the file is made"
    for good, full in (("durable=yes&retention_days=30", True), ("durable=0&timeout_s=5&request_timeout_s=0.5", False)):
        led = SQLiteLedger.from_url(f"sqlite:///{path}?{good}")
        assert led._conn.execute("PRAGMA synchronous").fetchone()[0] == (2 if full else 1)  # FULL / NORMAL
        led.close()


def test_a_percent_encoded_path_names_the_same_file_as_the_path_written_out(tmp_path: Path) -> None:
    """A path copied from another tool comes URL-encoded (`with%20space`); the ledger, its journal and the batch
    store beside it made a folder named `with%20space` instead of using `with space`."""
    folder = tmp_path / "with space"
    led = open_ledger(f"sqlite:///{tmp_path}/with%20space/ledger.sqlite3", journal=True)
    led.record(_rec_at(1))
    led.close()
    assert (folder / "ledger.sqlite3").is_file() and (folder / "ledger.sqlite3.journal").is_dir()
    assert not (tmp_path / "with%20space").exists()
    assert default_store_url(f"sqlite:///{tmp_path}/with%20space/ledger.sqlite3") == \
        f"sqlite:///{folder / 'batches.sqlite3'}"
    written_out = open_ledger(f"sqlite:///{folder}/ledger.sqlite3", journal=False)  # unencoded spaces work too
    assert [r.request_id for r in written_out.records()] == ["q1"]
    written_out.close()
    literal = tmp_path / "100% done?" / "ledger.sqlite3"  # `%` and `?` in a name survive the ledger's own URL
    led = SQLiteLedger(literal)
    assert sqlite_path(led.url) == literal
    led.close()


def test_serve_answers_while_another_process_holds_the_write_lock(tmp_path: Path) -> None:
    """``router serve`` on the default SQLite ledger (30 s busy timeout) while another connection holds the
    file's write lock: the writer thread waits for it, and requests (whose routing reads a budget) and
    ``/health`` are answered meanwhile; the event loop used to wait for the writer with every budget read."""
    root = setup(tmp_path, policy("reject", 1e9, model="spec-b"))  # a budget on spec-b, read for every request
    ledger = root / "ledger.sqlite3"
    config = root / "router.yaml"
    config.write_text(f"models_dir: {root / 'models'}\npolicies_dir: {root / 'policies'}\ndefault_policy: t\n"
                      f"ledger_url: 'sqlite:///{ledger}'\nproxy: {{warm_up: false}}\n")
    body = {"model": "router", "messages": REVIEW}
    with router_serve(config, tmp_path) as base, httpx.Client(base_url=base, timeout=10) as client:
        first = client.post("/v1/chat/completions", json=body)
        assert first.status_code == 200, first.text
        wait_for_record(f"sqlite:///{ledger}", first.json()["id"], timeout=10, poll=0.1)
        holder = sqlite3.connect(ledger, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            for _ in range(3):  # the first one's record sets the writer thread waiting for the lock
                res = client.post("/v1/chat/completions", json=body)
                assert res.status_code == 200, res.text
                assert res.json()["model"] == "spec-a", res.json()
                time.sleep(0.2)  # the writer picks the record up
            assert client.get("/health").status_code == 200
        finally:
            holder.execute("COMMIT")
            holder.close()


def _rec_at(i: int) -> LedgerRecord:
    return LedgerRecord(request_id=f"q{i}", model="m", tier="small", energy_j=1.0, energy_source="estimated:x",
                        ts=1_700_000_000.0 + i)
