"""The first routing rule (before the policy engine): sentiment -> specialist; else small; `quality` -> large.

The Router uses it only when no policy file exists."""

from __future__ import annotations

from collections.abc import Mapping

from ..cards import ModelCard
from ..classify.base import Classification
from .base import BudgetState, DecisionRequest, Engine
from .decision import BudgetRef, Decision


class FirstRuleEngine(Engine):
    def __init__(self, cards: Mapping[str, ModelCard]) -> None:
        self.cards = dict(cards)
        callable_cards = [c for c in cards.values() if c.callable]
        self.by_tier: dict[str, list[ModelCard]] = {}
        for card in sorted(callable_cards, key=lambda c: c.energy.joules(50, 50)):
            self.by_tier.setdefault(card.tier, []).append(card)

    def budget_refs(self, request: DecisionRequest) -> tuple[BudgetRef, ...]:
        return ()  # the first rule has no budgets

    def decide(self, classification: Classification, request: DecisionRequest, budgets: BudgetState) -> Decision:
        task = classification.task
        policy = request.policy or ""
        general = [c for t in ("small", "large") for c in self.by_tier.get(t, [])]
        if request.pinned:
            card = self.cards[request.pinned]
            return Decision(model=card.name, tier=card.tier, task=task, policy=policy,
                            reason=f"model pinned by the caller: {card.name}")
        specialists = [c for c in self.by_tier.get("specialist", []) if c.serves(task) and c.tasks]
        if specialists:
            card = specialists[0]
            return Decision(
                model=card.name, tier=card.tier, task=task, policy=policy,
                reason=f"{task} task (p={classification.confidence:.2f}) -> specialist {card.name}",
                fallbacks=tuple(c.name for c in general[:1]),
            )
        want = "large" if policy == "quality" else "small"
        pool = self.by_tier.get(want) or general
        card = pool[0]
        others = tuple(c.name for c in general if c.name != card.name)
        why = "policy `quality` asks for the large tier" if want == "large" else "general request -> small tier"
        return Decision(model=card.name, tier=card.tier, task=task, policy=policy,
                        reason=f"{task} task: {why} ({card.name})", fallbacks=others)
