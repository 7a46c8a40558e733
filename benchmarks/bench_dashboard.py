"""The dashboard's JSON API on a 1,000,000-record ledger. Target: every query answers in ≤ 1 s.

The ledger is `bench_ledger.py`'s busy day (3 models, 20 keys, 3 policies, 6 tasks, 3 outcomes, built through
the real schema so the hourly summary is kept by its trigger, and the hourly rollup folded by the ledger as its
writers fold it), laid over the 24 hours up to now, so that the dashboard's windows (which end now) fall on it:
the densest case for the raw reads, ~41,700 records an hour.
Each API route is called through the proxy app in process (Starlette's test client: routing, auth, the thread
hop, JSON), as the page calls it; the first call of each is reported apart (cold caches), then the median and
worst of the next ``--repeats``.

    python benchmarks/bench_dashboard.py [--records 1000000] [--file PATH (kept and reused)] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from starlette.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ledger import build  # noqa: E402

from router.config import RouterConfig  # noqa: E402
from router.ledger import SQLiteLedger  # noqa: E402
from router.proxy.app import create_app  # noqa: E402

QUERIES = [
    "totals?window=1h", "totals?window=24h", "totals?window=7d", "totals?window=all",
    "series?window=1h&by=model", "series?window=24h&by=model", "series?window=24h&by=tier", "series?window=all",
    "budgets", "recent?limit=50", "recent?limit=1000", "simulation",
]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--file", type=Path, help="ledger file to build (or reuse, when it exists)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.file or Path(tmp) / "dashboard.sqlite3"
        if not path.exists():
            took = build(path, args.records, time.time() - 86400.0)
            print(f"built {args.records:,} records over the last 24 h in {took:.0f} s: {path}")
        led = SQLiteLedger(path)
        first, last = led.records(limit=1)[0].ts, led.latest_records(1)[0].ts
        with led._lock:
            n, summary = (led._conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                          for t in ("records", "summary_hourly"))
        led.close()
        print(f"ledger: {n:,} records ({summary:,} hourly summary rows) from {time.ctime(first)} to "
              f"{time.ctime(last)}; now {time.ctime()}")
        config = RouterConfig(ledger_url=f"sqlite:///{path}", proxy={"warm_up": False},
                              journal={"folder": Path(tmp) / "journal"})
        print(f"{'GET /dashboard/api/...':<30} {'first':>8} {'median':>8} {'worst':>8}  response")
        with TestClient(create_app(config=config)) as client:
            for q in QUERIES:
                times = []
                for _ in range(1 + args.repeats):
                    t0 = time.perf_counter()
                    r = client.get(f"/dashboard/api/{q}")
                    times.append(time.perf_counter() - t0)
                    r.raise_for_status()
                rest = times[1:]
                print(f"{q:<30} {times[0]:7.3f}s {statistics.median(rest):7.3f}s {max(rest):7.3f}s  "
                      f"{len(r.content) / 1024:,.0f} KiB")


if __name__ == "__main__":
    main()
