"""The local journal in front of a ledger: nothing acknowledged is lost to a kill -9 or an outage of the store,
replays are idempotent, dead processes' journals are replayed, budgets fail closed while the store is down."""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import httpx
import pytest
from conftest_postgres import PASSWORD, postgres_server  # noqa: F401 - the fixture
from conftest_redis import redis_server, start_redis_server  # noqa: F401 - the fixture
from servers.procs import router_serve, wait_for_record
from test_budgets import REVIEW, policy, setup, spend_early

from router import Router
from router.config import RouterConfig
from router.errors import BadRequestError, ConfigError, LedgerError
from router.ledger import (
    JournaledLedger,
    JournalSettings,
    LedgerRecord,
    Reservation,
    SQLiteLedger,
    journal_folder,
    open_ledger,
)
from router.ledger.errors import ledger_error
from router.ledger.journal import Journal, encode
from router.ledger.replay import replay_segment, segment_files
from router.proxy.ledger_writer import BackgroundLedger


def _rec(i: int, **kw: object) -> LedgerRecord:
    return LedgerRecord(request_id=f"q{i}", model="m", tier="small", energy_j=1.0, energy_source="estimated:x",
                        ts=1_700_000_000.0 + i, **kw)  # type: ignore[arg-type]  # fmt: skip


def _serve_config(root: Path, ledger: Path, replay_interval_s: float) -> Path:
    """A ``router serve`` config over ``setup``'s models and policy, a SQLite ledger that gives up on a held lock
    after 0.2 s, and its journal replayed every ``replay_interval_s``."""
    config = root / "router.yaml"
    config.write_text(f"models_dir: {root / 'models'}\npolicies_dir: {root / 'policies'}\ndefault_policy: t\n"
                      f"ledger_url: 'sqlite:///{ledger}?timeout_s=0.2'\nproxy: {{warm_up: false}}\n"
                      f"journal: {{folder: {root / 'journal'}, replay_interval_s: {replay_interval_s}}}\n")
    return config


def _journaled(tmp_path: Path, name: str = "l", **kw: object) -> JournaledLedger:
    settings = JournalSettings(folder=tmp_path / f"{name}.journal", replay_interval_s=0.2, **kw)  # type: ignore[arg-type]
    led = open_ledger(f"sqlite:///{tmp_path / f'{name}.sqlite3'}?timeout_s=0.2", journal=settings)
    assert isinstance(led, JournaledLedger)
    return led


def test_append_is_one_json_line_on_disk_before_it_returns(tmp_path: Path) -> None:
    for mode in ("always", "group", "never"):
        journal = Journal(tmp_path / mode, JournalSettings(fsync=mode))  # type: ignore[arg-type]
        rec = _rec(1)
        seg = journal.append(rec)
        lines = seg.path.read_bytes().splitlines()
        assert [json.loads(x)["record_id"] for x in lines] == [rec.record_id], mode
        assert json.loads(lines[0]) == rec.as_dict()
        journal.close()


def test_a_replay_never_takes_a_segment_its_owner_is_still_opening(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process's replay that lists the folder just after a segment is made, before its owner locks it,
    must not take it for a dead process's segment (replaying it empty and deleting it under its owner)."""
    from router.ledger.replay import claim

    real_flock = fcntl.flock
    replayed: list[Path] = []

    def flock_after_another_replay(fd: int, operation: int) -> None:  # TEST DOUBLE: a replay runs in the gap
        if not replayed:
            replayed.append(tmp_path)
            for path in segment_files(tmp_path):
                with claim(path) as held:
                    if held is not None:
                        replay_segment(path, lambda recs: None, lambda settlements: None)
                        replayed.append(path)
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock_after_another_replay)
    journal = Journal(tmp_path, JournalSettings(fsync="never"))
    monkeypatch.setattr(fcntl, "flock", real_flock)
    seg = journal.append(_rec(1))
    assert replayed == [tmp_path], replayed  # the replay found no segment to take
    assert seg.path.exists() and len(seg.path.read_bytes().splitlines()) == 1
    assert segment_files(tmp_path) == [seg.path]
    journal.close()


def test_settings_are_checked_and_folders_follow_the_store(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="journal.fsync"):
        RouterConfig.load(journal={"fsync": "sometimes"})
    with pytest.raises(ConfigError, match="speed"):
        RouterConfig.load(journal={"fsync": "group", "speed": 3})
    assert RouterConfig.load(journal={"fsync_interval_ms": 10}).journal.fsync_interval_ms == 10
    settings = JournalSettings()
    assert journal_folder(settings, f"sqlite:///{tmp_path}/a.sqlite3") == tmp_path / "a.sqlite3.journal"
    one = journal_folder(settings, "postgresql://u:secret@db.example:5432/router")
    assert "secret" not in str(one) and one == journal_folder(settings, "postgresql://u:other@db.example:5432/router")
    assert one != journal_folder(settings, "redis://db.example:6379/0")


def test_a_store_outage_loses_nothing(tmp_path: Path) -> None:
    """A writer keeps recording while another connection holds the SQLite write lock for 3 s (longer than the
    store's timeout): every call succeeds, and after the lock goes every record is in the store exactly once."""
    led = _journaled(tmp_path)
    holder = sqlite3.connect(tmp_path / "l.sqlite3", isolation_level=None)
    written: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            rec = _rec(i)
            led.record(rec)
            written.append(rec.record_id)
            i += 1
            time.sleep(0.002)

    t = threading.Thread(target=writer)
    t.start()
    time.sleep(0.3)
    holder.execute("BEGIN EXCLUSIVE")
    time.sleep(3.0)
    assert led.unavailable, "the writer noticed the outage"
    with pytest.raises(LedgerError, match="cannot be enforced"):
        led.try_reserve("b", 1.0, 10.0, 3600)  # budgets fail closed while the store is down
    for bad_call, param in ((lambda: led.try_reserve(None, 1.0, 10.0, 3600), "budget"),  # type: ignore[arg-type]
                            (lambda: led.try_reserve("b", math.nan, 10.0, 3600), "joules")):
        with pytest.raises(BadRequestError) as refused:  # the caller's mistake, not the outage
            bad_call()
        assert refused.value.param == param
    holder.execute("COMMIT")
    time.sleep(0.3)
    stop.set()
    t.join()
    deadline = time.time() + 10
    while led.unavailable and time.time() < deadline:
        time.sleep(0.1)  # the replay thread (every 0.2 s) moves the journal into the store
    led.replay()
    stored = Counter(r.record_id for r in led.records())
    assert len(written) > 200
    assert [i for i in written if stored[i] != 1] == []
    assert len(stored) == len(written)
    led.close()
    assert segment_files(tmp_path / "l.journal") == [], "replayed segments are deleted"


def test_a_forked_child_gets_its_store_back_after_an_outage(tmp_path: Path) -> None:
    """A ledger opened before the process forks (gunicorn --preload, multiprocessing's fork, Celery's prefork pool):
    a write of the child that meets an outage starts one, and once the store is back the child's own replay ends it
    and moves the record into the store, while the child runs on (a fork copies no thread: without one of its own
    the child kept refusing budgets and journaling records for good)."""
    led = _journaled(tmp_path)
    locked, lock_written = os.pipe()
    outage_seen, outage_written = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reports through its exit status and leaves without running pytest's teardown
        status = 1
        try:
            os.read(locked, 1)
            rec = _rec(1)
            led.record(rec)
            os.write(outage_written, b"1" if led.unavailable else b"0")
            deadline = time.monotonic() + 20
            while led.unavailable and time.monotonic() < deadline:
                time.sleep(0.05)
            if not led.unavailable and [r.record_id for r in led.records()] == [rec.record_id]:
                status = 0
        finally:
            os._exit(status)
    # locked after the fork, by another connection: SQLite in a child takes a lock its parent held for its own
    holder = sqlite3.connect(tmp_path / "l.sqlite3", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # the store is unavailable for writes
    os.write(lock_written, b"1")
    os.close(outage_written)
    with os.fdopen(outage_seen, "rb") as pipe:
        assert pipe.read(1) == b"1", "the child's write met the outage"
    holder.execute("COMMIT")
    holder.close()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child's store came back, its record in it"
    for fd in (locked, lock_written):
        os.close(fd)
    led.close()


def test_budgets_fail_closed_and_settlements_wait_for_the_store(tmp_path: Path) -> None:
    led = _journaled(tmp_path)
    held = led.try_reserve("b", 10.0, 100.0, 3600)
    assert held is not None
    holder = sqlite3.connect(tmp_path / "l.sqlite3", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # the store is unavailable for writes
    try:
        with pytest.raises(LedgerError, match="cannot be enforced while the store is unavailable") as info:
            led.try_reserve("b", 1.0, 100.0, 3600)
        assert info.value.retryable and info.value.http_status == 503
        led.record(_rec(1))  # still succeeds: journaled
        with pytest.raises(LedgerError, match="the store did not answer the last write") as known:
            led.try_reserve("b", 1.0, 100.0, 3600)  # refused at once now, saying why
        for err in (info.value, known.value):  # the URL, the problem and the fix, each once
            message = str(err)
            assert message.count("fix:") == 1 and message.count(str(tmp_path / "l.sqlite3")) == 1, message
            assert message.endswith("; requests for models without a budget go on"), message
        assert "; fix: wait for it to finish" in str(info.value), "the store's own fix for a held lock"
        with pytest.raises(LedgerError, match="could not read a request's record: the store did not answer"):
            led.request_record("q1")  # the Router reads it on the request path: no wait for the lock's timeout
        with pytest.raises(LedgerError, match="could not read m's recent calls: the store did not answer"):
            led.recent_calls("m", 10)  # the energy estimates' refresh: the same
        led.settle(held, 4.0)  # kept for the replay
        assert led.store is not None and led.store.budget_used("b", 3600) == 10.0, "not applied yet"
        assert led.pending() == 1, "/health's journal_pending counts records: not the settlement journaled too"
        with pytest.raises(LedgerError, match="could not read budget 'b'"):
            led.budget_used("b", 3600)  # what cannot be reserved is not read either (a read may wait too)
    finally:
        holder.execute("COMMIT")
    deadline = time.time() + 10
    while led.unavailable and time.time() < deadline:
        time.sleep(0.1)
    assert led.budget_used("b", 3600) == 4.0, "the settlement was applied once the store came back"
    assert [r.request_id for r in led.records()] == ["q1"]
    led.close()


def test_budgets_that_cannot_be_reserved_are_logged_once_per_outage(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A SQLite ledger whose write lock another connection holds serves budget reads but refuses reservations:
    every request under a `reject` budget fails closed, and the log says so once (a warning), not once per
    request, and once when reservations work again."""
    root = setup(tmp_path, policy("reject", 100.0))
    ledger = root / "ledger.sqlite3"
    config = RouterConfig.load(models_dir=root / "models", policies_dir=root / "policies", default_policy="t",
                               ledger_url=f"sqlite:///{ledger}?timeout_s=0.2",
                               journal={"folder": str(root / "journal"), "replay_interval_s": 0.2})
    with Router(config) as r:
        assert r.complete(REVIEW).routing.model == "spec-a"
        caplog.set_level(logging.INFO, logger="router")
        holder = sqlite3.connect(ledger, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # the store is unavailable for writes: no reservation can be made
        try:
            for _ in range(3):
                with pytest.raises(LedgerError, match="cannot be enforced while the store is unavailable"):
                    r.complete(REVIEW)
        finally:
            holder.execute("COMMIT")
            holder.close()
        assert r.complete(REVIEW).routing.model == "spec-a"
        assert r.complete(REVIEW).routing.model == "spec-a"
    warnings = [m.getMessage() for m in caplog.records if m.levelno >= logging.WARNING]
    assert len(warnings) == 2, warnings
    assert "budget 'model:spec-a:60s' cannot be enforced" in warnings[0], warnings
    assert "until a reservation can be made again" in warnings[0], warnings
    assert warnings[1].endswith("budgets can be reserved against again"), warnings


class StoreFailsInTheGapDouble(SQLiteLedger):
    """TEST DOUBLE: the store fails just after it answers that a budget has no room, before the Router reads what
    the budget has used (``fails="read"``: the read raises what a store that is down raises) or holds the
    ``allow_and_flag`` call over the budget (``fails="reserve"``: another connection takes the write lock)."""

    def __init__(self, path: Path, fails: str) -> None:
        super().__init__(path, timeout_s=0.2, request_timeout_s=0.2)
        self.fails = fails
        self.down = False
        self.holder: sqlite3.Connection | None = None

    def try_reserve(self, budget: str, joules: float, limit_j: float, window_s: float,
                    hold_s: float | None = None) -> Reservation | None:
        reservation = super().try_reserve(budget, joules, limit_j, window_s, hold_s)
        if reservation is None and not self.down:
            self.down = True
            if self.fails == "reserve":
                self.holder = sqlite3.connect(self.path, isolation_level=None)
                self.holder.execute("BEGIN EXCLUSIVE")
        return reservation

    def budget_used(self, budget: str, window_s: float) -> float:
        if self.down and self.fails == "read":
            raise ledger_error(self.url, "could not read a budget: the store is down (injected)", "bring it back")
        return super().budget_used(budget, window_s)


@pytest.mark.parametrize("fails", ["read", "reserve"])
def test_an_over_budget_hold_that_meets_an_outage_is_logged_once(tmp_path: Path, fails: str,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Under `allow_and_flag`, a spent budget is read (for the note) and held over its limit. When the store fails
    the hold, the request is refused as one the outage refuses (the proxy logs it at info); when it fails only the
    read, the call is still held and answered, its note saying what the budget spent could not be read. Either
    way the log says so once, a warning, however many requests follow; not an error for each."""
    root = setup(tmp_path, policy("allow_and_flag", 1.0))
    config = RouterConfig.load(models_dir=root / "models", policies_dir=root / "policies", default_policy="t",
                               ledger_url=f"sqlite:///{root / 'ledger.sqlite3'}")
    ledger = StoreFailsInTheGapDouble(root / "ledger.sqlite3", fails)
    with Router(config, ledger=ledger) as r:
        spend_early(r, "model:spec-a:60s", 1.0, 1.0, 60, need_s=20)  # spent: the next reservation has no room
        caplog.set_level(logging.INFO, logger="router")
        try:
            if fails == "reserve":
                with pytest.raises(LedgerError) as refused:
                    r.complete(REVIEW)
                assert refused.value.retryable and refused.value.outage_logged, refused.value
                logged = str(refused.value)
            else:
                answer = r.complete(REVIEW)
                assert answer.routing.model == "spec-a", answer.routing
                assert "could not be read" in answer.routing.reason and "allowed and flagged" in answer.routing.reason
                logged = "could not read a budget: the store is down (injected)"
            warnings = [m.getMessage() for m in caplog.records if m.levelno >= logging.WARNING]
            assert len(warnings) == 1 and logged in warnings[0], warnings
            for _ in range(2):  # refused while the store is down (`reserve`), or answered by spec-b (`read`)
                try:
                    r.complete(REVIEW)
                except LedgerError as exc:
                    assert exc.outage_logged, exc
        finally:
            if ledger.holder is not None:
                ledger.holder.execute("COMMIT")
                ledger.holder.close()
    warnings = [m.getMessage() for m in caplog.records if m.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings


def test_the_proxy_says_when_to_retry_a_budget_it_cannot_enforce(tmp_path: Path) -> None:
    """``router serve`` with a SQLite ledger whose write lock another connection holds: the request's model is
    under a `reject` budget, so it fails closed (503), and ``Retry-After`` is the journal's replay interval, when
    the router next checks the store (the OpenAI SDK retries a 503 and honours it). The server's log says so
    once (each refusal's own line is at info), and once when reservations work again."""
    root = setup(tmp_path, policy("reject", 100.0))
    ledger = root / "ledger.sqlite3"
    config = _serve_config(root, ledger, replay_interval_s=2.5)
    body = {"model": "router", "messages": REVIEW}
    with router_serve(config, tmp_path) as base, httpx.Client(base_url=base, timeout=20) as client:
        answer = client.post("/v1/chat/completions", json=body)
        assert answer.status_code == 200, answer.text
        wait_for_record(f"sqlite:///{ledger}", answer.json()["id"], timeout=10, poll=0.1)  # no write is pending
        holder = sqlite3.connect(ledger, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # the store is unavailable for writes: no reservation can be made
        try:
            for _ in range(3):  # every refusal while the store is unavailable, not only the first
                res = client.post("/v1/chat/completions", json=body)
                assert res.status_code == 503 and res.json()["error"]["code"] == "ledger_unavailable", res.text
                assert res.headers["retry-after"] == "3", res.headers  # 2.5 s, in whole seconds
        finally:
            holder.execute("COMMIT")
            holder.close()
        assert client.post("/v1/chat/completions", json=body).status_code == 200
    (log,) = tmp_path.glob("serve-*.log")
    lines = log.read_text().splitlines()
    refused = [line for line in lines if "cannot be enforced while the store is unavailable" in line]
    assert len(refused) == 1 and "until a reservation can be made again" in refused[0], lines
    assert len([line for line in lines if "budgets can be reserved against again" in line]) == 1, lines


def test_health_and_metrics_say_while_the_store_is_unavailable(tmp_path: Path) -> None:
    """``router serve`` keeps answering while its SQLite store is write-locked elsewhere (records wait in the
    journal), and an operator sees it: ``/health`` says ``degraded`` with the outage's start and the records
    waiting, ``/metrics`` has ``router_ledger_store_up 0``; both say ``ok`` / 1 again once the replay moved them."""
    root = setup(tmp_path, "name: t\naccuracy: {min_accuracy: 0.7}\n")
    ledger = root / "ledger.sqlite3"
    config = _serve_config(root, ledger, replay_interval_s=0.5)
    body = {"model": "router", "messages": REVIEW}

    def wait_for(client: httpx.Client, status: str, pending: int | None = None) -> dict[str, object]:
        deadline = time.time() + 20
        while (health := client.get("/health").json())["status"] != status or (
                pending is not None and health["ledger"]["journal_pending"] != pending):
            assert time.time() < deadline, health
            time.sleep(0.1)
        return health

    def gauges(client: httpx.Client) -> dict[str, float]:
        lines = client.get("/metrics").text.splitlines()
        return {line.split()[0]: float(line.split()[1]) for line in lines if line.startswith("router_ledger_")}

    with router_serve(config, tmp_path) as base, httpx.Client(base_url=base, timeout=20) as client:
        assert client.post("/v1/chat/completions", json=body).status_code == 200
        assert wait_for(client, "ok", pending=0)["ledger"] == {"store": "ok", "journal_pending": 0}
        holder = sqlite3.connect(ledger, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # the store takes no writes
        try:
            ids = [client.post("/v1/chat/completions", json=body).json()["id"] for _ in range(3)]
            health = wait_for(client, "degraded")
            ledger_state = health["ledger"]
            assert isinstance(ledger_state, dict) and ledger_state["store"] == "unavailable", health
            assert ledger_state["journal_pending"] >= 1 and ledger_state["unavailable_since"] <= time.time()
            assert gauges(client)["router_ledger_store_up"] == 0.0
        finally:
            holder.execute("COMMIT")
            holder.close()
        assert wait_for(client, "ok", pending=0)["ledger"] == {"store": "ok", "journal_pending": 0}
        assert gauges(client) == {"router_ledger_store_up": 1.0, "router_ledger_journal_pending_records": 0.0}
        for request_id in ids:
            wait_for_record(f"sqlite:///{ledger}", request_id, timeout=10, poll=0.1)


def test_feedback_while_the_store_is_unavailable_says_when_to_retry(tmp_path: Path) -> None:
    """``POST /v1/feedback`` while the SQLite store's write lock is held elsewhere: a 503 whose ``Retry-After`` is
    the journal's replay interval, as a budget's refusal says (it used to carry none)."""
    root = setup(tmp_path, "name: t\naccuracy: {min_accuracy: 0.7}\n")
    ledger = root / "ledger.sqlite3"
    config = _serve_config(root, ledger, replay_interval_s=2.5)
    with router_serve(config, tmp_path) as base, httpx.Client(base_url=base, timeout=20) as client:
        answer = client.post("/v1/chat/completions", json={"model": "router", "messages": REVIEW})
        assert answer.status_code == 200, answer.text
        wait_for_record(f"sqlite:///{ledger}", answer.json()["id"], timeout=10, poll=0.1)
        holder = sqlite3.connect(ledger, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # the store is unavailable for writes: the feedback cannot be stored
        try:
            for _ in range(2):  # every refusal while the store is unavailable, not only the first
                res = client.post("/v1/feedback", json={"id": answer.json()["id"], "score": 1.0})
                assert res.status_code == 503 and res.json()["error"]["code"] == "ledger_unavailable", res.text
                assert res.headers.get("retry-after") == "3", res.headers  # 2.5 s, in whole seconds
        finally:
            holder.execute("COMMIT")
            holder.close()


def test_a_store_down_at_open_is_journaled_a_broken_one_is_refused(tmp_path: Path) -> None:
    server = start_redis_server(tmp_path)
    server.stop()
    url = f"{server.url}/0?prefix=late:&socket_timeout=1&socket_connect_timeout=1"
    led = open_ledger(url, journal=JournalSettings(folder=tmp_path / "j", replay_interval_s=0.2))
    assert isinstance(led, JournaledLedger) and led.unavailable
    with pytest.raises(LedgerError, match="the store has been unavailable since the ledger opened") as info:
        led.try_reserve("b", 1.0, 100.0, 3600)  # it used to blame a write, and none had been tried
    assert "last write" not in str(info.value)
    led.record(_rec(1))
    with pytest.raises(LedgerError, match="unavailable") as down:
        led.records()
    message = str(down.value)  # the URL, the store's problem and one fix, each once
    assert message.count("fix:") == 1 and message.count("redis://") == 1, message
    assert "records are kept in the journal at" in message, message
    server.start()
    try:
        deadline = time.time() + 10
        while led.unavailable and time.time() < deadline:
            time.sleep(0.1)
        assert [r.request_id for r in led.records()] == ["q1"]
        led.clear()  # type: ignore[attr-defined]
        led.close()
    finally:
        server.stop()
    corrupt = tmp_path / "corrupt.sqlite3"
    corrupt.write_bytes(b"this is not a database" * 100)
    with pytest.raises(LedgerError, match="corrupt"):
        open_ledger(f"sqlite:///{corrupt}", journal=True)


@pytest.mark.postgres
def test_the_store_is_back_only_once_it_takes_a_write_and_its_password_is_never_logged(
    postgres_server, tmp_path: Path, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    """A replay while PostgreSQL is down, with nothing it could write yet (the one journaled segment still has a
    record on its way, as between the proxy writer's two halves): the store is not declared back. Once it is,
    the log says so without the URL's password."""
    led = open_ledger(f"{postgres_server.url}?schema=back&connect_timeout=2",
                      journal=JournalSettings(folder=tmp_path / "j", replay_interval_s=3600))
    assert isinstance(led, JournaledLedger)
    caplog.set_level(logging.WARNING, logger="router.ledger")
    waiting = _rec(1)
    postgres_server.stop()
    try:
        seg = led.append([waiting])
        led.record(_rec(2))  # the store is down: journaled, and the outage starts
        assert led.unavailable
        led.replay()
        assert led.unavailable, "still down"
        assert "is back after" not in caplog.text
    finally:
        postgres_server.start()
    led.deliver([waiting], seg)
    led.replay()
    assert not led.unavailable
    assert sorted(r.request_id for r in led.records()) == ["q1", "q2"]
    back = [r.getMessage() for r in caplog.records if "is back after" in r.getMessage()]
    assert len(back) == 1 and ":***@" in back[0], back
    assert PASSWORD not in caplog.text
    led.close()


def test_dead_processes_journals_are_replayed_live_ones_are_not(tmp_path: Path) -> None:
    folder = tmp_path / "l.journal"
    folder.mkdir()
    dead = folder / "j-otherhost-999999-1000.jsonl"
    dead.write_bytes(b"".join(encode(_rec(i)) for i in range(3)))
    live = folder / "j-otherhost-999998-1000.jsonl"
    live.write_bytes(encode(_rec(10)))
    holder = os.open(live, os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)  # as a running process holds its own segment
    led = _journaled(tmp_path)
    assert sorted(r.request_id for r in led.records()) == ["q0", "q1", "q2"], "replayed at open"
    assert not dead.exists() and live.exists()
    os.close(holder)  # that process died
    led.replay()
    assert sorted(r.request_id for r in led.records()) == ["q0", "q1", "q10", "q2"]
    led.close()


def test_a_crash_during_replay_neither_loses_nor_duplicates(tmp_path: Path) -> None:
    """The replay dies after writing part of a segment: the file stays, the next replay writes all of it again
    and the store keeps each record once. A torn last line (power cut mid-append) is set aside."""
    store = SQLiteLedger(tmp_path / "s.sqlite3")
    seg = tmp_path / "j-h-1-1.jsonl"
    recs = [_rec(i) for i in range(1200)]
    seg.write_bytes(b"".join(map(encode, recs)) + b'{"request_id": "torn", "mod')
    calls = 0

    def crashing(batch: list[LedgerRecord]) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise LedgerError("simulated crash")
        store.record_many(batch)

    with pytest.raises(LedgerError):
        replay_segment(seg, crashing, store.settle_many)
    assert seg.exists() and 0 < len(store.records()) < 1200
    n, aside = replay_segment(seg, store.record_many, store.settle_many)
    assert (n, aside) == (1200, 1) and not seg.exists()
    assert sorted(r.record_id for r in store.records()) == sorted(r.record_id for r in recs)
    assert store.totals()[0]["requests"] == 1200
    assert b"torn" in (tmp_path / "rejected.jsonl").read_bytes()
    assert (tmp_path / "rejected.jsonl").stat().st_mode & 0o777 == 0o600, "private, as the segment it came from"
    store.close()


CHILD = """
import sys, time
from router.ledger import JournalSettings, LedgerRecord, open_ledger, open_store
from router.proxy.ledger_writer import BackgroundLedger
url, folder, mode = sys.argv[1:4]
settings = JournalSettings(folder=folder, fsync="group", replay_interval_s=3600)
if mode == "background":  # the proxy's default writer, pausing long so records queue up
    led = BackgroundLedger(open_store(url), interval_s=0.3, journal=settings)
else:
    led = open_ledger(url, journal=settings)
i = 0
while True:
    rec = LedgerRecord(request_id=f"c{i}", model="m", tier="small", energy_j=1.0, energy_source="e:x",
                       ts=time.time())
    led.record(rec)
    print(rec.record_id, flush=True)  # only after record() returned: acknowledged
    i += 1
"""


@pytest.mark.parametrize("mode", ["journaled", "background"])
def test_kill_9_loses_no_acknowledged_record(tmp_path: Path, mode: str) -> None:
    url = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    folder = tmp_path / "journal"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, url, str(folder), mode], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    acked: list[str] = []
    deadline = time.time() + 60
    while len(acked) < 1500 and time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        acked.append(line.strip())
    os.kill(proc.pid, signal.SIGKILL)
    # the rest through the same reader (communicate() would read the pipe beneath the lines it has buffered);
    # a line counts once its newline is there: the child printed it whole, after record() returned
    acked += [line for line in proc.stdout.read().splitlines(keepends=True) if line.endswith("\n")]
    acked = [a.strip() for a in acked]
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL and len(acked) >= 1500
    before = {r.record_id for r in SQLiteLedger(tmp_path / "l.sqlite3").records()}
    if mode == "background":
        assert set(acked) - before, "some acknowledged records were only in the journal when it was killed"
    led = open_ledger(url, journal=JournalSettings(folder=folder))  # replays the dead process's journal at open
    stored = Counter(r.record_id for r in led.records())
    assert [a for a in acked if stored[a] != 1] == [], "every acknowledged record is stored exactly once"
    assert led.totals()[0]["requests"] == len(stored)
    led.close()
    assert segment_files(folder) == []


# The disk fills part-way through an append (a real limit, RLIMIT_FSIZE, in a process of its own), then space is
# freed and the next record is appended.
_DISK_FILLS_MID_APPEND = """
import resource, signal, sys
from router.config import JournalSettings
from router.errors import LedgerError
from router.ledger import LedgerRecord
from router.ledger.journal import Journal
journal = Journal(sys.argv[1], JournalSettings(fsync=sys.argv[2]))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing us
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))
try:
    journal.append_many([LedgerRecord(f"unjournaled-{i}", "m", "small", 1.0, "e:x") for i in range(10)])
    raise SystemExit("the append should have failed")
except LedgerError as exc:
    assert "free space on its disk" in str(exc), exc
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
journal.append(LedgerRecord("after", "m", "small", 1.0, "e:x"))  # acknowledged: it is in the journal
"""


@pytest.mark.parametrize("fsync", ["never", "always"])
def test_a_record_appended_after_the_disk_filled_mid_append_is_replayed(tmp_path: Path, fsync: str) -> None:
    """An append that failed part-way left part of a line at the end of the segment; the next record appended once
    space was freed was glued to it, and the replay set that acknowledged record aside in ``rejected.jsonl``
    instead of writing it. The torn part is now cut off: the record replays, and nothing is set aside (the
    failed append's records were never acknowledged as journaled: their caller wrote them to the store)."""
    folder = tmp_path / "journal"
    proc = subprocess.run([sys.executable, "-c", _DISK_FILLS_MID_APPEND, str(folder), fsync], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    store = SQLiteLedger(tmp_path / "l.sqlite3")
    (segment,) = segment_files(folder)
    assert replay_segment(segment, store.record_many, store.settle_many) == (1, 0)
    assert [r.request_id for r in store.records()] == ["after"]
    assert not (folder / "rejected.jsonl").exists()
    store.close()


def test_a_settlement_the_store_refuses_does_not_keep_the_others_of_its_group_from_the_store(tmp_path: Path) -> None:
    """The writer applies the settlements queued together one journal segment at a time: one the store refuses for
    good (an error that is not an outage) is logged and counted as failed, and those of the next segment are still
    applied, and both segments are done with (deleted at the next replay, nothing left to replay)."""

    class RefusesPoisonFault(SQLiteLedger):  # fault injection: the store refuses settlements of one budget for good
        def settle_many(self, settlements: list[tuple[Reservation, float]]) -> None:
            if any(r.budget == "poison" for r, _ in settlements):
                raise ledger_error(self.url, "budget 'poison' is refused", "none", retryable=False)
            super().settle_many(settlements)

    led = BackgroundLedger(RefusesPoisonFault(tmp_path / "l.sqlite3"), interval_s=0.01)
    assert led.journaled is not None
    poison, kept = led.try_reserve("poison", 5.0, 100.0, 3600), led.try_reserve("b", 10.0, 100.0, 3600)
    assert poison is not None and kept is not None
    with led._settle_lock:  # the writer waits: both settlements are applied in one group
        led.settle(poison, 1.0)
        led.journaled.journal.rotate(force=True)  # the next one goes to a segment of its own
        led.settle(kept, 4.0)
    assert led.flush(5)
    assert led.budget_used("b", 3600) == 4.0 and led.failed_settlements == 1 and led.settled == 1
    led.journaled.replay()
    assert led.journaled.journal.sealed_ready() == [] and led.journaled.pending() == 0
    led.close()


def test_background_writer_journals_before_it_acknowledges(tmp_path: Path) -> None:
    inner = SQLiteLedger(tmp_path / "l.sqlite3")
    led = BackgroundLedger(inner, interval_s=0.05)
    assert led.journaled is not None and led.journaled.journal.folder == tmp_path / "l.sqlite3.journal"
    rec = _rec(1)
    led.record(rec)
    on_disk = b"".join(p.read_bytes() for p in segment_files(led.journaled.journal.folder))
    assert rec.record_id.encode() in on_disk
    assert led.flush(5) and [r.record_id for r in led.records()] == [rec.record_id]
    led.close()
    assert segment_files(tmp_path / "l.sqlite3.journal") == []


def test_records_made_on_the_serving_loop_are_journaled_together_before_any_answer_leaves(tmp_path: Path) -> None:
    """`router serve`'s grouping (BackgroundLedger.defer_journal): the records of one loop iteration go to the
    journal in one write, scheduled on the loop and forced by the protocol's before-send hook; records made on
    other threads are journaled at once, as before."""
    import asyncio

    from router.proxy.server import BEFORE_SEND, _OneWrite

    led = BackgroundLedger(SQLiteLedger(tmp_path / "l.sqlite3"), interval_s=0.05)
    assert led.journaled is not None
    folder = led.journaled.journal.folder

    def journaled() -> list[str]:
        return [json.loads(line)["record_id"] for p in segment_files(folder) for line in p.read_bytes().splitlines()]

    class Transport:  # TEST DOUBLE: records what the protocol sends, and what the journal held at that moment
        def __init__(self) -> None:
            self.sent: list[tuple[bytes, list[str]]] = []

        def write(self, data: bytes) -> None:
            self.sent.append((data, journaled()))

        def is_closing(self) -> bool:
            return False

        def close(self) -> None:
            pass

    last = _rec(5)

    async def serve() -> None:
        led.defer_journal(True)
        BEFORE_SEND.append(led.journal_pending)
        try:
            loop = asyncio.get_running_loop()
            a, b = _rec(1), _rec(2)
            led.record(a)
            led.record(b)
            assert journaled() == []  # not yet: grouped for this iteration
            transport = Transport()
            out = _OneWrite(transport, loop)  # type: ignore[arg-type]
            out.write(b"answer")
            out.close()  # flushes now: the hook runs first
            assert transport.sent == [(b"answer", [a.record_id, b.record_id])]
            c = _rec(3)
            led.record(c)
            await asyncio.sleep(0)  # the loop's next iteration journals it without any answer being sent
            await asyncio.sleep(0)
            assert journaled()[-1] == c.record_id
            other = _rec(4)
            await asyncio.to_thread(led.record, other)  # another thread: journaled before record returns
            assert journaled()[-1] == other.record_id
            led.record(last)
        finally:
            BEFORE_SEND.remove(led.journal_pending)
            led.defer_journal(False)  # the pending one is journaled now

    asyncio.run(serve())
    assert journaled()[-1] == last.record_id
    assert led.flush(5)
    assert sorted(r.request_id for r in led.records()) == ["q1", "q2", "q3", "q4", "q5"]
    led.close()


@pytest.mark.parametrize("url", [":memory:", "sqlite:///:memory:"])
def test_an_in_memory_ledger_gets_no_journal_folder(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A `:memory:` ledger's records end with its process: a journal beside it made `./:memory:.journal` in the
    working directory, whose records the next process would replay into its own fresh database."""
    from router.proxy.ledger_writer import BackgroundLedger

    monkeypatch.chdir(tmp_path)
    ledger = open_ledger(url, journal=True)
    background = BackgroundLedger(SQLiteLedger(":memory:"))
    try:
        assert not isinstance(ledger, JournaledLedger) and background.journaled is None
        record = _rec(0)
        background.record(record)
        background.flush()
        assert [r.record_id for r in background.records()] == [record.record_id]
    finally:
        background.close()
        ledger.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("url", ["sqlite:///~/router data/ledger.sqlite3", "~/router data/ledger.sqlite3"])
def test_a_ledger_url_under_home_is_in_the_home_folder(url: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """`ledger_url: sqlite:///~/...` (YAML, a service's environment, a quoted option: no shell expands it) made a
    folder named `~` in the working directory, with the ledger and its journal inside, where a command run from
    anywhere else found no ledger; `~` is the home folder, as in every other path a config names."""
    from router.batch.store import default_store_url

    home, started_in, elsewhere = tmp_path / "home", tmp_path / "started in", tmp_path / "elsewhere"
    for folder in (home, started_in, elsewhere):
        folder.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(started_in)
    ledger = open_ledger(url, journal=True)
    record = _rec(0)
    try:
        assert isinstance(ledger, JournaledLedger)
        ledger.record(record)
    finally:
        ledger.close()
    assert list(started_in.iterdir()) == []
    assert sorted(p.name for p in (home / "router data").iterdir()) == ["ledger.sqlite3", "ledger.sqlite3.journal"]
    assert default_store_url(url) == f"sqlite:///{home / 'router data' / 'batches.sqlite3'}"
    monkeypatch.chdir(elsewhere)
    reread = open_ledger(url)
    try:
        assert [r.record_id for r in reread.records()] == [record.record_id]
    finally:
        reread.close()


def test_a_journal_folder_names_its_store_and_another_store_is_refused_it(tmp_path: Path) -> None:
    """Two ledgers given one journal folder (two configs with the same journal.folder) replayed each other's
    records: B's open took A's dead process's record into B. The folder's STORE note is checked at open: B is
    refused with an error naming both stores and the folder, `router ledger doctor` says so and replays nothing
    into B, and A (under any spelling of its URL) replays its own. A folder without a note gets one."""
    from cli_helpers import router_main

    shared = tmp_path / "shared"
    url_a, url_b = f"sqlite:///{tmp_path / 'a.sqlite3'}", f"sqlite:///{tmp_path / 'b.sqlite3'}"
    left_by_a = Journal(shared, url=url_a)  # a process of A that stopped before its record reached A
    left_by_a.append(_rec(1))
    left_by_a.close()
    assert (shared / "STORE").read_text() == url_a + "\n"

    with pytest.raises(LedgerError) as refused:
        open_ledger(url_b, journal=JournalSettings(folder=shared))
    said = str(refused.value)
    assert all(part in said for part in (url_b, url_a, str(shared), "belongs to another store")), said
    assert not refused.value.retryable
    code, out = router_main("ledger", "doctor", "--ledger", url_b, "--journal", str(shared))
    assert code == 1 and "belongs to another store" in out and "Traceback" not in out, out
    assert "1 file(s) of stopped processes hold 1 records not yet replayed" in out, out
    with closing(SQLiteLedger(tmp_path / "b.sqlite3")) as store_b:
        assert store_b.records() == [], "nothing of A's reached B"

    (tmp_path / "linked").symlink_to(tmp_path)  # A through a link to its folder: the same file, the same store
    with closing(open_ledger(f"sqlite:///{tmp_path / 'linked' / 'a.sqlite3'}?timeout_s=5",
                             journal=JournalSettings(folder=shared))) as led_a:
        assert [r.request_id for r in led_a.records()] == ["q1"], "A's own record, replayed into A"

    (shared / "STORE").unlink()  # a folder of a release that wrote no note
    with closing(open_ledger(url_b, journal=JournalSettings(folder=shared))):
        assert (shared / "STORE").read_text() == url_b + "\n"
    assert not list(shared.glob(".STORE*")), "no half-made note left behind"


def test_a_sqlite_ledger_moved_with_its_journal_keeps_it(tmp_path: Path) -> None:
    """A SQLite file and its journal beside it (``<file>.journal``, the default), moved together (a restored
    backup, a volume mounted at another path): the note names the file's old path, yet the folder is the file's by
    its name, so the ledger opens, replays what waited there, and the note names the new path."""
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    left = Journal(old / "l.sqlite3.journal", url=f"sqlite:///{old / 'l.sqlite3'}")  # a stopped process's record
    left.append(_rec(1))
    left.close()
    SQLiteLedger(old / "l.sqlite3").close()
    old.rename(new)
    with closing(open_ledger(f"sqlite:///{new / 'l.sqlite3'}", journal=True)) as moved:
        assert [r.request_id for r in moved.records()] == ["q1"]
    assert (new / "l.sqlite3.journal" / "STORE").read_text() == f"sqlite:///{new / 'l.sqlite3'}\n"
    # another file given that folder by name is still refused it
    with pytest.raises(LedgerError, match="belongs to another store"):
        open_ledger(f"sqlite:///{new / 'other.sqlite3'}", journal=JournalSettings(folder=new / "l.sqlite3.journal"))


@pytest.mark.parametrize(("a", "b", "same"), [
    ("redis://h:6379/0", "rediss://:pw@H/0?socket_timeout=3&prefix=router:", True),
    ("redis://h/0", "redis://h/?db=0", True),
    ("redis://h/0", "redis://h/1", False),
    ("redis://h/0", "redis://h/0?prefix=other:", False),
    ("redis://h/0", "redis://h:6380/0", False),
    ("postgresql://u:secret@h/db?pool=2&connect_timeout=9", "postgres://v@h:5432/db?password=***", True),
    ("postgresql://u@h/db", "postgresql://u@h/db?schema=other", False),
    ("postgresql://u@h/db", "postgresql://u@h/db2", False),
])
def test_store_urls_that_name_one_store_share_its_journal(a: str, b: str, same: bool) -> None:
    """The STORE note is compared by the store a URL names, not by its spelling: timeouts, pool size, TLS, user
    and password may change without a journal becoming another store's."""
    from router.ledger.journal_note import store_identity

    assert (store_identity(a) == store_identity(b)) is same


def test_a_segment_rolls_over_at_segment_bytes_during_an_outage(tmp_path: Path) -> None:
    """Segments rolled over only in the replay, which stops before rotating while the store is down: an outage
    grew one segment without bound (744 KB of 64 KiB here; a replay reads a segment whole into memory). An append
    now rolls over before it would take a segment past ``segment_bytes``, and every record is replayed after."""
    limit = 64 * 1024
    led = _journaled(tmp_path, segment_bytes=limit, fsync="group")
    holder = sqlite3.connect(tmp_path / "l.sqlite3", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # the store is down for the whole burst
    for i in range(2000):
        led.record(_rec(i))
    assert led.unavailable
    sizes = [p.stat().st_size for p in segment_files(tmp_path / "l.journal")]
    assert len(sizes) > 5 and max(sizes) <= limit, sizes
    holder.execute("COMMIT")
    led.replay()
    assert len(led.records()) == 2000
    led.close()
    assert segment_files(tmp_path / "l.journal") == []


# A ledger that is running when a journal file it may not read turns up (its mode taken away here): the replay
# thread says so once and goes on (it raised a PermissionError every replay, and close() raised it too).
_UNREADABLE_WHILE_RUNNING = """
import sys, time
from pathlib import Path
from router.ledger import JournalSettings, LedgerRecord, open_ledger
from router.ledger.journal import encode
url, folder = sys.argv[1], Path(sys.argv[2])
led = open_ledger(url, journal=JournalSettings(folder=folder, replay_interval_s=0.1))
unreadable = folder / "j-otherhost-999999-1000.jsonl"
unreadable.write_bytes(encode(LedgerRecord("q1", "m", "small", 1.0, "measured")))
unreadable.chmod(0)
time.sleep(0.6)
led.record(LedgerRecord("q2", "m", "small", 1.0, "measured"))
print("unavailable" if led.unavailable else "available", *[r.request_id for r in led.records()])
led.close()
"""


@contextmanager
def _as_another_user(tmp_path: Path) -> Iterator[tuple[list[str], Path]]:
    """``(prefix, folder)``: the command prefix that runs a process as a user other than the owner of the files the
    test makes in ``folder``. As root (who reads and writes any file) that is ``nobody`` through setpriv, in a folder
    of its own (pytest's are closed to other users), removed afterwards; as anyone else no prefix, in ``tmp_path``
    (the test takes its permissions away instead)."""
    if os.geteuid() != 0:
        yield [], tmp_path
        return
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv to run the router as another user")
    root = Path(tempfile.mkdtemp())
    try:
        yield ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"], root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_journal_file_another_user_owns_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    """A segment left by a router run as another user (root, say), unreadable to this one, raised a raw
    PermissionError from the replay at open: a traceback from the library and `router serve`, and `router ledger
    doctor` said only "Permission denied". Now the library raises a LedgerError naming the file, its owner and what
    to do, `router serve` exits 2 with it, the doctor reports it (exit 1), a running ledger logs it once, and the
    file stays for its owner."""
    with _as_another_user(tmp_path) as (as_other, root):
        setup(root, policy(REVIEW, 100.0))
        config = _serve_config(root, root / "l.sqlite3", 1.0)
        url = f"sqlite:///{root / 'l.sqlite3'}"
        left = Journal(root / "journal", url=url)  # a stopped router's, with a record not yet in the store
        left.append(_rec(1))
        left.close()
        SQLiteLedger(root / "l.sqlite3").close()
        for path in (root, root / "journal", root / "l.sqlite3"):
            path.chmod(0o777 if path.is_dir() else 0o666)
        (segment,) = segment_files(root / "journal")
        segment.chmod(0)
        router_bin = shutil.which("router") or str(Path(sys.executable).parent / "router")

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([*as_other, *args], capture_output=True, text=True, timeout=120)

        opened = run(sys.executable, "-c", "import sys\nfrom router.errors import LedgerError\n"
                     "from router.ledger import JournalSettings, open_ledger\ntry:\n"
                     f"    open_ledger({url!r}, journal=JournalSettings(folder={str(root / 'journal')!r}))\n"
                     "except LedgerError as exc:\n    print(exc)\n    sys.exit(3)")
        assert opened.returncode == 3, opened.stdout + opened.stderr
        assert f"cannot replay the journal file {segment}" in opened.stdout and "fix: run the router as" in \
            opened.stdout, opened.stdout
        served = run(router_bin, "serve", "--config", str(config), "--port", "0")
        assert served.returncode == 2 and "Traceback" not in served.stderr, served.stderr
        assert f"cannot replay the journal file {segment}" in served.stderr, served.stderr
        doctor = run(router_bin, "ledger", "doctor", "--ledger", url, "--journal", str(root / "journal"))
        assert doctor.returncode == 1 and "Traceback" not in doctor.stdout + doctor.stderr, doctor.stderr
        assert f"cannot replay the journal file {segment}" in doctor.stdout, doctor.stdout
        assert segment.exists(), "the file stays for its owner"
        later = run(sys.executable, "-c", _UNREADABLE_WHILE_RUNNING, f"sqlite:///{root / 'running.sqlite3'}",
                    str(root / "running.journal"))
        assert later.returncode == 0 and "Traceback" not in later.stderr, later.stderr
        assert later.stderr.count("cannot replay the journal file") == 1, later.stderr
        assert later.stdout.split() == ["available", "q2"], later.stdout
        segment.chmod(0o600)
        with closing(open_ledger(url, journal=JournalSettings(folder=root / "journal"))) as led:
            assert [r.request_id for r in led.records()] == ["q1"], "replayed by a user who may read it"


# A running ledger whose store refuses a record (a NaN from a broken meter) while the folder's rejected.jsonl is
# another user's: its replay, every 0.1 s, cannot set the record aside; replay() and close() must go on regardless.
_REJECTED_UNWRITABLE = """
import math, sys, time
from pathlib import Path
from router.ledger import JournalSettings, LedgerRecord, open_ledger
url, folder = sys.argv[1], Path(sys.argv[2])
led = open_ledger(url, journal=JournalSettings(folder=folder, replay_interval_s=0.1))
led.record(LedgerRecord("refused", "m", "small", math.nan, "measured"))
led.record(LedgerRecord("stored", "m", "small", 1.0, "measured"))
time.sleep(0.6)
result = led.replay()
print(len(result.unreadable), *[r.request_id for r in led.records()])
led.close()
"""


def test_a_rejected_file_another_user_owns_is_a_clear_error_said_once(tmp_path: Path) -> None:
    """This process's own segment holds a record the store refuses, and the folder's rejected.jsonl, where such
    records are set aside, belongs to another user (a router once run as root): the replay raised a raw
    PermissionError, so the replay thread logged a traceback every interval, ``replay()`` and ``close()`` raised it
    (close leaving the store open). Now the replay says once, as a LedgerError naming the file, its owner and what
    to do, that it cannot set the record aside; the segment stays, the next open refuses with the same error, and a
    user who may write the file replays it."""
    with _as_another_user(tmp_path) as (as_other, root):
        folder = root / "journal"
        folder.mkdir()
        for path in (root, folder):
            path.chmod(0o777)
        rejected = folder / "rejected.jsonl"
        rejected.write_bytes(b"")
        rejected.chmod(0o600 if as_other else 0)  # root's own, or this user's with its permissions taken away
        url = f"sqlite:///{root / 'l.sqlite3'}"
        ran = subprocess.run([*as_other, sys.executable, "-c", _REJECTED_UNWRITABLE, url, str(folder)],
                             capture_output=True, text=True, timeout=120)
        assert ran.returncode == 0 and "PermissionError" not in ran.stderr, ran.stderr
        assert "ledger journal replay failed" not in ran.stderr, ran.stderr
        said = f"cannot set aside a record the store refuses in {rejected} (Permission denied"
        assert ran.stderr.count(said) == 1, ran.stderr
        assert "fix: " in ran.stderr and "set aside a record the store refuses (" not in ran.stderr, ran.stderr
        assert ran.stdout.split() == ["1", "stored"], ran.stdout
        (segment,) = segment_files(folder)  # kept for the refused record, which is nowhere else
        opened = subprocess.run([*as_other, sys.executable, "-c", "import sys\nfrom router.errors import LedgerError\n"
                                 "from router.ledger import JournalSettings, open_ledger\ntry:\n"
                                 f"    open_ledger({url!r}, journal=JournalSettings(folder={str(folder)!r}))\n"
                                 "except LedgerError as exc:\n    print(exc)\n    sys.exit(3)"],
                                capture_output=True, text=True, timeout=120)
        assert opened.returncode == 3 and said in opened.stdout, opened.stdout + opened.stderr
        rejected.chmod(0o600)
        with closing(open_ledger(url, journal=JournalSettings(folder=folder))) as led:
            assert [r.request_id for r in led.records()] == ["stored"]
        assert b'"refused"' in rejected.read_bytes() and not segment.exists(), "set aside by a user who may"


def test_a_segment_that_cannot_roll_over_is_appended_to_and_said_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Past ``segment_bytes`` with no new segment to be had (a full disk, too many open files), appends go on in the
    segment they have, and the log says so once per replay interval, not on every append."""
    journal = Journal(tmp_path / "j", JournalSettings(segment_bytes=64 * 1024, replay_interval_s=3600),
                      url=f"sqlite:///{tmp_path / 'l.sqlite3'}")

    def no_segment_fault() -> None:  # FAULT INJECTION: the file system refuses a new file
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal, "_open_segment", no_segment_fault)
    with caplog.at_level(logging.WARNING, logger="router.ledger"):
        for i in range(1000):
            journal.append(_rec(i))
    (segment,) = segment_files(tmp_path / "j")
    assert segment.stat().st_size > 64 * 1024, "nothing appended was refused"
    said = [r for r in caplog.records if "start a journal segment" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in said]
    monkeypatch.undo()
    journal.rotate()  # the replay's rotation tries again, and the next append has a segment of its own
    journal.append(_rec(1000))
    assert len(segment_files(tmp_path / "j")) == 2
    journal.close()


def test_a_store_url_spelled_anew_replays_the_journal_of_its_old_spelling(
    redis_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """Default journal folders are named after the whole URL: a router restarted with a timeout added to its Redis
    URL journaled into a new folder, and the record a killed process had acknowledged stayed in the old one, which
    nothing replayed (`router ledger doctor` said "no problems"). The store's other default folders (their STORE
    notes name it) are replayed now, by the ledger and by the doctor."""
    from cli_helpers import router_main

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    base = f"{redis_server}/5?prefix=spellings-{os.getpid()}-{time.time_ns()}:"
    old, new, doctor_url = base, f"{base}&socket_timeout=5", f"{base}&socket_connect_timeout=3"

    def left_in_the_journal_of(url: str, rec: LedgerRecord) -> None:  # by a process that stopped before its write
        journal = Journal(journal_folder(JournalSettings(), url), url=url)
        journal.append(rec)
        journal.close()

    left_in_the_journal_of(old, _rec(1))
    with closing(open_ledger(new, journal=True)) as led:
        assert journal_folder(JournalSettings(), new) != journal_folder(JournalSettings(), old)
        assert [r.request_id for r in led.records()] == ["q1"]
    left_in_the_journal_of(old, _rec(2))
    code, out = router_main("ledger", "doctor", "--ledger", doctor_url)
    assert code == 0 and "replayed 1 journaled records" in out, out
    with closing(open_ledger(doctor_url)) as led:
        assert sorted(r.request_id for r in led.records()) == ["q1", "q2"]
    other_store = f"{redis_server}/5?prefix=another-{os.getpid()}:"
    left_in_the_journal_of(other_store, _rec(3))
    with closing(open_ledger(new, journal=True)) as led:
        assert "q3" not in {r.request_id for r in led.records()}, "another store's journal is left alone"
