"""How much of each budget is used in its current window: what the dashboard's budgets panel, ``/metrics`` (the
per-key budgets it lists after a restart) and ``router ledger budgets`` show. In the ledger package because it
reads the ledger: :mod:`router.policy` imports no ledger code (``tests/test_engine_interface.py``).

The figures are the ledger's own counters, read with :meth:`~router.ledger.Ledger.budget_used` (spent plus held by
calls still running), the very number a reservation is checked against, and the limits are the policies'
(:func:`~router.policy.engine.known_budgets`): a view never sums the records again, so it cannot disagree with
what the router enforces.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..policy.engine import known_budgets
from ..policy.schema import budget_unit, budget_window_s
from .base import window_start

if TYPE_CHECKING:
    from .base import Ledger


def budget_use(engine: object, ledger: Ledger, seen: Iterable[str] = (),
               now: float | None = None) -> list[dict[str, Any]]:
    """Each budget's use in its current window and when the window rolls; one row per policy that names the
    budget (policies may share a counter with different limits), sorted by budget then policy. Amounts are in the
    budget's ``unit``: ``J``, or ``gCO2e`` for a carbon budget (whose ``*_j`` fields are None). ``seen``: budget
    keys met in decisions that the policies do not name (per-key budgets; :func:`per_key_budgets_in_ledger`)."""
    specs = sorted(known_budgets(engine, seen), key=lambda r: (r[0], r[3] or ""))
    now = time.time() if now is None else now
    used: dict[tuple[str, float], float] = {}
    out = []
    for budget, limit, window_s, policy in specs:
        if (budget, window_s) not in used:
            used[budget, window_s] = ledger.budget_used(budget, window_s)
        spent = used[budget, window_s]
        start = window_start(now, window_s)
        unit = budget_unit(budget)
        remaining = None if limit is None else max(0.0, limit - spent)
        joules = unit == "J"  # the *_j fields are joules: a carbon budget's grams go in limit/used/remaining only
        out.append({
            "budget": budget, "policy": policy, "unit": unit, "limit": limit, "used": spent,
            "remaining": remaining, "limit_j": limit if joules else None, "used_j": spent if joules else None,
            "remaining_j": remaining if joules else None, "window_s": window_s,
            "used_share": None if not limit else spent / limit,
            "window_start": start, "rolls_at": start + window_s, "rolls_in_s": start + window_s - now,
        })  # fmt: skip
    return out


def per_key_budgets_in_ledger(engine: object, ledger: Ledger, now: float | None = None) -> list[str]:
    """The per-key budgets of the policies (``scope: per_key``, whose keys no policy lists) that the ledger has a
    counter for in their current window: the ones a view lists beside those the policies name. Only what the
    policies still reserve against: a counter of a budget since removed has no limit to show. Raises what the
    ledger raises when it cannot be read."""
    windows = {b.window_s for p in getattr(engine, "policies", {}).values() for b in p.budgets
               if b.scope == "per_key"}
    if not windows:
        return []
    now = time.time() if now is None else now
    found = {key for w in windows for key in ledger.budget_keys(window_start(now, w))
             if budget_window_s(key) == w}  # another window length's counter may be from its last window
    return sorted({b for b, _, _, policy in known_budgets(engine, found) if policy and b in found})


__all__ = ["budget_use", "per_key_budgets_in_ledger"]
