"""The policy engine's rule, vectorised over many requests: for simulation sweeps and ``router calibrate``.

Same rule as :func:`router.policy.engine.decide_pure` steps 3-4 (target, ranking) on arrays; the candidates
(step 1) come in as an eligibility mask, and pins, budgets and cascades are left to the caller.
"""

from __future__ import annotations

import numpy as np

from .steps import EPS as _EPS


def decide_batch(
    p_correct: np.ndarray,
    energies: np.ndarray,
    target: float,
    *,
    relative: bool = False,
    offsets: np.ndarray | None = None,
    eligible: np.ndarray | None = None,
    reference: int | np.ndarray | None = None,
) -> np.ndarray:
    """The chosen column per row: vectorised steps 3-4 of :func:`~router.policy.engine.decide_pure`.

    ``p_correct`` [N, M] predicted accuracies; ``energies`` [M] or [N, M] estimated joules; ``target`` the
    policy's value (absolute, or the share of the reference model's prediction when ``relative``);
    ``offsets`` [M] calibrated margins (0 where none); ``eligible`` [N, M] bool (default all);
    ``reference`` the column of the "largest" model (default: the most energy per row among eligible).
    Same rule as ``decide_pure`` without pins, specialists' task rules and budgets (give those through
    ``eligible``): the cheapest adequate model, else the most accurate (ties: the cheaper).
    """
    p = np.asarray(p_correct, dtype=np.float64)
    n, m = p.shape
    e = np.broadcast_to(np.asarray(energies, dtype=np.float64), (n, m))
    ok = np.ones((n, m), dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool)
    off = np.zeros(m) if offsets is None else np.asarray(offsets, dtype=np.float64)
    if relative:
        if reference is None:
            ref = np.argmax(np.where(ok, e, -np.inf), axis=1)
        else:
            ref = np.broadcast_to(np.asarray(reference), (n,))
        t = target * p[np.arange(n), ref]
    else:
        t = np.full(n, float(target))
    adequate = ok & (p - t[:, None] >= off[None, :] - _EPS)
    cheapest_adequate = np.argmin(np.where(adequate, e, np.inf), axis=1)
    # most accurate, ties broken by energy: lexicographic via a tiny energy penalty on equal p
    score = np.where(ok, p, -np.inf)
    best_p = score.max(axis=1, keepdims=True)
    best = np.argmin(np.where(np.abs(score - best_p) <= _EPS, e, np.inf), axis=1)
    return np.where(adequate.any(axis=1), cheapest_adequate, best)


__all__ = ["decide_batch"]
