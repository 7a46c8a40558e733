"""``router data measure MODEL --anchors N``: call a model through its backend on a fixed anchor set, score the
answers, and fit that model's row of the quality model from them without retraining anything else.

Steps: the first N anchors of the task (``data/anchors/``, :mod:`router.training.anchor_sets`) are sent to the
model, one at a time, each call metered and recorded in the ledger like any call (reason ``anchor measurement``,
task ``anchors``, request id ``anchors-<model>-<anchor id>``); each answer is scored by reference match where the
anchor has a label (sentiment), else by a judge model from the cards against the anchor's reference answer (chat:
:func:`router.judge.reference_prompt`, its calls recorded too); then :func:`router.training.anchors.fit_anchors`
fits the model's intercept and vector on that task (centred on the row the classifier has for it: its card's prior
for a new model, what it was trained on otherwise; the other tasks keep theirs) and saves the row to
``<models>/classifier/added_models.json``, where the classifier (the live router's and ``router simulate``'s) reads
added models. A judge that gives no score for an answer leaves that anchor out (counted).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..classify.onnx_classifier import OnnxRequestClassifier
from ..judge import Router, metered_call, parse_score, reference_prompt
from ..types import ChatMessage
from .anchor_sets import load_anchors
from .local_outcomes import parse_sentiment


@dataclass
class MeasureReport:
    model: str
    task: str
    judge: str | None
    scores: list[float] = field(default_factory=list)
    unscored: int = 0
    judge_cut: int = 0
    """Unscored answers whose judge verdict was cut at its token limit before a score."""
    joules: float = 0.0
    """The model's and the judge's calls together, as metered."""
    before: float = float("nan")
    after: float = float("nan")
    row: dict[str, Any] = field(default_factory=dict)


def measure_model(router: Router, classifier: OnnxRequestClassifier, model: str, *, task: str = "chat",
                  anchors: int = 20, judge: str | None = None, max_tokens: int = 256,
                  judge_max_tokens: int = 8, save: bool = True,
                  progress: Callable[[int, int], None] | None = None) -> MeasureReport:
    """Measure ``model`` on ``anchors`` anchors of ``task`` and fit its row (see the module docstring).
    ``judge_max_tokens``: the judge's verdict length limit (``judge.score_max_tokens``)."""
    name = router.resolve_model(model, routed=False)
    items = load_anchors(task, anchors)
    judge_name = router.resolve_model(judge, routed=False) if judge and task == "chat" else None
    if task == "chat" and judge_name is None:
        raise ValueError("chat anchors are scored by a judge model: pass --judge MODEL (or set judge.model in the "
                         "config)")
    report = MeasureReport(name, task, judge_name)
    for loaded in {name, judge_name} - {None}:  # loading is not the model's energy: load before the first anchor
        router.backend(loaded).warm_up()  # type: ignore[arg-type]
    prompts: list[str] = []
    for i, item in enumerate(items, 1):
        rid = f"anchors-{name}-{item['id']}"
        gen = metered_call(router, name, [ChatMessage(role="user", content=item["prompt"])], request_id=rid,
                           reason=f"anchor measurement: {task} anchor {i}/{len(items)} for fitting {name}",
                           max_tokens=max_tokens, task="anchors")
        report.joules += float(gen.extra.get("energy_j", 0.0))  # type: ignore[arg-type]
        score: float | None
        if "label" in item:
            score = 1.0 if parse_sentiment(gen.text) == item["label"] else 0.0
        else:
            verdict = metered_call(router, judge_name or "", reference_prompt(item["prompt"], gen.text,
                                                                               item["reference"]),
                                   request_id=f"{rid}:judge", max_tokens=judge_max_tokens, task="anchors",
                                   reason=f"judge call: scoring {name}'s answer to {task} anchor {i} against the "
                                          "reference answer")
            report.joules += float(verdict.extra.get("energy_j", 0.0))  # type: ignore[arg-type]
            score = parse_score(verdict.text)
            report.judge_cut += score is None and verdict.finish_reason == "length"
        if score is None:
            report.unscored += 1
        else:
            prompts.append(item["prompt"])
            report.scores.append(score)
        if progress is not None:
            progress(i, len(items))
    if not report.scores:
        cut = (f"; its answers were cut at {judge_max_tokens} tokens: a judge that reasons before its score line "
               "needs --judge-max-tokens 256 or more" if judge_name and report.judge_cut else "")
        raise ValueError(f"no anchor answer of {name} could be scored (the judge gave no score for any{cut})")
    from .anchors import fit_anchors
    from .feedback_fit import mean_p

    card = router.cards[name]
    if name not in classifier.quality.names:
        classifier.add_card_priors({name: card})
    report.before = mean_p(classifier, prompts, name, task)
    report.row = fit_anchors(classifier, card, prompts, report.scores, task=task, save=save, start="current")
    report.after = mean_p(classifier, prompts, name, task)
    return report
