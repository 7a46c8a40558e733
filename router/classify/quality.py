"""Per-model P(correct) at run time: the request's representation ``h`` (from the ONNX graph) against one small
vector and one intercept per task for every model (trained by :mod:`router.training.quality`).

Why the model table lives here in numpy rather than inside the graph: a new model is a new row (its vector from
anchor requests, or a prior from its card) without re-exporting the graph, and ``[M, k] @ [k]`` for fifty models
costs a few microseconds.

    q[j, t] = sigmoid(b[j, t] + v[j, t] . h)      P(good answer) of model j on task t (on that task's source scale)
    p[j]    = sum_t P(task t) * q[j, t]                                    what the policy engine reads
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ADDED_FILE = "added_models.json"
"""Models fitted after training (anchor requests, ``fit_model_vector``), beside ``classifier.json``."""


class QualityTable:
    """The model rows; ``p_correct(h, task_probs)`` is the per-request work."""

    def __init__(self, meta: Mapping[str, Any], tasks: Sequence[str]) -> None:
        self.tasks = list(tasks)
        self.k = int(meta["k"])
        self.task_sources: dict[str, str] = dict(meta["task_sources"])
        self.priors: dict[str, dict[str, Any]] = {t: dict(v) for t, v in meta.get("priors", {}).items()}
        self.chance = {t: float(meta.get("chance", {}).get(t, 0.0)) for t in self.tasks}
        self.names: list[str] = []
        self.sources: dict[str, dict[str, str]] = {}
        t_n = len(self.tasks)
        self._v = np.zeros((0, t_n, self.k))
        self._b = np.zeros((0, t_n))
        self._fixed = np.zeros((0, t_n), dtype=bool)
        self._fixed_p = np.zeros((0, t_n))
        self._stacked: tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray] | None = None
        self.add(meta["models"], source="trained")

    # -- rows -----------------------------------------------------------------------------------------------------
    def add(self, rows: Mapping[str, Mapping[str, Any]], source: str) -> None:
        """Add or replace models. A row has ``intercepts`` {task: logit}, ``vectors`` {task: k numbers} (a task
        without one has no per-request term), optionally ``fixed`` {task: probability} (a specialist's answer to a
        task it does not do) and ``from`` {task: where the numbers come from}."""
        for name in rows:
            if name in self.names:
                keep = np.arange(len(self.names)) != self.names.index(name)
                self.names.remove(name)
                self._v, self._b, self._fixed, self._fixed_p = (
                    a[keep] for a in (self._v, self._b, self._fixed, self._fixed_p))
        v, b, fixed, fixed_p = [self._v], [self._b], [self._fixed], [self._fixed_p]
        for name, row in rows.items():
            vecs = np.zeros((1, len(self.tasks), self.k))
            for i, t in enumerate(self.tasks):
                vec = row.get("vectors", {}).get(t)
                if vec is not None:
                    vec = np.asarray(vec, dtype=np.float64)
                    if vec.shape != (self.k,):
                        raise ValueError(f"model {name!r}: {vec.size} numbers in a vector, the classifier has {self.k}")
                    vecs[0, i] = vec
            fx = row.get("fixed", {})
            v.append(vecs)
            b.append(np.array([[float(row["intercepts"].get(t, -20.0)) for t in self.tasks]]))
            fixed.append(np.array([[t in fx for t in self.tasks]]))
            fixed_p.append(np.array([[float(fx.get(t, 0.0)) for t in self.tasks]]))
            self.names.append(name)
            self.sources[name] = {t: row.get("from", {}).get(t, source) for t in self.tasks}
        self._v, self._b = np.concatenate(v), np.concatenate(b)
        self._fixed, self._fixed_p = np.concatenate(fixed), np.concatenate(fixed_p)
        self._stacked = None

    def keep(self, names: set[str]) -> None:
        """Drop every row but ``names``: a Router reads P(correct) for its own candidates only, so the per-request
        work grows with them, not with every model the classifier was trained on."""
        mask = np.array([n in names for n in self.names], dtype=bool)
        self.names = [n for n in self.names if n in names]
        self.sources = {n: self.sources[n] for n in self.names}
        self._v, self._b, self._fixed, self._fixed_p = (a[mask] for a in (self._v, self._b, self._fixed,
                                                                         self._fixed_p))
        self._stacked = None

    def row(self, name: str) -> dict[str, Any]:
        """A model's row as :meth:`add` takes it (what ``added_models.json`` holds), from the table as it is."""
        i = self.names.index(name)
        return {
            "intercepts": {t: round(float(self._b[i, j]), 4) for j, t in enumerate(self.tasks)},
            "vectors": {t: [round(float(x), 6) for x in self._v[i, j]] for j, t in enumerate(self.tasks)
                        if self._v[i, j].any()},
            "fixed": {t: float(self._fixed_p[i, j]) for j, t in enumerate(self.tasks) if self._fixed[i, j]},
            "from": dict(self.sources[name]),
        }

    def prior_row(self, card: Any) -> dict[str, Any]:
        """A model with no outcomes, from its card: ``prior_accuracy[task]`` where the card gives one, else the
        task's source prior (size, undisclosed flag, public benchmark, family), else the source's mean level; no
        per-request term until anchors fit one."""
        intercepts, origin = {}, {}
        for t in self.tasks:
            prior = self.priors.get(t, {"level": 0.0})
            if t in getattr(card, "prior_accuracy", {}):
                intercepts[t], origin[t] = logit(card.prior_accuracy[t]), "card prior_accuracy"
            elif "beta" in prior:
                intercepts[t], origin[t] = prior_logit(prior, card), "card prior"
            else:
                intercepts[t], origin[t] = float(prior["level"]), "source mean"
            if self.chance.get(t):
                intercepts[t] = max(intercepts[t], logit(self.chance[t]))
        return {"intercepts": intercepts, "from": origin}

    # -- per request ----------------------------------------------------------------------------------------------
    def logits(self, h: np.ndarray | None) -> np.ndarray:
        return self._b if h is None else self._b + self._v @ h

    def p_correct(self, h: np.ndarray | None, task_probs: Sequence[float]) -> dict[str, float]:
        if h is None:
            return self.p_correct_batch(None, [task_probs])[0]
        return self.p_correct_batch(h[None, :], [task_probs])[0]

    def p_correct_batch(self, hs: np.ndarray | None, probs: Sequence[Sequence[float]]) -> list[dict[str, float]]:
        """P(correct) of every model for a batch of requests (``hs`` [B, k], or ``None``: no per-request term;
        ``probs`` [B, tasks]): the task-weighted mean of each task's sigmoid, over the tasks a request may be
        (probability above 1e-6). All tasks in one [B, k] x [k, tasks * M] product: numpy's fixed cost per call,
        not the arithmetic, is what a request pays here (a lone request ~4x less than with a product per task)."""
        stacked = self._stacked or self._stack()
        v, b, fixed, fixed_p = stacked
        # Only the tasks a request may be, as [B, tasks, 1]. Thresholded on the Python floats of one flat list, which
        # numpy converts fastest: half the cost of np.where on the array of the nested lists for a lone request,
        # and less in batches too
        weights = np.array([w if w > 1e-6 else 0.0 for row in probs for w in row], dtype=np.float64)
        weights = weights.reshape(len(probs), len(self.tasks), 1)
        z = b if hs is None else hs @ v + b  # [B, tasks * M]
        q = (1.0 / (1.0 + np.exp(-z))).reshape(len(probs), len(self.tasks), len(self.names))
        if fixed is not None:
            np.copyto(q, fixed_p, where=fixed)  # ~half of what q[:, fixed] = ... costs (boolean indexing)
        p = (q * weights).sum(axis=1)  # four terms: added in task order, as a loop over tasks would
        names = self.names
        return [dict(zip(names, row, strict=True)) for row in p.tolist()]

    def _stack(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
        """The table laid out for :meth:`p_correct_batch`: vectors [k, tasks * M] and intercepts [tasks * M], task
        by task, and the fixed cells as a [tasks, M] mask with a [tasks, M] array of their values (0 elsewhere).
        Built whole, then published in one assignment: requests on other threads (the batch scheduler's, the
        proxy's classifier) may read it while the first request of a process builds it."""
        tasks = range(len(self.tasks))
        v = np.ascontiguousarray(np.concatenate([self._v[:, t] for t in tasks]).T)
        b = np.concatenate([self._b[:, t] for t in tasks])
        mask = self._fixed.T.copy()
        stacked = (v, b, mask if mask.any() else None, np.where(mask, self._fixed_p.T, 0.0))
        self._stacked = stacked
        return stacked

    def q(self, h: np.ndarray, name: str, task: str) -> float:
        """One model's P(good answer) on one task, for reports and tests."""
        i, t = self.names.index(name), self.tasks.index(task)
        if self._fixed[i, t]:
            return float(self._fixed_p[i, t])
        return float(1 / (1 + math.exp(-(self._b[i, t] + self._v[i, t] @ h))))


def prior_logit(prior: Mapping[str, Any], card: Any) -> float:
    """A source's card prior: ``beta . features`` plus the card family's offset (0 for a family not seen)."""
    beta = np.asarray(prior["beta"], dtype=np.float64)
    features = card_prior_features(card, prior.get("benchmark"))
    return float(features @ beta) + float(prior.get("family", {}).get(getattr(card, "family", None) or "", 0.0))


def logit(p: float) -> float:
    p = min(1 - _CLIP, max(_CLIP, float(p)))
    return math.log(p / (1 - p))


def read_added(folder: Path) -> dict[str, dict[str, Any]]:
    path = folder / ADDED_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def save_added(folder: Path, rows: Mapping[str, Mapping[str, Any]]) -> Path:
    """Merge ``rows`` into ``folder/added_models.json`` (what the classifier loads after its trained models)."""
    current = read_added(folder)
    current.update({k: dict(v) for k, v in rows.items()})
    path = folder / ADDED_FILE
    path.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


PRIOR_FEATURES = ("1", "log10 active parameters (B)", "size undisclosed", "public benchmark logit", "no benchmark")
_CLIP = 0.02


def card_prior_features(card: Any, benchmark: str | None = None) -> np.ndarray:
    """The card's numbers the prior uses (:data:`PRIOR_FEATURES`); a missing number is flagged, never invented:
    active parameters (or the size in ``parameters``: '135M', '8.03B'), and the public benchmark score named by
    the trained table (none by default)."""
    size = getattr(card, "active_parameters_b", None)
    if size is None and getattr(card, "parameters", None):
        size = parse_size(card.parameters)
    score = card.benchmarks.get(benchmark) if benchmark else None
    return np.array([
        1.0,
        math.log10(size) if size else 0.0,
        0.0 if size else 1.0,
        logit(score) if score is not None else 0.0,
        0.0 if score is not None else 1.0,
    ])


def parse_size(text: str) -> float | None:
    """'135M' -> 0.135, '22.6M (...)' -> 0.0226, '8.03B (dense)' -> 8.03 (billions); None when not a size."""
    import re

    found = re.match(r"\s*([0-9.]+)\s*([MB])\b", text)
    if not found:
        return None
    value = float(found.group(1))
    return value / 1000 if found.group(2) == "M" else value
