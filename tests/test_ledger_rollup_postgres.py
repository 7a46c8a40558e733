"""PostgreSQL's ``rollup_hourly`` (schema step 6) against a real server: a schema of the previous step is upgraded
with it filled from its records, and the dashboard's, report's and carbon figures read through it are the sums of
the records themselves, also when a transaction holding a lower record id commits after a fold."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import pytest
from conftest_postgres import PostgresServer, postgres_server, schema_at_step  # noqa: F401 - the fixture
from test_ledger_rollup import _records, _rollup_from_records, _same

from router import Router
from router.config import RouterConfig
from router.dashboard.data import DashboardData, parse_window
from router.ledger import Ledger, LedgerRecord
from router.ledger.carbon_report import build_carbon
from router.ledger.report import build_report

pytestmark = pytest.mark.postgres


@pytest.fixture
def url(postgres_server: PostgresServer) -> Iterator[str]:  # noqa: F811
    import psycopg

    name = f"rollup_{uuid.uuid4().hex[:8]}"
    yield f"{postgres_server.url}?schema={name}"
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def _ledgers() -> tuple[type[Ledger], type[Ledger]]:
    from router.ledger.postgres import PostgresLedger

    class RecordSums(PostgresLedger):
        """TEST DOUBLE: PostgreSQL with ``Ledger``'s defaults for every summed read: the records' own sums."""

        _stored_summary = Ledger._stored_summary
        _stored_summary_by = Ledger._stored_summary_by
        _raw_summary = Ledger._raw_summary
        _carbon_gap_rows = Ledger._carbon_gap_rows
        carbon_rows = None  # type: ignore[assignment]

    return PostgresLedger, RecordSums


def _figures(url: str, ledger_class: type[Ledger], now: float, tmp: Any) -> dict[str, Any]:
    router = Router(config=RouterConfig(ledger_url=url, journal={"folder": tmp / "j"}))
    led = ledger_class.from_url(url)  # type: ignore[attr-defined]
    try:
        data = DashboardData(router, lambda: led)
        out: dict[str, Any] = {}
        for w in ("all", "30d", "24h", "90m"):
            window = parse_window(w, now)
            out[f"totals {w}"] = data.totals(window)
            out[f"series {w}"] = data.series(window, "model")
        for by in ("model", "tier", "key"):
            out[f"report {by}"] = asdict(build_report(led, router.cards, by=by, since=0.0))
        for since, until in ((0.0, None), (now - 20 * 86400 + 1234.5, now - 3 * 86400 - 77.0)):
            out[f"carbon {since}"] = build_carbon(led, since, until).as_dict()
        return out
    finally:
        led.close()
        router.close()


def _check(url: str, now: float, tmp: Any) -> None:
    exact, sums = _ledgers()
    _same(_figures(url, exact, now, tmp), _figures(url, sums, now, tmp))


def _stored_rollup(url: str) -> dict[tuple[Any, ...], list[float]]:
    import psycopg

    base, schema = url.split("?schema=")
    with psycopg.connect(base) as conn:
        return {tuple(r[:6]): [float(v) for v in r[6:]] for r in conn.execute(f"SELECT * FROM {schema}.rollup_hourly")}


def test_a_schema_of_step_5_gets_the_rollup_filled_from_its_records(url: str, tmp_path: Any) -> None:
    import psycopg

    from router.ledger.postgres_schema import ADD_SUMS, COLUMNS

    now = time.time()
    base, schema = url.split("?schema=")
    with psycopg.connect(base, autocommit=True) as conn:
        schema_at_step(conn, schema, 5)
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {schema}.records ({', '.join(COLUMNS)}) VALUES "
                            f"({', '.join(['%s'] * len(COLUMNS))})",
                            [[getattr(r, c) for c in COLUMNS] for r in _records(600, now)])
        conn.execute(ADD_SUMS.format(s=schema, source=f"{schema}.records"))  # as step 5's writers kept them
    led = _ledgers()[0].from_url(url)
    try:
        assert led.schema_version == led.latest_schema_version
        _same(_stored_rollup(url), _rollup_from_records(led))
        led.record_many(_records(50, now, first=600))  # read from the records until folded in
        _check(url, now, tmp_path)
        led._fold_now()
        _same(_stored_rollup(url), _rollup_from_records(led))
    finally:
        led.close()
    _check(url, now, tmp_path)


def test_a_lower_record_id_that_commits_after_a_fold_is_counted_once(url: str, tmp_path: Any) -> None:
    """Writers on two hosts: the first holds record id N in a transaction still open while the second commits
    N + 1 and a fold runs. A fold up to the newest id would leave N out of every figure for good."""
    import psycopg

    from router.ledger.postgres_schema import COLUMNS

    now = time.time()
    led = _ledgers()[0].from_url(url)
    base, schema = url.split("?schema=")
    insert = led._insert(1)  # the ledger's own statement: the record and its summary_hourly sums
    id_of = f"SELECT id FROM {schema}.records WHERE record_id = %s"
    slow, quick = psycopg.connect(base), psycopg.connect(base, autocommit=True)
    try:
        led.record_many(_records(300, now))
        first, second = _records(2, now, first=300)
        slow.execute(insert, [getattr(first, c) for c in COLUMNS])  # its transaction stays open
        quick.execute(insert, [getattr(second, c) for c in COLUMNS])
        held = slow.execute(id_of, (first.record_id,)).fetchone()[0]
        assert quick.execute(id_of, (second.record_id,)).fetchone()[0] == held + 1
        led._fold_now()
        slow.commit()
        assert len(led.records()) == 302
        _check(url, now, tmp_path)
        led._fold_now()
        _same(_stored_rollup(url), _rollup_from_records(led))
        _check(url, now, tmp_path)
    finally:
        slow.close()
        quick.close()
        led.close()


def test_late_writes_prune_and_rebuild_keep_the_figures_the_records_sums(url: str, tmp_path: Any) -> None:
    import psycopg

    now = time.time()
    led = _ledgers()[0].from_url(url)
    try:
        led.record_many(_records(450, now))
        led._fold_now()
        led.record(LedgerRecord(request_id="late", model="gemma3-270m", tier="large", energy_j=123.0,
                                energy_source="measured:nvml", ts=now - 30 * 86400 + 5.0, zone="PL", co2e_g=0.02,
                                grid_g_per_kwh=600.0, record_id="late-1"))
        replay = _records(40, now, first=450) + _records(1, now, first=3)  # the last one stored already
        for r in replay[:-1]:
            r.ts -= 10 * 86400
        led.record_many(replay)
        _check(url, now, tmp_path)  # the late ones not folded in yet
        led._fold_now()
        led.record_many(_records(30, now, first=500))  # not folded in when the prune comes
        assert led.prune(now - 25 * 86400 + 1800.5) > 0  # inside an hour: summed again from what remains
        _check(url, now, tmp_path)
        led._fold_now()
        _same(_stored_rollup(url), _rollup_from_records(led))
        base, schema = url.split("?schema=")
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"UPDATE {schema}.rollup_hourly SET requests = requests + 5")  # drifted, as by a hand edit
        led.rebuild_summary()
        _same(_stored_rollup(url), _rollup_from_records(led))
    finally:
        led.close()
    _check(url, now, tmp_path)
