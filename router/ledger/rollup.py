"""``rollup_hourly``, kept by the SQLite and the PostgreSQL ledger alike: the hourly sums by model, tier, outcome,
energy source and zone only, with the carbon report's sums, that the dashboard's totals and series and the report's
default view and carbon section read (a few dozen rows an hour where ``summary_hourly`` keeps about one per record
on a ledger with many keys, policies and tasks).

No trigger keeps it: each store marks which records it already includes (SQLite: the newest record id; PostgreSQL:
the transactions that wrote them), every read adds the records it lacks in the same statement, and writers fold them
in a few thousand at a time (:class:`RollupFolding`). The SQL both stores share lives here, and so does their
reading of the hourly sums by dimension (:class:`SummedInStore`); each store's schema module says which records are
folded in and how.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from .arguments import checked_span
from .base import REFUSED, SUMMARY_DIMS, Ledger, SummaryRow
from .errors import guarded

ROLLUP_DIMS = ("model", "tier", "outcome", "energy_source")
"""The dimensions ``rollup_hourly`` keeps (of ``SUMMARY_DIMS``; it keeps the zone too, for the carbon sums)."""

ROLLUP_UPTO = "rollup_upto"
"""The ``meta`` key that says which records ``rollup_hourly`` includes (each store's schema module says how)."""

ROLLUP_KEYS = ("bucket", "model", "tier", "outcome", "energy_source", "zone")

# (column, kind, what one record adds to it): kind "int" or "real", each store's types for them
_SUMMED = (
    ("requests", "int", "1"),
    ("energy_j", "real", "energy_j"),
    ("input_tokens", "int", "COALESCE(input_tokens, 0)"),
    ("output_tokens", "int", "COALESCE(output_tokens, 0)"),
    ("latency_ms_sum", "real", "COALESCE(latency_ms, 0)"),
    ("co2e_g", "real", "COALESCE(co2e_g, 0)"),
    ("grid_energy", "real", "CASE WHEN co2e_g IS NULL THEN 0 ELSE energy_j * COALESCE(grid_g_per_kwh, 0) END"),
    ("without_co2e", "int", "CASE WHEN co2e_g IS NULL THEN 1 ELSE 0 END"),
    ("joules_without_co2e", "real", "CASE WHEN co2e_g IS NULL THEN energy_j ELSE 0 END"),
)
_ZONE = "COALESCE(NULLIF(zone, ''), '-')"  # an empty zone is no zone, as in carbon_report.carbon_rows
_GROUP_BY = "GROUP BY " + ", ".join(str(i + 1) for i in range(len(ROLLUP_KEYS)))

SUMMARY_SUMS = "SUM(requests), SUM(energy_j), SUM(input_tokens), SUM(output_tokens), SUM(latency_ms_sum), SUM(co2e_g)"
"""The summary's sums (``SummaryRow``'s) over rows of ``rollup_hourly``."""

CARBON_SUMS = (f"bucket, zone, SUM(CASE WHEN outcome != '{REFUSED}' THEN requests ELSE 0 END), "
               f"SUM(CASE WHEN outcome = '{REFUSED}' THEN requests ELSE 0 END), SUM(energy_j), SUM(co2e_g), "
               "SUM(grid_energy), SUM(without_co2e), SUM(joules_without_co2e)")
"""``Ledger.carbon_rows``' columns over rows of ``rollup_hourly`` (group by 1, 2)."""


def create_rollup_sql(table: str, types: dict[str, str], suffix: str = "") -> str:
    """``CREATE TABLE`` of ``rollup_hourly`` named ``table``, ``types`` the store's type for "int", "real", "text"."""
    keys = [f"{k} {types['int' if k == 'bucket' else 'text']} NOT NULL" for k in ROLLUP_KEYS]
    sums = [f"{name} {types[kind]} NOT NULL" for name, kind, _ in _SUMMED]
    return (f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(keys + sums)}, "
            f"PRIMARY KEY ({', '.join(ROLLUP_KEYS)})){suffix}")


def grouped_sums(bucket: str) -> str:
    """The select list of ``rollup_hourly``'s rows summed from records, ``bucket`` the store's hour of ``ts``
    (then grouped by the first six)."""
    return f"{bucket}, model, tier, outcome, energy_source, {_ZONE}, " + ", ".join(f"SUM({e})" for _, _, e in _SUMMED)


def one_record(bucket: str) -> str:
    """The select list of one record as a row of ``rollup_hourly`` (the records a read adds to its rows)."""
    return f"{bucket}, model, tier, outcome, energy_source, {_ZONE}, " + ", ".join(e for _, _, e in _SUMMED)


def add_rollup_sql(table: str, records: str, bucket: str, where: str, *, upsert: bool) -> str:
    """Adds the records of ``records`` matching ``where`` (bound parameters allowed) to ``table``: as new rows, or
    (``upsert``) to the rows already there."""
    sql = f"INSERT INTO {table} SELECT {grouped_sums(bucket)} FROM {records} {where} {_GROUP_BY}"
    if upsert:
        name = table.rsplit(".", 1)[-1]
        sets = ", ".join(f"{c} = {name}.{c} + excluded.{c}" for c, _, _ in _SUMMED)
        sql += f" ON CONFLICT ({', '.join(ROLLUP_KEYS)}) DO UPDATE SET {sets}"
    return sql


def whole_hours(since: float, until: float | None) -> tuple[int, int | None]:
    """The first and the end of the whole hours within ``since <= ts < until`` (None: no end)."""
    lo = int(since) - int(since) % 3600 + (3600 if since % 3600 else 0)
    return lo, None if until is None else int(until) - int(until) % 3600


Rows = list[tuple[Any, ...]]


def carbon_rows_by_hours(
    since: float, until: float | None, from_rollup: Callable[[int, int | None], Rows],
    from_records: Callable[[float, float | None], Rows],
) -> Rows:
    """``Ledger.carbon_rows``: the whole hours from the rollup, the partial hours at either end from the records."""
    lo, hi = whole_hours(since, until)
    if hi is not None and lo >= hi:
        return from_records(since, until)
    rows = from_rollup(lo, hi)
    if since < lo:
        rows += from_records(since, lo)
    if until is not None and hi is not None and until > hi:
        rows += from_records(hi, until)
    return sorted(rows, key=lambda r: (r[0], r[1]))


class RollupFolding:
    """A writer's share of keeping ``rollup_hourly``: every ``ROLLUP_CHECK_EVERY`` records it writes (and at its
    first write) it looks how many records the rollup lacks (from any process), and folds them in at
    ``ROLLUP_FOLD_AT``. Failing to fold only leaves more for reads to add until the next look."""

    ROLLUP_CHECK_EVERY = 256
    """Records a process writes between two looks at how many ``rollup_hourly`` lacks."""
    ROLLUP_FOLD_AT = 2048
    """Records not yet in ``rollup_hourly`` that make a writer fold them in: each read of it sums at most about this
    many records besides its rows, and a fold takes a few milliseconds."""

    _unlooked: float = math.inf  # records written since the last look (the first write looks)
    url: str

    def _unfolded(self) -> int:
        """How many records the rollup lacks (at least; at most ``ROLLUP_FOLD_AT`` are counted)."""
        raise NotImplementedError

    def _fold_now(self) -> None:
        """Folds the records the rollup lacks into it."""
        raise NotImplementedError

    def _fold_if_due(self, written: int, errors: tuple[type[BaseException], ...]) -> None:
        self._unlooked += written
        if self._unlooked < self.ROLLUP_CHECK_EVERY:
            return
        self._unlooked = 0
        try:
            if self._unfolded() >= self.ROLLUP_FOLD_AT:
                self._fold_now()
        except errors as exc:
            # the records are written; reads sum the ones not folded in, so this only waits for the next look
            logging.getLogger(type(self).__module__).warning(
                "could not fold new records into %s's hourly rollup (%s); trying again later", self.url, exc)


class SummedInStore(Ledger):
    """The summed reads SQLite and PostgreSQL both make in the store rather than in Python: :meth:`Ledger.summary`
    and :meth:`Ledger.summary_totals` over whole hours (from ``rollup_hourly`` where the dimensions asked for are
    among the ones it keeps, otherwise from ``summary_hourly``) and :meth:`carbon_rows`. Each store names its
    tables and its bound parameter, and runs the statements."""

    _summary_table: str
    """``summary_hourly`` as the store's SQL names it."""
    _param: str
    """The store's placeholder for a bound parameter."""

    def _all(self, sql: str, args: Any = None) -> list[Any]:
        """All rows of one statement, run as the store runs its reads."""
        raise NotImplementedError

    def _rollup_source(self, lo: int, hi: int | None) -> tuple[str, list[Any]]:
        """The store's ``rollup_source``: a table expression of ``rollup_hourly``'s rows for the hours
        ``lo <= bucket < hi`` with the records not yet folded in, and its arguments."""
        raise NotImplementedError

    def _raw_carbon_rows(self, since: float, until: float | None) -> Rows:
        """:meth:`carbon_rows` summed from the records themselves (the partial hours; the rollup's check)."""
        raise NotImplementedError

    @guarded("read carbon sums")
    def carbon_rows(self, since: float, until: float | None) -> Rows:
        """Per (hour, zone): model calls, rejections, joules, grams CO2e, joules x g/kWh of the records with a CO2e
        figure, and the records without one with their joules (``router ledger report``'s carbon). Whole hours come
        from ``rollup_hourly`` (a few dozen rows an hour), the partial hours at either end from the records."""
        since, until = checked_span(since, until)

        def from_rollup(lo: int, hi: int | None) -> Rows:
            source, args = self._rollup_source(lo, hi)
            rows = self._all(f"SELECT {CARBON_SUMS} FROM {source} GROUP BY 1, 2", args)
            # PostgreSQL sums integers as numeric (Decimal in Python)
            return [(int(b), zone, int(n), int(refused), *map(float, sums[:3]), int(sums[3]), float(sums[4]))
                    for b, zone, n, refused, *sums in rows]

        return carbon_rows_by_hours(since, until, from_rollup, self._raw_carbon_rows)

    @guarded("read the hourly summary")
    def _stored_summary_by(self, lo: float, hi: float, dims: tuple[str, ...] | None) -> list[SummaryRow]:
        if dims is None:
            return self._stored_summary(lo, hi)
        return self._summed_by(lo, hi, dims, "bucket")

    @guarded("read the hourly summary")
    def _stored_totals_by(self, lo: float, hi: float, dims: tuple[str, ...] | None) -> list[SummaryRow]:
        return self._summed_by(lo, hi, SUMMARY_DIMS if dims is None else dims, "0")  # one bucket for all hours

    def _summed_by(self, lo: float, hi: float, dims: tuple[str, ...], bucket: str) -> list[SummaryRow]:
        """The stored sums of the hours ``lo <= bucket < hi`` grouped by ``bucket`` (an SQL expression) and
        ``dims``."""
        start, end = int(math.ceil(lo)), None if math.isinf(hi) else int(math.ceil(hi))  # buckets are whole hours
        if set(dims) <= set(ROLLUP_DIMS):
            # the same sums grouped coarser: a few dozen rows an hour where summary_hourly has one per key/policy/task
            source, rolled = self._rollup_source(start, end)
            return self._grouped(bucket, source, "TRUE", rolled, dims, SUMMARY_SUMS)
        where, args = f"bucket >= {self._param}", [start]
        if end is not None:
            where += f" AND bucket < {self._param}"
            args.append(end)
        return self._grouped(bucket, self._summary_table, where, args, dims, SUMMARY_SUMS)

    def _grouped(self, bucket: str, table: str, where: str, args: list[Any], dims: tuple[str, ...],
                 sums: str) -> list[SummaryRow]:
        """Rows of ``sums`` (``SummaryRow``'s) over ``table`` where ``where``, summed by the store and grouped by
        ``bucket`` (an SQL expression) and ``dims`` (the other dimensions NULL, read as None)."""
        cols = ", ".join((f"COALESCE({d}, '')" if d in _STORED_EMPTY else d) if d in dims else "CAST(NULL AS TEXT)"
                         for d in SUMMARY_DIMS)
        groups = "".join(f", {2 + SUMMARY_DIMS.index(d)}" for d in dims)
        return [summary_row(r) for r in self._all(f"SELECT {bucket}, {cols}, {sums} FROM {table} WHERE {where} "
                                                  f"GROUP BY 1{groups}", args)]


_STORED_EMPTY = ("key_hash", "policy", "task")
"""The dimensions ``summary_hourly`` keeps as '' where a record has none (SQLite groups NULLs apart)."""


def summary_row(r: tuple[Any, ...]) -> SummaryRow:
    """A summary query's row (bucket, ``SUMMARY_DIMS``, then the sums), the dimensions stored as '' read None again
    and the sums as Python numbers (PostgreSQL sums integers as numeric, Decimal in Python)."""
    row = SummaryRow(float(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], r[7], int(r[8]), float(r[9]), int(r[10]),
                     int(r[11]), float(r[12]), float(r[13]))
    row.key_hash, row.policy, row.task = row.key_hash or None, row.policy or None, row.task or None
    return row
