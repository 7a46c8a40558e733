"""Shared helpers for the simulation tests: model cards for the hosted MMLU models and a stand-in engine."""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from router.cards import ModelCard
from router.classify.base import Classification, RequestClassifier
from router.policy.decision import Decision
from router.policy.schema import Policy

ROOT = Path(__file__).resolve().parent.parent
HOSTED_CARDS = {
    "mixtral-8x7b-instruct.yaml": """name: mixtral-8x7b-instruct
tier: small
aliases: [mistralai/Mixtral-8x7B-Instruct-v0.1]
context_length: 32768
energy: {per_call_j: 0.5, per_input_token_j: 0.1, per_output_token_j: 1.0, source: estimate, citation: test}
""",
    "gpt-4-1106-preview.yaml": """name: gpt-4-1106-preview
tier: large
context_length: 128000
energy: {per_call_j: 5.0, per_input_token_j: 1.0, per_output_token_j: 10.0, source: estimate, citation: test}
""",
}


def make_cards_dir(tmp: Path) -> Path:
    """The shipped cards (with the sentiment specialist's files they name) plus two test cards for the RouteLLM
    models (test energy figures)."""
    folder = tmp / "cards"
    folder.mkdir()
    (folder / "sentiment").symlink_to(ROOT / "models" / "sentiment")
    for f in (ROOT / "models").glob("*.yaml"):
        shutil.copy(f, folder / f.name)
    for name, text in HOSTED_CARDS.items():
        (folder / name).write_text(text)
    return folder


class FixedClassifier(RequestClassifier):
    """P(correct) looked up by prompt (tests pick the numbers)."""

    def __init__(self, table: Mapping[str, Mapping[str, float]], task: str = "multiple_choice") -> None:
        self.table = table
        self.task = task

    def classify(self, text: str) -> Classification:
        return Classification(self.task, {self.task: 1.0}, dict(self.table.get(text, {})))


class CheapestAboveTarget:
    """A stand-in engine for tests of the simulator itself: cheapest card with P >= target, else the most likely."""

    name = "stub"
    policy = Policy(name="stub", accuracy={"min_accuracy": 0.7})  # `router simulate` checks the models it names

    def __init__(self, target: float = 0.7) -> None:
        self.target = target

    def decide(self, c: Classification, cards: Mapping[str, ModelCard], overrides: Mapping[str, Any],
               input_tokens: int) -> Decision:
        t = overrides.get("accuracy_target", self.target)
        order = sorted(cards.values(), key=lambda k: k.energy.joules(100, 10))
        for k in order:
            if c.p_correct.get(k.name, 0.0) >= t:
                return Decision(model=k.name, tier=k.tier, reason=f"{k.name}: {c.p_correct[k.name]:.2f} >= {t}",
                                task=c.task, policy=self.name)
        k = max(order, key=lambda k: c.p_correct.get(k.name, 0.0))
        return Decision(model=k.name, tier=k.tier, reason="none meets the target: most likely", task=c.task,
                        policy=self.name)

    def decide_many(self, cs: Sequence[Classification], cards: Mapping[str, ModelCard],
                    overrides: Mapping[str, Any], input_tokens: Sequence[int]) -> list[str]:
        return [self.decide(c, cards, overrides, t).model for c, t in zip(cs, input_tokens, strict=True)]
