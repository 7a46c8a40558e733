"""SQLite's ``rollup_hourly`` (schema step 7): the hourly sums by model, tier, outcome, energy source and zone that
the dashboard's totals and series and the report's default view and carbon section read. A file of the previous
version is upgraded with the table filled from its records, and every figure read through it is the one summed
from the records themselves, also after a record lands in an old hour (a late write, a journal replay)."""

from __future__ import annotations

import math
import sqlite3
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from router import Router
from router.config import RouterConfig
from router.dashboard.data import DashboardData, parse_window
from router.ledger import Ledger, LedgerRecord, SQLiteLedger
from router.ledger.carbon_report import build_carbon
from router.ledger.report import build_report
from router.ledger.sqlite import _COLUMNS
from router.ledger.sqlite_schema import MIGRATIONS, SCHEMA_VERSION

MODELS = [("sentiment-onnx", "specialist"), ("smollm2-135m", "small"), ("gemma3-270m", "large")]
OUTCOMES = ["ok", "ok", "escalated", "error", "rejected"]


class RecordSums(SQLiteLedger):
    """TEST DOUBLE: SQLite with ``Ledger``'s defaults for every summed read (no hourly summary, no rollup, no carbon
    query): the sums of the records themselves, walked in Python, that every stored aggregate must reproduce."""

    _stored_summary = Ledger._stored_summary
    _stored_summary_by = Ledger._stored_summary_by
    _raw_summary = Ledger._raw_summary
    _carbon_gap_rows = Ledger._carbon_gap_rows
    carbon_rows = None


def _records(n: int, now: float, first: int = 0) -> list[LedgerRecord]:
    """``n`` records over the 40 days before ``now``, every dimension varied (zones empty and absent too, some
    records without a CO2e figure)."""
    out = []
    for i in range(first, first + n):
        model, tier = MODELS[i % 3]
        outcome = OUTCOMES[i % 5]
        joules = 0.0 if outcome == "rejected" else 0.5 + (i * 7919 % 1000) / 10.0
        grid = (350.0, 60.0, 220.0)[i % 3]
        co2e = None if i % 11 == 0 else joules / 3.6e6 * grid
        out.append(LedgerRecord(
            request_id=f"q{i}", model=model, tier=tier, energy_j=joules,
            energy_source=("estimated:cpu-time", "measured:rapl")[i % 2], outcome=outcome,  # type: ignore[arg-type]
            input_tokens=None if i % 13 == 0 else i % 300, output_tokens=i % 70, latency_ms=float(i % 900),
            policy=("eco", "balanced", None)[i % 3], task=("chat", "qa", "code", None)[i % 4],
            key_hash=f"key-{i % 7}" if i % 5 else None, co2e_g=co2e, grid_g_per_kwh=None if co2e is None else grid,
            zone=("DE", "FR", "", None)[i % 4], ts=now - 40 * 86400 + (i * 104_729 % 3_400_000) + 0.25,
            record_id=f"id-{i}",
        ))  # fmt: skip
    return out


def _same(got: Any, want: Any, where: str = "") -> None:
    """Equal, floats up to their summation order (the stores add the same numbers in another order)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), where
        for k in want:
            _same(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _same(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and not isinstance(got, str):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12), where
    else:
        assert got == want, where


def _figures(path: Path, ledger_class: type[SQLiteLedger], now: float) -> dict[str, Any]:
    """What the dashboard's API and ``router ledger report`` show for this ledger, read through ``ledger_class``."""
    router = Router(config=RouterConfig(ledger_url=f"sqlite:///{path}", journal={"folder": path.parent / "j"}))
    led = ledger_class(path)
    try:
        data = DashboardData(router, lambda: led)
        out: dict[str, Any] = {}
        for w in ("all", "30d", "7d", "24h", "90m"):
            window = parse_window(w, now)
            out[f"totals {w}"] = data.totals(window)
            for by in ("model", "tier"):
                out[f"series {w} {by}"] = data.series(window, by)
        for by in ("model", "tier", "key", "day"):
            out[f"report {by}"] = asdict(build_report(led, router.cards, by=by, since=0.0))
        # whole hours from the rollup, the partial hours at either end from the records
        for since, until in ((0.0, None), (now - 20 * 86400 + 1234.5, now - 3 * 86400 - 77.0), (now - 1800, now)):
            out[f"carbon {since}"] = build_carbon(led, since, until).as_dict()
        return out
    finally:
        led.close()
        router.close()


def _rollup_from_records(led: SQLiteLedger) -> dict[tuple[Any, ...], list[float]]:
    sums: dict[tuple[Any, ...], list[float]] = {}
    for r in led.records():
        key = (int(r.ts) - int(r.ts) % 3600, r.model, r.tier, r.outcome, r.energy_source, r.zone or "-")
        acc = sums.setdefault(key, [0, 0.0, 0, 0, 0.0, 0.0, 0.0, 0, 0.0])
        missing = r.co2e_g is None
        for i, v in enumerate((1, r.energy_j, r.input_tokens or 0, r.output_tokens or 0, r.latency_ms or 0.0,
                               r.co2e_g or 0.0, 0.0 if missing else r.energy_j * (r.grid_g_per_kwh or 0.0),
                               int(missing), r.energy_j if missing else 0.0)):
            acc[i] += v
    return sums


def _stored_rollup(path: Path) -> dict[tuple[Any, ...], list[float]]:
    conn = sqlite3.connect(path)
    try:
        return {tuple(r[:6]): list(r[6:]) for r in conn.execute("SELECT * FROM rollup_hourly")}
    finally:
        conn.close()


def _fold_on_next_write(led: SQLiteLedger) -> None:
    """The ledger's writes fold every record not yet in the rollup into it (the default waits for thousands)."""
    led.ROLLUP_CHECK_EVERY = led.ROLLUP_FOLD_AT = 1  # type: ignore[misc]


def _v6_file(path: Path, recs: list[LedgerRecord]) -> None:
    """A ledger file exactly as schema version 6 wrote it (its summary trigger fired for every record)."""
    conn = sqlite3.connect(path, isolation_level=None)
    for step in MIGRATIONS.steps[:6]:
        for stmt in step.payload:
            conn.execute(stmt)
    conn.execute("PRAGMA user_version=6")
    insert = f"INSERT INTO records ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"
    conn.executemany(insert, [tuple(getattr(r, c) for c in _COLUMNS) for r in recs])
    conn.close()


def test_a_version_6_file_gets_the_rollup_filled_from_its_records(tmp_path: Path) -> None:
    db = tmp_path / "v6.sqlite3"
    now = time.time()
    _v6_file(db, _records(600, now))
    led = SQLiteLedger(db)
    assert led.schema_version == SCHEMA_VERSION == 9
    _same(_stored_rollup(db), _rollup_from_records(led))
    assert led.get_meta("rollup_upto") == "600"
    led.record_many(_records(50, now, first=600))  # read from the records until folded in
    _same(_figures(db, SQLiteLedger, now), _figures(db, RecordSums, now))
    _fold_on_next_write(led)
    led.record_many(_records(1, now, first=650))
    _same(_stored_rollup(db), _rollup_from_records(led))
    assert led.get_meta("rollup_upto") == "651"
    led.close()
    _same(_figures(db, SQLiteLedger, now), _figures(db, RecordSums, now))


def test_figures_read_through_the_rollup_are_the_records_sums_after_late_writes(tmp_path: Path) -> None:
    db = tmp_path / "l.sqlite3"
    now = time.time()
    led = SQLiteLedger(db)
    led.record_many(_records(900, now))
    _same(_figures(db, SQLiteLedger, now), _figures(db, RecordSums, now))
    _fold_on_next_write(led)
    led.record_many(_records(3, now, first=990))
    led.ROLLUP_CHECK_EVERY, led.ROLLUP_FOLD_AT = SQLiteLedger.ROLLUP_CHECK_EVERY, SQLiteLedger.ROLLUP_FOLD_AT
    _same(_figures(db, SQLiteLedger, now), _figures(db, RecordSums, now))
    # a record written after the fact into an hour weeks old, a journal replay of a batch into old hours (one of
    # them already stored: counted once), a new zone and model in an old hour
    led.record(LedgerRecord(request_id="late", model="gemma3-270m", tier="large", energy_j=123.0,
                            energy_source="measured:nvml", ts=now - 30 * 86400 + 5.0, zone="PL", co2e_g=0.02,
                            grid_g_per_kwh=600.0, record_id="late-1"))
    replay = _records(40, now, first=900) + _records(1, now, first=3)
    for r in replay:
        r.ts -= 10 * 86400
    replay[-1].ts += 10 * 86400  # the stored one, as it was
    led.record_many(replay)
    assert len(led.records()) == 900 + 3 + 1 + 40
    _same(_figures(db, SQLiteLedger, now), _figures(db, RecordSums, now))  # the late ones not folded in yet
    _fold_on_next_write(led)
    led.record(LedgerRecord(request_id="later", model="m", tier="small", energy_j=2.0, energy_source="x",
                            ts=now - 20 * 86400, record_id="late-2"))
    _same(_stored_rollup(db), _rollup_from_records(led))
    led.close()
    _same(_figures(db, SQLiteLedger, now), _figures(db, RecordSums, now))


def test_prune_and_rebuild_keep_the_rollup_the_records_sums(tmp_path: Path) -> None:
    db = tmp_path / "l.sqlite3"
    now = time.time()
    led = SQLiteLedger(db)
    led.record_many(_records(450, now))
    _fold_on_next_write(led)
    led.record_many(_records(50, now, first=450))
    led.ROLLUP_FOLD_AT = 10_000  # type: ignore[misc]
    led.record_many(_records(30, now, first=500))  # not folded in when the prune comes
    cut = now - 25 * 86400 + 1800.5  # inside an hour: the straddling hour is summed again from what remains
    assert led.prune(cut) > 0
    _same(_stored_rollup(db), _rollup_from_records(led))
    conn = sqlite3.connect(db)
    conn.execute("UPDATE rollup_hourly SET requests = requests + 5")  # drifted, as a hand edit would leave it
    conn.commit()
    conn.close()
    led.rebuild_summary()
    _same(_stored_rollup(db), _rollup_from_records(led))
    assert math.isclose(sum(v[1] for v in _stored_rollup(db).values()), sum(r.energy_j for r in led.records()))
    led.close()


def test_doctor_finds_and_repairs_a_rollup_an_old_release_pruned_under(tmp_path: Path) -> None:
    """In a rolling upgrade a process of the previous release, still running on the upgraded file, prunes by its
    retention: records and summary_hourly, not rollup_hourly, which it does not know. The dashboard then counted the
    pruned records while `router ledger doctor` said "no problems" and --repair rebuilt nothing."""
    from router.ledger.doctor import diagnose

    path, now = tmp_path / "l.db", time.time()
    led = SQLiteLedger(path)
    led.record_many(_records(600, now))
    led._fold_now()
    led.close()
    cut = now - 20 * 86400
    # the previous release's prune (SQLiteLedger.prune at schema step 6), run on the upgraded file
    boundary = int(cut) - int(cut) % 3600
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("DELETE FROM records WHERE ts < ?", (cut,))
        conn.execute("DELETE FROM summary_hourly WHERE bucket <= ?", (boundary,))
        conn.execute("INSERT INTO summary_hourly SELECT (CAST(ts AS INTEGER) - (CAST(ts AS INTEGER) % 3600)), model, "
                     "tier, COALESCE(key_hash, ''), COALESCE(policy, ''), COALESCE(task, ''), outcome, energy_source, "
                     "COUNT(*), SUM(energy_j), SUM(COALESCE(input_tokens, 0)), SUM(COALESCE(output_tokens, 0)), "
                     "SUM(COALESCE(latency_ms, 0)), SUM(COALESCE(co2e_g, 0)) FROM records WHERE ts >= ? AND ts < ? "
                     "GROUP BY 1, 2, 3, 4, 5, 6, 7, 8", (cut, boundary + 3600))
    conn.close()

    found = diagnose(f"sqlite:///{path}", journal_folder=tmp_path / "j")
    assert [f.text for f in found.problems if f.text.startswith("hourly rollup")], found.findings
    assert "hourly summary matches the records" in [f.text for f in found.findings]

    repaired = diagnose(f"sqlite:///{path}", journal_folder=tmp_path / "j", repair=True)
    assert not repaired.problems, repaired.problems
    assert "hourly rollup matches the records" in [f.text for f in repaired.findings]
    led = SQLiteLedger(path)
    try:
        kept = sum(r.requests for r in led.raw_summary(0.0, None, dims=("model",)))
        assert sum(r.requests for r in led.summary(0.0, dims=("model",))) == kept < 600
    finally:
        led.close()
