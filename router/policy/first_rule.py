"""The first routing rule (before the policy engine): sentiment -> specialist; else small; `quality` -> large."""

from __future__ import annotations

from ..cards import ModelCard
from ..classify.base import Classification
from .decision import Decision

_TIER_ORDER = {"specialist": 0, "small": 1, "large": 2}


class FirstRuleEngine:
    def __init__(self, cards: dict[str, ModelCard]) -> None:
        self.cards = cards
        callable_cards = [c for c in cards.values() if c.callable]
        self.by_tier: dict[str, list[ModelCard]] = {}
        for card in sorted(callable_cards, key=lambda c: c.energy.joules(50, 50)):
            self.by_tier.setdefault(card.tier, []).append(card)

    def decide(
        self,
        classification: Classification,
        *,
        policy: str,
        pinned: str | None = None,
        **_: object,
    ) -> Decision:
        task = classification.task
        general = [c for t in ("small", "large") for c in self.by_tier.get(t, [])]
        if pinned:
            card = self.cards[pinned]
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
