"""Shared by the quality benchmarks: the held-out split of AlpacaEval instructions, a classifier whose quality model
was refitted without the held-out requests, and the per-model TF-IDF ridge baseline."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from sklearn.linear_model import Ridge
from sklearn.model_selection import KFold

from router.cards import ModelCard
from router.classify.base import Classification, RequestClassifier
from router.classify.features import window
from router.classify.quality import QualityTable
from router.training.quality import Observations
from router.training.quality_train import Recipe, quality_metadata

ROOT = Path(__file__).resolve().parent.parent
ALPACA = ROOT / "data" / "alpaca_eval" / "outcomes.jsonl"
FUSECHAT = ("fusechat-llama-3.2-1b", "fusechat-llama-3.2-3b", "fusechat-qwen-2.5-7b", "fusechat-llama-3.1-8b",
            "fusechat-gemma-2-9b")
TEST_SHARE = 0.3


def is_test(instruction_id: str, share: float = TEST_SHARE) -> bool:
    """The held-out instructions: a fixed ~30 % by a hash of the id, so the split never depends on what else is in
    the file, and nothing is chosen on it."""
    return int(hashlib.sha256(instruction_id.encode()).hexdigest()[:8], 16) / 2**32 < share


def alpaca_lines() -> list[dict]:
    return [json.loads(x) for x in ALPACA.read_text(encoding="utf-8").splitlines() if x.strip()]


def write_subset(path: Path, lines: list[dict], models: tuple[str, ...]) -> Path:
    """An outcomes file with only ``models`` (every line must have all of them)."""
    with open(path, "w", encoding="utf-8") as out:
        for line in lines:
            outs = {m: line["outcomes"][m] for m in models if m in line["outcomes"]}
            if len(outs) == len(models):
                out.write(json.dumps({**line, "outcomes": outs}) + "\n")
    return path


def alpaca_prompt_rows(obs: Observations, prompts: set[str]) -> np.ndarray:
    """Observation rows that are AlpacaEval outcomes of the given prompt texts (bounded windows)."""
    src = obs.sources.index("alpaca_eval")
    wanted = np.array([window(p)[0] in prompts for p in obs.prompts])
    return (obs.source == src) & wanted[obs.prompt]


class HeldOutQualityClassifier(RequestClassifier):
    """Task probabilities from the shipped classifier; P(correct) from a quality model refitted without the
    benchmark's held-out requests (``recipe``), served by the same :class:`QualityTable` the classifier uses."""

    def __init__(self, base: RequestClassifier, recipe: Recipe, cards: dict[str, ModelCard]) -> None:
        self.base = base
        self.recipe = recipe
        self.table = QualityTable(quality_metadata(recipe, cards, {}), list(base.tasks))  # type: ignore[attr-defined]

    def classify(self, text: str) -> Classification:
        return self.classify_batch([text])[0]

    def classify_batch(self, texts: list[str]) -> list[Classification]:
        h = self.recipe.model.represent(self.recipe.vec.transform([window(t)[0] for t in texts]))
        out = []
        for c, hv in zip(self.base.classify_batch(texts), h, strict=True):
            probs = [c.task_probs[t] for t in self.table.tasks]
            out.append(replace(c, p_correct=self.table.p_correct(hv, probs), method=c.method + "+held-out-quality"))
        return out


class FixedScores(RequestClassifier):
    """P(correct) given per prompt (a baseline's predictions), task chat."""

    def __init__(self, scores: dict[str, dict[str, float]]) -> None:
        self.scores = scores

    def classify(self, text: str) -> Classification:
        return Classification("chat", {"chat": 1.0}, dict(self.scores.get(text, {})), chars=len(text))


def ridge_baseline(train: list[dict], test: list[dict], models: tuple[str, ...],
                   alphas: tuple[float, ...] = (1.0, 3.0, 10.0, 30.0)) -> tuple[dict[str, dict[str, float]], float]:
    """Per-model TF-IDF ridge regression of the judge's score (the issue's baseline), alpha by 4-fold CV on the
    training instructions only. Returns test predictions by prompt and the alpha."""
    from router.classify.features import vectorizer

    vec = vectorizer().fit([window(x["prompt"])[0] for x in train])
    x_tr = vec.transform([window(x["prompt"])[0] for x in train])
    y_tr = np.array([[x["outcomes"][m]["correct"] for m in models] for x in train])
    errors = {}
    for a in alphas:
        err = []
        for tr, te in KFold(4, shuffle=True, random_state=0).split(y_tr):
            pred = Ridge(alpha=a).fit(x_tr[tr], y_tr[tr]).predict(x_tr[te])
            err.append(float(((pred - y_tr[te]) ** 2).mean()))
        errors[a] = float(np.mean(err))
    alpha = min(errors, key=errors.__getitem__)
    pred = Ridge(alpha=alpha).fit(x_tr, y_tr).predict(vec.transform([window(x["prompt"])[0] for x in test]))
    by_prompt = {x["prompt"]: dict(zip(models, map(float, row), strict=True))
                 for x, row in zip(test, pred, strict=True)}
    return by_prompt, alpha
