"""Energy estimates learned from the ledger: what a call to a model is expected to cost, and how much to hold.

A model card's energy profile (joules per call / input token / output token) is a guess made once; the ledger
holds what each call actually took on this machine, under this load. For every model :class:`EnergyEstimates`
keeps its last ``window`` answered calls (from the ledger, so every process sharing it learns from all of them,
refreshed every ``refresh_s`` on a thread of its own, plus this process's own calls at once) and fits:

* **output tokens per task**: the median (a typical answer: answer lengths are skewed, a few run to the
  token limit, and a mean would overstate the typical call several times) and an upper quantile; the model's
  calls on any task stand in while a task has fewer than ``min_calls``;
* **joules per call / input token / output token**: a non-negative least-squares fit of the metered calls
  (``measured:*``, and the CPU-time model alone or with NVML), with the card's profile as the prior: it counts as
  ``prior_calls`` calls, so a few measurements move it a little and many decide it. A remote model's joules
  are its card's token profile by definition, so only its answer lengths are learned;
* **the spread**: the ``quantile`` of measured over fitted joules across the window (each fit taken as at least
  ``FIT_FLOOR_SHARE`` of the window's median call, and the spread at most ``MAX_SPREAD``).

The expected joules of a call are the fit at the expected answer length; what a budget reservation holds is the
fit at the upper answer length times the upper spread, so a reservation covers the call about ``quantile`` of
the time, and what a budget can be overspent by is about one in-flight call per process (the few that exceed
their hold). A model with fewer than ``min_calls`` metered calls has no estimate here: the engine uses its card,
and the Router holds ``UNMEASURED_HOLD`` times the card's figure for a local model (a card can be several times
off on a busy machine; a remote model's card figure is exact for its token counts).

A forked child (gunicorn --preload, Celery's prefork pool) renews the estimates' lock
(:func:`~router._forks.renew_after_fork`): the parent's refresh thread holds it as it takes in what it read,
and a fork then would leave it held in the child forever, every call there waiting for it as it is recorded.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from .._forks import renew_after_fork
from ..cards import ModelCard
from ..errors import LedgerError
from ..ledger import Ledger, LedgerRecord

log = logging.getLogger("router.energy")

UNMEASURED_HOLD = 4.0
"""What a reservation holds for a local model with no measurements yet, as a multiple of its card's estimate."""
FIT_FLOOR_SHARE = 0.1
"""The spread compares each call's measured joules with its fit, but with no less than this share of the window's
median measured call: a relative error against a fit of ~0 J says nothing about what the next call may take."""
MAX_SPREAD = 10.0
"""The most the upper spread may be: beyond it the window holds odd records (calls whose tokens went uncounted),
and a hold that many times the fit would lock the budget for calls that take a fraction of it."""


@dataclass(slots=True)
class EnergyEstimate:
    """A call's expected joules, what to hold for it, and where the figures come from. Read-only by convention,
    not frozen: every decision makes one per model with an estimate, and a frozen dataclass's ``__init__`` sets
    each field through ``object.__setattr__``."""

    joules: float
    upper_j: float
    source: str
    """``ledger:212 calls`` (learned) or ``card`` (the model card's profile)."""


@dataclass(frozen=True)
class _Call:
    task: str
    input_tokens: int
    output_tokens: int
    joules: float
    metered: bool


class _Fit:
    """What one model's window of calls says; recomputed at most every ``refit_s`` when calls arrive."""

    __slots__ = ("coef", "spread", "out", "metered", "calls", "source", "terms", "whole_tokens")

    def __init__(self) -> None:
        self.coef: tuple[float, float, float] | None = None  # per call, per input token, per output token
        self.spread = 1.0
        self.out: dict[str | None, tuple[float, float]] = {}  # task (None: any) -> (median, upper) output tokens
        self.metered = 0
        self.calls = 0
        self.source = ""  # what an estimate from this fit says it comes from (formatted once per fit)
        self.terms: tuple[float, float, float] | None = None
        """The joules per call / input token / output token an estimate is computed from: ``coef``, or for a
        remote model its card's token profile (its joules by definition); ``None``: nothing to estimate."""
        self.whole_tokens = False
        """The terms are a card's, which counts whole tokens: answer lengths are rounded (the upper one up)."""

    def estimate(self, task: str, input_tokens: int, max_tokens: int | None) -> EnergyEstimate:
        """A call's estimate from this fit (which has ``terms``): arithmetic only, as every decision asks."""
        assert self.terms is not None
        typical_out, upper_out = self.out.get(task) or self.out[None]
        if max_tokens is not None:
            typical_out, upper_out = min(typical_out, max_tokens), min(upper_out, max_tokens)
        if self.whole_tokens:
            typical_out, upper_out = round(typical_out), math.ceil(upper_out)
        per_call, per_input, per_output = self.terms
        fixed = per_call + per_input * input_tokens
        joules = fixed + per_output * typical_out
        upper = (fixed + per_output * upper_out) * self.spread
        return EnergyEstimate(joules, max(upper, joules), self.source)


class EnergyEstimates:
    """Learned per-model estimates over a ledger (see the module docstring). Thread-safe; :meth:`estimate` is
    arithmetic on figures refitted in the background of the calls that use them."""

    def __init__(
        self,
        ledger: Ledger,
        cards: Mapping[str, ModelCard],
        *,
        window: int = 200,
        min_calls: int = 5,
        prior_calls: float = 3.0,
        quantile: float = 0.95,
        refresh_s: float = 10.0,
        refit_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < quantile < 1 or window < min_calls or min_calls < 1:
            raise ValueError("quantile in (0, 1) and 1 <= min_calls <= window")
        self.ledger = ledger
        self.cards = dict(cards)
        self.window = window
        self.min_calls = min_calls
        self.prior_calls = prior_calls
        self.quantile = quantile
        self.refresh_s = refresh_s
        self.refit_s = refit_s
        self._clock = clock
        self._lock = threading.Lock()
        self._calls: dict[str, deque[LedgerRecord]] = {n: deque(maxlen=window) for n in self.cards}
        self._fits: dict[str, _Fit] = {n: _Fit() for n in self.cards}
        self._dirty: set[str] = set()
        self._refitted = -math.inf
        self.refreshing: threading.Thread | None = None
        """The refresh running in the background, if one is."""
        self.refresh()  # the first requests already use what the ledger knows
        renew_after_fork(self)

    def _renew_after_fork(self) -> None:
        """A lock of the child's own (see the module docstring); the parent's refresh is not the child's, and the
        child's next request starts one of its own when one is due."""
        self._lock = threading.Lock()
        self.refreshing = None

    # -- reading ------------------------------------------------------------------------------------------------
    def for_request(self, task: str, input_tokens: int, max_tokens: int | None = None) -> dict[str, EnergyEstimate]:
        """The learned estimate of every model that has one, for a request on ``task`` (one per decision)."""
        self._keep_fresh()
        found = {}
        min_calls = self.min_calls
        for name, fit in self._fits.items():
            # nearly every model until the ledger holds its calls: nothing to estimate
            if fit.calls >= min_calls and fit.terms is not None:
                found[name] = fit.estimate(task, input_tokens, max_tokens)
        return found

    def estimate(self, card: ModelCard, task: str, input_tokens: int, max_tokens: int | None = None
                 ) -> EnergyEstimate | None:
        """The learned estimate for a call to ``card`` on ``task``, or ``None`` while the model has too few
        calls in the ledger (then its card decides)."""
        self._keep_fresh()
        return self._estimate(card, task, input_tokens, max_tokens)

    def _estimate(self, card: ModelCard, task: str, input_tokens: int, max_tokens: int | None
                  ) -> EnergyEstimate | None:
        # the fit was made with this model's card as the estimates were given it (its profile, where it runs)
        fit = self._fits.get(card.name)
        if fit is None or fit.calls < self.min_calls or fit.terms is None:
            return None
        return fit.estimate(task, input_tokens, max_tokens)

    def upper_for_card(self, card: ModelCard, card_joules: float) -> float:
        """What to hold for a call the card alone estimates at ``card_joules``."""
        return card_joules * UNMEASURED_HOLD if card.runs_here else card_joules

    # -- learning -----------------------------------------------------------------------------------------------
    def observe(self, rec: LedgerRecord) -> None:
        """One of this process's own calls, as it is recorded (other processes' arrive with :meth:`refresh`)."""
        calls = self._calls.get(rec.model)
        if calls is None or rec.outcome not in ("ok", "escalated"):
            return
        with self._lock:  # the record as it is: it is read into the fit's terms when the model is refitted
            calls.appendleft(rec)
            self._dirty.add(rec.model)

    def refresh(self) -> None:
        """Read every model's newest calls from the ledger (all processes'), then refit. Where the ledger cannot
        be read the estimates keep what they had."""
        self._refreshed = self._clock()
        fresh: dict[str, list[LedgerRecord]] = {}
        for name in self.cards:
            try:
                fresh[name] = self.ledger.recent_calls(name, self.window)
            except LedgerError as exc:  # the ledger's own errors say more
                log.debug("energy estimates not refreshed from the ledger: %s", exc)
                return
        with self._lock:
            for name, calls in fresh.items():
                self._calls[name] = deque(calls, maxlen=self.window)
            self._dirty.update(fresh)
        self._refit(force=True)

    def _keep_fresh(self) -> None:
        now = self._clock()
        if now - self._refreshed >= self.refresh_s:
            # on a thread of its own: the caller may be the proxy's event loop, and a store that hangs would hold
            # every request for its timeout; until the refresh is done the estimates are what they were
            self._refreshed = now  # one refresher at a time; the others use what is there
            if self.refreshing is None or not self.refreshing.is_alive():
                self.refreshing = threading.Thread(target=self._refresh_quietly, name="energy-estimates-refresh",
                                                   daemon=True)
                self.refreshing.start()
        elif self._dirty and now - self._refitted >= self.refit_s:
            self._refit()

    def _refresh_quietly(self) -> None:
        try:
            self.refresh()
        except Exception:  # noqa: BLE001 - a thread nobody joins: the estimates keep what they had
            log.exception("energy estimates not refreshed from the ledger")

    def _refit(self, force: bool = False) -> None:
        with self._lock:
            if not force and self._clock() - self._refitted < self.refit_s:
                return
            names, self._dirty = self._dirty, set()
            self._refitted = self._clock()
            snapshot = {n: [_call(r) for r in self._calls[n]] for n in names}
        for name, calls in snapshot.items():
            self._fits[name] = fit_calls(calls, self.cards[name], self.min_calls, self.prior_calls, self.quantile)


def fit_calls(calls: list[_Call], card: ModelCard, min_calls: int, prior_calls: float, quantile: float) -> _Fit:
    """One model's fit from its window of calls (newest first)."""
    fit = _Fit()
    fit.calls = len(calls)
    if len(calls) < min_calls:
        return fit
    outs = np.array([c.output_tokens for c in calls], dtype=np.float64)
    fit.out[None] = (float(np.median(outs)), float(np.quantile(outs, quantile)))
    for task in {c.task for c in calls}:
        mine = outs[[c.task == task for c in calls]]
        if len(mine) >= min_calls:
            fit.out[task] = (float(np.median(mine)), float(np.quantile(mine, quantile)))
    metered = [c for c in calls if c.metered]
    fit.metered = len(metered)
    if len(metered) >= min_calls:
        fit.coef, fit.spread = _fit_joules(metered, card, prior_calls, quantile)
        fit.terms = fit.coef
    elif not card.runs_here:  # a remote model: its card's token profile is its joules, at the learned lengths
        e = card.energy  # (a local model whose calls were not metered keeps no terms: nothing learned of its joules)
        fit.terms, fit.whole_tokens = (e.per_call_j, e.per_input_token_j, e.per_output_token_j), True
    fit.source = (f"ledger:{fit.metered} calls" if fit.coef is not None
                  else f"card, answer length from ledger:{fit.calls} calls")
    return fit


def _fit_joules(calls: Iterable[_Call], card: ModelCard, prior_calls: float, quantile: float
                ) -> tuple[tuple[float, float, float], float]:
    """Non-negative least squares of joules on (1, input tokens, output tokens), the card's coefficients entered
    as ``prior_calls`` calls' worth of pseudo-observations (scaled by each feature's typical size, so the prior
    weighs the same whatever the units); returns the coefficients and the upper spread of measured/fitted."""
    from scipy.optimize import nnls

    rows = list(calls)
    x = np.array([[1.0, c.input_tokens, c.output_tokens] for c in rows])
    y = np.array([c.joules for c in rows])
    e = card.energy
    prior = np.array([e.per_call_j, e.per_input_token_j, e.per_output_token_j])
    scale = np.maximum(np.abs(x).mean(axis=0), 1.0)
    weight = math.sqrt(prior_calls)
    a = np.vstack([x, np.diag(scale * weight)])
    b = np.concatenate([y, scale * weight * prior])
    coef, _ = nnls(a, b)
    # A call the fit puts near 0 J (no output, and the fit's per-call and per-input terms at 0) would turn its
    # measured joules into a ratio of ~1e12 and the hold into the whole budget: the ratio is read against at
    # least a share of the window's typical call.
    floor = max(FIT_FLOOR_SHARE * float(np.median(y)), 1e-12)
    fitted = np.maximum(x @ coef, floor)
    spread = float(min(MAX_SPREAD, max(1.0, np.quantile(y / fitted, quantile))))
    return (float(coef[0]), float(coef[1]), float(coef[2])), spread


METERS = frozenset({"rapl", "nvml", "cpu-time"})
"""The meters whose readings are learned from, alone or summed (``nvml+cpu-time``: a GPU measured, its host CPU
modelled, where RAPL is not readable); a card's token profile or a call not made is not a reading of this host."""


def _metered(source: str) -> bool:
    kind, _, method = source.partition(":")
    return kind == "measured" or (kind == "estimated" and bool(method) and set(method.split("+")) <= METERS)


def _call(rec: LedgerRecord) -> _Call:
    metered = _metered(rec.energy_source or "")
    return _Call(rec.task or "", int(rec.input_tokens or 0), int(rec.output_tokens or 0), float(rec.energy_j),
                 metered)
