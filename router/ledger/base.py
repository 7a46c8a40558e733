"""The ledger: one record per model call, and the budget state read from it.

Implementations: :class:`SQLiteLedger` (default, one host), the Redis ledger (several processes share budgets in
memory) and the PostgreSQL ledger (a fleet keeps its records in a database), plus :class:`JournaledLedger`, which
puts a local append-only journal in front of any of them. All pass the shared suite in
``tests/conformance/ledger_suite.py``.

Every record carries a ``record_id`` made when the record is created; a store keeps ids unique and ignores a
record whose id it already holds, so writing a record again (a journal replayed twice, a batch retried) never
counts it twice. ``request_id`` is kept as well: the attempts of one request (a cascade, a fallback) share it.

Length: the interface every store implements, with the record and summary types it speaks in, and the checks of a
settlement and a record that every store shares (they test these types; the checks of plain arguments are in
:mod:`.arguments`); the stores, reports and migrations are modules of their own.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal

from .._ids import new_record_id
from ..errors import BadRequestError
from ..policy.schema import budget_window_s
from .arguments import (
    EARLIEST_TS,
    checked_budget,
    checked_count,
    checked_group,
    checked_hold_s,
    checked_joules,
    checked_span,
    checked_time,
    is_finite_number,
    shown,
)
from .errors import guarded
from .feedback import FeedbackMethods

Outcome = Literal["ok", "error", "escalated", "rejected", "cancelled"]



@dataclass
class LedgerRecord:
    request_id: str
    model: str
    tier: str
    energy_j: float
    energy_source: str
    outcome: Outcome = "ok"
    reason: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    latency_ms: float = 0.0
    policy: str | None = None
    task: str | None = None
    key_hash: str | None = None
    error: str | None = None
    attempt: int = 0
    co2e_g: float | None = None
    ts: float = field(default_factory=time.time)
    record_id: str = field(default_factory=new_record_id)
    estimated_j: float | None = None
    """The joules expected for this call before it ran (what the decision compared)."""
    grid_g_per_kwh: float | None = None
    """The grid carbon intensity ``co2e_g`` was computed at."""
    zone: str | None = None
    """The grid zone whose intensity applies (a hosted model's region, or this host's)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


HOLD_MARGIN_S = 60.0
"""How long a hold outlives its call's deadline: the settlement, queued by the proxy's writer or waiting out a
short outage of the store, still finds it. A settlement later than that is counted in full (the hold's joules
were given back when it expired), so no figure is lost either way."""


@dataclass
class HoldCounts:
    """The budget holds a store keeps now (``router ledger doctor``): of calls that may still be running
    (``live``), past their expiry and so no longer counted (``expired``: a killed process's, given back at the
    budget's next reservation that needs the room), and without an expiry (``unbounded``: counted until their
    window ends)."""

    live: int = 0
    live_j: float = 0.0
    expired: int = 0
    expired_j: float = 0.0
    unbounded: int = 0
    unbounded_j: float = 0.0

    def add(self, joules: float, expires_at: float | None, now: float) -> None:
        if expires_at is None:
            self.unbounded, self.unbounded_j = self.unbounded + 1, self.unbounded_j + joules
        elif expires_at < now:
            self.expired, self.expired_j = self.expired + 1, self.expired_j + joules
        else:
            self.live, self.live_j = self.live + 1, self.live_j + joules


@dataclass(frozen=True)
class Reservation:
    """Joules held against a budget while a request runs; settled with the actual figure afterwards."""

    id: str
    budget: str
    joules: float
    window_start: float


class Ledger(FeedbackMethods, ABC):
    """Where records go and budgets are read from.

    Feedback and stored prompts (:mod:`router.ledger.feedback`) are the other half of the interface.

    Errors: every public method raises :class:`~router.errors.LedgerError` (never the driver's own exception)
    when the store cannot be opened, read or written; the message names ``url`` (password masked), what is
    wrong and the fix. A caller's mistake in an argument (a time that is not a finite number, a negative limit,
    an unknown grouping) is a :class:`~router.errors.BadRequestError` naming the argument, raised by the shared
    checks below (``checked_span``, ``checked_limit`` ...) before the store is read."""

    url: str = ""
    """The URL the ledger was opened with (shown in messages with any password masked)."""

    driver_errors: tuple[type[BaseException], ...] = (OSError,)
    """The exceptions :func:`~router.ledger.errors.guarded` methods translate into ``LedgerError``."""

    def _translate(self, exc: BaseException, action: str) -> Exception:
        from .errors import first_line, ledger_error

        return ledger_error(self.url, f"could not {action}: {first_line(exc)}", "check the store and retry")

    @abstractmethod
    def record(self, rec: LedgerRecord) -> None:
        """Append one record durably; a record whose ``record_id`` is already stored is ignored."""

    atomic_batches: bool = False
    """True where :meth:`record_many` writes all of a batch or none of it (one transaction), so a failed batch
    can be retried record by record without writing anything twice."""

    def record_many(self, recs: list[LedgerRecord]) -> None:
        """Append several records (the proxy's background writer hands over what queued up meanwhile), ignoring
        those whose ``record_id`` is already stored. This default writes them one at a time, so a failure can
        leave the first ones written: not atomic (rewriting them is harmless: ids are unique)."""
        for rec in recs:
            self.record(rec)

    @abstractmethod
    def records(self, since: float = 0.0, until: float | None = None, limit: int | None = None) -> list[LedgerRecord]:
        """Records in time order."""

    @abstractmethod
    def spent(self, *, since: float, model: str | None = None, key_hash: str | None = None) -> float:
        """Joules recorded since ``since``, optionally for one model and/or one key."""

    @guarded("read totals")
    def totals(self, by: str = "model", since: float = 0.0) -> list[dict[str, Any]]:
        """Sums grouped by one of ``GROUPS`` (``model``, ``tier``, ``day``, ``key``, ``policy`` ...):
        ``{group, requests, errors, rejected, energy_j, input_tokens, output_tokens, mean_latency_ms}``, read from
        :meth:`summary`; ``requests`` counts model calls, ``rejected`` the records of models not called (see
        :func:`totals_from_summary`)."""
        by = checked_group(by)
        return totals_from_summary(self.summary(since), by)

    def carbon_gaps(self, since: float = 0.0, until: float | None = None) -> tuple[int, float]:
        """How many records with ``since <= ts < until`` carry no CO2e figure, and their joules: records written
        before the carbon columns existed, or by an application's own :meth:`record` without one. The hourly
        summaries count them as 0 g, so a view of the CO2e total says what the total leaves out
        (:func:`~router.energy.carbon.recorded_equivalents`); per group: :meth:`carbon_gap_rows`."""
        rows = self.carbon_gap_rows(since, until, dims=())
        return sum(r.requests for r in rows), sum(r.energy_j for r in rows)

    @guarded("count the records without CO2e")
    def carbon_gap_rows(
        self, since: float = 0.0, until: float | None = None, dims: Sequence[str] | None = None
    ) -> list[SummaryRow]:
        """The records without a CO2e figure (:meth:`carbon_gaps`) summed per hour bucket and dimension like
        :meth:`raw_summary` (``requests`` counts every one of them, rejected too), so a view that shows CO2e per
        model, day or key can say how many of each group's records its grams leave out: one read for all the groups
        (:func:`group_dims` gives the ``dims`` a grouping needs). This default walks the records once; SQLite and
        PostgreSQL sum in the store over their partial index of just those records."""
        since, until = checked_span(since, until)
        return self._carbon_gap_rows(since, until, check_dims(dims))

    def _carbon_gap_rows(self, since: float, until: float | None, dims: tuple[str, ...] | None) -> list[SummaryRow]:
        return reduce_dims(aggregate(r for r in self.iter_records(since, until) if r.co2e_g is None), dims)

    # Budget accounting. Atomic reserve-then-settle so concurrent requests cannot both spend the last joules.
    def try_reserve(self, budget: str, joules: float, limit_j: float, window_s: float,
                    hold_s: float | None = None) -> Reservation | None:
        """Hold ``joules`` against ``budget`` (spent + held ≤ limit in the current window) or return None.
        ``limit_j``: ``math.inf`` holds whatever the budget spent (``allow_and_flag``).
        ``hold_s``: the seconds the hold may last unsettled (None: until its window ends). A hold not settled
        within it (its process was killed) stops counting against the budget (:meth:`budget_used` leaves it out,
        and a reservation that finds no room gives its joules back first); a settlement that comes later still
        counts what the call used, in full, once (:data:`HOLD_MARGIN_S`).

        The arguments are checked here, once for every store (a budget name that is not a non-empty string, a
        NaN, negative or non-number amount is a :class:`~router.errors.BadRequestError`); the store's
        :meth:`_try_reserve` reserves."""
        budget = checked_budget(budget)
        joules = checked_joules("joules", joules)
        limit_j = checked_joules("limit_j", limit_j, unlimited=True)
        return self._try_reserve(budget, joules, limit_j, window_s, checked_hold_s(hold_s))

    def _try_reserve(self, budget: str, joules: float, limit_j: float, window_s: float,
                     hold_s: float | None) -> Reservation | None:
        """:meth:`try_reserve` with its amounts checked: what a store implements. Not abstract: a ledger that
        hands :meth:`try_reserve` on to another (the journal, the proxy's background writer) has the other check."""
        raise NotImplementedError(f"{type(self).__name__} keeps no budgets")

    def settle(self, reservation: Reservation, actual_j: float) -> None:
        """Replace the held amount with what the call actually used, once: every store settles a reservation by
        its id (its hold), so settling it again (a retry after a timeout whose first try had committed, a journal's
        replay) changes nothing and the first figure stands.

        ``actual_j`` is checked here, once for every store, as :meth:`try_reserve`'s amounts are: a NaN, infinite,
        negative or non-number figure (a broken meter's, a caller's mistake) is a
        :class:`~router.errors.BadRequestError` naming it, and nothing is stored. Unchecked, it would go into the
        budget's counter, which every later reservation compares against: NaN or infinity leaves the budget
        refusing (or, in some stores, admitting) everything for the rest of its window, and negative joules give
        back what was spent. The store's :meth:`_settle` settles."""
        self._settle(*checked_settlement(reservation, actual_j))

    def _settle(self, reservation: Reservation, actual_j: float) -> None:
        """:meth:`settle` with its figure checked: what a store implements. Not abstract, as :meth:`_try_reserve`."""
        raise NotImplementedError(f"{type(self).__name__} keeps no budgets")

    def settle_many(self, settlements: list[tuple[Reservation, float]]) -> None:
        """Settle several reservations (the proxy's background writer hands over the ones that queued up while
        it wrote). Every figure is checked (as :meth:`settle` checks one) before any is applied: one bad figure
        refuses the whole batch with a :class:`~router.errors.BadRequestError` naming its index
        (``settlements[2]``), and none of the batch is stored, so a caller that fixes the figure and sends the
        batch again settles each reservation once. The store's :meth:`_settle_many` settles."""
        checked = [checked_settlement(*pair, at=i) for i, pair in enumerate(checked_pairs(settlements))]
        if checked:
            self._settle_many(checked)

    def _settle_many(self, settlements: list[tuple[Reservation, float]]) -> None:
        """:meth:`settle_many` with its figures checked. This default settles them one at a time; SQLite uses one
        transaction, Redis one round trip, PostgreSQL one transaction."""
        for reservation, actual_j in settlements:
            self._settle(reservation, actual_j)

    def hold_counts(self) -> HoldCounts | None:
        """The budget holds this store keeps now (``router ledger doctor``); None where it keeps none by id."""
        return None

    def settle_queued(self) -> bool:
        """Apply now the settlements :meth:`settle` queued to apply later (the proxy's background writer queues
        them: until then each ended call holds its estimate). The Router calls this before a budget refuses a
        request, and reserves again where it returns ``True`` (budgets may have more room now). This default
        settles at once, so nothing is queued: ``False``."""
        return False

    @abstractmethod
    def budget_used(self, budget: str, window_s: float) -> float:
        """Joules spent plus held in the current window of ``budget``."""

    @guarded("list the budget counters")
    def budget_keys(self, since: float) -> list[str]:
        """The budgets (ledger keys, as :meth:`try_reserve` was given them) with a counter for a window that
        started at or after ``since``, in no particular order. A budget's window is aligned to the epoch, so a
        budget of ``window_s`` seconds has spent or held joules in its current window exactly when it is listed for
        ``since = window_start(now, window_s)``: what the proxy lists in ``/metrics`` after a restart. This
        default returns [] (a store that cannot list its counters: those budgets show again once a request meets
        them); every store here overrides it."""
        checked_time("since", since)
        return []

    def recent_calls(self, model: str, limit: int) -> list[LedgerRecord]:
        """The newest ``limit`` answered calls (outcome ``ok`` or ``escalated``) of ``model``, newest first: what
        the energy estimates learn from. This default scans the last week; stores override it with an index."""
        limit = checked_count("limit", limit)
        since = time.time() - 7 * 86_400
        calls = [r for r in self.iter_records(since) if r.model == model and r.outcome in ("ok", "escalated")]
        return calls[::-1][:limit]

    def latest_records(self, limit: int) -> list[LedgerRecord]:
        """The newest ``limit`` records of any outcome, newest first (the dashboard's recent decisions). This
        default reads ever wider spans back from now (an hour, then 8x longer each time), so it reads few rows
        where records are dense; stores override it with their time index."""
        if checked_count("limit", limit) == 0:
            return []
        now, span = time.time(), 3600.0
        while True:
            since = max(0.0, now - span)
            recs = self.records(since)
            if len(recs) >= limit or since == 0.0:
                return recs[::-1][:limit]
            span *= 8

    @abstractmethod
    def prune(self, older_than: float) -> int:
        """Delete records with ``ts < older_than`` (the retention setting); returns how many went."""

    # Reports. ``summary`` is what ``router ledger report`` reads: hourly aggregates that a ledger may keep
    # up to date as it writes (SQLite: a trigger-maintained table; Redis: hashes), so a report over a busy
    # day's million records reads thousands of rows, not millions. The default aggregates ``records``.
    def summary(
        self, since: float = 0.0, until: float | None = None, dims: Sequence[str] | None = None
    ) -> list[SummaryRow]:
        """Aggregates per hour bucket and dimension for records with ``since <= ts < until``. Partial hours
        at either end are aggregated from the raw records, so the figures are exact for any range.

        ``dims``: keep only these of ``SUMMARY_DIMS``; the others read None and rows that then agree are summed
        into one, so totals by model read a row per hour and model instead of one per hour, model, key, policy
        and task (the dashboard's queries on a million records: ``benchmarks/bench_dashboard.py``)."""
        return self._summary(since, until, dims, per_hour=True)

    def summary_totals(
        self, since: float = 0.0, until: float | None = None, dims: Sequence[str] | None = None
    ) -> list[SummaryRow]:
        """:meth:`summary` summed over the whole range: one row per combination of ``dims`` (its ``bucket`` reads
        ``since``), summed by the store. What a report by key, policy or task reads: the hourly summary keeps about
        a row per record for those, and one object per hour and key held hundreds of MB for a few dozen groups."""
        since, until = checked_span(since, until)
        rows = self._summary(since, until, dims, per_hour=False)
        keep = check_dims(dims)
        for row in rows:  # the partial hours at either end come per hour: summed into the rest below
            row.bucket = since
        return reduce_dims(rows, SUMMARY_DIMS if keep is None else keep)

    def _summary(self, since: float, until: float | None, dims: Sequence[str] | None, *,
                 per_hour: bool) -> list[SummaryRow]:
        since, until = checked_span(since, until)
        keep = check_dims(dims)
        lo = bucket_of(since) + (BUCKET_S if since % BUCKET_S else 0)
        hi = bucket_of(until) if until is not None else math.inf
        if lo >= hi:
            return self._raw_summary(since, until, keep, int(BUCKET_S))
        rows = self._stored_summary_by(lo, hi, keep) if per_hour else self._stored_totals_by(lo, hi, keep)
        if since < lo:
            rows += self._raw_summary(since, lo, keep, int(BUCKET_S))
        if until is not None and until > hi:
            rows += self._raw_summary(hi, until, keep, int(BUCKET_S))
        return rows

    def raw_summary(
        self, since: float, until: float | None = None, dims: Sequence[str] | None = None, step_s: int = 3600
    ) -> list[SummaryRow]:
        """Sums of the records ``since <= ts < until`` per ``step_s``-second bucket (aligned to the epoch; whole
        seconds) and dimension, reduced to ``dims`` like :meth:`summary`. Read from the records themselves, not
        the hourly summary, so keep the range short: :meth:`summary` uses it for partial hours, the dashboard for
        5-minute steps over its last hour. SQLite and PostgreSQL sum inside the store."""
        since, until = checked_span(since, until)
        step_s = checked_count("step_s", step_s, least=1, unit="seconds")
        return self._raw_summary(since, until, check_dims(dims), step_s)

    def _raw_summary(
        self, since: float, until: float | None, dims: tuple[str, ...] | None, step_s: int
    ) -> list[SummaryRow]:
        """:meth:`raw_summary` with ``dims`` checked; stores override it to sum in the store, not in Python."""
        return reduce_dims(aggregate(self.iter_records(since, until), step_s), dims)

    def _stored_summary_by(self, lo: float, hi: float, dims: tuple[str, ...] | None) -> list[SummaryRow]:
        """:meth:`_stored_summary` reduced to ``dims``; stores override it to group in the store."""
        return reduce_dims(self._stored_summary(lo, hi), dims)

    def _stored_totals_by(self, lo: float, hi: float, dims: tuple[str, ...] | None) -> list[SummaryRow]:
        """:meth:`_stored_summary_by` over all its hours at once (any ``bucket``; :meth:`summary_totals` sums the
        rows that agree); stores override it to sum in the store."""
        return self._stored_summary_by(lo, hi, dims)

    def _stored_summary(self, lo: float, hi: float) -> list[SummaryRow]:
        """Aggregates of whole hour buckets ``lo <= bucket < hi``; override where the store keeps them."""
        return aggregate(self.iter_records(max(lo, EARLIEST_TS), None if math.isinf(hi) else hi))

    def iter_records(
        self, since: float = 0.0, until: float | None = None, batch: int = 10_000
    ) -> Iterator[LedgerRecord]:
        """Records in time order without holding them all in memory (exports of a big ledger), read ``batch`` at
        a time."""
        checked_count("batch", batch, least=1)
        yield from self.records(since, until)

    @property
    def schema_version(self) -> int | None:
        """The store's schema version (None where the store has no schema)."""
        return None

    @property
    def latest_schema_version(self) -> int | None:
        """The schema version this code writes (None where the store has no schema)."""
        return None

    def integrity_problems(self) -> list[str]:
        """What a store-level integrity check finds (``router ledger doctor``); empty when all is well or the
        store has no such check."""
        return []

    def stored_summary(self, lo: float = -math.inf, hi: float = math.inf) -> list[SummaryRow]:
        """The whole-hour aggregates the store keeps for hours ``lo <= bucket < hi``, by default all of them
        (``router ledger doctor`` compares them with the records, a day at a time)."""
        return self._stored_summary(lo, hi)

    def rebuild_summary(self) -> None:  # noqa: B027 - optional hook
        """Recompute the stored hourly aggregates from the records (``router ledger doctor --repair``)."""

    closed: bool = False
    """True once :meth:`close` was called."""

    def close(self) -> None:
        """Flush and release the connection. Closing a closed ledger does nothing (``Router.close``, a ``with``
        block and a cleanup handler may all close the same one), and says nothing."""
        if self.closed:
            return
        try:
            self._close()
        finally:
            self.closed = True  # a close that failed half-way is not tried again: the store is in no state to use

    def _close(self) -> None:  # noqa: B027 - optional hook
        """What :meth:`close` does, once: stores release their connections here."""


BUCKET_S = 3600.0
"""Summaries are kept per hour (UTC): fine enough for plots, coarse enough to stay small."""

SUMMARY_DIMS = ("model", "tier", "key_hash", "policy", "task", "outcome", "energy_source")

REFUSED = "rejected"
"""The outcome of a record whose model was not called (its budget was spent, or the request was refused for it):
the views count these apart, not as requests of that model nor in its latency."""


def bucket_of(ts: float) -> float:
    """Start of the hour bucket holding ``ts``."""
    return float(math.floor(ts / BUCKET_S) * BUCKET_S)


class Retention:
    """For a :class:`Ledger` that keeps a ``retention_days`` setting: it is applied when the store opens, then at
    most once an hour from the writes (``prune_if_due`` after each; one clock read when nothing is due)."""

    _next_prune = 0.0
    prune: Callable[[float], int]

    if TYPE_CHECKING:  # each store reads its setting back from where it keeps it
        @property
        def retention_days(self) -> float | None: ...

    def apply_retention(self, now: float | None = None) -> int:
        """Prune what the retention setting says is too old; returns how many records went."""
        days = self.retention_days
        now = time.time() if now is None else now
        self._next_prune = now + 3600
        return 0 if days is None else self.prune(now - days * 86400)

    def prune_if_due(self, newest_ts: float) -> None:
        """After a write whose newest record is at ``newest_ts``."""
        if newest_ts >= self._next_prune and time.time() >= self._next_prune:
            self.apply_retention()


@dataclass
class SummaryRow:
    """Sums over the records of one hour bucket that share every dimension in ``SUMMARY_DIMS`` (a dimension
    left out of ``Ledger.summary(dims=...)`` reads None)."""

    bucket: float
    model: str
    tier: str
    key_hash: str | None
    policy: str | None
    task: str | None
    outcome: str
    energy_source: str
    requests: int = 0
    energy_j: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    latency_ms_sum: float = 0.0
    co2e_g: float = 0.0

    def dims(self) -> tuple[Any, ...]:
        return (self.bucket, *(getattr(self, d) for d in SUMMARY_DIMS))


def aggregate(records: Iterable[LedgerRecord], step_s: float = BUCKET_S) -> list[SummaryRow]:
    """Hourly summary rows of ``records`` (the reference every ledger's stored summary must equal), or rows per
    ``step_s``-second bucket."""
    out: dict[tuple[Any, ...], SummaryRow] = {}
    for r in records:
        bucket = bucket_of(r.ts) if step_s == BUCKET_S else float(math.floor(r.ts / step_s) * step_s)
        key = (bucket, *(getattr(r, d) for d in SUMMARY_DIMS))
        row = out.get(key)
        if row is None:
            row = out[key] = SummaryRow(*key)
        add_to_row(row, r)
    return list(out.values())


def check_dims(dims: Sequence[str] | None) -> tuple[str, ...] | None:
    """``dims`` as a tuple in ``SUMMARY_DIMS`` order, or None for all of them; anything else (an unknown name, one
    string rather than a sequence of them) is a :class:`~router.errors.BadRequestError` naming the choices."""
    if dims is None:
        return None
    choose = f"choose from {', '.join(SUMMARY_DIMS)}, e.g. dims=('model',)"
    if isinstance(dims, str | bytes) or not isinstance(dims, Iterable):
        raise BadRequestError(f"dims={dims!r}: give a sequence of dimension names, or None for all; {choose}",
                              param="dims")
    dims = list(dims)
    unknown = [repr(d) for d in dims if d not in SUMMARY_DIMS]
    if unknown:
        raise BadRequestError(f"dims: unknown dimension(s) {', '.join(unknown)}; {choose}", param="dims")
    keep = tuple(d for d in SUMMARY_DIMS if d in dims)
    return None if keep == SUMMARY_DIMS else keep


def reduce_dims(rows: Iterable[SummaryRow], dims: tuple[str, ...] | None) -> list[SummaryRow]:
    """``rows`` with the dimensions outside ``dims`` set to None and rows that then agree summed into one."""
    if dims is None:
        return rows if isinstance(rows, list) else list(rows)
    out: dict[tuple[Any, ...], SummaryRow] = {}
    for row in rows:
        values: dict[str, Any] = {d: getattr(row, d) if d in dims else None for d in SUMMARY_DIMS}
        key = (row.bucket, *values.values())
        acc = out.get(key)
        if acc is None:
            acc = out[key] = SummaryRow(row.bucket, **values)
        acc.requests += row.requests
        acc.energy_j += row.energy_j
        acc.input_tokens += row.input_tokens
        acc.output_tokens += row.output_tokens
        acc.latency_ms_sum += row.latency_ms_sum
        acc.co2e_g += row.co2e_g
    return list(out.values())


def add_to_row(row: SummaryRow, r: LedgerRecord) -> None:
    row.requests += 1
    row.energy_j += r.energy_j
    row.input_tokens += r.input_tokens or 0
    row.output_tokens += r.output_tokens or 0
    row.latency_ms_sum += r.latency_ms or 0.0
    row.co2e_g += r.co2e_g or 0.0


_GROUP_DIMS = {"key": ("key_hash",), "source": ("energy_source",), "day": ()}


def group_dims(by: str) -> tuple[str, ...]:
    """The summary dimensions :func:`group_value` reads for ``by`` (one of ``GROUPS``; ``day`` needs only the
    bucket)."""
    return _GROUP_DIMS.get(by, (by,))


def group_gaps(rows: Iterable[SummaryRow], by: str) -> dict[str, tuple[int, float]]:
    """Per group of ``by``: the records without a CO2e figure and their joules, from
    :meth:`Ledger.carbon_gap_rows`."""
    out: dict[str, tuple[int, float]] = {}
    for row in rows:
        g = group_value(row, by)
        count, joules = out.get(g, (0, 0.0))
        out[g] = (count + row.requests, joules + row.energy_j)
    return out


def group_value(row: SummaryRow, by: str) -> str:
    """The group a summary row falls in for ``totals(by=...)``; missing values read ``-``. ``by`` is one of
    ``GROUPS``: its callers check it once (:func:`checked_group`), not once per row."""
    if by == "day":
        return datetime.fromtimestamp(row.bucket, tz=timezone.utc).strftime("%Y-%m-%d")
    attr = {"key": "key_hash", "source": "energy_source"}.get(by, by)
    value = getattr(row, attr)
    return "-" if value in (None, "") else str(value)


def totals_from_summary(rows: Iterable[SummaryRow], by: str) -> list[dict[str, Any]]:
    """``Ledger.totals`` computed from summary rows, sorted by group. ``requests`` and the mean latency are over
    the model calls; records of a model that was not called (outcome ``rejected``, 0 J) count in ``rejected``."""
    by = checked_group(by)
    acc: dict[str, dict[str, Any]] = {}
    for row in rows:
        g = group_value(row, by)
        t = acc.setdefault(
            g,
            {
                "group": g,
                "requests": 0,
                "errors": 0,
                "rejected": 0,
                "energy_j": 0.0,
                "input_tokens": 0,
                "output_tokens": 0,
                "co2e_g": 0.0,
                "latency_ms_sum": 0.0,
            },
        )
        if row.outcome == REFUSED:
            t["rejected"] += row.requests
        else:
            t["requests"] += row.requests
            t["latency_ms_sum"] += row.latency_ms_sum
        t["errors"] += row.requests if row.outcome == "error" else 0
        t["energy_j"] += row.energy_j
        t["input_tokens"] += row.input_tokens
        t["output_tokens"] += row.output_tokens
        t["co2e_g"] += row.co2e_g
    out = []
    for g in sorted(acc):
        t = acc[g]
        t["mean_latency_ms"] = t.pop("latency_ms_sum") / t["requests"] if t["requests"] else 0.0
        out.append(t)
    return out


def binary_chunks(n: int, largest: int = 256) -> list[int]:
    """``n`` rows as statement sizes that are powers of two: 600 -> [256, 256, 64, 16, 8]. A store that
    prepares statements then prepares at most log2(largest) + 1 shapes of its multi-row ``INSERT``."""
    sizes = [largest] * (n // largest)
    rest, size = n % largest, largest // 2
    while rest:
        if rest >= size:
            sizes.append(size)
            rest -= size
        size //= 2
    return sizes


def window_start(now: float, window_s: float) -> float:
    """Budget windows are aligned to the epoch (a day window starts at 00:00 UTC). Every store's budget methods
    go through here, so a window that is not a positive, finite number of seconds is refused before a store sees
    it (policies ask for at least 1 s; the shared ledger suite rolls shorter windows to see them roll)."""
    if not isinstance(window_s, int | float) or not is_finite_number(window_s) or window_s <= 0:
        raise BadRequestError(f"window_s={shown(window_s)}: a budget window is a positive, finite number of "
                              "seconds", param="window_s")
    return now - (now % window_s)


_RECORD_FIGURES = ("energy_j", "latency_ms", "co2e_g", "estimated_j", "grid_g_per_kwh")
"""The fields of a record that are amounts: each None (``energy_j``: never) or a finite number, 0 or more."""


def refuse_unusable_figures(url: str, recs: Iterable[LedgerRecord]) -> None:
    """Raise the ``LedgerError`` a store gives a record it refuses (``record_rejected``: the journal sets it aside
    and writes the rest) where a record's amount or time is not a finite number (an amount also not below 0),
    before anything is written. Every store calls it first, so they refuse the same records: unchecked, PostgreSQL
    kept a NaN and every sum over it read NaN from then on, SQLite kept infinities and negative joules, and Redis
    wrote the record but not its sums and then failed as if the store were down (a retryable error: the journal
    treated it as an outage)."""
    for rec in recs:
        bad = None if is_finite_number(rec.ts) else ("ts", rec.ts)
        for name in _RECORD_FIGURES:
            value = getattr(rec, name)
            if (value is not None or name == "energy_j") and not (is_finite_number(value) and value >= 0):
                bad = (name, value)
                break
        if bad is not None:
            from .errors import ledger_error

            name, value = bad
            what = "epoch seconds" if name == "ts" else "0 or more"
            raise ledger_error(url, f"record {rec.record_id} ({rec.model}) was refused: {name}={shown(value)} is "
                               f"not a finite number ({what})",
                               "this is a bug in the caller (or a meter): give every amount as a finite number",
                               retryable=False, record_rejected=True)  # fmt: skip


def checked_pairs(settlements: object) -> list[tuple[Any, ...]]:
    """``settlements`` as a list of pairs, or a :class:`~router.errors.BadRequestError`: ``settle_many`` takes
    ``(reservation, actual_j)`` pairs, and a store handed anything else fails half-way through a batch."""
    shape = "give a list of (reservation, actual_j) pairs"
    if isinstance(settlements, str | bytes) or not isinstance(settlements, Iterable):
        raise BadRequestError(f"settlements={shown(settlements)}: {shape}", param="settlements")
    pairs = list(settlements)
    for i, pair in enumerate(pairs):
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise BadRequestError(f"settlements[{i}]={shown(pair)}: {shape}", param="settlements")
    return [tuple(pair) for pair in pairs]


def checked_settlement(reservation: object, actual_j: object, *, at: int | None = None) -> tuple[Reservation, float]:
    """A settlement a store may apply: a :class:`Reservation` (what ``try_reserve`` returned) and a number of
    joules (:func:`~router.ledger.arguments.checked_joules`), else a :class:`~router.errors.BadRequestError`
    naming the argument (and, in a batch, the settlement's index ``at``)."""
    where = "" if at is None else f"settlements[{at}]: "
    if not isinstance(reservation, Reservation):
        raise BadRequestError(f"{where}reservation={shown(reservation)}: give the Reservation that try_reserve "
                              "returned", param="reservation")
    try:
        return reservation, checked_joules("actual_j", actual_j)
    except BadRequestError as exc:
        if at is None:
            raise
        raise BadRequestError(f"{where}{exc.message}; nothing of this batch was settled", param="actual_j") from None


def ended_budget_windows(budgets: Iterable[str], older_than: float) -> list[tuple[str, float]]:
    """What a prune at ``older_than`` deletes of the budget counters: ``(budget, start)`` pairs, each meaning the
    counters of that budget whose window starts at or before ``start``. Those windows ended by ``older_than`` (start
    + window <= cut-off), so no reservation reads them again. A budget's window is read off its ledger key
    (``...:3600s``, :meth:`~router.policy.schema.Budget.key`); a key without one (a caller of the ledger API naming
    its own) keeps its counters."""
    return [(b, older_than - w) for b in budgets if (w := budget_window_s(b)) is not None]
