"""``rollup_hourly``, kept by the SQLite and the PostgreSQL ledger alike: the hourly sums by model, tier, outcome,
energy source and zone only, with the carbon report's sums, that the dashboard's totals and series and the report's
default view and carbon section read (a few dozen rows an hour where ``summary_hourly`` keeps about one per record
on a ledger with many keys, policies and tasks).

No trigger keeps it: each store marks which records it already includes (SQLite: the newest record id; PostgreSQL:
the transactions that wrote them), every read adds the records it lacks in the same statement, and writers fold them
in a few thousand at a time (:class:`RollupFolding`). The SQL both stores share lives here; each store's schema
module says which records are folded in and how.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from .base import REFUSED

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
