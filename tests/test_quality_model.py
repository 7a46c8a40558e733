"""The quality model: learns which model is better for which kind of request, links scales across sources, fits
a new model's vector from anchors, and serves P(correct) from the table the classifier holds."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from router.classify.quality import QualityTable, card_prior_features, parse_size
from router.training.quality import HeadsBasis, Observations, QualityModel, fit_model_vector, fit_source_prior


def synthetic(n: int = 600, seed: int = 0) -> tuple[sparse.csr_matrix, Observations, np.ndarray]:
    """Two kinds of request (feature 0 = "code", feature 1 = "prose"); model A is good at code, model B at prose,
    model C is measured on a second source only. Scores are soft labels, as the judge's."""
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 2, n)
    x = np.zeros((n, 6))
    x[np.arange(n), kind] = 1.0
    x[:, 2:] = rng.normal(0, 0.3, (n, 4))  # noise features
    truth = np.stack([np.where(kind == 0, 0.8, 0.3), np.where(kind == 0, 0.3, 0.8)], axis=1)
    prompt, model, source, y = [], [], [], []
    for i in range(n):
        for j in range(2):
            prompt.append(i), model.append(j), source.append(0), y.append(float(rng.random() < truth[i, j]))
        prompt.append(i), model.append(2), source.append(1), y.append(float(rng.random() < 0.6))
    obs = Observations([f"p{i}" for i in range(n)], np.array(prompt), np.array(model), np.array(source),
                       np.array(y), ["A", "B", "C"], ["s0", "s1"], np.array(["g"] * n, dtype=object))
    return sparse.csr_matrix(x), obs, kind


def test_learns_which_model_is_better_for_which_request() -> None:
    x, obs, kind = synthetic()
    train = obs.take(obs.prompt < 450)
    qm = QualityModel(k=4, l2_w=1e-4, l2_v=1e-4, max_iter=200).fit(x, train)
    held = np.arange(450, 600)
    a, b = qm.predict(x[held], "A", "s0"), qm.predict(x[held], "B", "s0")
    code = kind[held] == 0
    assert (a > b)[code].mean() > 0.95 and (b > a)[~code].mean() > 0.95
    assert abs(a[code].mean() - 0.8) < 0.1 and abs(b[code].mean() - 0.3) < 0.1
    assert qm.measured_.tolist() == [[True, False], [True, False], [False, True]]


def test_floor_is_the_chance_level() -> None:
    x, obs, _ = synthetic(200)
    qm = QualityModel(k=2, floors={"s0": 0.25}, max_iter=100).fit(x, obs)
    assert qm.predict(x, "A", "s0").min() >= 0.25


def test_heads_basis_equals_its_heads_and_shares_one_representation() -> None:
    x, obs, kind = synthetic()
    hb = HeadsBasis(energy=1.0).fit(x, obs.take(obs.prompt < 450))
    held = np.arange(450, 600)
    a, b = hb.predict(x[held], "A", "s0"), hb.predict(x[held], "B", "s0")
    code = kind[held] == 0
    assert (a > b)[code].mean() > 0.95 and (b > a)[~code].mean() > 0.95
    assert hb.k <= 3 and hb.v_.shape == (3, 2, hb.k) and not hb.v_[0, 1].any()  # no head where no outcomes


def test_source_prior_keeps_size_slope_non_negative() -> None:
    sizes = np.array([1.0, 3.0, 7.0, 13.0, 33.0, 65.0])
    levels = -np.log10(sizes)  # bigger is worse in this data (as old large models vs new small ones)
    feats = np.stack([np.ones(6), np.log10(sizes), np.zeros(6), np.zeros(6), np.ones(6)], axis=1)
    prior = fit_source_prior(levels, feats, ["a", "a", "b", "b", "c", "c"])
    assert prior.beta[1] == 0.0
    up = fit_source_prior(-levels, feats, [None] * 6, ridge=1e-6)
    assert up.beta[1] == pytest.approx(1.0, abs=0.01)


def test_anchor_fit_moves_a_new_model_toward_its_level() -> None:
    rng = np.random.default_rng(2)
    h = rng.normal(0, 1, (50, 4))
    true_b, true_v = 1.0, np.array([0.5, 0.0, 0.0, 0.0])
    y = (rng.random(50) < 1 / (1 + np.exp(-(true_b + h @ true_v)))).astype(float)
    b, v = fit_model_vector(h, y, prior_b=-2.0, prior_v=np.zeros(4))
    assert abs(b - true_b) < abs(-2.0 - true_b) / 2  # 50 anchors overrule a wrong prior
    b5, _ = fit_model_vector(h[:5], y[:5], prior_b=-2.0, prior_v=np.zeros(4))
    assert abs(b5 - -2.0) < abs(b - -2.0)  # a handful moves it less


def test_quality_table_mixes_tasks_and_fixes_specialists() -> None:
    meta = {"k": 2, "task_sources": {"chat": "a", "math": "b"}, "chance": {"math": 0.25},
            "priors": {"chat": {"level": -1.0, "beta": [0.0, 1.0, 0.0, 0.0, 0.0], "family": {"fam": 0.5}},
                       "math": {"level": -2.0}},
            "models": {"m1": {"vectors": {"chat": [1.0, 0.0]}, "intercepts": {"chat": 0.0, "math": 0.0}},
                       "spec": {"intercepts": {"chat": 3.0, "math": 3.0}, "fixed": {"math": 0.0}}}}
    table = QualityTable(meta, ["chat", "math"])
    p = table.p_correct(np.array([2.0, 0.0]), [0.5, 0.5])
    sig = 1 / (1 + np.exp(-2.0))
    assert p["m1"] == pytest.approx(0.5 * sig + 0.5 * 0.5)  # math has no vector: its intercept alone
    assert p["spec"] == pytest.approx(0.5 / (1 + np.exp(-3.0)))  # math fixed at 0

    class Card:
        active_parameters_b = 10.0
        parameters = None
        benchmarks: dict = {}
        family = "fam"
        prior_accuracy: dict = {}

    table.add({"new": table.prior_row(Card())}, source="card prior")
    assert table.q(np.zeros(2), "new", "chat") == pytest.approx(1 / (1 + np.exp(-(1.0 + 0.5))))  # log10(10) + family
    assert table.q(np.zeros(2), "new", "math") == pytest.approx(0.25)  # the source mean, floored at chance
    assert table.sources["new"] == {"chat": "card prior", "math": "source mean"}


def test_card_prior_features() -> None:
    assert parse_size("135M") == pytest.approx(0.135) and parse_size("8.03B (dense)") == pytest.approx(8.03)
    assert parse_size("undisclosed") is None

    class Card:
        active_parameters_b = None
        parameters = "270M"
        benchmarks = {"alpaca_eval_lc": 0.5}

    f = card_prior_features(Card(), "alpaca_eval_lc")
    assert f.tolist() == pytest.approx([1.0, np.log10(0.27), 0.0, 0.0, 0.0])


def test_quality_table_is_read_safely_by_threads_while_its_first_reader_builds_it() -> None:
    """The stacked table is built by the first request of a process; the batch scheduler's threads (and the
    proxy's) may ask at the same moment. Thread switches are forced very often so the window is hit."""
    import sys
    import threading

    tasks = [f"t{i}" for i in range(8)]
    meta = {"k": 2, "task_sources": {t: "a" for t in tasks},
            "models": {f"m{j}": {"vectors": {t: [1.0, float(j)] for t in tasks},
                                 "intercepts": dict.fromkeys(tasks, 0.0)} for j in range(4)}}
    table = QualityTable(meta, tasks)
    probs = [1.0 / len(tasks)] * len(tasks)
    expected = table.p_correct_batch(np.ones((1, 2)), [probs])[0]
    errors: list[BaseException] = []
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(30):
            table.keep(set(table.names))  # back to "not built yet"
            start = threading.Barrier(6)

            def ask(start: threading.Barrier = start) -> None:
                start.wait()
                try:
                    assert table.p_correct_batch(np.ones((1, 2)), [probs])[0] == pytest.approx(expected)
                    assert table.p_correct(np.ones(2), probs) == pytest.approx(expected)
                except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
                    errors.append(exc)

            threads = [threading.Thread(target=ask) for _ in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors[:3]


def test_p_correct_batch_is_exactly_the_sigmoid_of_each_task_mixed_in_task_order() -> None:
    """Exact floats against the formula written plainly (sigmoid of ``b + v . h``, fixed cells, weights above 1e-6
    summed task by task), with and without a per-request term; and computing one batch leaves the table as it was
    for the next (the per-request steps work in place). Vectors and ``h`` in eighths and quarters: every product
    ``v . h`` is exact in any summation order, so the rest of the arithmetic is what is compared."""
    rng = np.random.default_rng(3)
    tasks, k = ["chat", "math", "sentiment"], 5
    models = {f"m{j}": {"vectors": {t: (rng.integers(-8, 9, k) / 8).tolist() for t in tasks[: 1 + j % 3]},
                        "intercepts": {t: float(rng.normal()) for t in tasks}} for j in range(6)}
    models["m4"]["fixed"] = {"math": 0.3, "sentiment": 0.0}
    table = QualityTable({"k": k, "task_sources": {t: t for t in tasks}, "models": models}, tasks)
    hs = (rng.integers(-8, 9, (4, k)) / 4).astype(np.float32)
    probs = [[0.5, 0.3, 0.2], [1.0, 0.0, 0.0], [1e-7, 0.9, 0.1 - 1e-7], [0.2, 0.2, 0.6]]

    def plain(h: np.ndarray | None, weights: list[float]) -> dict[str, float]:
        out = {}
        for i, name in enumerate(table.names):
            total = 0.0
            for t in range(len(tasks)):
                z = table._b[i, t] + (0.0 if h is None else h.astype(np.float64) @ table._v[i, t])
                q = table._fixed_p[i, t] if table._fixed[i, t] else 1.0 / (1.0 + np.exp(-z))
                total = total + q * (weights[t] if weights[t] > 1e-6 else 0.0)
            out[name] = float(total)
        return out

    for _ in range(2):
        assert table.p_correct_batch(hs, probs) == [plain(h, w) for h, w in zip(hs, probs, strict=True)]
        assert table.p_correct_batch(None, [probs[0]]) == [plain(None, probs[0])]
        assert table.p_correct(hs[1], probs[1]) == plain(hs[1], probs[1])
