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

from forking import in_a_forked_child

from router.energy import EnergyReading, Meter

_LOCK_TYPE = type(threading.Lock())


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


def _locks_of(meter: Meter) -> list[threading.Lock]:
    """The locks a meter and its parts (its fair share, a sampler) hold while a request starts or stops."""
    locks = []
    for part in [meter, *vars(meter).values()]:
        fields = vars(part).values() if hasattr(part, "__dict__") else [
            getattr(part, slot, None) for slot in getattr(type(part), "__slots__", ())]
        locks += [f for f in fields if isinstance(f, _LOCK_TYPE)]
    return locks


def check_a_forked_child_meters_on_its_own(h: MeterHarness) -> None:
    """A meter made before the process forks (gunicorn --preload, Celery's prefork pool), forked while a request
    of the parent's holds its locks and another is open: the child's requests neither wait forever for the
    parent's locks nor split their joules with the parent's open request, which is not the child's."""
    meter = h.make()
    try:
        parents_request = meter.start()

        def in_the_child() -> None:  # a failed assert ends the child with exit code 1
            reading = _measure(meter, h.work, 2)
            assert "concurrent" not in reading.detail, reading.detail
            assert math.isfinite(reading.joules) and reading.joules > 0, reading

        held = _locks_of(meter)  # as a request of the parent's (or its power sampler) may hold them at the fork
        for lock in held:
            lock.acquire()

        def release() -> None:
            while held:
                held.pop().release()

        try:
            in_a_forked_child(in_the_child, f"the forked child metered its request with {h.name}", timeout_s=15,
                              meanwhile=release)
        finally:
            release()
        assert parents_request.stop().joules >= 0  # the parent's own meter goes on as it was
    finally:
        meter.close()


def check_a_request_open_at_a_fork_and_ended_in_the_child_leaves_the_childs_count_exact(h: MeterHarness) -> None:
    """The thread that forks has a request open and ends it in the child (the one thread a child has, going on
    where the fork left it): two requests of the child's own then running at once still split the child's work,
    as they would had the forking thread's request never been there."""
    meter = h.make()
    try:
        forking_threads_request = meter.start()

        def in_the_child() -> None:  # a failed assert ends the child with exit code 1
            first = meter.start()
            forking_threads_request.stop()
            second = meter.start()
            h.work(2)
            reading = second.stop()
            first.stop()
            assert "concurrent" in reading.detail, f"split with the child's other open request: {reading.detail}"
            assert math.isfinite(reading.joules) and reading.joules > 0, reading

        in_a_forked_child(in_the_child, f"the forked child counted its open requests with {h.name}", timeout_s=15)
        assert forking_threads_request.stop().joules >= 0  # the parent's own meter goes on as it was
    finally:
        meter.close()


METER_CHECKS: list[Callable[[MeterHarness], None]] = [
    check_reading_shape,
    check_more_work_more_joules,
    check_stop_twice_is_an_error,
    check_concurrent_spans_share_not_double_count,
    check_spans_from_many_threads,
    check_abandoned_span_does_not_distort_later_ones,
    check_a_forked_child_meters_on_its_own,
    check_a_request_open_at_a_fork_and_ended_in_the_child_leaves_the_childs_count_exact,
]


def check_meter(h: MeterHarness) -> None:
    for check in METER_CHECKS:
        check(h)
