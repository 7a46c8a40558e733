"""Fit a policy's decision thresholds on held-out outcomes so the achieved quality meets its target with a
stated confidence (risk control in the Learn-then-Test style, Angelopoulos et al. 2021).

The family of rules: a smaller model ``m`` answers when ``P(correct)[m] - target ≥ τ``, else the largest model
does (its offset is fixed at -1, always adequate). ``τ = 1`` is "always the largest"; lowering ``τ`` sends more
requests to smaller models. For each ``τ`` on a grid, walking down from 1, we test

    H0(τ): E[Z] ≤ 0, with Z = correct(chosen) - a            (absolute target a)
                         or Z = correct(chosen) - r·correct(largest)   (relative target r)

with a one-sided concentration bound at level δ (Hoeffding, or empirical Bernstein, Maurer & Pontil 2009), and
stop at the first ``τ`` whose null cannot be rejected (fixed-sequence testing: the family-wise error stays ≤ δ
without a multiplicity correction). The last rejected ``τ`` is returned: with probability ≥ 1 - δ over the
calibration sample, achieved quality on exchangeable new requests meets the target. Subjects are split so the
report states target vs achieved on subjects the fit never saw (a harder test than exchangeability).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..cards import ModelCard
from ..classify.base import RequestClassifier
from ..classify.features import vectorizer, window
from ..errors import ConfigError
from ..types import TIER_ORDER
from .batch import decide_batch
from .steps import largest

GRID = np.round(np.arange(1.0, -1.0 - 1e-9, -0.005), 3)


@dataclass
class CalibrationData:
    """Rows of held-out outcomes: predicted P(correct) and observed correctness per model, grouped by subject."""

    models: list[str]
    """Cheapest first (by tier, then joules on these rows); the last is the "largest" (always adequate in the
    fit; for a relative target, :meth:`for_target` puts the engine's :attr:`largest` there)."""
    p: np.ndarray
    """[N, M] predicted P(correct) (out-of-fold or from the shipped classifier)."""
    correct: np.ndarray
    """[N, M] observed correctness (0/1 or a score in [0, 1])."""
    energy: np.ndarray
    """[N, M] estimated joules per request."""
    groups: np.ndarray
    """[N] subject (or task) of each row, for the held-out split; the request where there is one task only."""
    scores: str = ""
    grouped_by: str = "task"
    tasks: tuple[str, ...] = ()
    """The tasks the rows cover: offsets are per model, so a fit on one task still routes every task."""
    largest: str = ""
    """The policy engine's largest of ``models`` (:func:`~router.policy.steps.largest`: by the cards, not these
    rows' joules): what a ``relative_to_largest`` target is measured against (see :meth:`for_target`)."""

    def take(self, mask: np.ndarray) -> CalibrationData:
        return CalibrationData(self.models, self.p[mask], self.correct[mask], self.energy[mask], self.groups[mask],
                               self.scores, self.grouped_by, self.tasks, self.largest)

    def for_target(self, target_kind: str) -> CalibrationData:
        """The rows to fit ``target_kind`` on: for a relative target, with the engine's largest model last (the
        reference of ``Z`` and the always-adequate model), so the fit measures against the model the engine
        does; otherwise as ordered (the last is the dearest of the highest tier)."""
        if target_kind != "relative" or not self.largest or self.models[-1] == self.largest:
            return self
        at = self.models.index(self.largest)
        order = [j for j in range(len(self.models)) if j != at] + [at]
        return CalibrationData([self.models[j] for j in order], self.p[:, order], self.correct[:, order],
                               self.energy[:, order], self.groups, self.scores, self.grouped_by, self.tasks,
                               self.largest)


@dataclass
class Fit:
    tau: float
    feasible: bool
    n: int
    target_kind: str
    target: float
    confidence: float
    bound: str
    achieved: float
    """Accuracy (absolute) or accuracy / largest's accuracy (relative) on the calibration rows at ``tau``."""
    lower_bound: float
    """The concentration bound's lower confidence limit on E[Z] at ``tau`` (must be > 0)."""
    tested: int
    path: list[tuple[float, float, float]] = field(default_factory=list)
    """(tau, mean Z, lower bound) for every tested tau, for reports."""

    def offsets(self, models: Sequence[str]) -> dict[str, float]:
        return {m: (-1.0 if i == len(models) - 1 else float(self.tau)) for i, m in enumerate(models)}


def choose(data: CalibrationData, target_kind: str, target: float, tau: float) -> np.ndarray:
    """The engine's own vectorised rule (``decide_batch``) with offset ``tau`` on the smaller models."""
    m = len(data.models)
    offsets = np.full(m, tau)
    offsets[-1] = -1.0
    reference = np.argmax(data.p, axis=1) if target_kind == "relative_best" else m - 1
    return decide_batch(data.p, data.energy, target, relative=target_kind != "absolute", offsets=offsets,
                        reference=reference)


def reference_column(data: CalibrationData, target_kind: str) -> int:
    """What a relative target is measured against: the largest model (last column), or for ``relative_best``
    the best single model on these rows."""
    return int(np.argmax(data.correct.mean(axis=0))) if target_kind == "relative_best" else len(data.models) - 1


def z_values(data: CalibrationData, chosen: np.ndarray, target_kind: str, target: float) -> tuple[np.ndarray, float]:
    """Per-row Z (E[Z] ≥ 0 means the target is met) and the width of its range."""
    got = data.correct[np.arange(len(chosen)), chosen]
    if target_kind == "absolute":
        return got - target, 1.0
    return got - target * data.correct[:, reference_column(data, target_kind)], 1.0 + target


def lower_confidence(z: np.ndarray, width: float, delta: float, bound: str) -> float:
    """One-sided (1 - delta) lower confidence limit on E[Z]."""
    n = len(z)
    if n < 2:
        return -math.inf
    mean = float(z.mean())
    if bound == "hoeffding":
        return mean - width * math.sqrt(math.log(1 / delta) / (2 * n))
    if bound == "bernstein":  # Maurer & Pontil (2009), Theorem 4, scaled to a range of `width`
        var = float(z.var(ddof=1))
        log_term = math.log(2 / delta)
        return mean - math.sqrt(2 * var * log_term / n) - 7 * width * log_term / (3 * (n - 1))
    raise ValueError(f"unknown bound {bound!r}: use hoeffding or bernstein")


def fit(data: CalibrationData, target_kind: str, target: float, *, confidence: float = 0.9,
        bound: str = "hoeffding") -> Fit:
    """Learn-then-Test with fixed-sequence testing down the grid of ``tau``."""
    delta = 1 - confidence
    best: tuple[float, float, float] | None = None
    path = []
    for tau in GRID:
        chosen = choose(data, target_kind, target, float(tau))
        z, width = z_values(data, chosen, target_kind, target)
        lcb = lower_confidence(z, width, delta, bound)
        path.append((float(tau), float(z.mean()), lcb))
        if lcb <= 0:
            break
        best = (float(tau), float(z.mean()), lcb)
    feasible = best is not None
    tau = best[0] if best is not None else 1.0
    chosen = choose(data, target_kind, target, tau)
    return Fit(
        tau=tau, feasible=feasible, n=len(data.p), target_kind=target_kind, target=target, confidence=confidence,
        bound=bound, achieved=quality(data, chosen, target_kind), lower_bound=best[2] if best else path[0][2],
        tested=len(path), path=path,
    )


def quality(data: CalibrationData, chosen: np.ndarray, target_kind: str) -> float:
    """Accuracy, or accuracy relative to always-largest, of a routing."""
    acc = float(data.correct[np.arange(len(chosen)), chosen].mean())
    if target_kind == "absolute":
        return acc
    large = float(data.correct[:, reference_column(data, target_kind)].mean())
    return acc / large if large else float("nan")


def evaluate(data: CalibrationData, chosen: np.ndarray) -> dict[str, float]:
    """Accuracy, quality vs always-largest, energy and energy vs always-largest of a routing."""
    rows = np.arange(len(chosen))
    acc = float(data.correct[rows, chosen].mean())
    large_acc = float(data.correct[:, -1].mean())
    e = float(data.energy[rows, chosen].sum())
    e_large = float(data.energy[:, -1].sum())
    return {
        "n": len(chosen),
        "accuracy": acc,
        "quality_vs_large": acc / large_acc if large_acc else float("nan"),
        "energy_j_per_request": e / len(chosen),
        "energy_vs_large": e / e_large if e_large else float("nan"),
        "large_share": float((chosen == len(data.models) - 1).mean()),
    }


def split_groups(groups: np.ndarray, held_out_share: float, seed: int) -> tuple[np.ndarray, list[str]]:
    """A seeded subject split: mask of calibration rows, and the held-out subjects."""
    names = sorted(set(groups.tolist()))
    rng = np.random.default_rng(seed)
    rng.shuffle(names)
    k = max(1, round(len(names) * held_out_share)) if held_out_share > 0 else 0
    held = sorted(names[:k])
    return ~np.isin(groups, held), held


# --- data -------------------------------------------------------------------------------------------------------
@dataclass
class OutcomeRows:
    prompts: list[str]
    groups: np.ndarray
    """[N] what is held out together: the task, or the request where the source has one task only."""
    models: list[str]
    correct: np.ndarray
    energy: np.ndarray
    """[N, M] joules per call: the file's measured ``energy_j`` where it has one, else the card's estimate."""
    grouped_by: str = "task"
    """``task``, or ``request`` (the fallback for a source with a single task: whole tasks cannot be held out)."""
    tasks: tuple[str, ...] = ()


def read_outcomes(path: str | Path, cards: Mapping[str, ModelCard],
                  models: Sequence[str] | None = None) -> OutcomeRows:
    """RouteLLM CSVs (a folder or one file, as ``router data import-routellm`` converts them) or an outcomes JSONL
    (docs/simulation.md), read and checked by the reader ``router simulate`` uses. Rows are grouped by task; a
    source with one task only is grouped by request. Only ``models`` when given (those the file has); rows lacking
    an outcome for any of the kept models are dropped."""
    from ..simulate.importers import routellm_lines
    from ..simulate.outcomes import ModelNames, load_outcomes, parse_outcomes_lines

    path = Path(path)
    if path.is_dir() or path.suffix.lower() == ".csv":
        table = parse_outcomes_lines(routellm_lines(path, cards), cards, name=str(path))
    else:
        table = load_outcomes(path, cards)
    have = ~np.isnan(table.score)
    keep = np.ones(table.n, dtype=bool)
    cols = list(range(len(table.models)))
    if models is not None:
        names = ModelNames(cards)
        wanted = {names.resolve(m) or m for m in models}
        cols = [j for j in cols if table.models[j] in wanted]
        keep = have[:, cols].all(axis=1)
    common = [j for j in cols if have[keep, j].all()]
    if len(common) < 2 or not keep.any():
        raise ConfigError(f"{path}: calibration needs outcomes of at least two models on the same requests")
    rows = np.flatnonzero(keep)
    tasks = [table.task_names[k] for k in table.tasks[rows].tolist()]
    by_request = len(set(tasks)) < 2
    return OutcomeRows(
        prompts=[table.prompts[g] for g in table.group[rows].tolist()],
        groups=np.array([table.ids[i] for i in rows] if by_request else tasks),
        models=[table.models[j] for j in common],
        # numpy's stubs for ix_ take index arrays only; it takes a list of ints as well
        correct=table.score[np.ix_(rows, common)].astype(float),  # type: ignore[arg-type]
        energy=table.energy_j[np.ix_(rows, common)],  # type: ignore[arg-type]
        grouped_by="request" if by_request else "task",
        tasks=tuple(sorted(set(tasks))),
    )


def oof_scores(prompts: list[str], groups: np.ndarray, correct: np.ndarray, folds: int = 5, c: float = 0.3,
               seed: int = 0) -> np.ndarray:
    """Out-of-fold P(correct) per model: the shipped classifier's recipe (the TF-IDF word 1-2 grams of
    ``router.classify.features`` + logistic regression, as ``router.training.classifier`` trains it) refitted
    with whole subjects held out, so every row's score comes from a model that never saw its subject: what the
    shipped classifier gives on new traffic. The vocabulary here comes from the outcomes' own prompts only (the
    shipped graph also adds the request set's phrasing words, for task detection; on MMLU both give APGR 0.58)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold

    texts = [window(t)[0] for t in prompts]
    out = np.zeros(correct.shape)
    k = min(folds, len(set(groups.tolist())))
    for tr, te in GroupKFold(n_splits=k).split(texts, groups=groups):
        vec = vectorizer()
        try:
            x_tr = vec.fit_transform([texts[i] for i in tr])
        except ValueError:  # no word in two of the fold's prompts (a handful of requests): nothing to learn from
            out[te] = (correct[tr] >= 0.5).mean(axis=0)  # each model's rate on the fold's training rows
            continue
        x_te = vec.transform([texts[i] for i in te])
        for j in range(correct.shape[1]):
            y = (correct[tr, j] >= 0.5).astype(int)
            if y.min() == y.max():
                out[te, j] = y[0]
                continue
            lr = LogisticRegression(C=c, max_iter=3000, random_state=seed).fit(x_tr, y)
            out[te, j] = lr.predict_proba(x_te)[:, 1]
    return out


def classifier_scores(prompts: list[str], models: list[str], classifier: RequestClassifier) -> np.ndarray:
    """P(correct) from a classifier (the shipped one): right for traffic it was not trained on."""
    out = np.zeros((len(prompts), len(models)))
    for i, cl in enumerate(classifier.classify_batch(prompts)):
        out[i] = [cl.p_correct.get(m, np.nan) for m in models]
    if np.isnan(out).any():
        missing = [m for j, m in enumerate(models) if np.isnan(out[:, j]).any()]
        raise ConfigError(f"the classifier gives no P(correct) for {missing}; use --scores oof")
    return out


def build_data(
    rows: OutcomeRows, cards: Mapping[str, ModelCard], scores: np.ndarray, scores_name: str
) -> CalibrationData:
    """Order models cheapest first (by tier, then joules on these prompts)."""
    order = sorted(range(len(rows.models)),
                   key=lambda j: (TIER_ORDER.get(cards[rows.models[j]].tier, 1), float(rows.energy[:, j].mean())))
    models = [rows.models[j] for j in order]
    return CalibrationData(models, scores[:, order], rows.correct[:, order], rows.energy[:, order], rows.groups,
                           scores_name, rows.grouped_by, rows.tasks, largest(cards[m] for m in models).name)
