"""The engine interface: what a routing engine is asked, what it may read, and its two extension points.

The caller (the Router, or the simulator) does the I/O around a decision::

    refs = engine.budget_refs(request)
    state = BudgetState({r.key: ledger.budget_used(r.key, r.window_s) for r in refs}, now=time.time())
    decision = engine.decide(classification, request, state)

so an engine reads no ledger and no clock: the same inputs give the same :class:`Decision`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from ..classify.base import Classification
from ..errors import BadRequestError
from .decision import BudgetRef, Decision


@dataclass(kw_only=True, slots=True)
class DecisionRequest:
    """What the caller asks of one decision, besides the request's text (which the classifier has read).

    Keyword-only, so fields can be added without breaking callers. Read-only by convention, not frozen (one per
    request: see :class:`~router.policy.decision.Decision`)."""

    policy: str | None = None
    """The policy's name; ``None``: the engine's default policy."""
    pinned: str | None = None
    """A model the caller insists on (a card name)."""
    accuracy_target: float | None = None
    """An absolute accuracy target replacing the policy's."""
    max_energy_j: float | None = None
    """Leave out models estimated above this many joules."""
    key_hash: str | None = None
    """The caller's API key hash (selects per-key policies and budgets)."""
    input_tokens_hint: int = 64
    """Input tokens, for the joule estimates."""
    output_tokens_hint: int | None = None
    """Output tokens, for the joule estimates; ``None``: the policy's ``output_tokens_estimate``."""
    max_tokens: int | None = None
    """The request's ``max_tokens``: no answer is longer, so the joule estimates assume at most this many output
    tokens (a 5-token call is not refused by ``max_energy_j`` or a budget as if it would write 128)."""
    max_tokens_param: str = "max_tokens"
    """The name the caller gave ``max_tokens`` under (OpenAI's newer ``max_completion_tokens`` too): an error
    that blames it uses the caller's name."""
    context_tokens_floor: int | None = None
    """The fewest tokens the request can take in a model's context (a lower bound of the prompt's, plus
    ``max_tokens``): a model with less context is left out, and one with more is tried, the backend then counting
    exactly. ``None``: ``input_tokens_hint`` plus the output estimate."""
    energy_estimates: Mapping[str, tuple[float, str]] | None = None
    """Model -> (expected joules of this request, where the figure comes from, e.g. ``ledger:212 calls``): what
    the caller has learned; a model not in it is estimated from its card."""
    grid_g_per_kwh: float | None = None
    """This host's grid intensity now (a policy's ``grid`` switch compares it with its threshold)."""
    capabilities: frozenset[str] = frozenset()
    """What the request needs a model to do besides text (``tools``, ``json_schema``, ...; see
    :mod:`router.capabilities`): only models whose card lists all of them are candidates."""
    cooling: frozenset[str] = frozenset()
    """Models whose backend is cooling down (its breaker open after repeated failures: see
    :mod:`router.backends.cooldown`; or it could not start, and is not tried again yet): ranked after every other
    candidate, so one is called only when no other model can answer (a call to it would fail at once)."""

    @staticmethod
    def of(value: DecisionRequest | Mapping[str, Any] | None) -> DecisionRequest:
        """A request from keyword settings (unknown names are a :class:`BadRequestError`)."""
        if value is None:
            return _EMPTY
        if isinstance(value, DecisionRequest):
            return value
        bad = set(value) - _FIELDS
        if bad:
            raise BadRequestError(f"unknown override(s) {sorted(bad)}; known: {sorted(_FIELDS)}")
        return DecisionRequest(**dict(value))


_FIELDS = frozenset(f.name for f in fields(DecisionRequest))
_EMPTY = DecisionRequest()


@dataclass(frozen=True)
class BudgetState:
    """A plain snapshot of budget use: ledger key -> joules spent or held in the current window, and the clock
    reading the snapshot was taken at (for ``retry_after_s``). Keys absent from ``used`` count as 0."""

    used: Mapping[str, float] = field(default_factory=dict)
    now: float = 0.0
    g_per_j: Mapping[str, float] = field(default_factory=dict)
    """Model -> grams CO2e per joule now (its zone's intensity): what a carbon budget charges per joule."""
    unreadable: frozenset[str] = frozenset()
    """Ledger keys whose use could not be read (the ledger's store is unavailable). A budget that cannot be read
    cannot be enforced: a model under one is no fallback or escalation, and no first choice where the policy
    falls back; a first choice kept under one is refused by its reservation (``LedgerError``, HTTP 503)."""

    @staticmethod
    def empty() -> BudgetState:
        """No budget used (offline simulation, an engine without budgets, a request no budget applies to): one
        shared snapshot, whose mappings are read-only."""
        return _NO_BUDGETS

    def resets_in(self, window_s: float) -> float:
        """Seconds until the window of ``window_s`` seconds that holds ``now`` rolls over."""
        return window_s - (self.now % window_s)


_NO_BUDGETS = BudgetState(MappingProxyType({}), 0.0, MappingProxyType({}))


class Engine(ABC):
    """A routing engine. Pure: it reads only its arguments (and its own configuration)."""

    @abstractmethod
    def budget_refs(self, request: DecisionRequest) -> tuple[BudgetRef, ...]:
        """Every budget any candidate could be reserved against for this request (each key once), so the caller
        can read their use into the :class:`BudgetState` it passes to :meth:`decide`."""

    @abstractmethod
    def decide(self, classification: Classification, request: DecisionRequest, budgets: BudgetState) -> Decision:
        """Which model answers, why, and what to try when it cannot. Raises :class:`BadRequestError` when no
        model can serve the request and :class:`BudgetExhaustedError` when the policy rejects it."""


__all__ = ["BudgetRef", "BudgetState", "Decision", "DecisionRequest", "Engine"]
