"""PostgreSQL ledger budgets against a real server: a reservation that commits after its client gave up on it is
given back, a release leaves a tombstone, holds go with their window's counter, and a schema of the previous
step is upgraded with its budgets kept; hosts writing and settling at once do not deadlock."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from conftest_postgres import PostgresServer, postgres_server, schema_at_step  # noqa: F401 - the fixture
from forking import in_a_forked_child

from router.errors import LedgerError
from router.ledger.base import window_start

pytestmark = pytest.mark.postgres
DAY_S = 86_400


@pytest.fixture
def schema(postgres_server: PostgresServer) -> Iterator[str]:  # noqa: F811
    import psycopg

    name = f"holds_{uuid.uuid4().hex[:8]}"
    yield name
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def _used(conn: Any, schema: str, budget: str, start: float) -> float | None:
    row = conn.execute(f"SELECT used_j FROM {schema}.budgets WHERE budget = %s AND window_start = %s",
                       (budget, start)).fetchone()  # fmt: skip
    return None if row is None else float(row[0])


def test_a_reservation_that_commits_after_the_client_gave_up_on_it_is_given_back(
    postgres_server: PostgresServer, schema: str,  # noqa: F811
) -> None:
    """A reservation waiting on its budget's row (locked by another transaction's ``SELECT ... FOR UPDATE``) past
    ``request_timeout_s`` failed on the client, yet PostgreSQL still committed it once the row came free. Nobody
    settled it: it counted as spent until the window ended (a day here), refusing requests with 429s the budget
    had room for. Now the client releases it by id, and the late reservation holds nothing."""
    import psycopg

    from router.ledger.postgres import PostgresLedger

    led = PostgresLedger.from_url(f"{postgres_server.url}?schema={schema}&request_timeout_s=0.3")
    locker = psycopg.connect(postgres_server.url)  # a transaction, open until its commit
    watcher = psycopg.connect(postgres_server.url, autocommit=True)
    try:
        assert led.try_reserve("day", 10.0, 100.0, DAY_S) is not None
        locker.execute(f"SELECT used_j FROM {schema}.budgets FOR UPDATE")
        with pytest.raises(LedgerError, match="reserve budget"):
            led.try_reserve("day", 80.0, 100.0, DAY_S)
        waiting = watcher.execute(f"""SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'
            AND query LIKE '%%{schema}.budgets%%'""").fetchall()  # fmt: skip
        assert len(waiting) == 1, "the reservation the client gave up on still waits on the server"
        locker.commit()
        deadline = time.monotonic() + 30
        while watcher.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", waiting[0]).fetchone():
            assert time.monotonic() < deadline, "the reservation given up on never finished on the server"
            time.sleep(0.05)
        led.release_given_up()  # what the background thread does, done here to wait for it
        assert led.budget_used("day", DAY_S) == pytest.approx(10.0)
        assert led.try_reserve("day", 90.0, 100.0, DAY_S) is not None
    finally:
        locker.close()
        watcher.close()
        led.close()


def test_a_release_leaves_a_tombstone_and_gives_back_once_in_either_order(
    postgres_server: PostgresServer, schema: str,  # noqa: F811
) -> None:
    """The reservation and its release come on different connections, so PostgreSQL may run them in either
    order."""
    import psycopg

    from router.ledger.postgres import PostgresLedger
    from router.ledger.postgres_schema import RELEASE, RESERVE

    PostgresLedger.from_url(f"{postgres_server.url}?schema={schema}").close()  # makes the schema
    reserve, release = RESERVE.format(s=schema), RELEASE.format(s=schema)

    def reservation(reservation_id: str) -> dict[str, Any]:
        return {"id": reservation_id, "budget": "day", "start": 0.0, "joules": 50.0, "limit": 100.0, "hold_s": None}

    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(release, ("early", "day", 0.0))  # released before its reservation arrives
        assert conn.execute(reserve, reservation("early")).fetchone()[0] is False
        assert _used(conn, schema, "day", 0.0) is None

        # reserved (and its statement run again, as after a broken connection), then released twice
        assert conn.execute(reserve, reservation("late")).fetchone()[0] is True
        assert conn.execute(reserve, reservation("late")).fetchone()[0] is True
        assert _used(conn, schema, "day", 0.0) == 50.0
        conn.execute(release, ("late", "day", 0.0))
        assert _used(conn, schema, "day", 0.0) == 0.0
        conn.execute(release, ("late", "day", 0.0))
        assert _used(conn, schema, "day", 0.0) == 0.0


def test_settling_drops_the_hold_and_a_prune_drops_those_of_ended_windows(
    postgres_server: PostgresServer, schema: str,  # noqa: F811
) -> None:
    import psycopg

    from router.ledger.postgres import PostgresLedger

    led = PostgresLedger.from_url(f"{postgres_server.url}?schema={schema}")
    holds = f"SELECT id FROM {schema}.holds ORDER BY id"
    try:
        settled = led.try_reserve("model:m:60s", 5.0, 100.0, 60)
        kept = led.try_reserve("model:m:60s", 5.0, 100.0, 60)
        assert settled is not None and kept is not None
        led.settle_many([(settled, 3.0)])
        with psycopg.connect(postgres_server.url, autocommit=True) as conn:
            assert conn.execute(holds).fetchall() == [(kept.id,)]
            led.prune(time.time() + 3600)  # the window ended an hour ago
            assert conn.execute(holds).fetchall() == []
    finally:
        led.close()


def test_a_schema_of_the_previous_step_is_upgraded_with_its_budgets_kept(
    postgres_server: PostgresServer, schema: str,  # noqa: F811
) -> None:
    """A database the previous release made (schema step 4, no ``holds``) reserves and settles once opened."""
    import psycopg

    from router.ledger.postgres import PostgresLedger

    start = window_start(time.time(), DAY_S)
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        schema_at_step(conn, schema, 4)
        conn.execute(f"INSERT INTO {schema}.budgets VALUES ('day', %s, 3.0)", (start,))
    led = PostgresLedger.from_url(f"{postgres_server.url}?schema={schema}")
    try:
        assert led.schema_version == led.latest_schema_version == 7
        assert led.budget_used("day", DAY_S) == pytest.approx(3.0)
        reservation = led.try_reserve("day", 10.0, 100.0, DAY_S)
        assert reservation is not None
        assert led.budget_used("day", DAY_S) == pytest.approx(13.0)
        led.settle(reservation, 4.0)
        assert led.budget_used("day", DAY_S) == pytest.approx(7.0)
    finally:
        led.close()


def test_a_server_older_than_13_is_refused_at_open_naming_its_version(
    postgres_server: PostgresServer, schema: str, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
) -> None:
    """Schema step 6 needs ``pg_current_xact_id()`` (PostgreSQL 13); an older server failed in the middle of the
    migration with the driver's "function does not exist". It is refused before any step, naming its version.
    The test's server is new: the bound is raised past it to stand for an old one."""
    from router.ledger import postgres

    monkeypatch.setattr(postgres, "MIN_SERVER_VERSION", 99_0000)
    with pytest.raises(LedgerError, match=r"the server is PostgreSQL \d+\.\d+; the ledger needs PostgreSQL 13 or "
                                          r"later; fix: upgrade the server"):
        postgres.PostgresLedger.from_url(f"{postgres_server.url}?schema={schema}")


def test_hosts_writing_and_settling_mixed_batches_at_once_do_not_deadlock(
    postgres_server: PostgresServer, schema: str,  # noqa: F811
) -> None:
    """Two hosts' writers, each a batch of three records (two statements: 2 + 1 rows) over two keys in the opposite
    order, and settlements of two budgets in the opposite order: each statement locked its summary or budget rows
    as its batch listed them, so each host held a row the other waited on. PostgreSQL broke the deadlock by failing
    one, read as "PostgreSQL is down or unreachable": a journaled ledger started an outage (503s for budgets)."""
    import threading

    from router.ledger.base import LedgerRecord
    from router.ledger.postgres import PostgresLedger

    url = f"{postgres_server.url}?schema={schema}"
    PostgresLedger.from_url(url).close()  # makes the schema before the hosts race
    rounds, failures = 150, list[Exception]()
    together = threading.Barrier(2)

    def record(key: str) -> LedgerRecord:
        return LedgerRecord(request_id=uuid.uuid4().hex, model="remote-echo", tier="large", energy_j=1.0,
                            energy_source="estimate", outcome="ok", key_hash=key)

    def host(first: str, second: str) -> None:
        led = PostgresLedger.from_url(url)
        try:
            for _ in range(rounds):
                together.wait(timeout=30)
                try:
                    led.record_many([record(first), record(first), record(second)])
                    held = [led.try_reserve(budget, 1.0, 1e9, 3600) for budget in (first, second)]
                    together.wait(timeout=30)
                    led.settle_many([(r, 0.5) for r in held if r is not None])
                except threading.BrokenBarrierError:  # the other host failed
                    return
                except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                    failures.append(exc)
                    together.abort()
                    return
        except threading.BrokenBarrierError:
            return
        finally:
            led.close()

    hosts = [threading.Thread(target=host, args=pair) for pair in (("key-a", "key-c"), ("key-c", "key-a"))]
    for t in hosts:
        t.start()
    for t in hosts:
        t.join()
    assert not failures, failures[0]
    led = PostgresLedger.from_url(url)
    try:
        assert len(led.records()) == 2 * 3 * rounds
        assert sum(r.requests for r in led.summary(0)) == 2 * 3 * rounds
        start = window_start(time.time(), 3600)
        for budget in ("key-a", "key-c"):
            assert led.budget_used(budget, 3600) == pytest.approx(2 * rounds * 0.5), (budget, start)
    finally:
        led.close()


def test_work_the_server_rolled_back_for_a_conflict_runs_once_more_and_is_no_outage(
    postgres_server: PostgresServer, schema: str,  # noqa: F811
) -> None:
    """A deadlock or serialization failure (another host's transaction took rows in another order) was read as
    "PostgreSQL is down or unreachable": a journaled router started an outage against a healthy server (records held
    back, budget requests refused with 503). PostgreSQL rolled the work back, so it is run once more; a conflict
    that repeats says what it is."""
    from psycopg import errors

    from router.ledger.errors import postgres_error
    from router.ledger.postgres import PostgresLedger

    led = PostgresLedger.from_url(f"{postgres_server.url}?schema={schema}")
    tries: list[int] = []

    def deadlocked_once(conn: Any) -> int:  # TEST DOUBLE (fault injection): the deadlock detector fails the first try
        tries.append(1)
        if len(tries) == 1:
            raise errors.DeadlockDetected("deadlock detected")
        return int(conn.execute("SELECT 1").fetchone()[0])

    try:
        assert led._pool.run(deadlocked_once, retry=False) == 1 and len(tries) == 2  # settlements pass retry=False
    finally:
        led.close()
    for conflict in (errors.DeadlockDetected("deadlock detected"), errors.SerializationFailure("could not serialize")):
        error = postgres_error("postgresql://h/db", conflict, "write records")
        assert "conflicted with another writer's" in error.message and "down or unreachable" not in error.message


def test_a_forked_child_talks_to_postgres_in_a_session_of_its_own(
    postgres_server: PostgresServer, schema: str,  # noqa: F811
) -> None:
    """A ledger opened before the process forks (gunicorn --preload, multiprocessing's fork, Celery's prefork pool):
    the child works on connections of its own, and closing it leaves the parent's open. On the pooled connection
    it inherited, both processes talked in one server session, each reading replies meant for the other, and the
    child's close ended the parent's session."""

    from router.ledger.base import LedgerRecord
    from router.ledger.postgres import PostgresLedger

    def session(led: PostgresLedger) -> int:
        return int(led._pool.run(lambda conn: conn.execute("SELECT pg_backend_pid()").fetchone()[0]))

    led = PostgresLedger.from_url(f"{postgres_server.url}?schema={schema}&pool=1")
    try:
        parents = session(led)  # the parent's connection, idle in the pool at the fork
        def in_the_child() -> None:  # a failed assert or an exception ends the child with exit code 1
            assert session(led) != parents, "the child talks in the parent's server session"
            led.record(LedgerRecord(request_id="child", model="m", tier="small", energy_j=1.0,
                                    energy_source="estimated:x", ts=time.time()))
            assert led.try_reserve("day", 1.0, 10.0, DAY_S) is not None
            led.close()

        in_a_forked_child(in_the_child, "the child worked in a session of its own")
        assert session(led) == parents, "the parent's session outlived the child's close"
        assert [r.request_id for r in led.records()] == ["child"]
    finally:
        led.close()
