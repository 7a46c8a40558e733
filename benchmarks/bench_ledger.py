"""The ledger of a busy day: build a 1M-record SQLite ledger, then time ``router ledger report`` and one
``record()`` write. Targets (issue 9 / issue 4): report ≤ 2 s; a write ~≤ 1 ms.

The file is built through the real schema (the trigger that keeps the hourly summary fires for every row),
but in batched transactions with ``executemany`` so building takes a minute rather than the ~hour that 1M
single-record transactions would; the write timing below uses the real one-transaction-per-record path.

    python benchmarks/bench_ledger.py [--records 1000000] [--file PATH (kept and reused)]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from router.cards import load_cards
from router.config import embedded_dir
from router.ledger import LedgerRecord, SQLiteLedger
from router.ledger.report import build_report
from router.ledger.sqlite import _COLUMNS

MODELS = [("sentiment-onnx", "specialist", 0.005), ("smollm2-135m", "small", 6.0), ("gemma3-270m", "large", 30.0)]


def build(path: Path, n: int, day_start: float) -> float:
    led = SQLiteLedger(path)
    rng = random.Random(9)
    keys = [f"key-{i:016x}" for i in range(20)]
    policies = ["balanced", "eco", "quality"]
    tasks = ["sentiment", "chat", "qa", "math", "code", "summary"]
    insert = f"INSERT INTO records ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"
    t0 = time.perf_counter()
    batch = 50_000
    for start in range(0, n, batch):
        rows = []
        for i in range(start, min(n, start + batch)):
            model, tier, j = MODELS[rng.choices((0, 1, 2), (0.4, 0.45, 0.15))[0]]
            tin, tout = rng.randint(10, 400), rng.randint(1, 200)
            outcome = rng.choices(("ok", "escalated", "error"), (0.9, 0.07, 0.03))[0]
            rec = LedgerRecord(
                request_id=f"req-{i}", model=model, tier=tier, energy_j=j * rng.uniform(0.5, 1.5),
                energy_source="estimated:cpu-time", outcome=outcome, reason="bench", input_tokens=tin,  # type: ignore[arg-type]
                output_tokens=tout, latency_ms=rng.uniform(5, 3000), policy=rng.choice(policies),
                task=rng.choice(tasks), key_hash=rng.choice(keys), attempt=0, co2e_g=0.001,
                ts=day_start + 86400.0 * i / n,
            )  # fmt: skip
            rows.append(tuple(getattr(rec, c) for c in _COLUMNS))
        with led._lock:
            led._conn.execute("BEGIN")
            led._conn.executemany(insert, rows)
            led._conn.execute("COMMIT")
    led.close()
    return time.perf_counter() - t0


def timed(fn, repeat: int = 3) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--file", type=Path, default=None, help="keep the built ledger here (reused if present)")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    path = args.file or Path(tmp.name) / "ledger.sqlite3"
    day_start = 1_700_006_400.0  # 2023-11-15 00:00 UTC
    if not path.exists():
        secs = build(path, args.records, day_start)
        print(f"built {args.records:,} records in {secs:.1f} s ({path.stat().st_size / 1e6:.0f} MB) -> {path}")
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
