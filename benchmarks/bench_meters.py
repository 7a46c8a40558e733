"""Cost of metering one request: microseconds per ``start()`` + ``stop()`` for each meter this machine has.

Target: ≤ 50 µs per request (issue 9). RAPL is also timed on a powercap tree of real files in a temp dir
(same code path as /sys/class/powercap, but page-cache reads instead of MSR reads, so the hardware
figure may be a few µs higher); NVML only where a GPU is present.

    python benchmarks/bench_meters.py [--n 20000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from router.energy import CpuTimeMeter, Meter, RaplMeter
from router.energy.meters import RAPL_ROOT, find_rapl_domains


def bench(meter: Meter, n: int, rounds: int = 5) -> tuple[float, float]:
    """Median and best of ``rounds`` of the mean µs per start+stop over ``n`` spans."""
    for _ in range(min(n, 1000)):
        meter.start().stop()
    per = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            meter.start().stop()
        per.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(per), min(per)


def fake_powercap(root: Path) -> Path:
    for rel, name, value in [("intel-rapl:0", "package-0", 123456789), ("intel-rapl:0/intel-rapl:0:2", "dram", 4567)]:
        d = root / rel
        d.mkdir(parents=True)
        (d / "name").write_text(name + "\n")
        (d / "energy_uj").write_text(f"{value}\n")
        (d / "max_energy_range_uj").write_text("262143328850\n")
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    args = ap.parse_args()
    rows: list[tuple[str, str]] = []
    meters: list[tuple[str, Meter]] = [("cpu-time (estimated)", CpuTimeMeter())]
    tmp = tempfile.TemporaryDirectory()
    meters.append(("rapl on powercap files (package+dram)", RaplMeter(fake_powercap(Path(tmp.name) / "pc"))))
    if find_rapl_domains(RAPL_ROOT):
        meters.append(("rapl on this machine's /sys/class/powercap", RaplMeter()))
    else:
        rows.append(("rapl on this machine", "not readable here (no /sys/class/powercap RAPL domains)"))
    try:
        from router.energy.nvml import NvmlMeter

        meters.append(("nvml (GPU)", NvmlMeter()))
    except OSError as exc:
        rows.append(("nvml", f"not available here ({exc})"))
    for name, meter in meters:
        med, best = bench(meter, args.n)
        verdict = "OK" if med <= 50 else "OVER the 50 µs budget"
        rows.append((name, f"{med:7.2f} µs per start+stop (best {best:.2f}) {verdict}"))
        meter.close()
    tmp.cleanup()
    print(f"metering cost, {args.n} spans x 5 rounds, python {sys.version.split()[0]}")
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


if __name__ == "__main__":
    main()
