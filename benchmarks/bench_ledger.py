"""The ledger of a busy day: build a 1M-record SQLite ledger, then time ``router ledger report`` and one
``record()`` write. Targets (issue 9 / issue 4): report ≤ 2 s; a write ~≤ 1 ms.

The file is built through the real schema (the trigger that keeps the hourly summary fires for every row),
but in batched transactions with ``executemany`` so building takes a minute rather than the ~hour that 1M
single-record transactions would, each followed by the ledger's own fold into ``rollup_hourly`` (as a Router's
writes leave it); the write timing below uses the real one-transaction-per-record path.

    python benchmarks/bench_ledger.py [--records 1000000] [--file PATH (kept and reused)]

Months of traffic and an operator's pass over them: ``--months 3`` spreads the records (default 1,500,000, 40
keys) over the 90 days up to now with 4 outcomes, 2 energy sources, 3 grid zones and a fifth without CO2e;
``--operator`` runs, each in a fresh process, ``router ledger``, ``report``, ``report --by key``, ``doctor``,
``export`` (to a temporary file), the dashboard API's totals and series for 24h, 7d, 30d and all (through the
proxy app, as bench_dashboard.py calls it) and ``record_many`` of 64 records, and prints each one's wall time
and peak RSS (wait4's rusage of that process):

    python benchmarks/bench_ledger.py --months 3 [--records 1500000] [--keys 40] --operator [--file PATH]
    python benchmarks/bench_ledger.py --operator     # the same pass on the busy day, laid over the last 24 h

Three more measurements, each on its own (they start what they need: redis-server and PostgreSQL through the
tests' helpers, which need their binaries installed):

    python benchmarks/bench_ledger.py --journal      # µs per journal append per fsync setting, and what the
                                                     # proxy's writer pays per record with and without it
    python benchmarks/bench_ledger.py --reserve      # a budget reservation's round trip on SQLite, Redis,
                                                     # PostgreSQL (and a settlement's)
    python benchmarks/bench_ledger.py --outage 60    # a writer through the journal while the SQLite store is
                                                     # write-locked for 60 s; records missing after the replay
    python benchmarks/bench_ledger.py --ids          # record_many's CPU per record with random ids against
                                                     # time-ordered ones (router/_ids.py), 200,000 records in
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from router.cards import load_cards
from router.config import embedded_dir
from router.ledger import Ledger, LedgerRecord, SQLiteLedger
from router.ledger.report import build_report
from router.ledger.sqlite import _COLUMNS

ROOT = Path(__file__).resolve().parents[1]
MODELS = [("sentiment-onnx", "specialist", 0.005), ("smollm2-135m", "small", 6.0), ("gemma3-270m", "large", 30.0)]


ZONES = [("FR", 55.0), ("DE", 380.0), ("US-CAL-CISO", 240.0)]


def build(path: Path, n: int, start: float, *, days: float = 1.0, keys: int = 20, months_mix: bool = False) -> float:
    """``n`` records spread evenly over ``days`` from ``start``, through the real schema in 50k-row transactions;
    after each, the ledger's own fold brings ``rollup_hourly`` up to date as a Router's writes leave it (a writer
    folds once ~2,000 records wait). ``months_mix`` adds what months of an operator's traffic hold: 4 outcomes
    (refusals at 0 J), 2 energy sources, 3 grid zones with their CO2e, a fifth of the records without CO2e."""
    led = SQLiteLedger(path)
    rng = random.Random(9)
    key_hashes = [f"key-{i:016x}" for i in range(keys)]
    policies = ["balanced", "eco", "quality"]
    tasks = ["sentiment", "chat", "qa", "math", "code", "summary"]
    insert = f"INSERT INTO records ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"
    t0 = time.perf_counter()
    batch = 50_000
    span = 86400.0 * days
    for first in range(0, n, batch):
        rows = []
        for i in range(first, min(n, first + batch)):
            model, tier, j = MODELS[rng.choices((0, 1, 2), (0.4, 0.45, 0.15))[0]]
            tin, tout = rng.randint(10, 400), rng.randint(1, 200)
            if months_mix:
                outcome = rng.choices(("ok", "escalated", "error", "rejected"), (0.88, 0.06, 0.03, 0.03))[0]
                source = rng.choices(("estimated:cpu-time", "measured:rapl"), (0.7, 0.3))[0]
                energy = 0.0 if outcome == "rejected" else j * rng.uniform(0.5, 1.5)
                zone, grid = ZONES[rng.randrange(3)] if rng.random() >= 0.2 else (None, None)
                co2e = None if grid is None else energy / 3.6e6 * grid
            else:
                outcome = rng.choices(("ok", "escalated", "error"), (0.9, 0.07, 0.03))[0]
                source, energy, co2e, zone, grid = "estimated:cpu-time", j * rng.uniform(0.5, 1.5), 0.001, None, None
            rec = LedgerRecord(
                request_id=f"req-{i}", model=model, tier=tier, energy_j=energy,
                energy_source=source, outcome=outcome, reason="bench", input_tokens=tin,  # type: ignore[arg-type]
                output_tokens=tout, latency_ms=rng.uniform(5, 3000), policy=rng.choice(policies),
                task=rng.choice(tasks), key_hash=rng.choice(key_hashes), attempt=0, co2e_g=co2e,
                ts=start + span * i / n, grid_g_per_kwh=grid, zone=zone,
            )  # fmt: skip
            rows.append(tuple(getattr(rec, c) for c in _COLUMNS))
        with led._lock:
            led._conn.execute("BEGIN")
            led._conn.executemany(insert, rows)
            led._conn.execute("COMMIT")
            led._fold_if_due(len(rows), (sqlite3.OperationalError,))  # as record_many does after its transaction
    led.close()
    return time.perf_counter() - t0


def _percentiles(us: list[float]) -> str:
    us = sorted(us)
    return f"median {statistics.median(us):7.1f} µs  p99 {us[int(len(us) * 0.99)]:8.1f} µs"


def bench_journal(n: int = 20_000) -> None:
    """µs per ``Journal.append`` (JSON line + write(2), + fdatasync per setting), and per ``record()`` of the
    proxy's BackgroundLedger with and without the journal (its request-path cost: the store write happens on
    the writer thread either way)."""
    from router.ledger.journal import Journal, JournalSettings
    from router.proxy.ledger_writer import BackgroundLedger

    def rec(i: int) -> LedgerRecord:
        return LedgerRecord(f"req-{i}", "smollm2-135m", "small", 5.0, "estimated:cpu-time", reason="bench " * 8,
                            input_tokens=30, output_tokens=40, latency_ms=900.0, policy="balanced", task="chat",
                            key_hash="key-0123456789abcdef", co2e_g=0.001)  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        print(f"journal append, {n:,} records each (folder on {tmp}):")
        for mode, ms in (("never", 50.0), ("group", 50.0), ("group", 5.0), ("always", 50.0)):
            count = n if mode != "always" else n // 10
            journal = Journal(Path(tmp) / f"{mode}{ms}", JournalSettings(fsync=mode, fsync_interval_ms=ms))  # type: ignore[arg-type]
            recs = [rec(i) for i in range(count)]
            lat = []
            for r in recs:
                t0 = time.perf_counter()
                journal.append(r)
                lat.append((time.perf_counter() - t0) * 1e6)
            journal.close()
            label = f"{mode} ({ms:g} ms)" if mode == "group" else mode
            print(f"  fsync {label:<15} {_percentiles(lat)}  ({count:,} records)")
        for journal_on in (False, True):
            led = BackgroundLedger(SQLiteLedger(Path(tmp) / f"bg{journal_on}.sqlite3"), journal=journal_on)
            lat = []
            for i in range(n):
                r = rec(i)
                t0 = time.perf_counter()
                led.record(r)
                lat.append((time.perf_counter() - t0) * 1e6)
                if i % 64 == 63:
                    time.sleep(0.001)  # let the writer thread run, as between requests in the proxy
            led.close()
            print(f"  BackgroundLedger.record, journal {'on ' if journal_on else 'off'}  {_percentiles(lat)}")


def bench_reserve(n: int = 2000) -> None:
    """One ``try_reserve`` (and one ``settle``) round trip on each store, from one thread, loopback servers."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest_postgres import start_postgres, stop_postgres
    from conftest_redis import RedisServer

    from router.ledger import open_store

    with tempfile.TemporaryDirectory() as tmp:
        redis_server = RedisServer(Path(tmp))
        redis_server.start()
        pg = start_postgres(fsync=True)  # as in production: a commit waits for its WAL to reach the disk
        try:
            stores = [
                ("SQLite (WAL, local file)", f"sqlite:///{tmp}/r.sqlite3"),
                ("Redis (loopback TCP)", f"{redis_server.url}/0"),
                ("PostgreSQL (loopback TCP)", pg.url),
                ("PostgreSQL, async commit", pg.url + "?options=-c%20synchronous_commit%3Doff"),
            ]
            for name, url in stores:
                led = open_store(url)
                for _ in range(200):  # warm up: connections, prepared statements
                    led.settle(led.try_reserve("warm", 0.001, 1e12, 3600), 0.0)  # type: ignore[arg-type]
                res, sett = [], []
                for _ in range(n):
                    t0 = time.perf_counter()
                    r = led.try_reserve("bench", 0.001, 1e12, 3600)
                    t1 = time.perf_counter()
                    led.settle(r, 0.0005)  # type: ignore[arg-type]
                    res.append((t1 - t0) * 1e6)
                    sett.append((time.perf_counter() - t1) * 1e6)
                print(f"{name:<27} try_reserve {_percentiles(res)}   settle {_percentiles(sett)}")
                print(f"{'':<27} 8 threads on one budget: {_contended(led):,.0f} reservations/s")
                led.close()
        finally:
            redis_server.stop()
            stop_postgres(pg)


def _contended(led: Ledger, threads: int = 8, each: int = 300) -> float:
    """Reservations per second from ``threads`` threads on one budget (one row or key: they serialise)."""
    import threading

    barrier = threading.Barrier(threads + 1)

    def run() -> None:
        barrier.wait()
        for _ in range(each):
            led.try_reserve("hot", 0.001, 1e12, 3600)

    ts = [threading.Thread(target=run) for _ in range(threads)]
    for t in ts:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    return threads * each / (time.perf_counter() - t0)


def bench_outage(seconds: float) -> None:
    """A writer records ~500 records/s through JournaledLedger while another connection holds the SQLite write
    lock for ``seconds``; then the lock goes, the replay runs, and every record written is looked for."""
    import sqlite3
    import threading

    from router.ledger import JournalSettings, open_ledger

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/o.sqlite3?timeout_s=0.2"
        led = open_ledger(url, journal=JournalSettings(replay_interval_s=1.0))
        holder = sqlite3.connect(f"{tmp}/o.sqlite3", isolation_level=None)
        written: list[str] = []
        slow: list[float] = []
        stop = threading.Event()

        def writer() -> None:
            i = 0
            while not stop.is_set():
                rec = LedgerRecord(f"o{i}", "m", "small", 1.0, "estimated:cpu-time")
                t0 = time.perf_counter()
                led.record(rec)
                slow.append(time.perf_counter() - t0)
                written.append(rec.record_id)
                i += 1
                time.sleep(0.002)

        t = threading.Thread(target=writer)
        t.start()
        time.sleep(1.0)
        holder.execute("BEGIN EXCLUSIVE")
        t_lock = time.time()
        time.sleep(seconds)
        during = len(written)
        holder.execute("COMMIT")
        t_back = time.time()
        time.sleep(1.0)
        stop.set()
        t.join()
        while led.unavailable and time.time() - t_back < 60:  # type: ignore[attr-defined]
            time.sleep(0.1)
        replay_s = time.time() - t_back
        led.replay()  # type: ignore[attr-defined]
        stored = {r.record_id for r in led.records()}
        missing = [x for x in written if x not in stored]
        print(f"outage of {t_back - t_lock:.1f} s under a writer: {len(written):,} records written "
              f"({during:,} by the end of the outage), {len(stored):,} stored, {len(missing)} missing; "
              f"journal replayed within {replay_s:.1f} s of the store's return; record() took at most "
              f"{max(slow) * 1000:.0f} ms (the store's 0.2 s lock timeout, then the journal)")  # fmt: skip
        led.close()


def bench_ids(prefill: int = 200_000, batches: int = 400, batch: int = 60) -> None:
    """The proxy writes groups of ~60 records; each record adds a key to the unique record-id index and the
    request-id index. Random keys land on random index pages, time-ordered ones at the end."""
    import os

    from router._ids import new_record_id, new_request_id

    def random_ids() -> tuple[str, str]:
        return os.urandom(16).hex(), "chatcmpl-" + os.urandom(12).hex()

    def ordered_ids() -> tuple[str, str]:
        return new_record_id(), new_request_id()

    for name, ids in (("random", random_ids), ("time-ordered", ordered_ids)):
        with tempfile.TemporaryDirectory() as tmp:
            led = SQLiteLedger(Path(tmp) / "ledger.sqlite3")

            def records(n: int, ids=ids) -> list[LedgerRecord]:  # type: ignore[no-untyped-def]
                out = []
                for _ in range(n):
                    record_id, request_id = ids()
                    out.append(LedgerRecord(request_id=request_id, record_id=record_id, model="remote-small",
                                            tier="small", energy_j=1.5, energy_source="estimated",
                                            reason="balanced: the cheapest adequate model", input_tokens=20,
                                            output_tokens=16, latency_ms=3.2))
                return out

            for _ in range(prefill // 250):
                led.record_many(records(250))
            groups = [records(batch) for _ in range(batches)]
            t0 = time.process_time()
            for group in groups:
                led.record_many(group)
            us = (time.process_time() - t0) / (batches * batch) * 1e6
            led.close()
        print(f"{name:>13} ids: {us:.1f} µs CPU per record (record_many of {batch}, {prefill:,} records in)")


DASHBOARD_QUERIES = [f"{what}?window={w}" for w in ("24h", "7d", "30d", "all") for what in ("totals", "series")]
WRITE_BATCHES = 200  # record_many calls of 64 records in the operator pass's write timing


def _child_argv(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args]


def _measured(argv: list[str], folder: Path) -> tuple[float, float, str]:
    """Runs ``argv`` as a fresh process; its wall time (s), its own peak RSS (MB, from wait4's rusage of that one
    child: RUSAGE_CHILDREN would give the largest child so far) and its stdout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out_path, err_path = folder / "child.out", folder / "child.err"
    with out_path.open("w") as out, err_path.open("w") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}:\n{err_path.read_text()[-2000:]}")
    return wall, usage.ru_maxrss / 1024, out_path.read_text()


def child_dashboard(path: Path, query: str) -> None:
    """One dashboard API route through the proxy app (as bench_dashboard.py calls it): a first call, then the best
    of three more; prints JSON with both and the peak RSS once the app had started (before the first call)."""
    import json
    import resource

    from starlette.testclient import TestClient

    from router.config import RouterConfig
    from router.proxy.app import create_app

    with tempfile.TemporaryDirectory() as tmp:
        config = RouterConfig(ledger_url=f"sqlite:///{path}", proxy={"warm_up": False},
                              journal={"folder": Path(tmp) / "journal"})  # fmt: skip
        with TestClient(create_app(config=config)) as client:
            started_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            times = []
            for _ in range(4):
                t0 = time.perf_counter()
                client.get(f"/dashboard/api/{query}").raise_for_status()
                times.append(time.perf_counter() - t0)
    print(json.dumps({"first_s": times[0], "best_s": min(times[1:]), "started_mb": started_mb}))


def child_write(path: Path) -> None:
    """``record_many`` of 64 records, ``WRITE_BATCHES`` times, on the big ledger (records stamped now)."""
    import json

    led = SQLiteLedger(path)
    now = time.time()
    per_record = []
    for b in range(WRITE_BATCHES):
        recs = [LedgerRecord(f"w{b}-{i}", "smollm2-135m", "small", 5.0, "estimated:cpu-time", input_tokens=30,
                             output_tokens=40, latency_ms=900.0, policy="balanced", task="chat",
                             key_hash="key-0000000000000000", co2e_g=0.0004, ts=now, grid_g_per_kwh=55.0, zone="FR")
                for i in range(64)]  # fmt: skip
        t0 = time.perf_counter()
        led.record_many(recs)
        per_record.append((time.perf_counter() - t0) / 64 * 1e6)
    led.close()
    per_record.sort()
    print(json.dumps({"median_us": statistics.median(per_record), "p99_us": per_record[int(len(per_record) * 0.99)],
                      "mean_us": statistics.fmean(per_record)}))  # fmt: skip


def operator_pass(path: Path) -> None:
    """What an operator runs on the ledger, each in a fresh process so that its peak RSS is its own."""
    import json

    from rich.console import Console
    from rich.table import Table

    url = f"sqlite:///{path}"
    cli = [sys.executable, "-m", "router"]
    table = Table(title=f"operator's pass on {path.name} (each a fresh process)")
    for col, right in (("what", False), ("wall", True), ("peak RSS", True), ("", False)):
        table.add_column(col, justify="right" if right else "left")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        export_to = folder / "export.csv"
        commands = [
            ("`router --help` (interpreter + CLI: the floor)", [*cli, "--help"]),
            ("`router ledger`", [*cli, "ledger", "--ledger", url]),
            ("`router ledger report`", [*cli, "ledger", "report", "--ledger", url]),
            ("`router ledger report --by key`", [*cli, "ledger", "report", "--by", "key", "--ledger", url]),
            ("`router ledger doctor`", [*cli, "ledger", "doctor", "--ledger", url]),
            ("`router ledger export -o FILE.csv`", [*cli, "ledger", "export", "-o", str(export_to), "--ledger", url]),
        ]
        for label, argv in commands:
            wall, peak, _ = _measured(argv, folder)
            note = f"{export_to.stat().st_size / 1e6:,.0f} MB of CSV" if "export" in label else ""
            table.add_row(label, f"{wall:.2f} s", f"{peak:,.0f} MB", note)
            print(f"{label}: {wall:.2f} s, peak RSS {peak:,.0f} MB {note}", flush=True)
        export_to.unlink(missing_ok=True)
        for query in DASHBOARD_QUERIES:
            wall, peak, out = _measured(_child_argv("--child-dashboard", query, "--file", str(path)), folder)
            got = json.loads(out)
            note = (f"call: first {got['first_s']:.3f} s, best of 3 more {got['best_s']:.3f} s "
                    f"(app started: {got['started_mb']:,.0f} MB)")
            table.add_row(f"GET /dashboard/api/{query}", f"{wall:.2f} s", f"{peak:,.0f} MB", note)
            print(f"{query}: {wall:.2f} s, peak RSS {peak:,.0f} MB, {note}", flush=True)
        wall, peak, out = _measured(_child_argv("--child-write", "--file", str(path)), folder)
        got = json.loads(out)
        note = (f"{WRITE_BATCHES} × 64 records: median {got['median_us']:.1f} µs/record, "
                f"p99 {got['p99_us']:.1f}, mean {got['mean_us']:.1f}")
        table.add_row("`record_many`, batches of 64", f"{wall:.2f} s", f"{peak:,.0f} MB", note)
    Console(width=160).print(table)
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def timed(fn, repeat: int = 3) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=None, help="default 1,000,000 (a day), 1,500,000 (--months)")
    ap.add_argument("--months", type=int, default=None, metavar="N",
                    help="months of traffic: N × 30 days up to now, with the operator's mix (4 outcomes, 2 energy "
                         "sources, 3 zones, a fifth without CO2e)")  # fmt: skip
    ap.add_argument("--keys", type=int, default=None, help="API keys (default 20 for a day, 40 with --months)")
    ap.add_argument("--operator", action="store_true",
                    help="time the operator's commands and the dashboard's long windows, each in its own process")
    ap.add_argument("--file", type=Path, default=None, help="keep the built ledger here (reused if present)")
    ap.add_argument("--journal", action="store_true", help="time journal appends per fsync setting")
    ap.add_argument("--reserve", action="store_true", help="time a reservation's round trip per store")
    ap.add_argument("--outage", type=float, default=None, metavar="S", help="a store outage of S seconds")
    ap.add_argument("--ids", action="store_true", help="record_many with random against time-ordered ids")
    ap.add_argument("--child-dashboard", metavar="QUERY", help=argparse.SUPPRESS)  # the operator pass's children
    ap.add_argument("--child-write", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_dashboard:
        child_dashboard(args.file, args.child_dashboard)
        return
    if args.child_write:
        child_write(args.file)
        return
    if args.ids:
        bench_ids()
        return
    if args.journal or args.reserve or args.outage:
        if args.journal:
            bench_journal()
        if args.reserve:
            bench_reserve()
        if args.outage:
            bench_outage(args.outage)
        return
    print(f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    tmp = tempfile.TemporaryDirectory()
    path = args.file or Path(tmp.name) / "ledger.sqlite3"
    days = 30.0 * args.months if args.months else 1.0
    records = args.records or (1_500_000 if args.months else 1_000_000)
    keys = args.keys or (40 if args.months else 20)
    # the dashboard's windows end now, so the operator's ledger ends now; the day's report timings keep a fixed day
    day_start = time.time() - 86400.0 * days if args.months or args.operator else 1_700_006_400.0  # 2023-11-15
    if not path.exists():
        secs = build(path, records, day_start, days=days, keys=keys, months_mix=bool(args.months))
        print(f"built {records:,} records over {days:g} days, {keys} keys, in {secs:.1f} s "
              f"({path.stat().st_size / 1e6:.0f} MB) -> {path}")
    if args.operator:
        led = SQLiteLedger(path)
        counts = [led._conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                  for t in ("records", "summary_hourly", "rollup_hourly")]  # fmt: skip
        led.close()
        print(f"ledger: {counts[0]:,} records, {counts[1]:,} hourly summary rows, {counts[2]:,} rollup rows")
        operator_pass(path)
        tmp.cleanup()
        return
    led = SQLiteLedger(path)
    cards = load_cards(embedded_dir("models"))
    n = led._conn.execute("SELECT COUNT(*) FROM records").fetchone()[0]
    summary_rows = led._conn.execute("SELECT COUNT(*) FROM summary_hourly").fetchone()[0]
    print(f"ledger: {n:,} records, {summary_rows:,} hourly summary rows")

    rep = build_report(led, cards, by="model")
    t_report = timed(lambda: build_report(led, cards, by="model"))
    t_report_key = timed(lambda: build_report(led, cards, by="key"))
    t_partial = timed(lambda: build_report(led, cards, by="model", since=day_start + 5 * 3600 + 1234.5))
    t_totals = timed(lambda: (led.totals("model"), led.totals("day")))
    t_naive = timed(
        lambda: led._conn.execute(
            "SELECT model, COUNT(*), SUM(energy_j), SUM(input_tokens), SUM(output_tokens) FROM records GROUP BY model"
        ).fetchall(),
        repeat=1,
    )
    verdict = "OK" if t_report <= 2.0 else "OVER the 2 s target"
    print(f"report --by model (whole ledger, {rep.total.requests:,} requests): {t_report:.3f} s  {verdict}")
    print(f"report --by key:                                   {t_report_key:.3f} s")
    print(f"report --since mid-hour (partial hour from raw rows):  {t_partial:.3f} s")
    print(f"`router ledger` totals per model + per day:          {t_totals:.3f} s")
    print(f"(for comparison: one GROUP BY over the raw records:   {t_naive:.3f} s)")

    now = time.time()
    lat = []
    for i in range(1000):
        rec = LedgerRecord(f"w{i}", "smollm2-135m", "small", 5.0, "estimated:cpu-time", input_tokens=30,
                           output_tokens=40, latency_ms=900.0, policy="balanced", task="chat", ts=now)  # fmt: skip
        t0 = time.perf_counter()
        led.record(rec)
        lat.append((time.perf_counter() - t0) * 1000)
    lat.sort()
    print(
        f"record() on the {n:,}-record ledger, 1000 writes, one committed transaction each: "
        f"median {statistics.median(lat):.3f} ms, p99 {lat[989]:.3f} ms  "
        f"{'OK' if statistics.median(lat) <= 1.0 else 'OVER ~1 ms'}"
    )
    led.close()
    tmp.cleanup()


if __name__ == "__main__":
    main()
