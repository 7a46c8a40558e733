"""A worker killed (``kill -9``, the OOM killer) while its calls were in flight leaves their budget holds in the
shared Redis or PostgreSQL ledger. They held the budget until its window ended (a day for ``per: day``), so every
worker refused with 429 "spent or held by calls in flight" long after the crash; a hold now expires at its call's
deadline plus a margin, and an expired hold no longer counts. A settlement that comes after the expiry still counts
what the call used (in full: the hold's joules were given back), so no figure is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from conftest_postgres import PostgresServer, postgres_server  # noqa: F401 - the fixture
from conftest_redis import redis_server  # noqa: F401 - the fixture

from router.ledger import open_ledger

DAY_S = 86_400.0
LIMIT_J = 100.0
HOLD_S = 2.0

# a worker that holds 80 J of the day's 100 J for calls of a 1 s deadline, says so, and waits to be killed
_WORKER = """
import sys, time
from router.ledger import open_ledger
ledger = open_ledger(sys.argv[1])
for _ in range(4):
    assert ledger.try_reserve("model:m:86400s", 20.0, 100.0, 86400.0, hold_s=float(sys.argv[2])) is not None
print("held", flush=True)
time.sleep(600)
"""


@pytest.fixture(params=["sqlite", "redis", "postgres"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh ledger: a SQLite file, or on the suite's real Redis or PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'holds.sqlite3'}"
    elif request.param == "redis":
        request.applymarker(pytest.mark.redis)
        server = request.getfixturevalue("redis_server")
        url = f"{server}/5?prefix=holds-{uuid.uuid4().hex[:8]}:"
        yield url
        with closing(open_ledger(url)) as led:
            led.clear()  # type: ignore[attr-defined]
    else:
        request.applymarker(pytest.mark.postgres)
        server: PostgresServer = request.getfixturevalue("postgres_server")
        url = f"{server.url}?schema=holds_{uuid.uuid4().hex[:8]}"
        yield url
        with closing(open_ledger(url)) as led:
            led.drop()  # type: ignore[attr-defined]


def _kill_a_worker_holding(url: str, hold_s: float) -> None:
    """Start a process that reserves 80 J, and ``kill -9`` it once it holds them."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    worker = subprocess.Popen([sys.executable, "-c", _WORKER, url, repr(hold_s)], stdout=subprocess.PIPE, env=env)
    try:
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == b"held"
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    assert worker.returncode == -signal.SIGKILL


def _wait_past(seconds: float) -> None:
    time.sleep(seconds + 0.5)


def test_the_holds_of_a_killed_worker_stop_counting_at_their_expiry(ledger_url: str) -> None:
    _kill_a_worker_holding(ledger_url, HOLD_S)
    with closing(open_ledger(ledger_url)) as led:
        # still within the calls' deadline: the holds count (the calls might still be running)
        assert led.budget_used("model:m:86400s", DAY_S) == pytest.approx(80.0)
        assert led.try_reserve("model:m:86400s", 30.0, LIMIT_J, DAY_S, hold_s=HOLD_S) is None
        _wait_past(HOLD_S)
        assert led.budget_used("model:m:86400s", DAY_S) == pytest.approx(0.0)
        back = led.try_reserve("model:m:86400s", 90.0, LIMIT_J, DAY_S, hold_s=60.0)
        assert back is not None, "the killed worker's holds still refuse the budget"
        assert led.budget_used("model:m:86400s", DAY_S) == pytest.approx(90.0)
        led.settle(back, 25.0)
        assert led.budget_used("model:m:86400s", DAY_S) == pytest.approx(25.0)


def test_a_hold_settled_after_its_expiry_counts_the_call_in_full(ledger_url: str) -> None:
    """The process was only slow (its settlement waited out an outage): what the call used still counts, once."""
    with closing(open_ledger(ledger_url)) as led:
        slow = led.try_reserve("model:m:86400s", 40.0, LIMIT_J, DAY_S, hold_s=HOLD_S)
        assert slow is not None
        _wait_past(HOLD_S)
        other = led.try_reserve("model:m:86400s", 70.0, LIMIT_J, DAY_S, hold_s=60.0)  # fits only once the hold expired
        assert other is not None
        led.settle(slow, 30.0)
        led.settle(slow, 30.0)  # a replay: counted once
        assert led.budget_used("model:m:86400s", DAY_S) == pytest.approx(100.0)
        led.settle(other, 10.0)
        assert led.budget_used("model:m:86400s", DAY_S) == pytest.approx(40.0)


def test_a_hold_without_an_expiry_counts_until_its_window_ends(ledger_url: str) -> None:
    """What ``try_reserve`` without ``hold_s`` (a caller that knows no deadline) keeps doing."""
    with closing(open_ledger(ledger_url)) as led:
        assert led.try_reserve("model:m:86400s", 80.0, LIMIT_J, DAY_S) is not None
        _wait_past(1.0)
        assert led.budget_used("model:m:86400s", DAY_S) == pytest.approx(80.0)
        assert led.try_reserve("model:m:86400s", 30.0, LIMIT_J, DAY_S, hold_s=60.0) is None


def _seconds_left_on_holds(url: str) -> list[float]:
    """How long each hold of the store still counts, by the store's own clock."""
    if url.startswith("sqlite"):
        import sqlite3

        with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn:
            now = time.time()
            return [expires_at - now for (expires_at,) in conn.execute("SELECT expires_at FROM holds")]
    if url.startswith("redis"):
        import redis

        prefix = url.split("prefix=")[1]
        client = redis.Redis.from_url(url.split("?")[0])
        try:
            seconds, micros = client.time()
            now = seconds + micros / 1e6
            keys = client.keys(f"{prefix}expiry:*")
            return [score - now for key in keys for _, score in client.zrange(key, 0, -1, withscores=True)]
        finally:
            client.close()
    import psycopg

    base, schema = url.split("?schema=")
    with psycopg.connect(base, autocommit=True) as conn:
        rows = conn.execute(f"SELECT expires_at - extract(epoch FROM clock_timestamp())::double precision "
                            f"FROM {schema}.holds").fetchall()
    return [float(r[0]) for r in rows]


def test_the_router_holds_for_the_calls_deadline_and_a_margin(ledger_url: str, tmp_path: Path) -> None:
    """Through the Router (its journal in front of the store): a call with a 7 s deadline holds for ~67 s."""
    import threading

    from test_budgets import REVIEW, policy, setup

    from router import Router, RouterConfig
    from router.backends import FaultInjectingBackend, create_backend
    from router.cards import load_cards
    from router.ledger.base import HOLD_MARGIN_S

    root = setup(tmp_path, policy("reject", 100.0))
    slow = FaultInjectingBackend(create_backend(load_cards(root / "models")["spec-a"]), delay_s=2.0)
    config = RouterConfig.load(models_dir=root / "models", policies_dir=root / "policies", default_policy="t",
                               ledger_url=ledger_url, journal={"folder": str(tmp_path / "journal")})
    r = Router(config, backends={"spec-a": slow})
    try:
        call = threading.Thread(target=r.complete, args=(REVIEW,), kwargs={"deadline_s": 7.0})
        call.start()
        left: list[float] = []
        until = time.monotonic() + 15.0  # until the call holds its budget (it holds it 2 s: the backend's delay)
        while call.is_alive() and time.monotonic() < until:
            if left := _seconds_left_on_holds(ledger_url):
                break
            time.sleep(0.02)
        call.join(30)
        # the slack: the time from the request's start to its reservation and to this read, on a busy machine
        assert len(left) == 1 and 7.0 + HOLD_MARGIN_S - 5.0 <= left[0] <= 7.0 + HOLD_MARGIN_S, left
        assert _seconds_left_on_holds(ledger_url) == []  # settled
    finally:
        r.close()


def test_ledger_doctor_shows_the_holds_of_a_killed_worker(ledger_url: str, tmp_path: Path) -> None:
    from router.ledger.doctor import diagnose

    def holds_line() -> str:
        report = diagnose(ledger_url, journal_folder=tmp_path / "journal", replay=False)
        return next(f.text for f in report.findings if f.text.startswith("budget holds:"))

    _kill_a_worker_holding(ledger_url, HOLD_S)
    assert holds_line().startswith("budget holds: 4 of calls that may be running (80 J), 0 past their expiry")
    _wait_past(HOLD_S)
    assert "0 of calls that may be running (0 J), 4 past their expiry (80 J: a killed worker's" in holds_line()
    with closing(open_ledger(ledger_url)) as led:
        assert led.try_reserve("model:m:86400s", 90.0, LIMIT_J, DAY_S, hold_s=None) is not None  # gives them back
    assert holds_line().endswith("0 past their expiry (0 J: a killed worker's, no longer counted), 1 without an "
                                 "expiry (90 J, counted until their window ends)")
