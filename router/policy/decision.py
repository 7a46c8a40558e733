"""What the policy engine returns: which model answers, why, and what happens if it cannot."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class BudgetRef:
    """One energy budget a call is reserved against: its ledger key, its limit and its window."""

    key: str
    limit_j: float
    """The limit per window, in ``unit``."""
    window_s: float
    unit: str = "J"
    """``J`` or ``gCO2e`` (a carbon budget: its key starts with ``gco2e:``)."""


@dataclass(slots=True)
class Decision:
    """Read-only by convention, not frozen: one is made per request, and a frozen dataclass's ``__init__`` sets
    every field through ``object.__setattr__``, about eight times the cost of a slotted one for these 20 fields."""

    model: str
    tier: str
    reason: str
    """A sentence a person can read: task, model, predicted accuracy vs target, energy vs alternatives."""
    task: str
    policy: str
    predicted_accuracy: float | None = None
    estimated_j: float | None = None
    fallbacks: tuple[str, ...] = ()
    """Models to try, in order, when the chosen one fails or its budget is spent."""
    escalate_to: tuple[str, ...] = ()
    """Cascade: models to try next when the chosen one's own confidence is below ``escalate_below``."""
    escalate_below: float | None = None
    budgets: tuple[str, ...] = ()
    """Budget keys the call is reserved against (e.g. ``model:smollm2-135m:3600``)."""
    flags: tuple[str, ...] = ()
    """E.g. ``over_budget_allowed`` when the policy says allow-and-flag."""
    candidates: dict[str, float] = field(default_factory=dict)
    """Every candidate's predicted P(correct), for logs and simulation."""
    # -- added by the policy engine (issue 6) --------------------------------------------------------------
    target: float | None = None
    """The accuracy the choice had to meet for this request (absolute, after resolving a relative target)."""
    target_kind: str | None = None
    """``absolute`` or ``relative`` (to the largest candidate)."""
    prediction_source: str | None = None
    """Where ``predicted_accuracy`` came from: ``classifier``, ``card prior`` or ``tier default``."""
    estimates: dict[str, float] = field(default_factory=dict)
    """Estimated joules of every candidate for this request (what a budget reservation holds)."""
    model_budgets: dict[str, tuple[BudgetRef, ...]] = field(default_factory=dict)
    """Budgets per model (chosen, fallbacks, escalations), so the Router can reserve for whichever it calls."""
    on_budget_exhausted: str = "fallback"
    """What the Router does when a reservation fails at call time: ``fallback``, ``reject``, ``allow_and_flag``."""
    calibrated: bool = False
    """True when the policy's calibrated thresholds decided (not the raw predicted-accuracy comparison)."""
    deadline_s: float | None = None
    """The policy's deadline for the whole request (``None``: the config's)."""
