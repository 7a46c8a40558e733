"""The dashboard's figures, read from the ledger: what ``/dashboard/api/...`` returns, as plain JSON-ready dicts.

Every query reads the ledger's hourly summary (:meth:`~router.ledger.Ledger.summary`) reduced to the dimensions it
needs, so a window over a million records reads a few hundred summed rows, not the records. Raw records are summed
for at most one hour per query (:meth:`~router.ledger.Ledger.raw_summary`, inside SQLite or PostgreSQL): the
partial hour at a window's start (so totals are exact for any window) and the 5-minute steps of a window of an
hour or less; the newest decisions come by the store's time index. ``python
benchmarks/bench_dashboard.py`` times each query on a 1,000,000-record ledger.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from ..errors import BadRequestError
from ..ledger import Ledger, LedgerRecord, SummaryRow
from ..ledger.base import REFUSED
from ..ledger.budget_use import budget_use
from ..ledger.report import build_report

if TYPE_CHECKING:
    from .._router import Router

_UNITS = {"m": 60.0, "h": 3600.0, "d": 86400.0}
_WINDOW = re.compile(r"([0-9]+(?:\.[0-9]+)?)([mhd])")  # ASCII digits: \d and float() take any script's
MAX_WINDOW_S = 3650 * 86400.0
STEPS_S = (300.0, 3600.0, 6 * 3600.0, 86400.0, 7 * 86400.0, 30 * 86400.0)
"""Chart steps: 5 minutes (raw records, windows up to an hour), then whole hours and coarser (summary rows)."""
MAX_POINTS = 400
AHEAD_S = 86400.0
"""A series draws records up to this far ahead of this host's clock (another host's clock may run ahead); one
further ahead, or older than ``MAX_WINDOW_S`` in the window ``all`` (a broken clock), is left out of the series,
whose length it would set (the totals still count it)."""
GROUPINGS = ("model", "tier")
_TOTALS_DIMS = ("model", "tier", "outcome", "energy_source")
"""What the totals need: the saving estimate reads model and outcome, the measured share the energy source."""
_GAP_DIMS = ("model", "tier")  # the groupings of the totals' table: by_model, by_tier


@dataclass(frozen=True)
class Window:
    """What a ``window`` parameter names: ``label`` (``24h``, ``all``), ``since`` and ``until`` (epoch seconds)."""

    label: str
    since: float
    until: float
    seconds: float | None  # None: everything in the ledger

    def as_dict(self) -> dict[str, Any]:
        return {"window": self.label, "since": self.since, "until": self.until}


def parse_window(text: str | None, now: float | None = None) -> Window:
    """``15m``, ``6h``, ``7d`` (a number and m/h/d, at most 3650 days) or ``all``; default ``24h``."""
    now = time.time() if now is None else now
    label = (text or "24h").strip().lower()
    if label == "all":
        return Window("all", 0.0, now, None)
    m = _WINDOW.fullmatch(label)
    seconds = float(m.group(1)) * _UNITS[m.group(2)] if m else 0.0
    if not m or not 60.0 <= seconds <= MAX_WINDOW_S:
        raise BadRequestError(f"window {text!r}: use a number and m, h or d between 1m and 3650d (e.g. 1h, 24h, 7d), "
                              "or all", param="window")
    return Window(label, now - seconds, now, seconds)


class _Rows:
    """One summary read, handed to :func:`~router.ledger.report.build_report` as if it were the ledger: the
    totals by model, by tier and by energy source then come from a single read, with the same saving estimate
    and CO2e as ``router ledger report``."""

    def __init__(self, rows: list[SummaryRow], gap_rows: list[SummaryRow]) -> None:
        self.rows = rows
        self.gap_rows = gap_rows

    def summary(self, since: float = 0.0, until: float | None = None, dims: object = None) -> list[SummaryRow]:
        return self.rows

    def carbon_gap_rows(self, since: float = 0.0, until: float | None = None, dims: object = None) -> list[SummaryRow]:
        return self.gap_rows


GAPS_REUSE_S = 60.0
"""How long the dashboard reuses a window's count of records without a CO2e figure (:meth:`DashboardData.totals`)."""


class DashboardData:
    """The queries behind the API. ``reader`` is the ledger read from (the proxy gives a connection of its own
    for SQLite, so a long read never holds the lock budget reservations take); ``flush`` makes every record
    handed to the proxy's background writer visible first; ``budgets_seen`` lists budget keys met in decisions
    that the policies do not name (per-key budgets)."""

    def __init__(self, router: Router, reader: Callable[[], Ledger], *, flush: Callable[[], Any] | None = None,
                 budgets_seen: Callable[[], Iterable[str]] = tuple) -> None:
        self.router = router
        self._reader = reader
        self._flush = flush
        self._budgets_seen = budgets_seen
        self._gaps: dict[str, tuple[float, list[SummaryRow]]] = {}  # window label -> (when, gap rows)

    def _fresh(self) -> Ledger:
        if self._flush is not None:
            self._flush()
        return self._reader()

    # -- totals --------------------------------------------------------------------------------------------
    def _carbon_gap_rows(self, ledger: Ledger, window: Window) -> list[SummaryRow]:
        """The window's records without a CO2e figure, by model and tier, asked of the store at most once per
        :data:`GAPS_REUSE_S` per window: such records come only from ledgers older than the carbon figures or an
        application's own records, and a store without an index of them (Redis) walks every record of the window
        to count them, which on every refresh of a large ledger would load it."""
        now = time.monotonic()
        kept = self._gaps.get(window.label)
        if kept is None or now - kept[0] > GAPS_REUSE_S:
            kept = (now, ledger.carbon_gap_rows(window.since, dims=_GAP_DIMS))
            self._gaps[window.label] = kept
        return kept[1]

    def totals(self, window: Window) -> dict[str, Any]:
        ledger = self._fresh()
        rows = ledger.summary(window.since, dims=_TOTALS_DIMS)
        read = cast(Ledger, _Rows(rows, self._carbon_gap_rows(ledger, window)))
        grid = self.router.config.grid_g_per_kwh
        report = build_report(read, self.router.cards, by="model", since=window.since, grid_g_per_kwh=grid)
        # a model's records keep the tier each call ran in
        by_tier = build_report(read, self.router.cards, by="tier", since=window.since, grid_g_per_kwh=grid)
        # a model's tier is its card's now
        tiers: dict[str, str] = {name: card.tier for name, card in self.router.cards.items()}
        newest: dict[str, SummaryRow] = {}  # a model with no card any more: the tier its newest calls ran in
        sources: dict[str, list[float]] = {}
        answered = 0
        for row in rows:
            if row.model not in newest or row.bucket >= newest[row.model].bucket:
                newest[row.model] = row
            acc = sources.setdefault(row.energy_source, [0, 0.0])
            acc[0] += row.requests if row.outcome != REFUSED else 0
            acc[1] += row.energy_j
            answered += row.requests if row.outcome in ("ok", "cancelled") else 0
        t = report.total
        # the grams `router ledger` prints: the records' own, or joules at the config's intensity if none carry any
        everyday = report.everyday()
        for model, row in newest.items():
            tiers.setdefault(model, row.tier)
        models = [_group_dict(g, t, tier=tiers.get(g.group, "-")) for g in report.rows]
        return {
            **window.as_dict(),
            "requests": t.requests, "answered": answered, "errors": t.errors,
            "rejected": t.rejected,
            "energy_j": t.energy_j, "co2e_g": everyday.co2e_g, "g_per_kwh": everyday.grid_g_per_kwh,
            "co2e_estimated": everyday.estimated, "co2e_from": everyday.intensity_from,
            "records_without_co2e": everyday.records_without_co2e,
            "joules_without_co2e": everyday.joules_without_co2e, "co2e_note": everyday.co2e_note(),
            "grid_g_per_kwh": grid,
            "counterfactual_model": report.counterfactual_model, "counterfactual_j": t.counterfactual_j,
            "saved_j": t.saved_j, "saved_share": t.saved_j / t.counterfactual_j if t.counterfactual_j else 0.0,
            "measured_share": t.measured_share, "energy": _kind(t.measured_share, t.energy_j),
            "mean_latency_ms": t.mean_latency_ms,
            "by_source": [{"source": s, "requests": int(n), "energy_j": j, "measured": s.startswith("measured")}
                          for s, (n, j) in sorted(sources.items())],
            "by_model": models,
            "by_tier": [_group_dict(g, t) for g in by_tier.rows],
            "notes": report.notes,
        }  # fmt: skip

    # -- over time -----------------------------------------------------------------------------------------
    def series(self, window: Window, by: str = "model") -> dict[str, Any]:
        """Requests and joules per time step and group, every step from the window's start to now present."""
        if by not in GROUPINGS:
            raise BadRequestError(f"by {by!r}: choose one of {', '.join(GROUPINGS)}", param="by")
        ledger = self._fresh()
        cells: dict[tuple[float, str], list[float]] = {}
        latest = window.until + AHEAD_S
        if window.seconds is not None and window.seconds <= 3600:
            step = STEPS_S[0]
            for row in ledger.raw_summary(window.since, dims=(by, "outcome"), step_s=int(step)):  # finer than hourly
                if row.outcome != REFUSED and row.bucket <= latest:  # a model not called: no request of it, 0 J
                    _add(cells, row.bucket, getattr(row, by), row.requests, row.energy_j)
            first = window.since
        else:
            earliest = window.until - MAX_WINDOW_S
            rows = [r for r in ledger.summary(window.since, dims=(by, "outcome"))
                    if r.outcome != REFUSED and earliest <= r.bucket <= latest]
            first = window.since if window.seconds is not None else min((r.bucket for r in rows), default=window.until)
            last = max([window.until, *(r.bucket for r in rows)])
            step = next((s for s in STEPS_S[1:] if (last - first) / s <= MAX_POINTS), STEPS_S[-1])
            for row in rows:
                _add(cells, math.floor(row.bucket / step) * step, getattr(row, by), row.requests, row.energy_j)
        start = math.floor(first / step) * step
        if cells:  # a record slightly ahead of this clock (another host) still shows
            start = min(start, min(t for t, _ in cells))
        end = max([math.floor(window.until / step) * step, *(t for t, _ in cells)])
        totals: dict[str, float] = {}
        for (_, g), (_, j) in cells.items():
            totals[g] = totals.get(g, 0.0) + j
        groups = sorted(totals, key=lambda g: (-totals[g], g))
        points = []
        t = start
        while t <= end:
            points.append({"t": t, "requests": {g: int(cells[t, g][0]) for g in groups if (t, g) in cells},
                           "energy_j": {g: cells[t, g][1] for g in groups if (t, g) in cells}})
            t += step
        return {**window.as_dict(), "by": by, "step_s": step, "groups": groups, "points": points}

    # -- budgets -------------------------------------------------------------------------------------------
    def budgets(self) -> dict[str, Any]:
        """Each budget's use in its current window and when the window rolls; one row per policy that names the
        budget (policies may share a counter with different limits). Amounts are in the budget's ``unit``: ``J``,
        or ``gCO2e`` for a carbon budget."""
        now = time.time()
        return {"now": now, "budgets": budget_use(self.router.engine, self._fresh(), self._budgets_seen(), now)}

    # -- decisions -----------------------------------------------------------------------------------------
    def recent(self, limit: int) -> dict[str, Any]:
        """The newest ledger records, never with a prompt; ``prompts_stored`` says whether the ledger keeps them
        (``prompts: {store: true}``), so the page does not claim it keeps none."""
        records = self._fresh().latest_records(limit)
        return {"prompts_stored": self.router.config.prompts.store, "records": [_decision(r) for r in records]}


def _add(cells: dict[tuple[float, str], list[float]], t: float, group: str | None, n: int, j: float) -> None:
    acc = cells.setdefault((t, group or "-"), [0, 0.0])
    acc[0] += n
    acc[1] += j


def _kind(measured_share: float, energy_j: float) -> str:
    if energy_j <= 0:
        return "none"
    if measured_share >= 0.999:
        return "measured"
    return "estimated" if measured_share <= 0.001 else "mixed"


def _group_dict(g: Any, total: Any, **extra: Any) -> dict[str, Any]:
    return {
        "group": g.group, **extra, "requests": g.requests, "errors": g.errors, "rejected": g.rejected,
        "energy_j": g.energy_j,
        "co2e_g": g.co2e_g, "records_without_co2e": g.records_without_co2e,
        "joules_without_co2e": g.joules_without_co2e, "co2e_note": g.co2e_note(),
        "saved_j": g.saved_j, "mean_latency_ms": g.mean_latency_ms,
        "measured_share": g.measured_share, "energy": _kind(g.measured_share, g.energy_j),
        "request_share": g.requests / total.requests if total.requests else 0.0,
        "energy_share": g.energy_j / total.energy_j if total.energy_j else 0.0,
    }  # fmt: skip


def _decision(r: LedgerRecord) -> dict[str, Any]:
    return {
        "ts": r.ts, "request_id": r.request_id, "model": r.model, "tier": r.tier, "outcome": r.outcome,
        "reason": r.reason, "energy_j": r.energy_j, "energy_source": r.energy_source, "latency_ms": r.latency_ms,
        "estimated_j": r.estimated_j, "input_tokens": r.input_tokens, "output_tokens": r.output_tokens,
        "co2e_g": r.co2e_g, "policy": r.policy, "task": r.task, "key": r.key_hash, "attempt": r.attempt,
        "error": r.error,
    }  # fmt: skip
