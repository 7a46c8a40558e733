"""``router train feedback FILE``: refit the models that answered scored traffic, from an outcomes file that
``router data from-ledger`` wrote, without retraining anything else.

Why not ``router train classifier``: the full training reads the project's fixed outcome sources, each on its own
scale, and serves each task on one of them (chat on AlpacaEval's judge preferences); it runs for minutes and would
need a decision about where a new, unknown scale belongs. Feedback informs one thing: how good the models that
answered were on the requests they answered. So for each model and task with at least ``min_requests`` scored
requests, that model's intercept and vector on that task are refitted to the scores
(:func:`router.training.anchors.fit_anchors` with ``start="current"``: a MAP fit centred on the row the classifier
has now, every other model and task untouched), and saved to ``models/classifier/added_models.json``, which the
classifier (live router and ``router simulate``) loads after its trained models. The scores are read on the task's
served scale: for chat, how likely the answer is as good as a strong reference answer (what the judge's
``against: largest`` mode asks; ask people the same question).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cards import ModelCard
from ..classify.onnx_classifier import OnnxRequestClassifier
from ..simulate.outcomes import ModelNames
from ..tools import TOOLS_TASK
from .anchors import fit_anchors


@dataclass
class FitResult:
    model: str
    task: str
    requests: int
    mean_score: float
    before: float
    """Mean predicted P(good answer) of the model on these requests before the fit."""
    after: float


def read_scored(path: Path, cards: Mapping[str, ModelCard], tasks: list[str]) -> dict[tuple[str, str], list[
        tuple[str, float, int]]]:
    """(card name, task) -> [(prompt, mean score, scored requests)] from an outcomes file (the task's part before
    ``/``; chat when the classifier has no such task, except ``tools``, kept apart: see :func:`fit_feedback`).
    ``router data from-ledger`` writes the requests that had the same prompt as one line, with their mean score and
    their number (``requests``; 1 when absent)."""
    names = ModelNames(cards)
    out: dict[tuple[str, str], list[tuple[str, float, int]]] = defaultdict(list)
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            task = str(row.get("task") or "chat").split("/")[0]
            task = task if task in tasks or task == TOOLS_TASK else "chat"
            for model, outcome in row["outcomes"].items():
                card = names.resolve(model)
                if card is None:
                    raise ValueError(f"model {model!r} has no card in the models folder")
                score = float(outcome["correct"])
                if not 0.0 <= score <= 1.0:
                    raise ValueError(f"score {score} of {model!r} is outside [0, 1]")
                requests = outcome.get("requests", 1)
                if isinstance(requests, bool) or not isinstance(requests, int) or requests < 1:
                    raise ValueError(f"requests {requests!r} of {model!r} is not a count of at least 1")
                out[(card, task)].append((row["prompt"], score, requests))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}:{n}: {exc}") from None
    return out


def fit_feedback(classifier: OnnxRequestClassifier, cards: Mapping[str, ModelCard], path: Path, *,
                 min_requests: int = 5, save: bool = True, strength_b: float = 1.0, strength_v: float = 30.0,
                 progress: Callable[[str], None] | None = None
                 ) -> tuple[list[FitResult], dict[str, int], dict[str, int]]:
    """Refit every (model, task) with enough scored requests; returns the fits, the groups skipped for too few
    requests and the groups of the ``tools`` task (each with how many requests they had).

    Requests with tools are the ``tools`` task by rule, and routed on each card's prior: the classifier is never
    asked about them, so no row of it informs their routing. Their scores (was the tool call right) are left out
    rather than read as chat's, which would move the model's chat routing on another question's answers."""
    groups = read_scored(path, cards, classifier.tasks)
    fits: list[FitResult] = []
    skipped: dict[str, int] = {}
    prior_routed: dict[str, int] = {}
    for (model, task), rows in sorted(groups.items()):
        requests = sum(n for _, _, n in rows)
        if task == TOOLS_TASK:
            prior_routed[f"{model} / {task}"] = requests
            continue
        if requests < min_requests:
            skipped[f"{model} / {task}"] = requests
            continue
        if progress is not None:
            progress(f"fitting {model} on {task} ({requests} scored requests)")
        prompts = [p for p, _, _ in rows]
        scores = [s for _, s, _ in rows]
        weights = [n for _, _, n in rows]
        before = mean_p(classifier, prompts, model, task, weights)
        fit_anchors(classifier, cards[model], prompts, scores, task=task, save=save, strength_b=strength_b,
                    strength_v=strength_v, start="current", origin=f"feedback ({requests})", weights=weights)
        fits.append(FitResult(model, task, requests, float(np.average(scores, weights=weights)), before,
                              mean_p(classifier, prompts, model, task, weights)))
    return fits, skipped, prior_routed


def mean_p(classifier: OnnxRequestClassifier, prompts: list[str], model: str, task: str,
           weights: list[int] | None = None) -> float:
    """The classifier's mean P(good answer) of ``model`` on ``task`` over ``prompts``, each counted ``weights``
    times (NaN for an unknown model)."""
    if model not in classifier.quality.names:
        return float("nan")
    _, h = classifier.raw([classifier._bound(p)[0] for p in prompts])
    return float(np.average([classifier.quality.q(np.asarray(x, dtype=np.float64), model, task) for x in h],
                            weights=weights))
