"""Quality prediction for many models: a request representation learned from every outcome source together,
and one small vector per model (matrix factorisation with request features, as RouteLLM's ``mf`` router and
EmbedLLM; the per-source intercepts and the ability that links them are item-response style, as IRT-Router).

For request ``x`` (TF-IDF features ``phi(x)``), model ``j`` and outcome source ``s``::

    h(x)      = phi(x) W                      k numbers: what kind of request this is (shared by all models)
    z_j,s(x)  = b[j, s] + h(x) . v_j          one logit per model and source
    q_j,s(x)  = g_s + (1 - g_s) sigmoid(z)    g_s: the chance floor of the source (0.25 on 4-option MMLU)

**How the scales are put together.** Every outcome is a probability of a good answer *under its source's own
scorer*: MMLU right/wrong, the AlpacaEval judge's preference against GPT-4 Turbo (a soft label in [0, 1]), the
sentiment label match, checked chat answers, checked math answers. They are not one scale (47 % on short checked
chat questions is not 47 % against GPT-4 Turbo), so each (model, source) has its own intercept ``b[j, s]``, while
``W`` and ``v_j`` are shared: what makes a request hard for a model is learned from all sources at once, and the
loss is one cross-entropy over every outcome (soft labels for the judge's scores), each outcome counted once.

A model is served on a source it was never measured on through a common ability (:func:`link_scales`):
``b[j, s] ~ c_s + theta_j``, one difficulty per source and one ability per model (a Rasch-style common scale,
fitted on the cells that have data), with ``theta_j`` pulled toward a prior from the model card (log active
parameters, an undisclosed-size flag, and a public benchmark score when the card has one). Models in several
sources (Mixtral: MMLU and AlpacaEval) and the prior tie the scales together. A model with no data at all (a new
card) gets ``theta`` from the prior alone and the mean ``v``; :func:`fit_model_vector` then fits its own ``b`` and
``v`` on a few anchor requests with ``W`` and every other model fixed.

Fitting is full-batch L-BFGS with analytic gradients (deterministic for a seed); ``fit`` returns self.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import optimize, sparse

from ..cards import ModelCard
from ..classify.quality import PRIOR_FEATURES, card_prior_features

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


# -- scale linking and priors ------------------------------------------------------------------------------------
def card_features(card: ModelCard | None, benchmark: str | None = None) -> np.ndarray:
    """The card's prior features (:func:`router.classify.quality.card_prior_features`); zeros + flags for None."""
    if card is None:
        return np.array([1.0, 0.0, 1.0, 0.0, 1.0])
    return card_prior_features(card, benchmark)


@dataclass
class Linking:
    """``b[j, s] ~ c[s] + theta[j]`` with ``theta ~ beta . features``: fills the cells a model has no data on."""

    c: np.ndarray
    theta: np.ndarray
    beta: np.ndarray
    features: np.ndarray

    def prior_theta(self, features: np.ndarray) -> float:
        return float(features @ self.beta)


def link_scales(b: np.ndarray, measured: np.ndarray, features: np.ndarray, anchor: int = 0,
                prior_weight: float = 0.3, ridge: float = 1.0, exclude: Sequence[int] = ()) -> Linking:
    """Least squares over the measured cells ``b[j, s] = c_s + theta_j`` plus ``prior_weight * (theta_j - beta .
    f_j) = 0`` for every model, ``c[anchor] = 0`` fixing the origin; ``beta`` ridge-penalised. ``exclude``:
    models that take no part (a specialist's by-construction zeros)."""
    m, s = b.shape
    p = features.shape[1]
    rows, rhs = [], []
    n_unknown = s + m + p
    for j in range(m):
        if j in exclude:
            continue
        for src in range(s):
            if measured[j, src]:
                r = np.zeros(n_unknown)
                r[src] = 1.0
                r[s + j] = 1.0
                rows.append(r)
                rhs.append(b[j, src])
        r = np.zeros(n_unknown)
        r[s + j] = prior_weight
        r[s + m:] = -prior_weight * features[j]
        rows.append(r)
        rhs.append(0.0)
    r = np.zeros(n_unknown)
    r[anchor] = 10.0
    rows.append(r)
    rhs.append(0.0)
    for q in range(p):
        r = np.zeros(n_unknown)
        r[s + m + q] = math.sqrt(ridge) * prior_weight
        rows.append(r)
        rhs.append(0.0)
    sol = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0]
    return Linking(c=sol[:s], theta=sol[s:s + m], beta=sol[s + m:], features=features)


def filled_intercepts(model: QualityModel, link: Linking) -> np.ndarray:
    """``b`` where measured, ``c_s + theta_j`` elsewhere."""
    linked = link.c[None, :] + link.theta[:, None]
    return np.where(model.measured_, model.b_, linked)


def fit_model_vector(h: np.ndarray, y: np.ndarray, *, prior_b: float, prior_v: np.ndarray, floor: float = 0.0,
                     strength_b: float = 1.0, strength_v: float = 30.0) -> tuple[float, np.ndarray]:
    """One model's intercept and vector from anchor outcomes, everything else fixed: ``h`` [n, k] the anchor
    requests' representations, ``y`` [n] their scores on the source's scale. MAP with Gaussian priors centred on
    ``prior_b`` / ``prior_v`` (``strength`` = prior precision in units of one outcome), so a handful of anchors
    moves the intercept and leaves the vector near its prior."""
    n, k = h.shape

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        b, v = theta[0], theta[1:]
        sig = _sigmoid(b + h @ v)
        p = np.clip(floor + (1 - floor) * sig, 1e-7, 1 - 1e-7)
        nll = -(y * np.log(p) + (1 - y) * np.log(1 - p)).sum()
        dz = ((p - y) / (p * (1 - p))) * (1 - floor) * sig * (1 - sig)
        gb = dz.sum() + strength_b * (b - prior_b)
        gv = h.T @ dz + strength_v * (v - prior_v)
        reg = 0.5 * strength_b * (b - prior_b) ** 2 + 0.5 * strength_v * ((v - prior_v) ** 2).sum()
        return float(nll + reg), np.concatenate([[gb], gv])

    res = optimize.minimize(loss, np.concatenate([[prior_b], prior_v]), jac=True, method="L-BFGS-B")
    return float(res.x[0]), res.x[1:].copy()


def metadata(model: QualityModel, link: Linking, task_sources: Mapping[str, str],
             extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What the classifier serves: per model its vector and one intercept per task (through ``task_sources``),
    with where each intercept came from."""
    filled = filled_intercepts(model, link)
    out: dict[str, Any] = {
        "k": model.k,
        "sources": model.sources_,
        "task_sources": dict(task_sources),
        "floors": {t: model.floors.get(src, 0.0) for t, src in task_sources.items()},
        "source_difficulty": {src: round(float(c), 4) for src, c in zip(model.sources_, link.c, strict=True)},
        "prior_beta": [round(float(x), 4) for x in link.beta],
        "prior_features": list(PRIOR_FEATURES),
        "mean_vector": [round(float(x), 5) for x in model.v_.mean(axis=0)],
        "models": {},
    }
    for j, name in enumerate(model.models_):
        out["models"][name] = {
            "vector": [round(float(x), 5) for x in model.v_[j]],
            "intercepts": {t: round(float(filled[j, model.sources_.index(src)]), 4)
                           for t, src in task_sources.items()},
            "measured": {t: int(model.counts_[j, model.sources_.index(src)]) for t, src in task_sources.items()},
            "ability": round(float(link.theta[j]), 4),
        }
    if extra:
        out.update(extra)
    return out
