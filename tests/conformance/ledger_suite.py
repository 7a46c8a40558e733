"""The ledger conformance suite: every Ledger implementation must pass every check in ``LEDGER_CHECKS``.

Like scikit-learn's ``check_estimator``: one set of checks run against the SQLite, Redis and PostgreSQL ledgers,
the journaled ledger and the proxy's background writer (and any future ledger). Each check takes
``open_store(name)``, which returns a ledger over the store called ``name``: a fresh empty one the first time, the
same data again when called with the same name (a reopen). A ledger's ``url`` must open the same store from another
process (the cross-process checks).

Two more families take a store-specific hook as well:

* ``MIGRATION_CHECKS(open_store, make_previous)``: ``make_previous(name, records)`` writes a store in the
  schema the previous release wrote (for SQLite, the file exactly as main's code made it);
* ``OUTAGE_CHECKS(outage)``: ``outage()`` returns ``(ledger, break_it, restore)``: a ledger whose store
  ``break_it()`` makes unavailable (a lock held elsewhere, a server stopped) and ``restore()`` brings back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone

import pytest

from router.errors import BadRequestError, ConfigError, LedgerError
from router.ledger import Feedback, Ledger, LedgerRecord, StoredPrompt, SummaryRow, aggregate, totals_from_summary
from router.ledger.arguments import GROUPS
from router.ledger.base import (
    SUMMARY_DIMS,
    bucket_of,
    check_dims,
    group_dims,
    group_gaps,
    group_value,
    reduce_dims,
)
from router.ledger.carbon_report import carbon_rows
from router.ledger.doctor import summary_mismatches

OpenStore = Callable[[str], Ledger]
MakePrevious = Callable[[str, list[LedgerRecord]], None]
Outage = Callable[[], tuple[Ledger, Callable[[], None], Callable[[], None]]]

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC: a fixed past so windows and days are deterministic


def _rec(i: int, ts: float, **kw: object) -> LedgerRecord:
    base: dict[str, object] = dict(
        request_id=f"r{i}",
        model=["smollm2-135m", "gemma3-270m", "sentiment-onnx"][i % 3],
        tier=["small", "large", "specialist"][i % 3],
        energy_j=0.5 + i,
        energy_source="estimated:cpu-time",
        outcome="error" if i % 5 == 4 else "ok",
        reason="test",
        input_tokens=10 + i,
        output_tokens=3 * i,
        latency_ms=100.0 + i,
        policy=["balanced", None][i % 2],
        task="chat",
        key_hash=["key-a", "key-b", None][i % 3],
        co2e_g=0.001 * i,
        ts=ts,
        estimated_j=[None, 0.25 + i][i % 2],
        grid_g_per_kwh=[None, 475.0, 130.5][i % 3],
        zone=[None, "US-CAL-CISO"][i % 2],
    )
    base.update(kw)
    return LedgerRecord(**base)  # type: ignore[arg-type]


def _settled(led: Ledger) -> Ledger:
    """``led`` once the writes it queued are in its store: the proxy's background writer queues records and
    settlements, and its reads on the request path (``spent``, ``budget_used``, ``recent_calls``) do not wait for
    them, by design, so a check of what those reads give reads them after its ``flush``. Other ledgers write before
    they return: ``led`` as it is."""
    flush = getattr(led, "flush", None)
    if flush is not None:
        flush()
    return led


def _sample(n: int = 30, step: float = 1234.5) -> list[LedgerRecord]:
    """Records spread over ~10 hours and two UTC days, in time order."""
    return [_rec(i, T0 + i * step) for i in range(n)]


def _reference_totals(recs: list[LedgerRecord], by: str) -> dict[str, tuple[int, int, float, int, int, float]]:
    def group(r: LedgerRecord) -> str:
        if by == "day":
            return datetime.fromtimestamp(r.ts, tz=timezone.utc).strftime("%Y-%m-%d")
        v = getattr(r, {"key": "key_hash"}.get(by, by))
        return "-" if v is None else str(v)

    out: dict[str, list[float]] = {}
    for r in recs:
        t = out.setdefault(group(r), [0, 0, 0.0, 0, 0, 0.0])
        t[0] += 1
        t[1] += r.outcome == "error"
        t[2] += r.energy_j
        t[3] += r.input_tokens
        t[4] += r.output_tokens
        t[5] += r.latency_ms
    return {g: (int(t[0]), int(t[1]), t[2], int(t[3]), int(t[4]), t[5] / t[0]) for g, t in out.items()}


def _as_tuples(totals: list[dict[str, object]]) -> dict[str, tuple[object, ...]]:
    return {
        str(t["group"]): (
            t["requests"],
            t["errors"],
            t["energy_j"],
            t["input_tokens"],
            t["output_tokens"],
            t["mean_latency_ms"],
        )
        for t in totals
    }


def _close(a: dict[str, tuple[object, ...]], b: dict[str, tuple[object, ...]]) -> None:
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    for g in a:
        for x, y in zip(a[g], b[g], strict=True):
            assert math.isclose(float(x), float(y), rel_tol=1e-9, abs_tol=1e-9), (g, a[g], b[g])


# -- the checks ------------------------------------------------------------------------------------------


def check_record_roundtrip(open_store: OpenStore) -> None:
    """Every field comes back as written, in time order (not write order)."""
    led = open_store("roundtrip")
    recs = _sample(6)
    for r in reversed(recs):
        led.record(r)
    got = led.records()
    assert [r.as_dict() for r in got] == [r.as_dict() for r in recs]


def check_record_many(open_store: OpenStore) -> None:
    """A batch write is the same as one write per record, whatever its size, and an empty batch writes nothing."""
    led = open_store("many")
    recs = _sample(313, step=97.0)
    led.record_many([])
    led.record_many(recs[5:13])  # 8
    led.record_many(recs[:5])  # 5
    led.record_many(recs[13:])  # 300: more than one SQL statement's worth in the SQLite ledger
    assert [r.as_dict() for r in led.records()] == [r.as_dict() for r in recs]
    assert math.isclose(led.spent(since=0.0), sum(r.energy_j for r in recs))


def check_recent_calls(open_store: OpenStore) -> None:
    """The newest answered calls of one model, newest first, however the records are spread."""
    led = open_store("recent")
    recs = _sample(90, step=61.0)
    led.record_many(recs)
    for model in ("smollm2-135m", "sentiment-onnx"):
        want = [r for r in reversed(recs) if r.model == model and r.outcome in ("ok", "escalated")]
        assert [r.as_dict() for r in _settled(led).recent_calls(model, 7)] == [r.as_dict() for r in want[:7]]
        assert len(_settled(led).recent_calls(model, 1000)) == len(want)
    assert _settled(led).recent_calls("nobody", 5) == []


def check_latest_records(open_store: OpenStore) -> None:
    """The newest records of any outcome (errors too), newest first."""
    led = open_store("latest")
    assert led.latest_records(5) == []
    now = time.time()
    recs = [_rec(i, now - 3900 + i * 97.0) for i in range(40)]  # the last hour and a bit, oldest first
    led.record_many(recs)
    want = [r.as_dict() for r in reversed(recs)]
    assert [r.as_dict() for r in led.latest_records(6)] == want[:6]
    assert [r.as_dict() for r in led.latest_records(1000)] == want
    assert led.latest_records(0) == []


def check_records_range_and_limit(open_store: OpenStore) -> None:
    led = open_store("range")
    recs = _sample(10)
    for r in recs:
        led.record(r)
    since, until = recs[2].ts, recs[7].ts
    assert [r.request_id for r in led.records(since, until)] == [r.request_id for r in recs[2:7]], "until is exclusive"
    assert [r.request_id for r in led.records(limit=3)] == ["r0", "r1", "r2"]
    assert led.records(limit=0) == [] and led.records(since, limit=0) == []
    assert [r.request_id for r in led.iter_records(since, batch=3)] == [r.request_id for r in recs[2:]]


def check_spent(open_store: OpenStore) -> None:
    led = open_store("spent")
    recs = _sample(12)
    for r in recs:
        led.record(r)
    _settled(led)
    since = recs[3].ts
    later = [r for r in recs if r.ts >= since]
    assert math.isclose(led.spent(since=since), sum(r.energy_j for r in later))
    assert math.isclose(
        led.spent(since=since, model="gemma3-270m"), sum(r.energy_j for r in later if r.model == "gemma3-270m")
    )
    assert math.isclose(led.spent(since=0, key_hash="key-a"), sum(r.energy_j for r in recs if r.key_hash == "key-a"))
    assert led.spent(since=recs[-1].ts + 1) == 0.0


def check_carbon_gaps(open_store: OpenStore) -> None:
    """``carbon_gaps`` counts the records without a CO2e figure (and their joules) in ``since <= ts < until``; a
    record whose figure is 0 g has one."""
    led = open_store("carbon_gaps")
    recs = [r if i % 3 else dataclasses.replace(r, co2e_g=None) for i, r in enumerate(_sample(12))]
    led.record_many(recs)
    assert recs[1].co2e_g is not None and recs[1].co2e_g > 0 and _rec(0, T0).co2e_g == 0.0  # a 0 g figure is one

    def expected(lo: float, hi: float | None) -> tuple[int, float]:
        gaps = [r for r in recs if r.co2e_g is None and r.ts >= lo and (hi is None or r.ts < hi)]
        return len(gaps), sum(r.energy_j for r in gaps)

    for lo, hi in ((0.0, None), (recs[3].ts, None), (recs[3].ts, recs[9].ts), (recs[3].ts + 1, recs[9].ts + 1)):
        count, joules = led.carbon_gaps(lo, hi)
        want = expected(lo, hi)
        assert count == want[0] and math.isclose(joules, want[1]), (lo, hi)
    assert led.carbon_gaps(recs[-1].ts + 1) == (0, 0.0)
    with pytest.raises(BadRequestError):
        led.carbon_gaps(float("nan"))


def check_carbon_gap_rows(open_store: OpenStore) -> None:
    """``carbon_gap_rows`` sums the records without a CO2e figure like the summary, per hour and the ``dims`` a
    grouping needs: every group's count and joules equal the records', whole and over a range, and they add up to
    ``carbon_gaps``."""
    led = open_store("carbon_gap_rows")
    recs = [r if i % 4 else dataclasses.replace(r, co2e_g=None) for i, r in enumerate(_sample(30))]
    led.record_many(recs)
    for lo, hi in ((0.0, None), (recs[5].ts + 0.25, recs[22].ts)):
        chosen = [r for r in recs if r.co2e_g is None and r.ts >= lo and (hi is None or r.ts < hi)]
        for by in GROUPS:
            want: dict[str, list[float]] = {}
            for row in aggregate(chosen):
                acc = want.setdefault(group_value(row, by), [0, 0.0])
                acc[0] += row.requests
                acc[1] += row.energy_j
            got = group_gaps(led.carbon_gap_rows(lo, hi, group_dims(by)), by)
            assert got.keys() == want.keys(), (by, lo, hi)
            for g, (count, joules) in want.items():
                assert got[g][0] == count and math.isclose(got[g][1], joules), (by, g, lo, hi)
        whole = led.carbon_gap_rows(lo, hi)
        assert sorted(r.dims() for r in whole) == sorted(r.dims() for r in aggregate(chosen))
        count, joules = led.carbon_gaps(lo, hi)
        assert count == sum(r.requests for r in whole) == len(chosen)
        assert math.isclose(joules, sum(r.energy_j for r in whole))
    assert led.carbon_gap_rows(recs[-1].ts + 1) == []
    with pytest.raises(BadRequestError):
        led.carbon_gap_rows(0.0, dims=("zone",))


def check_totals(open_store: OpenStore) -> None:
    """``totals`` equals sums computed here from the records, for every grouping, whole and from a time."""
    led = open_store("totals")
    recs = _sample(30)
    for r in recs:
        led.record(r)
    for by in ("model", "tier", "key", "policy", "day"):
        _close(_as_tuples(led.totals(by=by)), _reference_totals(recs, by))
    since = recs[11].ts + 0.25  # mid-hour: partial buckets must be exact
    _close(
        _as_tuples(led.totals(by="model", since=since)), _reference_totals([r for r in recs if r.ts >= since], "model")
    )


def check_carbon_rows_count_model_calls(open_store: OpenStore) -> None:
    """The carbon report's rows (a store's own query, else a pass over the records) count model calls in
    ``requests`` and ``rejected`` records apart, as the summaries do, per hour and zone."""
    led = open_store("carbon")
    recs = [_rec(i, T0 + i * 700.0, **({"outcome": "rejected", "energy_j": 0.0} if i % 4 == 1 else {}))
            for i in range(24)]
    led.record_many(recs)
    want: dict[tuple[float, str], list[int]] = {}
    for r in recs:
        counts = want.setdefault((bucket_of(r.ts), r.zone or "-"), [0, 0])
        counts[r.outcome == "rejected"] += 1
    got = {(row.bucket, row.zone): [row.requests, row.rejected] for row in carbon_rows(led, 0.0, None)}
    assert got == want
    calls = sum(t["requests"] for t in totals_from_summary(led.summary(), "model"))
    assert sum(n for n, _ in got.values()) == calls == 18


def check_carbon_rows_leave_out_records_without_co2e(open_store: OpenStore) -> None:
    """The carbon report's rows count the records without a CO2e figure and their joules per hour and zone, and
    leave them out of the grams and of the joule-weighted intensity; together they are ``carbon_gaps``."""
    led = open_store("carbon_rows_gaps")
    recs = [r if i % 3 else dataclasses.replace(r, co2e_g=None) for i, r in enumerate(_sample(24, step=700.0))]
    led.record_many(recs)
    want: dict[tuple[float, str], list[float]] = {}
    for r in recs:
        sums = want.setdefault((bucket_of(r.ts), r.zone or "-"), [0, 0.0, 0.0, 0.0])
        if r.co2e_g is None:
            sums[0] += 1
            sums[1] += r.energy_j
        else:
            sums[2] += r.co2e_g
            sums[3] += r.energy_j * (r.grid_g_per_kwh or 0.0)
    rows = carbon_rows(led, 0.0, None)
    got = {(row.bucket, row.zone): [row.records_without_co2e, row.joules_without_co2e, row.co2e_g, row.g_energy]
           for row in rows}
    assert got.keys() == want.keys()
    for key, (count, joules, grams, g_energy) in want.items():
        assert got[key][0] == count, key
        sums = zip(got[key][1:], (joules, grams, g_energy), strict=True)
        assert all(math.isclose(a, b, abs_tol=1e-9) for a, b in sums), key
    count, joules = led.carbon_gaps(0.0, None)
    assert count == sum(row.records_without_co2e for row in rows) == 8
    assert math.isclose(joules, sum(row.joules_without_co2e for row in rows))


def check_summary_exact_for_any_range(open_store: OpenStore) -> None:
    """Hourly summaries plus partial hours at both ends add up to exactly the records in the range."""
    led = open_store("summary")
    recs = _sample(40, step=700.0)
    for r in recs:
        led.record(r)
    for since, until in [(0.0, None), (T0 + 1000, T0 + 20000), (T0 + 3600, T0 + 7200), (T0 + 10, T0 + 20)]:
        got = totals_from_summary(led.summary(since, until), "model")
        chosen = [r for r in recs if r.ts >= since and (until is None or r.ts < until)]
        _close(_as_tuples(got), _as_tuples(totals_from_summary(aggregate(chosen), "model")))
    assert summary_mismatches(led) == (0, []), "the doctor reads every record and agrees with the stored sums"


def check_summary_reduced_to_dims(open_store: OpenStore) -> None:
    """``summary(dims=...)`` is the full summary with the other dimensions merged away, for any range."""
    led = open_store("summary_dims")
    recs = _sample(60, step=437.0)
    led.record_many(recs)

    def rows(found: list[SummaryRow]) -> dict[tuple[object, ...], tuple[float, ...]]:
        out: dict[tuple[object, ...], tuple[float, ...]] = {}
        for r in found:
            assert r.dims() not in out, f"{r.dims()} twice"
            out[r.dims()] = (r.requests, r.energy_j, r.input_tokens, r.output_tokens, r.latency_ms_sum, r.co2e_g)
        return out

    for dims in [("model",), ("tier", "outcome"), ("model", "tier", "outcome", "energy_source"), ("key_hash", "task"),
                 (), SUMMARY_DIMS]:
        for since, until in [(0.0, None), (T0 + 1000, T0 + 20000), (T0 + 3600, T0 + 7200), (T0 + 10, T0 + 20)]:
            chosen = [r for r in recs if r.ts >= since and (until is None or r.ts < until)]
            got = rows(reduce_dims(led.summary(since, until, dims=dims), check_dims(dims)))  # partial hours apart
            want = rows(reduce_dims(aggregate(chosen), check_dims(dims)))
            assert got.keys() == want.keys(), (dims, since, until)
            for k, v in want.items():
                assert all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9) for a, b in zip(got[k], v, strict=True)), k
            if dims != SUMMARY_DIMS:
                assert all(getattr(r, d) is None for r in led.summary(since, until, dims=dims)
                           for d in SUMMARY_DIMS if d not in dims)


def check_summary_totals_sum_the_whole_range(open_store: OpenStore) -> None:
    """``summary_totals``: one row per combination of ``dims`` over the range (what ``router ledger report --by
    key`` reads: the hourly summary's row per hour and key held hundreds of MB), equal to the records' sums, partial
    hours at either end included."""
    led = open_store("summary_totals")
    recs = _sample(60, step=437.0)
    led.record_many(recs)
    for dims in [("key_hash",), ("model", "outcome", "energy_source", "key_hash"), ("model",), ("policy", "task"),
                 (), None]:
        keep = SUMMARY_DIMS if dims is None else check_dims(dims)
        for since, until in [(0.0, None), (T0 + 1000, T0 + 20000), (T0 + 3600, T0 + 7200), (T0 + 10, T0 + 20)]:
            chosen = [r for r in recs if r.ts >= since and (until is None or r.ts < until)]
            want: dict[tuple[object, ...], list[float]] = {}
            for r in reduce_dims(aggregate(chosen), keep):
                acc = want.setdefault(r.dims()[1:], [0, 0.0, 0, 0, 0.0, 0.0])
                for i, v in enumerate((r.requests, r.energy_j, r.input_tokens, r.output_tokens, r.latency_ms_sum,
                                       r.co2e_g)):
                    acc[i] += v
            got = led.summary_totals(since, until, dims=dims)
            groups = [r.dims()[1:] for r in got]
            assert len(groups) == len(set(groups)) and set(groups) == set(want), (dims, since, until)  # each once
            for r in got:
                assert r.bucket == since
                v = want[r.dims()[1:]]
                assert (r.requests, r.input_tokens, r.output_tokens) == (v[0], v[2], v[3])
                assert all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
                           for a, b in zip((r.energy_j, r.latency_ms_sum, r.co2e_g), (v[1], v[4], v[5]), strict=True))


def check_raw_summary_per_step(open_store: OpenStore) -> None:
    """``raw_summary``: sums of the records per bucket of any whole number of seconds, reduced to ``dims``."""
    led = open_store("raw_summary")
    recs = _sample(50, step=97.0)
    led.record_many(recs)
    for step, dims in [(300, ("model",)), (60, ("tier", "outcome")), (3600, None), (7, ("key_hash",)), (600, ())]:
        since, until = recs[3].ts - 0.5, recs[41].ts
        chosen = [r for r in recs if since <= r.ts < until]
        got = {r.dims(): (r.requests, r.energy_j) for r in led.raw_summary(since, until, dims=dims, step_s=step)}
        want = {r.dims(): (r.requests, r.energy_j) for r in reduce_dims(aggregate(chosen, step), check_dims(dims))}
        assert got.keys() == want.keys(), (step, dims)
        assert all(got[k][0] == v[0] and math.isclose(got[k][1], v[1]) for k, v in want.items())
        assert all(r.bucket % step == 0 for r in led.raw_summary(since, until, dims=dims, step_s=step))


HUGE = 10**400
"""An integer beyond a float and any store's integers: a JSON number or a command line may have 400 digits."""


def _named(bad: object) -> str:
    """How a refusal names ``bad``: by its repr, or a huge integer by its digits."""
    return "401-digit integer" if bad in (HUGE, -HUGE) else repr(bad)


def _bad_arguments(led: Ledger) -> list[tuple[str, tuple[str, ...], Callable[[], object]]]:
    """``(argument, what the message must name, call)`` for each mistake a caller can make in an argument."""
    groups, dims = ", ".join(GROUPS), ", ".join(SUMMARY_DIMS)
    return [
        *[("by", (repr(by), groups), lambda by=by: led.totals(by=by)) for by in ("nope", "key_hash", None)],
        ("dims", ("'nope'", dims), lambda: led.summary(T0, T0 + 10, dims=("nope",))),
        ("dims", ("'model'", dims), lambda: led.summary(dims="model")),  # type: ignore[arg-type]
        ("dims", ("'nope'", dims), lambda: led.raw_summary(T0, dims=("model", "nope"))),
        *[("step_s", (_named(bad), "1 or more"), lambda bad=bad: led.raw_summary(T0, step_s=bad))
          for bad in (0, -5, 2.5, True, "60", 2**63, HUGE)],
        ("before", ("not both",), lambda: led.delete_prompts(before=T0, request_id="r0")),
        *[(name, (_named(bad), "finite number of epoch seconds"), call)
          for bad in ("yesterday", math.nan, math.inf, True, HUGE, -HUGE)
          for name, call in _time_reads(led, bad)],
        ("since", ("None", "epoch seconds"), lambda: led.records(None)),  # type: ignore[arg-type]
        *[("limit", (_named(bad), "0 or more"), call) for bad in (-1, 2.5, "3", True, 2**63, HUGE) for call in (
            lambda bad=bad: led.records(limit=bad),  # type: ignore[arg-type]
            lambda bad=bad: led.recent_calls("smollm2-135m", bad),  # type: ignore[arg-type]
            lambda bad=bad: led.latest_records(bad),  # type: ignore[arg-type]
        )],
        *[("batch", (_named(bad), "1 or more"), lambda bad=bad: list(led.iter_records(batch=bad)))
          for bad in (0, -1, 1.5, HUGE)],
        *[("window_s", (_named(bad), "positive, finite"), call)
          for bad in (0, -3600, math.nan, math.inf, True, "60", HUGE)
          for call in (lambda bad=bad: led.try_reserve("day", 1.0, 10.0, bad),  # type: ignore[arg-type]
                       lambda bad=bad: led.budget_used("day", bad))],  # type: ignore[arg-type]
        *[("joules", (_named(bad), "finite number of joules, 0 or more"),
           lambda bad=bad: led.try_reserve("day", bad, 10.0, 3600))  # type: ignore[arg-type]
          for bad in (math.nan, -1.0, math.inf, -math.inf, True, "1", HUGE)],
        *[("limit_j", (_named(bad), "0 or more, or math.inf for no limit"),
           lambda bad=bad: led.try_reserve("day", 1.0, bad, 3600))  # type: ignore[arg-type]
          for bad in (math.nan, -1.0, -math.inf, True, "10", HUGE)],
        *[("budget", (_named(bad), "non-empty string"),
           lambda bad=bad: led.try_reserve(bad, 1.0, 10.0, 3600))  # type: ignore[arg-type]
          for bad in (None, "", "  ", 42, b"day", ["day"])],
        *[("hold_s", (_named(bad), "finite number of seconds, 0 or more"),
           lambda bad=bad: led.try_reserve("day", 1.0, 10.0, 3600, bad))  # type: ignore[arg-type]
          for bad in (math.nan, -1.0, math.inf, True, "60", HUGE)],
    ]


def _time_reads(led: Ledger, bad: object) -> list[tuple[str, Callable[[], object]]]:
    """Every call taking a time, given ``bad`` for it: ``(argument, call)``."""
    return [
        ("since", lambda: led.records(bad)),  # type: ignore[arg-type]
        ("until", lambda: led.records(T0, bad)),  # type: ignore[arg-type]
        ("since", lambda: list(led.iter_records(bad))),  # type: ignore[arg-type]
        ("until", lambda: list(led.iter_records(T0, bad))),  # type: ignore[arg-type]
        ("since", lambda: led.spent(since=bad)),  # type: ignore[arg-type]
        ("since", lambda: led.totals(since=bad)),  # type: ignore[arg-type]
        ("since", lambda: led.summary(bad)),  # type: ignore[arg-type]
        ("until", lambda: led.summary(T0, bad)),  # type: ignore[arg-type]
        ("since", lambda: led.raw_summary(bad)),  # type: ignore[arg-type]
        ("until", lambda: led.raw_summary(T0, bad)),  # type: ignore[arg-type]
        ("since", lambda: led.feedback(since=bad)),  # type: ignore[arg-type]
        ("until", lambda: led.prompts(until=bad)),  # type: ignore[arg-type]
        ("before", lambda: led.delete_prompts(before=bad)),  # type: ignore[arg-type]
        ("older_than", lambda: led.prune(bad)),  # type: ignore[arg-type]
        ("since", lambda: led.budget_keys(bad)),  # type: ignore[arg-type]
    ]


def check_bad_arguments_are_bad_request_errors(open_store: OpenStore) -> None:
    """A caller's mistake in an argument is a ``BadRequestError`` naming the argument and what is allowed (never
    a raw ValueError or TypeError, nor a LedgerError: the store is fine), and changes nothing: every store refuses
    the same reservations (a NaN limit is no room to SQLite but any amount to Redis), before it sees them."""
    led = open_store("bad_args")
    recs = _sample(5)
    led.record_many(recs)
    led.store_prompt(StoredPrompt("r0", "p", "[]", ts=T0))
    for param, needles, call in _bad_arguments(led):
        try:
            call()
        except BadRequestError as exc:
            assert exc.param == param, (param, exc.param, str(exc))
            assert all(n in str(exc) for n in needles), (needles, str(exc))
            continue
        except Exception as exc:  # noqa: BLE001 - the point of the check
            raise AssertionError(f"{param}: {type(exc).__name__}: {exc}") from exc
        raise AssertionError(f"{param}: accepted")
    assert [r.record_id for r in led.records()] == [r.record_id for r in recs]
    assert [p.request_id for p in led.prompts()] == ["r0"]
    assert led.budget_used("day", 3600) == 0.0, "a refused reservation holds nothing"
    assert led.budget_keys(0.0) == [], "a refused reservation makes no budget counter"


@contextlib.contextmanager
def _logged() -> Iterator[list[logging.LogRecord]]:
    """The warnings and errors logged meanwhile."""
    found: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = found.append  # type: ignore[method-assign]
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield found
    finally:
        root.removeHandler(handler)


def check_a_record_with_an_unusable_figure_is_refused(open_store: OpenStore) -> None:
    """A record whose amount (``energy_j``, ``co2e_g``, ``latency_ms`` ...) is NaN, infinite, negative or missing,
    or whose time is not a finite number, is refused by every store alike before anything is written: a
    ``LedgerError`` with ``record_rejected`` (not retryable: the store is fine), naming the field. A batch with one
    is refused whole by a store (a journaled ledger writes the others and its journal sets the bad one aside).
    PostgreSQL used to keep a NaN (every sum over it read NaN from then on), SQLite infinities and negative joules,
    and Redis wrote the record but not its sums, then failed as if it were down."""
    led = open_store("bad_figures")
    good = _sample(3)
    led.record_many(good)
    totals = _as_tuples(led.totals("model"))
    bad_values = [("energy_j", math.nan), ("energy_j", math.inf), ("energy_j", -1.0), ("energy_j", None),
                  ("co2e_g", math.nan), ("latency_ms", -math.inf), ("estimated_j", math.inf), ("ts", math.nan)]
    bad_ids, companions, refused_companions = set(), set(), set()
    for n, (name, value) in enumerate(bad_values):
        bad = dataclasses.replace(good[0], record_id=f"bad-{n}", **{name: value})
        companion = _rec(10 + n, T0 + 10 + n, record_id=f"companion-{n}")
        bad_ids.add(bad.record_id)
        companions.add(companion.record_id)
        for batch in ([bad], [companion, bad]):
            try:
                led.record(bad) if len(batch) == 1 else led.record_many(batch)
            except LedgerError as exc:
                assert exc.record_rejected and not exc.retryable, (name, str(exc))
                assert f"{name}=" in str(exc), (name, str(exc))
                refused_companions.update(r.record_id for r in batch if r is companion)
    stored = {r.record_id for r in led.records()}
    assert not stored & bad_ids, "a bad record is never stored"
    assert not stored & refused_companions, "nothing of a refused batch is stored"
    assert stored - {r.record_id for r in good} <= companions
    if not stored & companions:
        _close(_as_tuples(led.totals("model")), totals)
    later = _rec(99, T0 + 99)
    led.record(later)
    assert later.record_id in {r.record_id for r in led.records()}, "the store still takes records"


def check_close_twice_is_quiet(open_store: OpenStore) -> None:
    """Closing a closed ledger does nothing and says nothing (``Router.close``, a ``with`` block and a cleanup
    handler may all close one ledger); the store keeps what was written."""
    led = open_store("close_twice")
    led.record(_rec(0, T0))
    led.close()
    with _logged() as logged:
        led.close()
        led.close()
    assert not logged, [f"{r.levelname} {r.name}: {r.getMessage()}" for r in logged]
    assert [r.request_id for r in open_store("close_twice").records()] == ["r0"]


def check_closed_ledger_says_it_was_closed(open_store: OpenStore) -> None:
    """Every call on a closed ledger raises a LedgerError saying close() was called (not that the store is down:
    nothing will bring this one back), logs nothing, and reaches no store (Redis and PostgreSQL would connect
    again); a new ledger over the same store has everything."""
    led = open_store("closed")
    led.record(_rec(0, T0))
    res = led.try_reserve("b", 1.0, 100.0, 3600)
    assert res is not None
    led.close()
    calls: dict[str, Callable[[], object]] = {
        "record": lambda: led.record(_rec(1, T0 + 1)),
        "record_many": lambda: led.record_many([_rec(2, T0 + 2)]),
        "try_reserve": lambda: led.try_reserve("b", 1.0, 100.0, 3600),
        "settle": lambda: led.settle(res, 0.5),
        "settle_many": lambda: led.settle_many([(res, 0.5)]),
        "budget_used": lambda: led.budget_used("b", 3600),
        "budget_keys": lambda: led.budget_keys(0.0),
        "records": lambda: led.records(),
        "iter_records": lambda: list(led.iter_records()),
        "latest_records": lambda: led.latest_records(3),
        "recent_calls": lambda: led.recent_calls("smollm2-135m", 3),
        "spent": lambda: led.spent(since=0),
        "totals": lambda: led.totals("model"),
        "summary": lambda: led.summary(),
        "raw_summary": lambda: led.raw_summary(T0),
        "prune": lambda: led.prune(T0 - 10),
        "schema_version": lambda: led.schema_version,
        "add_feedback": lambda: led.add_feedback(Feedback("r0", 0.5, ts=T0)),
        "feedback": lambda: led.feedback(),
        "request_record": lambda: led.request_record("r0"),
        "prompts": lambda: led.prompts(),
        "delete_prompts": lambda: led.delete_prompts(),
    }
    with _logged() as logged:
        for name, call in calls.items():
            try:
                call()
            except LedgerError as exc:
                assert "close() was called" in str(exc) and "fix: open a new one" in str(exc), (name, str(exc))
                assert not exc.retryable, name
                continue
            except Exception as exc:  # noqa: BLE001 - the point of the check
                raise AssertionError(f"{name} raised {type(exc).__name__}: {exc}") from exc
            raise AssertionError(f"{name} worked on a closed ledger")
    assert not logged, [f"{r.levelname} {r.name}: {r.getMessage()}" for r in logged]
    again = open_store("closed")
    assert [r.request_id for r in again.records()] == ["r0"]
    assert math.isclose(again.budget_used("b", 3600), 1.0)


def check_reopen_keeps_everything(open_store: OpenStore) -> None:
    led = open_store("reopen")
    for r in _sample(5):
        led.record(r)
    led.try_reserve("b", 3.0, 10.0, 3600)
    led.close()
    again = open_store("reopen")
    assert [r.request_id for r in again.records()] == ["r0", "r1", "r2", "r3", "r4"]
    assert math.isclose(again.budget_used("b", 3600), 3.0)


def check_concurrent_records(open_store: OpenStore) -> None:
    """Threads writing at once lose nothing and the sums stay exact."""
    led = open_store("threads")
    per_thread, threads = 40, 4

    def write(t: int) -> None:
        for i in range(per_thread):
            led.record(_rec(i, T0 + i, request_id=f"t{t}-{i}", energy_j=1.0))

    ws = [threading.Thread(target=write, args=(t,)) for t in range(threads)]
    for w in ws:
        w.start()
    for w in ws:
        w.join()
    assert len(led.records()) == per_thread * threads
    assert math.isclose(led.spent(since=0), per_thread * threads * 1.0)
    assert sum(t["requests"] for t in led.totals("model")) == per_thread * threads


def check_reserve_is_atomic_under_threads(open_store: OpenStore) -> None:
    """8 threads race for a 100 J budget in 1 J pieces: exactly 100 reservations succeed."""
    led = open_store("atomic")
    wins: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def race() -> None:
        barrier.wait()
        n = 0
        for _ in range(25):
            if led.try_reserve("shared", 1.0, 100.0, 3600) is not None:
                n += 1
        with lock:
            wins.append(n)

    ts = [threading.Thread(target=race) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert sum(wins) == 100, wins
    assert math.isclose(led.budget_used("shared", 3600), 100.0)
    assert led.try_reserve("shared", 0.5, 100.0, 3600) is None
    assert led.try_reserve("other", 0.5, 100.0, 3600) is not None, "budgets are independent"


def check_settle(open_store: OpenStore) -> None:
    led = open_store("settle")
    res = led.try_reserve("b", 10.0, 20.0, 3600)
    assert res is not None and res.joules == 10.0
    assert math.isclose(_settled(led).budget_used("b", 3600), 10.0)
    led.settle(res, 4.0)
    assert math.isclose(_settled(led).budget_used("b", 3600), 4.0), "settle replaces the hold with the actual figure"
    res2 = led.try_reserve("b", 16.0, 20.0, 3600)
    assert res2 is not None, "settling below the hold frees room"
    led.settle(res2, 30.0)
    assert math.isclose(_settled(led).budget_used("b", 3600), 34.0), "an overrun is charged in full"
    assert led.try_reserve("b", 0.1, 20.0, 3600) is None


def check_reserve_up_to_the_limit(open_store: OpenStore) -> None:
    """Spent + held may reach the limit exactly, not pass it, on a budget's first reservation and later ones; a
    refused reservation holds nothing; an unlimited one (``allow_and_flag``) always holds."""
    led = open_store("limit")
    assert led.try_reserve("e", 10.0, 10.0, 3600) is not None
    assert led.try_reserve("e", 0.5, 10.0, 3600) is None
    assert led.try_reserve("f", 10.5, 10.0, 3600) is None
    assert led.budget_used("f", 3600) == 0.0
    assert led.try_reserve("f", 6.0, 10.0, 3600) is not None and led.try_reserve("f", 4.0, 10.0, 3600) is not None
    assert led.try_reserve("f", 0.001, 10.0, 3600) is None
    assert math.isclose(led.budget_used("f", 3600), 10.0)
    for _ in range(2):
        assert led.try_reserve("e", 5.0, math.inf, 3600) is not None
    assert math.isclose(led.budget_used("e", 3600), 20.0)


def check_settle_many(open_store: OpenStore) -> None:
    """Settling several at once is settling each in turn (an empty list settles nothing)."""
    led = open_store("settle_many")
    a, b, c = (led.try_reserve(name, j, 100.0, 3600) for name, j in (("b", 10.0), ("b", 5.0), ("c", 2.0)))
    assert a is not None and b is not None and c is not None
    led.settle_many([])
    assert math.isclose(_settled(led).budget_used("b", 3600), 15.0)
    led.settle_many([(a, 4.0), (b, 7.0), (c, 0.0)])
    assert math.isclose(_settled(led).budget_used("b", 3600), 11.0)
    assert _settled(led).budget_used("c", 3600) == 0.0


def check_a_bad_settlement_is_refused_and_stores_nothing(open_store: OpenStore) -> None:
    """A settlement's figure is checked before a store sees it, as a reservation's amounts are: a NaN, infinite,
    negative or non-number ``actual_j`` (a broken meter's) is a ``BadRequestError`` naming ``actual_j``, and the
    hold stays as it was (a NaN counter would leave the budget refusing, or admitting, everything). In a batch one
    bad figure refuses the whole batch, naming its index, and none of it is stored: sent again fixed, each
    reservation is settled once."""
    led = open_store("bad_settlement")
    a, b = led.try_reserve("b", 10.0, 100.0, 3600), led.try_reserve("b", 5.0, 100.0, 3600)
    assert a is not None and b is not None
    for bad in (math.nan, math.inf, -math.inf, -1.0, "4", None, True, 10**400):
        with pytest.raises(BadRequestError, match="actual_j") as refused:
            led.settle(a, bad)  # type: ignore[arg-type]
        assert refused.value.param == "actual_j"
    assert math.isclose(_settled(led).budget_used("b", 3600), 15.0), "a refused settlement leaves the holds as is"
    with pytest.raises(BadRequestError, match=r"settlements\[1\]") as refused:
        led.settle_many([(a, 4.0), (b, math.nan)])
    assert refused.value.param == "actual_j"
    assert math.isclose(_settled(led).budget_used("b", 3600), 15.0), "nothing of a refused batch is stored"
    for not_pairs in ([(a,)], [a], "a", None):
        with pytest.raises(BadRequestError) as refused:
            led.settle_many(not_pairs)  # type: ignore[arg-type]
        assert refused.value.param == "settlements"
    with pytest.raises(BadRequestError) as refused:
        led.settle("not a reservation", 1.0)  # type: ignore[arg-type]
    assert refused.value.param == "reservation"
    led.settle_many([(a, 4.0), (b, 2.0)])
    assert math.isclose(_settled(led).budget_used("b", 3600), 6.0), "the batch sent again fixed settles each once"
    assert led.try_reserve("b", 94.0, 100.0, 3600) is not None, "the counter is a number: the room is all there"
    assert led.try_reserve("b", 0.5, 100.0, 3600) is None, "and the limit still refuses"


def check_settling_again_changes_nothing(open_store: OpenStore) -> None:
    """A reservation is settled once, by its id: a settlement sent again (a retry after a timeout whose first try
    had committed, a journal's replay of one that had reached the store) is a no-op, on its own or in a batch, and
    the first figure stands, so the budget is not charged twice."""
    led = open_store("settle_again")
    a, b = led.try_reserve("b", 10.0, 20.0, 3600), led.try_reserve("b", 5.0, 20.0, 3600)
    assert a is not None and b is not None
    led.settle(a, 4.0)
    led.settle(a, 4.0)
    led.settle(a, 9.0)
    assert math.isclose(_settled(led).budget_used("b", 3600), 9.0), "a settled once: 4 J spent, b's 5 J held"
    led.settle_many([(b, 2.0), (b, 2.0), (a, 4.0)])
    assert math.isclose(_settled(led).budget_used("b", 3600), 6.0), "b settled once in its batch, a not again"
    led.settle_many([(b, 2.0)])
    assert math.isclose(_settled(led).budget_used("b", 3600), 6.0), "a batch sent again settles nothing"
    assert led.try_reserve("b", 14.0, 20.0, 3600) is not None, "the room the settlements left is all there"


def check_a_hold_past_its_hold_s_stops_counting(open_store: OpenStore) -> None:
    """A hold not settled within its ``hold_s`` (its process was killed mid-call) stops counting: ``budget_used``
    leaves it out, a reservation that finds no room gets its joules back, and a settlement that comes after all
    counts what the call used in full, once. A hold reserved without ``hold_s`` counts until its window ends."""
    led = open_store("hold_expiry")
    brief = led.try_reserve("b", 6.0, 10.0, 3600, hold_s=0.3)
    lasting = led.try_reserve("b", 3.0, 10.0, 3600)
    assert brief is not None and lasting is not None
    assert math.isclose(_settled(led).budget_used("b", 3600), 9.0)
    assert led.try_reserve("b", 5.0, 10.0, 3600, hold_s=60.0) is None, "the brief hold counts while it lasts"
    time.sleep(0.8)
    assert math.isclose(_settled(led).budget_used("b", 3600), 3.0), "past its hold_s, the brief hold no longer counts"
    later = led.try_reserve("b", 7.0, 10.0, 3600, hold_s=60.0)
    assert later is not None, "a reservation that found no room got the expired hold's joules back"
    assert math.isclose(_settled(led).budget_used("b", 3600), 10.0)
    led.settle(brief, 2.0)
    led.settle(brief, 2.0)
    assert math.isclose(_settled(led).budget_used("b", 3600), 12.0), "a late settlement counts the call in full, once"
    led.settle_many([(later, 1.0), (lasting, 3.0)])
    assert math.isclose(_settled(led).budget_used("b", 3600), 6.0)


def check_hold_counts(open_store: OpenStore) -> None:
    """``hold_counts`` (what ``router ledger doctor`` shows) counts the holds the store keeps: of calls that may
    still be running, past their ``hold_s``, and reserved without one; a settled hold is no longer one."""
    led = open_store("hold_counts")
    brief = led.try_reserve("b", 6.0, 100.0, 3600, hold_s=0.05)
    running = led.try_reserve("b", 2.0, 100.0, 3600, hold_s=60.0)
    lasting = led.try_reserve("b", 3.0, 100.0, 3600)
    assert brief is not None and running is not None and lasting is not None
    time.sleep(0.2)
    counts = led.hold_counts()
    assert counts is not None, f"{type(led).__name__} keeps holds by id but does not count them"
    assert (counts.live, counts.expired, counts.unbounded) == (1, 1, 1), counts
    assert math.isclose(counts.live_j, 2.0) and math.isclose(counts.expired_j, 6.0)
    assert math.isclose(counts.unbounded_j, 3.0)
    led.settle_many([(brief, 1.0), (running, 1.0), (lasting, 1.0)])
    counts = led.hold_counts()
    assert counts is not None and counts.live + counts.expired + counts.unbounded == 0, counts


# A proxy process (records and settlements handed to the background writer, behind the journal) that settles one
# call in the store, then, its store taking no more writes, journals two more calls' records and settlements (one
# from a thread, one deferred on an event loop as under `router serve`) and is killed: the moment between a
# record's journal append and its settlement reaching the store.
_KILLED_BEFORE_SETTLING = """
import asyncio, sys, threading, time
from router.config import JournalSettings
from router.ledger import LedgerRecord, open_store
from router.proxy.ledger_writer import BackgroundLedger
store = open_store(sys.argv[1])
led = BackgroundLedger(store, journal=JournalSettings(folder=sys.argv[2]))
settled = led.try_reserve("b", 10.0, 100.0, 3600, hold_s=float(sys.argv[3]))
led.record(LedgerRecord("req-settled", "m", "small", 4.0, "measured"))
led.settle(settled, 4.0)
assert led.flush() and led.budget_used("b", 3600) == 4.0
stuck = threading.Event()
def hang_store_write(*args, **kwargs):  # fault injection: the process stops before its store write
    stuck.wait()
for name in ("record", "record_many", "settle", "settle_many"):
    setattr(store, name, hang_store_write)
lost = led.try_reserve("b", 10.0, 100.0, 3600, hold_s=float(sys.argv[3]))
led.record(LedgerRecord("req-lost", "m", "small", 7.0, "measured"))
led.settle(lost, 7.0)
async def served_call():  # as under router serve: journaled together once per loop iteration
    led.defer_journal(True)
    held = led.try_reserve("b", 10.0, 100.0, 3600, hold_s=float(sys.argv[3]))
    led.settle(held, 5.0)
    led.record(LedgerRecord("req-served", "m", "small", 5.0, "measured"))
    led.journal_pending()  # what the server does before an answer's first byte
asyncio.run(served_call())
print("journaled", flush=True)
time.sleep(600)
"""


def check_a_replayed_record_counts_against_its_budget(open_store: OpenStore) -> None:
    """A process killed after its call's record reached the journal and before the call's settlement reached the
    store: once the call's hold expires it no longer counts, and replaying the journal counts what the call used
    against the budget, as the live settlement would have. A settlement that had reached the store is not counted
    again, and replaying the same journal twice counts it once."""
    import os
    import shutil
    import signal
    import tempfile
    from pathlib import Path

    from router.config import JournalSettings
    from router.ledger import open_ledger
    from router.ledger.replay import segment_files

    led = open_store("replayed_settlement")
    hold_s = 1.0
    folder = Path(tempfile.mkdtemp(prefix="journal-"))
    kept = folder.with_name(folder.name + "-kept")
    try:
        proc = subprocess.Popen([sys.executable, "-c", _KILLED_BEFORE_SETTLING, led.url, str(folder), str(hold_s)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.strip() == b"journaled", proc.stderr.read().decode()[-3000:] if proc.stderr else line
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            if proc.stderr is not None:
                proc.stderr.close()
            if proc.stdout is not None:
                proc.stdout.close()
        time.sleep(hold_s + 0.5)
        assert math.isclose(led.budget_used("b", 3600), 4.0), "the killed call's hold expired: 4 J settled remain"
        kept.mkdir()
        for path in segment_files(folder):
            shutil.copy(path, kept / path.name)
        for replay in range(2):
            if replay:  # the same journal again: a replay interrupted before it deleted the segment
                for path in segment_files(kept):
                    shutil.copy(path, folder / path.name)
            open_ledger(led.url, journal=JournalSettings(folder=folder)).close()  # replays at open
            assert sorted(r.request_id for r in led.records()) == ["req-lost", "req-served", "req-settled"]
            assert math.isclose(led.budget_used("b", 3600), 16.0), (
                f"replay {replay + 1}: the replayed calls count 7 J and 5 J once, the settled one 4 J once")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(kept, ignore_errors=True)


def check_budget_keys(open_store: OpenStore) -> None:
    """``budget_keys(since)`` lists each budget with a counter in a window that started at or after ``since``,
    once however many reservations it has, none for a later ``since``; a reopened store lists the same."""
    led = open_store("budget_keys")
    assert led.budget_keys(0.0) == []
    hour = led.try_reserve("key:k1:tier:large:3600s", 1.0, 10.0, 3600)
    again = led.try_reserve("key:k1:tier:large:3600s", 2.0, 10.0, 3600)
    day = led.try_reserve("model:a:86400s", 1.0, 10.0, 86400)
    assert hour is not None and again is not None and day is not None
    both = sorted([hour.budget, day.budget])
    assert sorted(led.budget_keys(day.window_start)) == both
    in_this_hour = both if day.window_start >= hour.window_start else [hour.budget]  # the day's first hour
    assert sorted(led.budget_keys(hour.window_start)) == in_this_hour
    assert led.budget_keys(hour.window_start + 3600) == []
    assert sorted(open_store("budget_keys").budget_keys(0.0)) == both


def check_window_rollover(open_store: OpenStore) -> None:
    """A spent budget has room again in the next window, and the old window's spending stays there."""
    led = open_store("rollover")
    window = 0.4
    now = time.time()
    time.sleep(window - (now % window) + 0.01)  # start just after a window boundary
    assert led.try_reserve("w", 1.0, 1.0, window) is not None
    assert led.try_reserve("w", 1.0, 1.0, window) is None
    time.sleep(window - (time.time() % window) + 0.01)
    assert led.budget_used("w", window) == 0.0
    assert led.try_reserve("w", 1.0, 1.0, window) is not None


def check_prune(open_store: OpenStore) -> None:
    """Retention: records before the cut-off go, the rest (and sums over them) stay exact."""
    led = open_store("prune")
    recs = _sample(30)
    for r in recs:
        led.record(r)
    cut = recs[10].ts + 100.0  # mid-hour
    removed = led.prune(cut)
    kept = [r for r in recs if r.ts >= cut]
    assert removed == len(recs) - len(kept)
    assert [r.request_id for r in led.records()] == [r.request_id for r in kept]
    _close(_as_tuples(led.totals("model")), _reference_totals(kept, "model"))
    assert led.prune(cut) == 0


def check_prune_takes_ended_budget_windows(open_store: OpenStore) -> None:
    """A budget counter whose window ended before the cut-off goes with a prune (Redis: it has expired by then); the
    current window's counters stay."""
    led = open_store("prune_budgets")
    ended = led.try_reserve("model:a:1s", 1.0, 10.0, 1.0)
    day = led.try_reserve("key:k1:tier:large:86400s", 2.0, 10.0, 86400)
    assert ended is not None and day is not None
    time.sleep(2.1)  # past the 1 s window, and past Redis's expiry of it (two windows)
    cut = time.time()
    led.prune(cut)
    assert led.budget_keys(0.0) == ["key:k1:tier:large:86400s"]
    assert led.budget_used("key:k1:tier:large:86400s", 86400) == 2.0


def check_retention_setting(open_store: OpenStore) -> None:
    """The stored retention setting round-trips; a value that is not a number of days in (0, a century] is refused
    with a ConfigError and leaves the setting as it was (a NaN once stored made every later open fail)."""
    led = open_store("retention")
    assert led.retention_days is None  # type: ignore[attr-defined]
    led.set_retention_days(30)  # type: ignore[attr-defined]
    for bad in (math.nan, math.inf, -math.inf, 0, -1, 1e300, True, "30"):
        with pytest.raises(ConfigError, match="retention_days"):
            led.set_retention_days(bad)  # type: ignore[attr-defined]
        assert led.retention_days == 30.0  # type: ignore[attr-defined]
    led.set_retention_days(None)  # type: ignore[attr-defined]
    assert led.retention_days is None  # type: ignore[attr-defined]


def check_record_ids_make_writes_idempotent(open_store: OpenStore) -> None:
    """Writing a record whose id is stored changes nothing (record and record_many, within a batch and across
    batches), and the sums count it once; attempts of one request share a request id but not a record id."""
    led = open_store("ids")
    recs = _sample(20)
    assert len({r.record_id for r in recs}) == 20, "every record gets its own id when it is made"
    led.record(recs[0])
    led.record(recs[0])
    led.record_many(recs[:10])
    led.record_many([*recs[5:20], *recs[5:20]])
    for r in recs[15:]:
        led.record(r)
    got = led.records()
    assert [r.as_dict() for r in got] == [r.as_dict() for r in recs]
    _close(_as_tuples(led.totals("model")), _reference_totals(recs, "model"))
    assert math.isclose(led.spent(since=0), sum(r.energy_j for r in recs))
    retry = _rec(0, T0 + 1, request_id=recs[0].request_id, attempt=1)
    led.record(retry)
    assert [r.record_id for r in led.records() if r.request_id == recs[0].request_id] == [
        recs[0].record_id, retry.record_id
    ]


def check_schema_version_is_current(open_store: OpenStore) -> None:
    """A new store is at the code's schema version, and reopening it migrates nothing."""
    led = open_store("version")
    assert led.schema_version == led.latest_schema_version
    led.record(_rec(1, T0))
    led.close()
    again = open_store("version")
    assert again.schema_version == again.latest_schema_version
    assert [r.request_id for r in again.records()] == ["r1"]


_RACER = """
import sys, threading
from router.ledger import open_store
led = open_store(sys.argv[1])
wins = []
def race():
    wins.append(sum(led.try_reserve("shared", 1.0, float(sys.argv[2]), 3600) is not None for _ in range(15)))
ts = [threading.Thread(target=race) for _ in range(3)]
for t in ts: t.start()
for t in ts: t.join()
print(sum(wins))
"""


def check_reserve_is_atomic_across_processes(open_store: OpenStore) -> None:
    """3 processes x 3 threads race for one 60 J budget in 1 J pieces (135 tries): exactly 60 succeed."""
    led = open_store("processes")
    assert led.try_reserve("shared", 5.0, 60.0, 3600) is not None  # this process takes its share too
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, led.url, "60"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]  # fmt: skip
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    wins = [int(out) for out, _ in outs]
    assert sum(wins) == 55, wins
    assert math.isclose(led.budget_used("shared", 3600), 60.0)
    assert led.try_reserve("shared", 0.01, 60.0, 3600) is None


def check_request_record(open_store: OpenStore) -> None:
    """The newest record of a request (a fallback's or cascade's last attempt), found however many requests the
    ledger holds; None for an id it has never seen."""
    led = open_store("request_record")
    recs = _sample(40, step=61.0)
    first = _rec(100, T0 + 5000.0, request_id="chatcmpl-x", attempt=0, outcome="error", model="smollm2-135m")
    last = _rec(101, T0 + 5001.5, request_id="chatcmpl-x", attempt=1, model="gemma3-270m", tier="large")
    led.record_many([*recs, last])
    led.record(first)
    got = led.request_record("chatcmpl-x")
    assert got is not None and got.as_dict() == last.as_dict()
    assert led.request_record("r7").as_dict() == recs[7].as_dict()  # type: ignore[union-attr]
    assert led.request_record("chatcmpl-never") is None


def check_feedback(open_store: OpenStore) -> None:
    """Every feedback is kept in time order, per request and over a time range; writing one again (its id) changes
    nothing; every field round-trips; it survives a reopen."""
    led = open_store("feedback")
    led.record_many(_sample(5))
    fbs = [Feedback("r1", 0.25, ts=T0 + 10, key_hash="key-a", comment="too long"),
           Feedback("r2", 1.0, source="judge:gemma3-270m", ts=T0 + 11),
           Feedback("r1", 0.75, ts=T0 + 12, key_hash="key-a"),
           Feedback("r1", 0.0, source="judge:gemma3-270m", ts=T0 + 13, comment="ünïcode ✓")]
    for fb in fbs:
        led.add_feedback(fb)
    led.add_feedback(fbs[0])
    led.add_feedback(dataclasses.replace(fbs[2], score=0.1))  # same id: ignored, the first write stands
    assert [f.as_dict() for f in led.feedback("r1")] == [fbs[i].as_dict() for i in (0, 2, 3)]
    assert [f.as_dict() for f in led.feedback(since=T0 + 11, until=T0 + 13)] == [fbs[1].as_dict(), fbs[2].as_dict()]
    assert [f.feedback_id for f in led.feedback()] == [f.feedback_id for f in fbs]
    assert led.feedback("nobody") == []
    led.close()
    again = open_store("feedback")
    assert [f.as_dict() for f in again.feedback("r1")] == [fbs[i].as_dict() for i in (0, 2, 3)]


def check_stored_prompts(open_store: OpenStore) -> None:
    """Stored prompts round-trip by request and by time (the first stored for an id wins); the store counts them
    and finds the oldest; they are deleted by request, by age and all at once, each saying how many went."""
    led = open_store("prompts")
    assert led.prompt_summary() == (0, None)
    ps = [StoredPrompt(f"r{i}", f"prompt {i} ✓", f'[{{"role": "user", "content": "prompt {i}"}}]', answer=f"a{i}",
                       model="smollm2-135m", key_hash=["key-a", None][i % 2], ts=T0 + i * 100) for i in range(6)]
    for p in ps:
        led.store_prompt(p)
    led.store_prompt(dataclasses.replace(ps[0], prompt="changed"))
    assert [p.as_dict() for p in led.prompts()] == [p.as_dict() for p in ps]
    assert led.prompt_summary() == (6, T0)
    assert [p.as_dict() for p in led.prompts(request_id="r3")] == [ps[3].as_dict()]
    assert [p.request_id for p in led.prompts(since=T0 + 100, until=T0 + 300)] == ["r1", "r2"]
    assert led.prompts(request_id="nobody") == []
    assert led.delete_prompts(request_id="r3") == 1
    assert led.delete_prompts(request_id="r3") == 0
    assert led.delete_prompts(before=T0 + 150) == 2
    assert [p.request_id for p in led.prompts()] == ["r2", "r4", "r5"]
    assert led.prompt_summary() == (3, T0 + 200)
    assert led.delete_prompts() == 3
    assert led.prompts() == []


def check_prune_takes_feedback_and_prompts(open_store: OpenStore) -> None:
    """Retention removes feedback and stored prompts older than the cut-off with the records; newer ones stay."""
    led = open_store("prune_feedback")
    recs = _sample(10)
    led.record_many(recs)
    for r in recs:
        led.add_feedback(Feedback(r.request_id, 0.5, ts=r.ts + 1))
        led.store_prompt(StoredPrompt(r.request_id, "p", "[]", ts=r.ts + 1))
    cut = recs[4].ts + 100.0
    led.prune(cut)
    kept = [r.request_id for r in recs[5:]]
    assert [f.request_id for f in led.feedback()] == kept
    assert [p.request_id for p in led.prompts()] == kept
    assert led.feedback("r1") == [] and led.request_record("r1") is None
    assert led.request_record("r6") is not None


LEDGER_CHECKS: list[Callable[[OpenStore], None]] = [
    check_record_roundtrip,
    check_record_many,
    check_records_range_and_limit,
    check_recent_calls,
    check_latest_records,
    check_summary_reduced_to_dims,
    check_summary_totals_sum_the_whole_range,
    check_raw_summary_per_step,
    check_bad_arguments_are_bad_request_errors,
    check_a_record_with_an_unusable_figure_is_refused,
    check_spent,
    check_carbon_gaps,
    check_carbon_gap_rows,
    check_totals,
    check_carbon_rows_count_model_calls,
    check_carbon_rows_leave_out_records_without_co2e,
    check_summary_exact_for_any_range,
    check_reopen_keeps_everything,
    check_close_twice_is_quiet,
    check_closed_ledger_says_it_was_closed,
    check_concurrent_records,
    check_reserve_is_atomic_under_threads,
    check_settle,
    check_settle_many,
    check_settling_again_changes_nothing,
    check_a_bad_settlement_is_refused_and_stores_nothing,
    check_a_hold_past_its_hold_s_stops_counting,
    check_hold_counts,
    check_a_replayed_record_counts_against_its_budget,
    check_reserve_up_to_the_limit,
    check_window_rollover,
    check_budget_keys,
    check_prune,
    check_prune_takes_ended_budget_windows,
    check_retention_setting,
    check_record_ids_make_writes_idempotent,
    check_schema_version_is_current,
    check_reserve_is_atomic_across_processes,
    check_request_record,
    check_feedback,
    check_stored_prompts,
    check_prune_takes_feedback_and_prompts,
]


# -- migration from the previous schema -----------------------------------------------------------------------


def check_previous_schema_migrates_with_records_intact(open_store: OpenStore, make_previous: MakePrevious) -> None:
    """A store the previous release wrote opens at the current version with every record, its sums and budgets
    intact; old records get stable, unique ids; new writes (and rewrites of old records) behave as usual."""
    # what the previous release could store: no estimate, intensity or zone yet (they read back as None)
    recs = [dataclasses.replace(r, estimated_j=None, grid_g_per_kwh=None, zone=None) for r in _sample(25, step=900.0)]
    make_previous("previous", recs)
    led = open_store("previous")
    assert led.schema_version == led.latest_schema_version
    got = led.records()
    strip = [{k: v for k, v in r.as_dict().items() if k != "record_id"} for r in got]
    assert strip == [{k: v for k, v in r.as_dict().items() if k != "record_id"} for r in recs]
    ids = [r.record_id for r in got]
    assert len(set(ids)) == len(ids) and all(ids)
    _close(_as_tuples(led.totals("model")), _reference_totals(recs, "model"))
    led.record_many(got[:3])  # rewriting migrated records: they have ids now, so nothing changes
    new = _rec(99, T0 + 5.0)
    led.record(new)
    led.close()
    again = open_store("previous")
    assert [r.record_id for r in again.records()] == [r.record_id for r in sorted([*got, new], key=lambda r: r.ts)]
    _close(_as_tuples(again.totals("model")), _reference_totals([*recs, new], "model"))


def check_previous_schema_takes_feedback(open_store: OpenStore, make_previous: MakePrevious) -> None:
    """A store the previous release wrote finds its old requests by id once migrated, and keeps feedback and
    prompts for them."""
    recs = [dataclasses.replace(r, estimated_j=None, grid_g_per_kwh=None, zone=None) for r in _sample(8, step=900.0)]
    make_previous("previous", recs)
    led = open_store("previous")
    got = led.request_record("r3")
    assert got is not None and got.model == recs[3].model and got.ts == recs[3].ts
    led.add_feedback(Feedback("r3", 0.9, ts=T0 + 10_000))
    led.store_prompt(StoredPrompt("r3", "p", "[]", ts=T0 + 10_000))
    assert [f.score for f in led.feedback("r3")] == [0.9]
    assert [p.request_id for p in led.prompts()] == ["r3"]


MIGRATION_CHECKS: list[Callable[[OpenStore, MakePrevious], None]] = [
    check_previous_schema_migrates_with_records_intact,
    check_previous_schema_takes_feedback,
]


# -- a store that becomes unavailable -------------------------------------------------------------------------


def check_outage_raises_ledger_error_and_recovers(outage: Outage) -> None:
    """While the store is unavailable every public method either works (e.g. reads a lock does not block) or
    raises ``LedgerError`` naming the store, never the driver's exception; writes cannot succeed; afterwards
    the same ledger object works again."""
    led, break_it, restore = outage()
    led.record(_rec(0, T0))
    res = led.try_reserve("b", 1.0, 100.0, 3600)
    assert res is not None
    calls: dict[str, Callable[[], object]] = {
        "record": lambda: led.record(_rec(1, T0 + 1)),
        "record_many": lambda: led.record_many([_rec(2, T0 + 2), _rec(3, T0 + 3)]),
        "try_reserve": lambda: led.try_reserve("b", 1.0, 100.0, 3600),
        "settle": lambda: led.settle(res, 0.5),
        "settle_many": lambda: led.settle_many([(res, 0.5)]),
        "records": lambda: led.records(),
        "iter_records": lambda: list(led.iter_records()),
        "spent": lambda: led.spent(since=0),
        "totals": lambda: led.totals("model"),
        "summary": lambda: led.summary(),
        "budget_used": lambda: led.budget_used("b", 3600),
        "budget_keys": lambda: led.budget_keys(0.0),
        "prune": lambda: led.prune(T0 - 10),
    }
    break_it()
    try:
        failed = set()
        for name, call in calls.items():
            try:
                call()
            except LedgerError as exc:
                failed.add(name)
                assert led.url.split("?")[0].split("@")[-1] in str(exc), (name, str(exc))
                assert "fix:" in str(exc), (name, str(exc))
            except Exception as exc:  # noqa: BLE001 - the point of the check
                raise AssertionError(f"{name} raised {type(exc).__module__}.{type(exc).__name__}: {exc}") from exc
        assert {"record", "record_many", "try_reserve"} <= failed, failed
    finally:
        restore()
    led.record(_rec(4, T0 + 4))
    assert led.try_reserve("b", 1.0, 100.0, 3600) is not None
    assert "r4" in [r.request_id for r in led.records()]
    led.close()


OUTAGE_CHECKS: list[Callable[[Outage], None]] = [check_outage_raises_ledger_error_and_recovers]


def check_ledger(open_store: OpenStore) -> None:
    """Run every check (each on its own store)."""
    for check in LEDGER_CHECKS:
        check(open_store)
