"""Every ledger implementation passes the one shared suite (tests/conformance/ledger_suite.py): SQLite, Redis,
PostgreSQL, the journaled ledger over SQLite and the proxy's background writer over that; the stores with a
previous release's schema migrate it; the stores made unavailable raise ``LedgerError`` and recover."""

from __future__ import annotations

import contextlib
import itertools
import json
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conformance.ledger_suite import LEDGER_CHECKS, MIGRATION_CHECKS, OUTAGE_CHECKS
from conftest_postgres import postgres_server  # noqa: F401 - the fixture
from conftest_redis import redis_server, start_redis_server  # noqa: F401 - the fixture

from router.ledger import JournaledLedger, JournalSettings, Ledger, LedgerRecord, SQLiteLedger, open_ledger
from router.ledger.base import SUMMARY_DIMS, bucket_of
from router.proxy.ledger_writer import BackgroundLedger

FIXTURES = Path(__file__).parent / "fixtures"
_CHECK_IDS = [c.__name__.removeprefix("check_") for c in LEDGER_CHECKS]
_run = itertools.count()
OpenStore = Callable[[str], Ledger]


def _closing(opened: list[Ledger]) -> None:
    for led in opened:
        with contextlib.suppress(Exception):  # a check may have closed it already
            led.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[OpenStore]:
    opened: list[Ledger] = []

    def open_store(name: str) -> Ledger:
        led = SQLiteLedger(tmp_path / f"{name}.sqlite3")
        opened.append(led)
        return led

    yield open_store
    _closing(opened)


@pytest.fixture
def journaled_store(tmp_path: Path) -> Iterator[OpenStore]:
    """SQLite behind a journal (group fsync, a replay thread): the wrapper must be a ledger like any other."""
    opened: list[Ledger] = []

    def open_store(name: str) -> Ledger:
        settings = JournalSettings(folder=tmp_path / f"{name}.journal", replay_interval_s=0.2)
        led = open_ledger(f"sqlite:///{tmp_path / f'{name}.sqlite3'}", journal=settings)
        assert isinstance(led, JournaledLedger)
        opened.append(led)
        return led

    yield open_store
    _closing(opened)


@pytest.fixture
def background_store(tmp_path: Path) -> Iterator[OpenStore]:
    """The proxy's ledger (``router serve``): the background writer over the journal over SQLite. Its writes land
    after a pause, its reads that report wait for them: to a caller, a ledger like any other."""
    opened: list[Ledger] = []

    def open_store(name: str) -> Ledger:
        settings = JournalSettings(folder=tmp_path / f"{name}.journal", replay_interval_s=0.2)
        led = BackgroundLedger(SQLiteLedger(tmp_path / f"{name}.sqlite3"), interval_s=0.01, journal=settings)
        opened.append(led)
        return led

    yield open_store
    _closing(opened)


@pytest.fixture
def redis_store(redis_server: str) -> Iterator[OpenStore]:  # noqa: F811
    from router.ledger.redis import RedisLedger

    run = next(_run)
    opened: list[RedisLedger] = []

    def open_store(name: str) -> Ledger:
        led = RedisLedger.from_url(f"{redis_server}/0?prefix=test{run}:{name}:")
        opened.append(led)
        return led

    yield open_store
    for led in opened[-1:]:
        with contextlib.suppress(Exception):
            led.clear()
    _closing(opened)  # type: ignore[arg-type]


@pytest.fixture
def postgres_store(postgres_server) -> Iterator[OpenStore]:  # noqa: F811
    from router.ledger.postgres import PostgresLedger

    run = next(_run)
    opened: list[PostgresLedger] = []

    def open_store(name: str) -> Ledger:
        led = PostgresLedger.from_url(f"{postgres_server.url}?schema=t{run}_{name}")
        opened.append(led)
        return led

    yield open_store
    for led in opened[-1:]:
        with contextlib.suppress(Exception):
            led.drop()
    _closing(opened)  # type: ignore[arg-type]


@pytest.mark.parametrize("check", LEDGER_CHECKS, ids=_CHECK_IDS)
def test_sqlite_ledger_conforms(check: Callable[[OpenStore], None], sqlite_store: OpenStore) -> None:
    check(sqlite_store)


@pytest.mark.parametrize("check", LEDGER_CHECKS, ids=_CHECK_IDS)
def test_journaled_sqlite_ledger_conforms(check: Callable[[OpenStore], None], journaled_store: OpenStore) -> None:
    check(journaled_store)


@pytest.mark.parametrize("check", LEDGER_CHECKS, ids=_CHECK_IDS)
def test_background_ledger_conforms(check: Callable[[OpenStore], None], background_store: OpenStore) -> None:
    check(background_store)


@pytest.mark.redis
@pytest.mark.parametrize("check", LEDGER_CHECKS, ids=_CHECK_IDS)
def test_redis_ledger_conforms(check: Callable[[OpenStore], None], redis_store: OpenStore) -> None:
    check(redis_store)


@pytest.mark.postgres
@pytest.mark.parametrize("check", LEDGER_CHECKS, ids=_CHECK_IDS)
def test_postgres_ledger_conforms(check: Callable[[OpenStore], None], postgres_store: OpenStore) -> None:
    check(postgres_store)


# -- the previous release's stores migrate ------------------------------------------------------------------


_OLD_COLUMNS = [
    "ts", "request_id", "model", "tier", "reason", "input_tokens", "output_tokens", "latency_ms", "energy_j",
    "energy_source", "policy", "task", "outcome", "key_hash", "error", "attempt", "co2e_g",
]  # fmt: skip


def make_previous_sqlite(path: Path, recs: list[LedgerRecord]) -> None:
    """A ledger file as main's code wrote it: its schema (tests/fixtures/ledger_sqlite_v2.sql, dumped from a
    file it made) and rows inserted the way it inserted them (no record id; the trigger keeps the sums)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript((FIXTURES / "ledger_sqlite_v2.sql").read_text())
    marks = ", ".join("?" * len(_OLD_COLUMNS))
    for r in recs:
        conn.execute(f"INSERT INTO records ({', '.join(_OLD_COLUMNS)}) VALUES ({marks})",
                     [getattr(r, c) for c in _OLD_COLUMNS])  # fmt: skip
    conn.execute("INSERT INTO budgets VALUES ('b', 0, 3.0)")
    conn.close()


def make_previous_redis(led_prefix: str, url: str, recs: list[LedgerRecord]) -> None:
    """Keys as main's Redis ledger wrote them: its record script (tests/fixtures/ledger_redis_v1_record.lua)
    called with the arguments it passed, and ``schema_version`` 1."""
    import redis

    r = redis.Redis.from_url(url)
    script = r.register_script((FIXTURES / "ledger_redis_v1_record.lua").read_text())
    for rec in recs:
        data = {k: v for k, v in rec.as_dict().items() if k != "record_id"}
        bucket = bucket_of(rec.ts)
        b = str(int(bucket))
        script(
            keys=[f"{led_prefix}records", f"{led_prefix}seq", f"{led_prefix}sum:{b}", f"{led_prefix}buckets"],
            args=[repr(float(rec.ts)), json.dumps(data, separators=(",", ":")), b,
                  json.dumps([data[d] for d in SUMMARY_DIMS]), 1, repr(float(rec.energy_j)), rec.input_tokens,
                  rec.output_tokens, repr(float(rec.latency_ms)), repr(float(rec.co2e_g or 0.0))],
        )  # fmt: skip
    r.hsetnx(f"{led_prefix}meta", "schema_version", 1)
    r.close()


@pytest.mark.parametrize("check", MIGRATION_CHECKS, ids=lambda c: c.__name__)
def test_sqlite_previous_schema_migrates(check, sqlite_store: OpenStore, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    check(sqlite_store, lambda name, recs: make_previous_sqlite(tmp_path / f"{name}.sqlite3", recs))
    led = SQLiteLedger(tmp_path / "previous.sqlite3")
    assert led.budget_used("b", 1e12) == 3.0, "budgets are kept too"
    led.close()


@pytest.mark.redis
@pytest.mark.parametrize("check", MIGRATION_CHECKS, ids=lambda c: c.__name__)
def test_redis_previous_schema_migrates(check, redis_server: str) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from router.ledger.redis import RedisLedger

    run = next(_run)
    opened: list[RedisLedger] = []

    def open_store(name: str) -> Ledger:
        opened.append(RedisLedger.from_url(f"{redis_server}/0?prefix=mig{run}:{name}:"))
        return opened[-1]

    check(open_store, lambda name, recs: make_previous_redis(f"mig{run}:{name}:", f"{redis_server}/0", recs))
    opened[-1].clear()
    _closing(opened)  # type: ignore[arg-type]


# -- stores made unavailable ----------------------------------------------------------------------------------


def test_sqlite_outage(tmp_path: Path) -> None:
    """Another connection holds the write lock (an exclusive transaction) for longer than the timeout."""
    path = tmp_path / "locked.sqlite3"
    holder = sqlite3.connect(path, isolation_level=None)

    def outage() -> tuple[Ledger, Callable[[], None], Callable[[], None]]:
        led = SQLiteLedger(path, timeout_s=0.1)
        return led, lambda: holder.execute("BEGIN EXCLUSIVE"), lambda: holder.execute("COMMIT")

    for check in OUTAGE_CHECKS:
        check(outage)
    holder.close()


@pytest.mark.redis
def test_redis_outage(tmp_path: Path) -> None:
    """A Redis server of its own, stopped and started again on the same port."""
    from router.ledger.redis import RedisLedger

    server = start_redis_server(tmp_path)

    def outage() -> tuple[Ledger, Callable[[], None], Callable[[], None]]:
        led = RedisLedger.from_url(f"{server.url}/0?prefix=outage:&socket_timeout=2")
        return led, server.stop, server.start

    try:
        for check in OUTAGE_CHECKS:
            check(outage)
    finally:
        server.stop()


@pytest.mark.postgres
def test_postgres_outage(postgres_server) -> None:  # noqa: F811
    """The session's PostgreSQL server stopped (immediate shutdown) and started again."""
    from router.ledger.postgres import PostgresLedger

    def outage() -> tuple[Ledger, Callable[[], None], Callable[[], None]]:
        led = PostgresLedger.from_url(f"{postgres_server.url}?schema=outage")
        return led, postgres_server.stop, postgres_server.start

    try:
        for check in OUTAGE_CHECKS:
            check(outage)
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"could not restart postgres: {exc.stderr}\n{postgres_server.log()}")
