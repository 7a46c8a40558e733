"""The meter conformance suite: every Meter implementation must pass every check in ``METER_CHECKS``.

Each check takes a :class:`MeterHarness`: how to make the meter, and ``work(units)``, which does ``units``
of real work that the meter can see (CPU busy loops; for RAPL on a recorded powercap tree it also advances the
counter files by a fixed amount per unit, as the hardware would).
"""

from __future__ import annotations

import gc
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from router.energy import EnergyReading, Meter


@dataclass
class MeterHarness:
    make: Callable[[], Meter]
    work: Callable[[int], None]
    name: str


def busy(units: int, unit_s: float = 0.02) -> None:
    """Keep one CPU busy for about ``units × unit_s`` seconds of CPU time (not wall time)."""
    end = time.thread_time() + units * unit_s
    x = 0
    while time.thread_time() < end:
        x += 1


def _measure(meter: Meter, work: Callable[[int], None], units: int) -> EnergyReading:
    span = meter.start()
    work(units)
    return span.stop()


def check_reading_shape(h: MeterHarness) -> None:
    """A reading is finite, non-negative, and names how it was obtained."""
    meter = h.make()
    try:
        r = _measure(meter, h.work, 1)
        assert isinstance(r, EnergyReading)
        assert math.isfinite(r.joules) and r.joules >= 0.0, r
        assert r.kind == meter.kind, (r.kind, meter.kind)
        assert r.method == meter.name, (r.method, meter.name)
        assert r.source == f"{r.kind}:{r.method}"
        assert r.detail, "every reading says where it comes from"
    finally:
        meter.close()


def check_more_work_more_joules(h: MeterHarness) -> None:
    meter = h.make()
    try:
        small = _measure(meter, h.work, 1).joules
        large = _measure(meter, h.work, 5).joules
        assert large > small * 2.0, (small, large)
    finally:
        meter.close()


def check_stop_twice_is_an_error(h: MeterHarness) -> None:
    meter = h.make()
    try:
        span = meter.start()
        span.stop()
        try:
            span.stop()
        except RuntimeError:
            return
        raise AssertionError("a second stop() must raise, not charge the same joules twice")
    finally:
        meter.close()


def check_concurrent_spans_share_not_double_count(h: MeterHarness) -> None:
    """Two requests open over the same work are each charged a share, not the whole of it."""
    meter = h.make()
    try:
        alone = _measure(meter, h.work, 4).joules
        a, b = meter.start(), meter.start()
        h.work(4)
        ra, rb = a.stop(), b.stop()
        assert ra.joules + rb.joules < 1.5 * alone, (ra.joules, rb.joules, alone)
        assert ra.joules > 0.2 * alone and rb.joules > 0.2 * alone, (ra.joules, rb.joules, alone)
        assert "concurrent" in ra.detail, "the reading says it was shared"
    finally:
        meter.close()


def check_spans_from_many_threads(h: MeterHarness) -> None:
    """Spans opened and closed in several threads at once all return sane readings."""
    meter = h.make()
    readings: list[EnergyReading] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def one() -> None:
        try:
            for _ in range(20):
                span = meter.start()
                h.work(0)
                r = span.stop()
                with lock:
                    readings.append(r)
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    meter.close()
    assert not errors, errors
    assert len(readings) == 80
    assert all(math.isfinite(r.joules) and r.joules >= 0 for r in readings)


def check_abandoned_span_does_not_distort_later_ones(h: MeterHarness) -> None:
    """A span dropped without ``stop`` (a crashed request) must not keep taking a share of later work."""
    meter = h.make()
    try:
        alone = _measure(meter, h.work, 4).joules
        span = meter.start()
        del span
        gc.collect()
        after = _measure(meter, h.work, 4).joules
        assert after > 0.7 * alone, (after, alone)
    finally:
        meter.close()


METER_CHECKS: list[Callable[[MeterHarness], None]] = [
    check_reading_shape,
    check_more_work_more_joules,
    check_stop_twice_is_an_error,
    check_concurrent_spans_share_not_double_count,
    check_spans_from_many_threads,
    check_abandoned_span_does_not_distort_later_ones,
]


def check_meter(h: MeterHarness) -> None:
    for check in METER_CHECKS:
        check(h)
