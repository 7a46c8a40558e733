"""Routing metrics as RouteLLM defines them (Ong et al., 2024, "RouteLLM: Learning to Route LLMs with
Preference Data", and ``routellm/evals/evaluate.py``), plus the Pareto frontier of quality vs energy.

For a weak and a strong model with accuracies ``w`` and ``s``, a router that calls the strong model on a share
``c`` of requests and reaches accuracy ``a(c)`` has performance gap recovered ``PGR(c) = (a(c) - w) / (s - w)``.

* APGR: the area under ``PGR(c)`` for ``c`` from 0 to 1 (trapezoid rule over the router's operating points;
  the curve is anchored at (0, w) and (1, s), which every router reaches by sending nothing / everything to
  the strong model). Random routing scores 0.5.
* CPT(x): the smallest share of strong-model calls at which PGR reaches ``x`` (linear interpolation between
  operating points, as RouteLLM's ``np.interp``). Reported as a fraction in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

import numpy as np

Points: TypeAlias = Sequence[float] | np.ndarray
"""A router's operating points, one number each: a list or an array."""


def _curve(shares: Points, accs: Points, weak: float, strong: float) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(shares, dtype=np.float64)
    a = np.asarray(accs, dtype=np.float64)
    if c.shape != a.shape:
        raise ValueError("shares and accuracies differ in length")
    c = np.concatenate([[0.0], c, [1.0]])
    a = np.concatenate([[weak], a, [strong]])
    order = np.lexsort((a, c))  # by share, ties by accuracy (a vertical step goes up)
    return c[order], a[order]


def pgr(accs: np.ndarray | float, weak: float, strong: float) -> np.ndarray:
    if strong == weak:
        raise ValueError("PGR is undefined when both models score the same")
    return (np.asarray(accs, dtype=np.float64) - weak) / (strong - weak)


def apgr(shares: Points, accs: Points, weak: float, strong: float) -> float:
    """Average performance gap recovered of the operating points (share of strong calls, accuracy)."""
    c, a = _curve(shares, accs, weak, strong)
    return float(np.trapezoid(pgr(a, weak, strong), c))


def cpt(shares: Points, accs: Points, weak: float, strong: float, target: float) -> float:
    """Call-performance threshold: the least share of strong calls whose PGR reaches ``target``."""
    c, a = _curve(shares, accs, weak, strong)
    p = pgr(a, weak, strong)
    hit = np.nonzero(p >= target - 1e-12)[0]
    if len(hit) == 0:
        return 1.0
    i = int(hit[0])
    if i == 0 or p[i] == p[i - 1]:
        return float(c[i])
    frac = (target - p[i - 1]) / (p[i] - p[i - 1])
    return float(c[i - 1] + frac * (c[i] - c[i - 1]))


def score_curve(score: np.ndarray, weak: np.ndarray, strong: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact operating points of "send the top-k requests by ``score`` to the strong model", k = 0..n."""
    order = np.argsort(-np.asarray(score, dtype=np.float64), kind="stable")
    gain = (np.asarray(strong, np.float64) - np.asarray(weak, np.float64))[order]
    n = len(gain)
    accs = (np.asarray(weak, np.float64).sum() + np.concatenate([[0.0], np.cumsum(gain)])) / n
    return np.arange(n + 1) / n, accs


def routing_metrics(shares: Points, accs: Points, weak: float, strong: float) -> dict[str, float]:
    return {
        "apgr": apgr(shares, accs, weak, strong),
        "cpt50": cpt(shares, accs, weak, strong, 0.5),
        "cpt80": cpt(shares, accs, weak, strong, 0.8),
    }


def pareto_front(energy: Sequence[float], quality: Sequence[float]) -> np.ndarray:
    """Indices of the points no other point beats (less or equal energy and more or equal quality, one
    strictly), ordered by energy."""
    e = np.asarray(energy, dtype=np.float64)
    q = np.asarray(quality, dtype=np.float64)
    order = np.lexsort((-q, e))
    keep = []
    best = -np.inf
    for i in order:
        if q[i] > best + 1e-12:
            keep.append(int(i))
            best = q[i]
    return np.array(keep, dtype=np.int64)
