"""What the policy engine returns: which model answers, why, and what happens if it cannot."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Decision:
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
