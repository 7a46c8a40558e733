"""What a decision reads from the policy, the caller's key entry and the cards alone, for one task: worked out once
per (policy, key, task, cards) and reused by every request that shares them.

Only what cannot change while those objects live is here (policies and cards are not edited once loaded, as
:func:`~router.policy.steps.budgets_for` and :func:`~router.policy.steps.largest` already rely on): which models the
policy or the task leave out, the policy's own accuracy target and the calibrated margins that go with it, and each
model's budgets. Everything a request brings (pins, targets, limits, learned joules, budget use, cooling models)
is read per request by the steps."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..cards import ModelCard
from .decision import BudgetRef
from .schema import KeyPolicy, Policy
from .steps import budgets_for


@dataclass(frozen=True, slots=True)
class Plan:
    """The request-independent part of a decision under one policy, key and task (see the module docstring)."""

    entry: KeyPolicy | None
    """The caller's key entry in the policy, if it has one."""
    allowed: frozenset[str] | None
    """The models the policy and the key entry allow (``None``: all)."""
    excluded: dict[str, str]
    """Models left out whatever the request (why: ``not allowed``, ``does not serve`` or ``specialist without
    tasks``); a pin overrides all but ``not allowed``."""
    kind: str
    """The policy's own target (the key entry's where it sets one): ``absolute``, ``relative`` or
    ``relative_best``."""
    share: float
    offsets: Mapping[str, float]
    """Calibrated margins for that target (empty when the policy's calibration is for another target)."""
    refs: dict[str, tuple[BudgetRef, ...]]
    """Every model's budgets under the policy and key."""
    budgeted: bool
    """Whether any model here has a budget."""


_PLANS: dict[tuple[int | str | None, ...], tuple[Policy, tuple[ModelCard, ...], Plan]] = {}
"""Plans by (policy, key, task, each card), the objects by identity: each entry holds the policy and the cards, so their
ids are not reused by other objects while it lives."""


def plan_for(policy: Policy, cards: Mapping[str, ModelCard], key_hash: str | None, task: str) -> Plan:
    """The :class:`Plan` of ``policy`` for a request on ``task`` with this key among ``cards``."""
    cache_key = (id(policy), key_hash, task, *map(id, cards.values()))
    hit = _PLANS.get(cache_key)
    if hit is not None:
        return hit[2]
    card_objects = tuple(cards.values())
    plan = _plan(policy, card_objects, key_hash, task)
    if len(_PLANS) >= 4096:  # one entry per (policy, API key, task) seen; policies built per request come and go
        _PLANS.clear()
    _PLANS[cache_key] = (policy, card_objects, plan)
    return plan


def _plan(policy: Policy, cards: tuple[ModelCard, ...], key_hash: str | None, task: str) -> Plan:
    entry = policy.key_policy(key_hash)
    allowed = frozenset(policy.allowed_models) if policy.allowed_models is not None else None
    if entry is not None and entry.allowed_models is not None:
        allowed = frozenset(entry.allowed_models) if allowed is None else allowed & frozenset(entry.allowed_models)
    excluded: dict[str, str] = {}
    for card in cards:
        if allowed is not None and card.name not in allowed:
            excluded[card.name] = "not allowed"
        elif not card.serves(task):
            excluded[card.name] = "does not serve"
        elif card.tier == "specialist" and not card.tasks:
            excluded[card.name] = "specialist without tasks"
    spec = entry.accuracy if entry is not None and entry.accuracy is not None else policy.accuracy
    kind, share = spec.kind, spec.value
    cal = policy.calibrated
    own_target = cal is not None and cal.target_kind == kind and abs(cal.target - share) < 1e-9
    offsets: Mapping[str, float] = cal.offsets if own_target and cal is not None else {}
    refs = {card.name: budgets_for(policy, card, key_hash) for card in cards}
    return Plan(entry, allowed, excluded, kind, share, offsets, refs, any(refs.values()))
