"""Fit one new model into the shipped classifier from a few anchor requests, without retraining anything else.

What ``router data measure MODEL --anchors N`` calls once it has the model's scored answers: the anchor prompts go
through the shipped graph for their representation ``h``; the model's row starts from its card's prior (as
:meth:`~router.classify.onnx_classifier.OnnxRequestClassifier.add_card_priors` gives it) and its intercept and
vector on the measured task are fitted to the scores (:func:`router.training.quality.fit_model_vector`, MAP with
the prior as the centre); every other task keeps the prior. The row is added to the live classifier and, with
``save``, to ``models/classifier/added_models.json``, which the classifier loads after its trained models.

``start="current"`` refits a model the classifier already has a row for (trained, or fitted before) from that row
instead of its card: the measured task's intercept and vector move towards the new scores, every other task keeps
what it had. ``router train feedback`` fits the models that answered scored traffic this way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from ..cards import ModelCard
from ..classify.onnx_classifier import OnnxRequestClassifier
from ..classify.quality import save_added
from .quality import fit_model_vector


def fit_anchors(classifier: OnnxRequestClassifier, card: ModelCard, prompts: Sequence[str],
                scores: Sequence[float], *, task: str = "chat", save: bool = False,
                strength_b: float = 1.0, strength_v: float = 30.0,
                start: Literal["prior", "current"] = "prior", origin: str | None = None,
                weights: Sequence[float] | None = None) -> dict[str, Any]:
    """The model's row fitted on ``prompts`` / ``scores`` (scores in [0, 1] on ``task``'s source scale: the judge's
    preference for chat, right/wrong for multiple choice; ``weights``: how many scored requests each prompt's
    score is the mean of, one each by default), added to ``classifier`` (and saved when asked)."""
    if len(prompts) != len(scores) or not prompts:
        raise ValueError("give one score in [0, 1] per anchor prompt (at least one)")
    y = np.asarray(scores, dtype=np.float64)
    if ((y < 0) | (y > 1)).any():
        raise ValueError("anchor scores must be in [0, 1]")
    if task not in classifier.tasks:
        raise ValueError(f"unknown task {task!r}; the classifier's tasks are {classifier.tasks}")
    bounded = [classifier._bound(p)[0] for p in prompts]
    _, h = classifier.raw(bounded)
    current = start == "current" and card.name in classifier.quality.names
    row = classifier.quality.row(card.name) if current else classifier.quality.prior_row(card)
    prior_b = float(row["intercepts"][task])
    prior_v = np.asarray(row.get("vectors", {}).get(task, np.zeros(classifier.quality.k)), dtype=np.float64)
    b, v = fit_model_vector(np.asarray(h, dtype=np.float64), y, prior_b=prior_b, prior_v=prior_v,
                            strength_b=strength_b, strength_v=strength_v,
                            weights=None if weights is None else np.asarray(weights, dtype=np.float64))
    row["intercepts"][task] = round(b, 4)
    row.setdefault("vectors", {})[task] = [round(float(x), 6) for x in v]
    row["from"][task] = origin or f"anchors ({len(prompts)})"
    if card.tier == "specialist" and not current:
        row["fixed"] = {t: 0.0 for t in classifier.tasks if not card.serves(t)}
    classifier.quality.add({card.name: row}, source="anchors")
    if save:
        save_added(classifier.folder, {card.name: row})
    return row
