"""APGR / CPT / Pareto on cases small enough to check by hand."""

from __future__ import annotations

import numpy as np
import pytest

from router.simulate.metrics import apgr, cpt, pareto_front, routing_metrics, score_curve


def test_perfect_ranking_by_hand() -> None:
    weak = np.array([1, 0, 0, 0])
    strong = np.array([1, 1, 1, 0])  # w = 0.25, s = 0.75
    score = np.array([0.1, 0.9, 0.8, 0.2])  # rows 1 and 2 (where strong alone is right) first
    shares, accs = score_curve(score, weak, strong)
    assert shares.tolist() == [0, 0.25, 0.5, 0.75, 1]
    assert accs.tolist() == [0.25, 0.5, 0.75, 0.75, 0.75]
    m = routing_metrics(shares, accs, 0.25, 0.75)
    # PGR 0, .5, 1, 1, 1 -> trapezoids .0625 + .1875 + .25 + .25
    assert m["apgr"] == pytest.approx(0.75)
    assert m["cpt50"] == pytest.approx(0.25)
    assert m["cpt80"] == pytest.approx(0.25 + 0.3 / 0.5 * 0.25)  # interpolated: 0.40


def test_worst_ranking_and_random_diagonal() -> None:
    weak = np.array([1, 0, 0, 0])
    strong = np.array([1, 1, 1, 0])
    shares, accs = score_curve(-np.array([0.1, 0.9, 0.8, 0.2]), weak, strong)
    # strong calls first go where they gain nothing: PGR 0, 0, 0, .5, 1
    assert apgr(shares, accs, 0.25, 0.75) == pytest.approx(0.0625 + 0.1875)
    assert cpt(shares, accs, 0.25, 0.75, 0.5) == pytest.approx(0.75)
    diag = np.linspace(0, 1, 11)
    assert apgr(diag, 0.25 + 0.5 * diag, 0.25, 0.75) == pytest.approx(0.5)
    assert cpt(diag, 0.25 + 0.5 * diag, 0.25, 0.75, 0.8) == pytest.approx(0.8)


def test_operating_points_are_anchored_and_sorted() -> None:
    # one operating point at 50 % strong calls reaching PGR 1: area = .5 * .5 * 1 (rising) + .5 (flat)
    assert apgr([0.5], [0.75], 0.25, 0.75) == pytest.approx(0.75)
    assert cpt([0.5], [0.75], 0.25, 0.75, 0.5) == pytest.approx(0.25)
    # order of points does not matter
    assert apgr([0.5, 0.2], [0.75, 0.5], 0.25, 0.75) == apgr([0.2, 0.5], [0.5, 0.75], 0.25, 0.75)


def test_pgr_undefined_when_models_tie() -> None:
    with pytest.raises(ValueError, match="undefined"):
        apgr([0.5], [0.5], 0.5, 0.5)


def test_pareto_front() -> None:
    energy = [1, 2, 3, 2.5, 4]
    quality = [0.5, 0.7, 0.6, 0.8, 0.8]
    # (3, .6) is beaten by (2, .7); (4, .8) by (2.5, .8)
    assert pareto_front(energy, quality).tolist() == [0, 1, 3]
