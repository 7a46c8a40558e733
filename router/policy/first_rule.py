"""The first routing rule (before the policy engine): sentiment -> specialist; else small; `quality` -> large.

The Router uses it only when no policy file exists. It still honours what every engine must (see
:class:`~router.policy.base.Engine`): a request's pin, the capabilities it needs (tools, a JSON schema, ...), its
context, its ``max_energy_j`` and its ``accuracy_target``. Those are step 1 of the policy engine
(:func:`~router.policy.steps.candidates`, run here under a policy with no limits of its own), so the same requests
are refused with the same typed errors; the rule then picks among the models left."""

from __future__ import annotations

from collections.abc import Mapping

from ..cards import ModelCard
from ..classify.base import Classification
from .base import BudgetState, DecisionRequest, Engine
from .decision import BudgetRef, Decision
from .engine import capability_note
from .plan import plan_for
from .schema import AccuracyTarget, Policy
from .steps import EPS, candidates, output_tokens, predictions

FIRST_RULE_POLICY = Policy(name="first-rule", accuracy=AccuracyTarget(min_accuracy=0.0),
                           description="what step 1 of the policy engine reads when no policy file exists: no "
                           "allowed_models, pins, budgets or target of its own")
"""The policy the first rule's candidates are found under: errors name it (``under policy `first-rule```)."""


class FirstRuleEngine(Engine):
    def __init__(self, cards: Mapping[str, ModelCard]) -> None:
        # only callable models can answer: the Router resolves a pinned name to a callable card before deciding
        self.cards = {n: c for n, c in cards.items() if c.callable}

    def budget_refs(self, request: DecisionRequest) -> tuple[BudgetRef, ...]:
        return ()  # the first rule has no budgets

    def decide(self, classification: Classification, request: DecisionRequest, budgets: BudgetState) -> Decision:
        task = classification.task
        policy = request.policy or ""
        plan = plan_for(FIRST_RULE_POLICY, self.cards, request.key_hash, task)
        pool, energy, pinned, _ = candidates(task, self.cards, FIRST_RULE_POLICY, plan, request,
                                             output_tokens(FIRST_RULE_POLICY, request))
        notes = _limit_notes(request, pool)
        target_unmet = False
        if request.accuracy_target is not None and not pinned:
            p, _ = predictions(classification, pool)
            meets = [c for c in pool if p[c.name] >= request.accuracy_target - EPS]
            target_unmet = not meets
            best = max(p.values())
            pool = meets or [c for c in pool if p[c.name] >= best - EPS]
            notes.append(f"accuracy_target {request.accuracy_target:g}: "
                         + (f"only models predicted to meet it were candidates ({_names(pool)})" if meets
                            else f"no model is predicted to meet it; the most accurate answers ({_names(pool)})"))
        pool = sorted(pool, key=lambda c: (energy[c.name], c.name))
        general = [c for c in pool if c.tier != "specialist"]
        specialists = [c for c in pool if c.tier == "specialist" and c.tasks]
        if pinned:
            card = self.cards[pinned]
            why = f"model pinned by the caller: {card.name}"
            others: tuple[str, ...] = ()
        elif specialists:
            card = specialists[0]
            why = f"{task} task (p={classification.confidence:.2f}) -> specialist {card.name}"
            others = tuple(c.name for c in general[:1])
        else:
            want = "large" if policy == "quality" else "small"
            card = next((c for c in pool if c.tier == want), (general or pool)[0])
            rule = "policy `quality` asks for the large tier" if want == "large" else "general request -> small tier"
            if card.tier != want:
                rule += ", which has no candidate"
            why = f"{task} task: {rule} ({card.name})"
            others = tuple(c.name for c in general if c.name != card.name)
        return Decision(model=card.name, tier=card.tier, task=task, policy=policy,
                        reason="; ".join([why, *notes]), fallbacks=others, estimated_j=energy[card.name],
                        estimates=energy, flags=("target_unmet",) if target_unmet else ())


def _limit_notes(request: DecisionRequest, pool: list[ModelCard]) -> list[str]:
    notes = capability_note(request, pool)
    if request.max_energy_j is not None:
        notes.append(f"max_energy_j {request.max_energy_j:g} J: only models estimated within it were candidates "
                     f"({_names(pool)})")
    return notes


def _names(pool: list[ModelCard]) -> str:
    return ", ".join(c.name for c in pool)
