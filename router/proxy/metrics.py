"""Prometheus metrics for the proxy, in a registry of its own (one per app, so tests can build many apps).

Per request the hot path takes one lock and does a few dict and list updates: the counts live in plain structures
here (:class:`_Counter`, :class:`_Histogram`) rather than in prometheus-client's metric objects, whose label lookup,
per-value lock and bucket loop cost several times more per request. They are exported through a custom collector
(:meth:`ProxyMetrics.collect`, prometheus-client's documented way for values kept elsewhere), so prometheus-client
still writes ``/metrics``, and writes the same text its own ``Counter`` and ``Histogram`` would: the same samples,
``_created`` stamps included. Joules and failed calls are counted from the ledger records the Router writes
(:meth:`ProxyMetrics.observe_record`), so failed, cancelled and escalated calls count as the ledger counts them.
Budget and cooldown figures are read when ``/metrics`` is scraped, not per request.

With ``router serve --workers N`` a scrape reaches whichever worker accepted the connection, so each worker answers
for the whole server: every worker writes a snapshot of its counts to a directory the serving process made for the
run, from a background thread every second, at each scrape it answers and when it stops; a scrape sums every
worker's latest snapshot (:mod:`router.proxy.metrics_shared`). Each file only grows,
so no scrape shows less than one before it, whichever worker answers either. A worker that died leaves its last
snapshot, so its counts stay when uvicorn starts another (under a new pid, in a file of its own); one killed
outright loses what it counted since its last snapshot. The cooldown gauges say what the live workers see. Nothing
of this runs per request, and a single process (``router serve`` without ``--workers``, or an app of
:func:`~router.proxy.app.create_app`) writes nothing.

Length: one endpoint's figures, each kind beside the others it is exported with: the request-path counters and
histograms, the budgets seen, the gauges read at a scrape, and merging other workers' snapshots into each.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from ..errors import BudgetExhaustedError, RouterError
from ..ledger.budget_use import per_key_budgets_in_ledger
from ..policy.engine import known_budgets
from ..policy.schema import budget_unit, budget_window_s
from .ledger_writer import ledger_state
from .metrics_shared import SNAPSHOT_INTERVAL_S, Snapshots

if TYPE_CHECKING:
    from .._request import PreparedRequest
    from .._router import Router
    from ..ledger import LedgerRecord

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
log = logging.getLogger("router.proxy")

class ProxyMetrics(Collector):
    def __init__(self, router: Router) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = _Counter(
            "router_requests", "Chat completion requests, each counted once by its outcome (ok, cancelled, rejected: "
            "a 4xx, error: a 5xx), by model (the one that answered, else the one decided, else -), tier, key hash",
            ("model", "tier", "key", "outcome"),
        )
        self.joules = _Counter(
            "router_energy_joules", "Joules of every model call the ledger records (answered, failed, cancelled or "
            "escalated), by model, tier and key hash", ("model", "tier", "key"),
        )
        self.errors = _Counter(
            "router_errors", "Requests that ended in an error, by error type and HTTP status", ("type", "status"),
        )
        self.failed_attempts = _Counter(
            "router_backend_failures", "Model calls the ledger records as failed (`error`), whether or not a "
            "fallback answered", ("model",),
        )
        self.decision = _Histogram(
            "router_decision_seconds", "Time to classify a request and decide its model",
            (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1),
        )
        self.latency = _Histogram(
            "router_request_seconds", "Time from request received to response (or stream) complete, answered requests",
            (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        # the event loop, batch-line threads and threads writing ledger records all count, and a scrape reads:
        # one lock for every count, as ``+=`` on a dict or list item is not atomic between threads
        self._lock = threading.Lock()
        self.registry.register(self)
        self.budgets_seen = SeenBudgets()
        self._state = _StateCollector(router, self)
        self.registry.register(self._state)
        self._keyed = bool(router.keys)  # a key label only for configured keys, as the chat route labels requests
        self._cards = router.cards
        self._snapshots: Snapshots[_Counter | _Histogram] | None = None

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        """The counters and histograms as prometheus-client's own would export them, from copies taken under the
        lock (so a scrape holds up the counting only for those copies)."""
        if self._snapshots is None:
            metrics = self.copies()
        else:
            # what this scrape shows of this worker goes to its file first: each file then only grows, so any
            # worker's scrape, which sums every file's counts, shows no less than a scrape before it
            metrics = self._snapshots.write()
            for snapshot, _ in self._snapshots.others():  # a dead worker's too: its counts happened
                for metric in metrics:
                    metric.add_snapshot(snapshot["counts"][metric.name])
        with_created = created_series_enabled()
        for metric in metrics:
            yield metric.family(with_created)

    def _counted(self) -> tuple[_Counter | _Histogram, ...]:
        return self.requests, self.joules, self.errors, self.failed_attempts, self.decision, self.latency

    def copies(self) -> list[_Counter | _Histogram]:
        """The counters and histograms, copied under the lock."""
        with self._lock:
            return [metric.copy() for metric in self._counted()]

    def share_through(self, directory: Path, interval_s: float = SNAPSHOT_INTERVAL_S) -> None:
        """Write this process's snapshot to ``directory`` now and every ``interval_s`` from a background thread,
        and add the other snapshots there to every scrape: one worker of ``router serve --workers N``."""
        if self._snapshots is None:
            self._snapshots = Snapshots(directory, self)
            self._snapshots.start(interval_s)

    def stop_sharing(self) -> None:
        """Write the last snapshot (marked as the last: this process's gauges no longer count) and stop the
        thread. Called once nothing counts any more (the Router closed)."""
        if self._snapshots is not None:
            self._snapshots.stop()

    def snapshot(self, counted: list[_Counter | _Histogram]) -> dict[str, Any]:
        """This process's ``counted`` (:meth:`copies`), cooldown state and budgets seen, as JSON data for the
        other workers."""
        return {"pid": os.getpid(), "counts": {metric.name: metric.to_snapshot() for metric in counted},
                "cooldowns": self._state.cooldowns(), "budgets_seen": self.budgets_seen.current()}

    def other_snapshots(self) -> list[tuple[dict[str, Any], bool]]:
        """The other workers' latest snapshots, each with whether its worker is alive (none for one process)."""
        return self._snapshots.others() if self._snapshots is not None else []

    def observe_latency(self, seconds: float) -> None:
        with self._lock:
            self.latency.observe(seconds)

    def seed_budgets_seen(self, router: Router) -> None:
        """At start, mark as seen the per-key budgets of the policies (``scope: per_key``, whose keys no policy
        lists) that the ledger has a counter for in their current window, so that ``/metrics`` and the dashboard
        list them after a restart, not only once each key sends another request. A ledger that cannot be read is
        logged, not raised: the proxy starts, and those budgets show as requests meet them."""
        try:
            in_use = per_key_budgets_in_ledger(router.engine, router.ledger)
        except Exception:
            log.warning("could not read the budgets in use from the ledger; per-key budgets show in /metrics once "
                        "a request meets them", exc_info=True)
            return
        self.budgets_seen.add(in_use)

    def observe_prepared(self, decision_ms: float, budgets: Iterable[str]) -> None:
        """A decided request (a chat request or a batch line): its decision time, and the budgets it met (the
        dashboard lists them)."""
        with self._lock:
            self.decision.observe(decision_ms / 1000)
        if budgets:
            self.budgets_seen.add(budgets)

    def observe_request(self, model: str | None, tier: str | None, key: str | None, outcome: str) -> None:
        """A chat request's end: answered (``ok``), given up by its client (``cancelled``) or failed
        (:func:`failure_outcome`); ``model`` and ``tier`` are None when it ended before a model was decided."""
        labels = (model or "-", tier or "-", key or "-", outcome)
        with self._lock:
            self.requests.inc(labels)

    def observe_answered(self, model: str | None, tier: str | None, key: str | None, seconds: float) -> None:
        """A chat request answered in full (``ok``) in ``seconds``: :meth:`observe_request` and
        :meth:`observe_latency` under one hold of the lock, as the chat route's answer counts both at once."""
        labels = (model or "-", tier or "-", key or "-", "ok")
        with self._lock:
            self.requests.inc(labels)
            self.latency.observe(seconds)

    def observe_record(self, rec: LedgerRecord) -> None:
        """A ledger record the Router wrote (its ``record_observer``): its joules, and a failed call."""
        if rec.energy_j:
            labels = (rec.model, rec.tier, (rec.key_hash if self._keyed else None) or "-")
            with self._lock:
                self.joules.inc(labels, rec.energy_j)
        if rec.outcome == "error":
            with self._lock:
                self.failed_attempts.inc((rec.model,))

    def observe_failed_request(self, exc: RouterError, model: str | None, tier: str | None,
                               key: str | None) -> None:
        """A chat request that ended in ``exc``: in ``router_requests_total`` by its outcome, and in
        ``router_errors_total`` (which the other routes' errors count in too). A request refused in the decision
        for a spent budget counts under the model whose budget it was, as its ledger record does."""
        if model is None and isinstance(exc, BudgetExhaustedError) and exc.model in self._cards:
            model, tier = exc.model, self._cards[exc.model].tier
        self.observe_request(model, tier, key, failure_outcome(exc))
        self.observe_error(exc.code or exc.error_type, exc.http_status)
        if isinstance(exc, BudgetExhaustedError) and exc.budgets:  # refused in the decision: never prepared
            self.budgets_seen.add(exc.budgets)

    def observe_error(self, error_type: str, status: int) -> None:
        with self._lock:
            self.errors.inc((error_type, str(status)))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Counter:
    """A labelled counter's totals by label values, and when each series was first counted (its ``_created``).
    Its series are as many as the label sets met (models x tiers x keys x outcomes, error types x statuses), as in
    prometheus-client's ``Counter``. Not locked itself: :class:`ProxyMetrics` holds its lock around every use."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.totals: dict[tuple[str, ...], float] = {}
        self.created: dict[tuple[str, ...], float] = {}

    def inc(self, labels: tuple[str, ...], amount: float = 1.0) -> None:
        total = self.totals.get(labels)
        if total is None:  # a new series, kept even if the amount is refused, as prometheus-client keeps its child
            total = self.totals[labels] = 0.0
            self.created[labels] = time.time()
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.totals[labels] = total + amount

    def copy(self) -> _Counter:
        copied = copy.copy(self)
        copied.totals = self.totals.copy()
        copied.created = self.created.copy()
        return copied

    def to_snapshot(self) -> list[tuple[tuple[str, ...], float, float]]:
        return [(labels, total, self.created[labels]) for labels, total in self.totals.items()]

    def add_snapshot(self, rows: list[list[Any]]) -> None:
        """Adds another worker's totals (:meth:`to_snapshot`, through JSON); a series is as old as its oldest."""
        for labels, total, created in rows:
            key = tuple(labels)
            self.totals[key] = self.totals.get(key, 0.0) + total
            self.created[key] = min(self.created.get(key, created), created)

    def family(self, with_created: bool) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, total in self.totals.items():
            family.add_metric(labels, total, created=self.created[labels] if with_created else None)
        return family


class _Histogram:
    """An unlabelled histogram of durations: its count per bucket (not cumulative; found by bisection: a bucket
    holds the values up to and including its bound; durations are never NaN, which would land in the first), their
    sum, and when it was made (its ``_created``). Not locked itself: :class:`ProxyMetrics` holds its lock around
    every use."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.upper_bounds = [*(float(b) for b in buckets), math.inf]
        self.counts = [0.0] * len(self.upper_bounds)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self.upper_bounds, amount)] += 1.0
        self.sum += amount

    def copy(self) -> _Histogram:
        copied = copy.copy(self)
        copied.counts = self.counts.copy()
        return copied

    def to_snapshot(self) -> dict[str, Any]:
        return {"counts": self.counts.copy(), "sum": self.sum, "created": self.created}

    def add_snapshot(self, data: dict[str, Any]) -> None:
        """Adds another worker's observations (:meth:`to_snapshot`, through JSON)."""
        self.counts = [ours + theirs for ours, theirs in zip(self.counts, data["counts"], strict=True)]
        self.sum += data["sum"]
        self.created = min(self.created, data["created"])

    def family(self, with_created: bool) -> HistogramMetricFamily:
        cumulative = 0.0
        buckets = []
        for bound, count in zip(self.upper_bounds, self.counts, strict=True):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))
        family = HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=self.sum)
        if with_created:  # HistogramMetricFamily has no argument for it; prometheus-client's Histogram adds it so
            family.samples.append(Sample(self.name + "_created", {}, self.created))
        return family


class SeenBudgets:
    """The budget keys met in decisions, with when each was last met: what ``/metrics`` and the dashboard list
    besides the budgets the policies name (a ``scope: per_key`` budget has a counter for each API key that used it,
    and each listed budget costs a ledger read per scrape).

    Bounded, so that many keys (or keys rotated daily) neither grow memory nor slow every scrape for good: a budget
    not met for longer than its own window (the seconds its key ends in) is dropped, as its counter has rolled to
    zero since; and past ``max_count`` budgets the ones met longest ago go first. A dropped budget comes back the
    next time a request meets it. :meth:`add` runs per request: a dict assignment per budget, and a prune only
    once the count passes ``max_count`` by a quarter (so its cost is spread over that many new budgets);
    :meth:`current` prunes at scrape time. ``clock`` (seconds, monotonic) is injectable for tests."""

    def __init__(self, max_count: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_count = max_count
        self._clock = clock
        self._last_met: dict[str, float] = {}
        self._prune_above = max_count + max(1, max_count // 4)
        # adds come from the event loop, scrapes also from the dashboard's worker thread: one pruner at a time
        self._prune_lock = threading.Lock()

    def add(self, budgets: Iterable[str]) -> None:
        now = self._clock()
        last_met = self._last_met
        for budget in budgets:
            last_met[budget] = now
        if len(last_met) > self._prune_above:
            self._prune()

    def current(self) -> list[str]:
        """The budgets met within their window, at most ``max_count``, after dropping the rest."""
        self._prune()
        return list(self._last_met)

    def __len__(self) -> int:
        return len(self._last_met)

    def _prune(self) -> None:
        if not self._prune_lock.acquire(blocking=False):
            return  # another thread is pruning the same dict
        try:
            now = self._clock()
            met = self._last_met.copy()  # one step under the GIL, so adds meanwhile are not seen half done
            stale = [b for b, t in met.items() if now - t > (budget_window_s(b) or math.inf)]
            over = len(met) - len(stale) - self.max_count
            if over > 0:
                gone = set(stale)
                stale += [b for _, b in sorted((t, b) for b, t in met.items() if b not in gone)[:over]]
            for budget in stale:
                if self._last_met.get(budget) == met[budget]:  # not met again since the copy
                    self._last_met.pop(budget, None)
        finally:
            self._prune_lock.release()


class _StateCollector(Collector):
    """Read at scrape time: backend cooldown state and energy budgets."""

    def __init__(self, router: Router, metrics: ProxyMetrics) -> None:
        self.router = router
        self.metrics = metrics

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        cooling = GaugeMetricFamily("router_backend_cooling_down",
                                    "1 while a model is passed over after failing: its breaker open after repeated "
                                    "failures, or its backend unable to start (in any worker process)",
                                    labels=["model"])
        opened = GaugeMetricFamily("router_backend_cooldowns",
                                   "Times the backend's cooldown has opened since start (in all worker processes)",
                                   labels=["model"])
        own = self.cooldowns()
        cooling_by = {name: state for name, (state, _) in own.items()}
        opened_by = {name: times for name, (_, times) in own.items() if times is not None}
        for snapshot, live in self.metrics.other_snapshots():
            for name, (state, times) in snapshot["cooldowns"].items():
                if live:  # a dead worker's breakers no longer pass anything over
                    cooling_by[name] = max(cooling_by.get(name, 0.0), state)
                if times is not None:  # openings since the server started, a dead worker's included
                    opened_by[name] = opened_by.get(name, 0.0) + times
        for name, state in cooling_by.items():
            cooling.add_metric([name], state)
        for name, times in opened_by.items():
            opened.add_metric([name], times)
        yield cooling
        yield opened
        yield from self._ledger()
        yield from self._budgets()

    def _ledger(self) -> Iterator[GaugeMetricFamily]:
        """This process's view of the ledger's store (each worker journals its own records)."""
        state = ledger_state(self.router.ledger)
        if not state:  # no journal: every write is the store's own, and fails the request that made it
            return
        up = GaugeMetricFamily("router_ledger_store_up", "1 while the ledger's store takes records; 0 during an "
                               "outage (records wait in the journal, budgets fail closed)")
        up.add_metric([], 1.0 if state["store"] == "ok" else 0.0)
        pending = GaugeMetricFamily("router_ledger_journal_pending_records", "This process's records in the "
                                    "journal not known to be in the ledger's store yet")
        pending.add_metric([], float(state["journal_pending"]))
        yield up
        yield pending

    def cooldowns(self) -> dict[str, tuple[float, float | None]]:
        """This process's backends: by model, 1.0 while cooling down (else 0.0) and the times its cooldown opened
        (None for a backend that could not start, which has no cooldown of its own)."""
        from ..backends.cooldown import CooldownBackend

        down = self.router.cooling_down()
        loaded = self.router.loaded_backends()
        state: dict[str, tuple[float, float | None]] = {}
        for name, backend in loaded.items():
            if isinstance(backend, CooldownBackend):
                state[name] = (1.0 if name in down else 0.0, float(backend.opened_total))
        for name in sorted(down - loaded.keys()):  # a backend that could not start is not loaded
            state[name] = (1.0, None)
        return state

    def _budgets(self) -> Iterator[GaugeMetricFamily]:
        """Joule budgets and carbon budgets (grams CO2e, keys ``gco2e:...``), each in a family of its unit."""
        used = {
            "J": GaugeMetricFamily("router_budget_used_joules",
                                   "Joules spent plus held in the current window of each energy budget",
                                   labels=["budget"]),
            "gCO2e": GaugeMetricFamily("router_budget_used_grams_co2e",
                                       "Grams CO2e spent plus held in the current window of each carbon budget",
                                       labels=["budget"]),
        }
        remaining = {
            "J": GaugeMetricFamily(
                "router_budget_remaining_joules",
                "Joules left in the current window of each energy budget, under each policy that names it "
                "(policies may share a budget's counter with different limits)", labels=["budget", "policy"]),
            "gCO2e": GaugeMetricFamily(
                "router_budget_remaining_grams_co2e",
                "Grams CO2e left in the current window of each carbon budget, under each policy that names it",
                labels=["budget", "policy"]),
        }
        specs, windows = self._budget_specs()
        limits: dict[str, list[tuple[float, str]]] = {}  # one row per key seen: grouped, not searched per budget
        for b, limit, _, policy in specs:
            limits.setdefault(b, []).append((limit, policy))
        for budget, window_s in sorted(windows.items()):
            try:
                spent = self.router.ledger.budget_used(budget, window_s)
            except Exception:  # a scrape must not fail because the ledger hiccups
                continue
            unit = budget_unit(budget)
            used[unit].add_metric([budget], spent)
            for limit, policy in limits.get(budget, ()):
                remaining[unit].add_metric([budget, policy], max(0.0, limit - spent))
        yield from used.values()
        yield from remaining.values()

    def _budget_specs(self) -> tuple[list[tuple[str, float, float, str]], dict[str, float]]:
        """The budgets with a limit (key, limit, window, policy: their remaining amount is exported) and the window
        of every budget to read, those seen in decisions included (:func:`~router.policy.engine.known_budgets`)."""
        seen = self.metrics.budgets_seen.current()
        for snapshot, live in self.metrics.other_snapshots():
            if live:  # budgets other workers met lately; a dead worker's were pruned by now or are met again
                seen += snapshot["budgets_seen"]
        rows = known_budgets(self.router.engine, set(seen))
        specs = [(b, lim, w, p) for b, lim, w, p in rows if lim is not None and p is not None]
        return specs, {b: w for b, _, w, _ in rows}


# A counter in no registry, asked per scrape whether prometheus-client writes ``_created`` samples now: its
# switch (PROMETHEUS_DISABLE_CREATED_SERIES when imported, disable_created_metrics() / enable_created_metrics()
# since) has no public getter, and a counter's public collect() follows it, as every metric of its own does.
_CREATED_PROBE = Counter("router_created_series_probe", "whether _created samples are written", registry=None)


def created_series_enabled() -> bool:
    """Whether prometheus-client's own counters and histograms write ``_created`` samples at this moment."""
    return any(sample.name.endswith("_created") for family in _CREATED_PROBE.collect() for sample in family.samples)


def decided(prepared: PreparedRequest | None) -> tuple[str | None, str | None]:
    """The model and tier decided for a request, (None, None) when it ended before a decision."""
    return (prepared.decision.model, prepared.decision.tier) if prepared is not None else (None, None)


def failure_outcome(exc: RouterError) -> str:
    """The ``outcome`` label of a request that ended in ``exc``: ``cancelled`` (its client went away),
    ``rejected`` (refused: a 4xx, the request, its key or its budget) or ``error`` (a 5xx: the router or the models
    it tried failed), so an error rate is ``outcome="error"`` over all requests."""
    if exc.code == "cancelled":
        return "cancelled"
    return "rejected" if exc.http_status < 500 else "error"


def now() -> float:
    return time.perf_counter()
