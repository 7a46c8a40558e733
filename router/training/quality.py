"""Quality prediction for many models: a request representation shared by every model, and one small vector
per model and outcome source.

For request ``x`` (TF-IDF features ``phi(x)``), model ``j`` and outcome source ``s``::

    h(x)      = phi(x) W                   k numbers: what kind of request this is (shared by all models)
    q_j,s(x)  = sigmoid(b[j, s] + h(x) . v[j, s])

**How the scales are put together.** Every outcome is a probability of a good answer *under its source's own
scorer*: MMLU right/wrong, the AlpacaEval judge's preference against GPT-4 Turbo (a soft label in [0, 1]), the
sentiment label match, checked chat answers, checked math answers. They are not one scale (47 % on short checked
chat questions is not 47 % against GPT-4 Turbo), so each (model, source) has its own intercept and vector, and
``W`` is shared: one representation of requests for every source. A task is read on one source's scale for
every model (``outcome_sources.TASK_SOURCES``); a model never measured on that source gets a prior level from its
card (:func:`fit_source_prior`), never another scale's number, except where a source has too few models for a
prior (then the model's mean over the sources it was measured on, the previous classifier's rule).

Two estimators, compared in ``benchmarks/bench_quality.py``: :class:`HeadsBasis` (shipped: per-(model, source)
logistic heads, then the stack factorised by SVD into ``W`` and the vectors; reduced-rank regression) and
:class:`QualityModel` (a bilinear model trained jointly by L-BFGS, as RouteLLM's ``mf`` router: it lost on both
MMLU and AlpacaEval held-out requests). A new model is a new vector in the same space: :func:`fit_model_vector`
fits it on a few anchor requests with everything else fixed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, sparse

from ..cards import ModelCard
from ..classify.quality import card_prior_features

Progress = Callable[[str], None]
LOGIT_CLIP = 0.02
"""Observed rates are clipped to [2 %, 98 %] before taking logits in the scale linking (0 % math on 60 items is
not minus infinity)."""


@dataclass
class Observations:
    """Outcomes as parallel arrays: row ``i`` of ``prompts`` answered by ``model`` under ``source`` scored ``y``."""

    prompts: list[str]
    prompt: np.ndarray
    """int [n]: index into ``prompts``."""
    model: np.ndarray
    """int [n]: index into ``models``."""
    source: np.ndarray
    """int [n]: index into ``sources``."""
    y: np.ndarray
    """float [n] in [0, 1]."""
    models: list[str]
    sources: list[str]
    groups: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))
    """[len(prompts)]: the prompt's family (``mmlu/anatomy``, ``alpaca_eval/koala``, ...) for held-out splits."""

    def take(self, keep: np.ndarray) -> Observations:
        """The observations where ``keep`` (bool [n]) is true; prompts and models keep their indices."""
        return Observations(self.prompts, self.prompt[keep], self.model[keep], self.source[keep], self.y[keep],
                             self.models, self.sources, self.groups)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


class QualityModel:
    """``fit(X, obs)`` learns ``W`` (request features -> k dims), ``V`` (one k-vector per model) and ``B``
    (intercept per model and source); ``predict(X, model, source)`` gives q in [0, 1]."""

    def __init__(self, k: int = 16, l2_w: float = 3e-4, l2_v: float = 1e-3, l2_b: float = 1e-4,
                 floors: Mapping[str, float] | None = None, max_iter: int = 300, seed: int = 0) -> None:
        self.k = k
        self.l2_w = l2_w
        self.l2_v = l2_v
        self.l2_b = l2_b
        self.floors = dict(floors or {})
        self.max_iter = max_iter
        self.seed = seed

    # -- fitting -------------------------------------------------------------------------------------------------
    def fit(self, x: sparse.csr_matrix, obs: Observations, progress: Progress | None = None) -> QualityModel:
        """``x``: [len(obs.prompts), V] features of every prompt (rows no observation uses cost nothing)."""
        self.models_ = list(obs.models)
        self.sources_ = list(obs.sources)
        m, s, d, k = len(self.models_), len(self.sources_), x.shape[1], self.k
        used = np.unique(obs.prompt)
        xs = x[used].tocsr()
        row = np.searchsorted(used, obs.prompt)
        floor = np.array([self.floors.get(src, 0.0) for src in self.sources_])[obs.source]
        y = obs.y.astype(np.float64)
        n = len(y)
        rng = np.random.default_rng(self.seed)
        w0 = rng.normal(0, 0.1, (d, k))
        v0 = rng.normal(0, 0.1, (m, k))
        mean = np.zeros((m, s))
        count = np.zeros((m, s))
        np.add.at(mean, (obs.model, obs.source), y)
        np.add.at(count, (obs.model, obs.source), 1.0)
        fl = np.array([self.floors.get(src, 0.0) for src in self.sources_])[None, :]
        rate = np.clip((mean / np.maximum(count, 1) - fl) / (1 - fl), LOGIT_CLIP, 1 - LOGIT_CLIP)
        b0 = np.where(count > 0, np.log(rate / (1 - rate)), 0.0)  # start from each cell's own mean
        sizes = (d * k, m * k, m * s)

        def unpack(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            a, b = sizes[0], sizes[0] + sizes[1]
            return theta[:a].reshape(d, k), theta[a:b].reshape(m, k), theta[b:].reshape(m, s)

        # one-hot maps from observations to prompts and models: sparse products instead of np.add.at (10x faster)
        to_row = sparse.csr_matrix((np.ones(n), (np.arange(n), row)), shape=(n, xs.shape[0]))
        to_model = sparse.csr_matrix((np.ones(n), (np.arange(n), obs.model)), shape=(n, m))
        cell = obs.model * s + obs.source

        def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
            w, v, b = unpack(theta)
            h = np.asarray(xs @ w)  # [P, k]
            h_obs = h[row]
            v_obs = v[obs.model]
            z = b.ravel()[cell] + np.einsum("ik,ik->i", h_obs, v_obs)
            sig = _sigmoid(z)
            p = np.clip(floor + (1 - floor) * sig, 1e-7, 1 - 1e-7)
            nll = -(y * np.log(p) + (1 - y) * np.log(1 - p)).sum() / n
            dz = ((p - y) / (p * (1 - p))) * (1 - floor) * sig * (1 - sig) / n
            gb = np.bincount(cell, weights=dz, minlength=m * s).reshape(m, s)
            gv = to_model.T @ (dz[:, None] * h_obs)
            gw = xs.T @ (to_row.T @ (dz[:, None] * v_obs))
            reg = 0.5 * (self.l2_w * (w**2).sum() + self.l2_v * (v**2).sum() + self.l2_b * (b**2).sum())
            grad = np.concatenate([(gw + self.l2_w * w).ravel(), (gv + self.l2_v * v).ravel(),
                                   (gb + self.l2_b * b).ravel()])
            return float(nll + reg), grad

        calls = [0]

        def tick(_theta: np.ndarray) -> None:
            calls[0] += 1
            if progress and calls[0] % 25 == 0:
                progress(f"quality model: iteration {calls[0]}/{self.max_iter}")

        theta0 = np.concatenate([w0.ravel(), v0.ravel(), b0.ravel()])
        res = optimize.minimize(loss, theta0, jac=True, method="L-BFGS-B", callback=tick,
                                options={"maxiter": self.max_iter, "maxcor": 20})
        self.w_, self.v_, self.b_ = unpack(res.x)
        self.measured_ = count > 0
        self.counts_ = count
        self.loss_ = float(res.fun)
        self.iterations_ = int(res.nit)
        return self

    # -- prediction ----------------------------------------------------------------------------------------------
    def represent(self, x: sparse.csr_matrix) -> np.ndarray:
        """h(x): [N, k]."""
        return np.asarray(x @ self.w_)

    def predict(self, x: sparse.csr_matrix, model: str | int, source: str | int,
                b: np.ndarray | None = None, v: np.ndarray | None = None) -> np.ndarray:
        """q for every row of ``x``: P(good answer) of ``model`` under ``source``'s scorer."""
        j = model if isinstance(model, int) else self.models_.index(model)
        s = source if isinstance(source, int) else self.sources_.index(source)
        bb = self.b_ if b is None else b
        vv = self.v_ if v is None else v
        g = self.floors.get(self.sources_[s], 0.0)
        return g + (1 - g) * _sigmoid(bb[j, s] + self.represent(x) @ vv[j])


class HeadsBasis:
    """The shipped quality model: one logistic head per (model, source) on the TF-IDF features (soft labels for
    the judge's scores), then the stack of heads factorised by SVD, ``[w_1 ... w_H] = W C``: ``W`` (V x k) is the
    request representation every head shares, ``C`` gives each head its k-vector. At full rank the predictions are
    the heads' own; a new model is a new k-vector in the same space (:func:`fit_model_vector`).

    Same interface as :class:`QualityModel`, but ``v_`` is per (model, source): ``v_[j, s]`` (zeros where the model
    has no outcomes on that source)."""

    def __init__(self, c: Mapping[str, float] | None = None, default_c: float = 0.3, energy: float = 0.999,
                 seed: int = 0) -> None:
        self.c = dict(c or {})
        self.default_c = default_c
        self.energy = energy
        self.seed = seed

    def fit(self, x: sparse.csr_matrix, obs: Observations, progress: Progress | None = None) -> HeadsBasis:
        from sklearn.linear_model import LogisticRegression

        self.models_ = list(obs.models)
        self.sources_ = list(obs.sources)
        m, s, d = len(self.models_), len(self.sources_), x.shape[1]
        self.counts_ = np.zeros((m, s))
        np.add.at(self.counts_, (obs.model, obs.source), 1.0)
        self.measured_ = self.counts_ > 0
        heads, bias, cells = [], [], []
        for j, src in zip(*np.nonzero(self.measured_), strict=True):
            rows = (obs.model == j) & (obs.source == src)
            xs, y = x[obs.prompt[rows]], obs.y[rows]
            if progress:
                progress(f"quality heads: {self.models_[j]} on {self.sources_[src]}")
            # soft labels as weights: each outcome counts once, split between "good" (y) and "not good" (1 - y);
            # a right/wrong outcome keeps one row
            soft = (y > 0) & (y < 1)
            xx = sparse.vstack([xs, xs[soft]]).tocsr()
            yy = np.r_[np.where(soft, 1.0, y), np.zeros(int(soft.sum()))]
            ww = np.r_[np.where(soft, y, 1.0), 1 - y[soft]]
            if ww[yy == 1].sum() <= 0 or ww[yy == 0].sum() <= 0:
                heads.append(np.zeros(d))
                bias.append(-6.0 if ww[yy == 1].sum() <= 0 else 6.0)
            else:
                lr = LogisticRegression(C=self.c.get(self.sources_[src], self.default_c), max_iter=3000,
                                        random_state=self.seed).fit(xx, yy, sample_weight=ww)
                heads.append(lr.coef_[0])
                bias.append(float(lr.intercept_[0]))
            cells.append((j, src))
        h = np.stack(heads, axis=1)  # [V, H]
        u, sv, vt = np.linalg.svd(h, full_matrices=False)
        share = np.cumsum(sv**2) / max(float((sv**2).sum()), 1e-12)
        k = int(np.searchsorted(share, self.energy) + 1)
        self.k = k
        self.w_ = u[:, :k] * sv[:k]
        self.v_ = np.zeros((m, s, k))
        self.b_ = np.zeros((m, s))
        for col, (j, src) in enumerate(cells):
            self.v_[j, src] = vt[:k, col]
            self.b_[j, src] = bias[col]
        self.explained_ = float(share[k - 1])
        return self

    def represent(self, x: sparse.csr_matrix) -> np.ndarray:
        return np.asarray(x @ self.w_)

    def predict(self, x: sparse.csr_matrix, model: str | int, source: str | int) -> np.ndarray:
        j = model if isinstance(model, int) else self.models_.index(model)
        s = source if isinstance(source, int) else self.sources_.index(source)
        return _sigmoid(self.b_[j, s] + self.represent(x) @ self.v_[j, s])


# -- priors for cells without outcomes ---------------------------------------------------------------------------
def card_features(card: ModelCard | None, benchmark: str | None = None) -> np.ndarray:
    """The card's prior features (:func:`router.classify.quality.card_prior_features`); flags only for None."""
    if card is None:
        return np.array([1.0, 0.0, 1.0, 0.0, 1.0])
    return card_prior_features(card, benchmark)


MIN_MODELS_FOR_PRIOR = 5
"""A source needs this many measured models before a regression on card features is fitted for it."""


@dataclass
class SourcePrior:
    """Logit level of an unmeasured model on one source from its card: ``beta . features + family offset``."""

    beta: np.ndarray
    family: dict[str, float]
    n_models: int


def fit_source_prior(levels: np.ndarray, features: np.ndarray, families: Sequence[str | None],
                     ridge: float = 1.0, family_ridge: float = 2.0) -> SourcePrior:
    """Ridge regression of the measured models' logit levels on card features, then a shrunk family offset. The
    size slope is kept >= 0: in AlpacaEval newer small models beat older large ones, and a prior must not tell
    a user that a smaller model of the same kind is better."""
    f = features
    a = f.T @ f + ridge * np.diag([0.0] + [1.0] * (f.shape[1] - 1))
    beta = np.linalg.solve(a, f.T @ levels)
    if beta[1] < 0:  # refit without the size slope
        keep = [i for i in range(f.shape[1]) if i != 1]
        sub = np.linalg.solve(a[np.ix_(keep, keep)], f[:, keep].T @ levels)
        beta = np.zeros(f.shape[1])
        beta[keep] = sub
    resid = levels - f @ beta
    family: dict[str, float] = {}
    for fam in {x for x in families if x}:
        idx = [i for i, x in enumerate(families) if x == fam]
        family[fam] = float(resid[idx].sum() / (len(idx) + family_ridge))
    return SourcePrior(beta, family, len(levels))


def level(p: float) -> float:
    """A probability as a logit, clipped to [2 %, 98 %]."""
    p = min(1 - LOGIT_CLIP, max(LOGIT_CLIP, float(p)))
    return math.log(p / (1 - p))


def fit_model_vector(h: np.ndarray, y: np.ndarray, *, prior_b: float, prior_v: np.ndarray, floor: float = 0.0,
                     strength_b: float = 1.0, strength_v: float = 30.0,
                     weights: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """One model's intercept and vector from anchor outcomes, everything else fixed: ``h`` [n, k] the anchor
    requests' representations, ``y`` [n] their scores on the source's scale, ``weights`` [n] how many outcomes each
    row stands for (default one each: a row scored by several requests holds their mean score). MAP with Gaussian
    priors centred on ``prior_b`` / ``prior_v`` (``strength`` = prior precision in units of one outcome), so a
    handful of anchors moves the intercept and leaves the vector near its prior."""
    w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=np.float64)

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        b, v = theta[0], theta[1:]
        sig = _sigmoid(b + h @ v)
        p = np.clip(floor + (1 - floor) * sig, 1e-7, 1 - 1e-7)
        nll = -(w * (y * np.log(p) + (1 - y) * np.log(1 - p))).sum()
        dz = w * ((p - y) / (p * (1 - p))) * (1 - floor) * sig * (1 - sig)
        gb = dz.sum() + strength_b * (b - prior_b)
        gv = h.T @ dz + strength_v * (v - prior_v)
        reg = 0.5 * strength_b * (b - prior_b) ** 2 + 0.5 * strength_v * ((v - prior_v) ** 2).sum()
        return float(nll + reg), np.concatenate([[gb], gv])

    res = optimize.minimize(loss, np.concatenate([[prior_b], prior_v]), jac=True, method="L-BFGS-B")
    return float(res.x[0]), res.x[1:].copy()


