"""What a decision reads from the policy, the caller's key entry and the cards alone, for one task: worked out once
per (policy, key, task, cards) and reused by every request that shares them.

Only what cannot change while those objects live is here (policies and cards are not edited once loaded, as
:func:`budgets_for` and :func:`~router.policy.steps.largest` already rely on): which models the
policy or the task leave out, the policy's own accuracy target and the calibrated margins that go with it, and each
model's budgets. Everything a request brings (pins, targets, limits, learned joules, budget use, cooling models)
is read per request by the steps.

Each model's budgets under a policy and key (:func:`budgets_for`) are here too: the plan is what reads them per
request, and the engine lists them for its callers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..cards import ModelCard
from .decision import BudgetRef
from .schema import Budget, KeyPolicy, Policy


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
    share_text: str
    """``share`` as the reason writes a relative target's (a whole percentage); empty for an absolute target."""
    offsets: Mapping[str, float]
    """Calibrated margins for that target (empty when the policy's calibration is for another target)."""
    refs: dict[str, tuple[BudgetRef, ...]]
    """Every model's budgets under the policy and key."""
    budget_keys: dict[str, tuple[str, ...]]
    """The ledger keys of each model's ``refs`` (what a decision lists as its ``budgets``)."""
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
    share_text = f"{share:.0%}" if kind != "absolute" else ""
    refs = {card.name: budgets_for(policy, card, key_hash) for card in cards}
    budget_keys = {name: tuple(r.key for r in model_refs) for name, model_refs in refs.items()}
    return Plan(entry, allowed, excluded, kind, share, share_text, offsets, refs, budget_keys, any(refs.values()))


_BUDGET_REFS: dict[tuple[int, str, str, str | None], tuple[Policy, tuple[BudgetRef, ...]]] = {}


def budgets_for(policy: Policy, card: ModelCard, key_hash: str | None) -> tuple[BudgetRef, ...]:
    """The budgets a call to ``card`` is reserved against under ``policy`` (and the caller's key entry).

    Remembered per (policy object, model, key): every decision asks for each candidate's budgets, and the
    answer only changes with the policy, which is not edited once loaded. The cache holds the policy itself, so
    its ``id`` cannot be reused by another object meanwhile."""
    cache_key = (id(policy), card.name, card.tier, key_hash)
    hit = _BUDGET_REFS.get(cache_key)
    if hit is not None and hit[0] is policy:
        return hit[1]
    refs = resolve_budgets(policy, card, key_hash)
    if len(_BUDGET_REFS) >= 4096:  # policies built per request (tests, simulations) come and go; stay small
        _BUDGET_REFS.clear()
    _BUDGET_REFS[cache_key] = (policy, refs)
    return refs


def resolve_budgets(policy: Policy, card: ModelCard, key_hash: str | None) -> tuple[BudgetRef, ...]:
    """What :func:`budgets_for` answers, worked out anew: for callers that list many keys once (reports), whose
    entries would only evict the ones decisions reuse from its cache."""
    budgets: list[Budget] = list(policy.budgets)
    entry = policy.key_policy(key_hash)
    if entry is not None:
        budgets += [b.model_copy(update={"scope": "per_key"}) for b in entry.budgets]
    refs: dict[str, BudgetRef] = {}
    for b in budgets:
        if not b.covers(card.name, card.tier):
            continue
        if b.scope == "per_key" and key_hash is None:
            continue  # per-key budgets apply to requests that carry a key
        ref = BudgetRef(b.key(card.name, key_hash), b.limit, b.window_s, b.unit)
        # budgets naming one counter (a key's own beside the policy's per-key one, `*` beside the model's name)
        # are one counter: a call holds and settles it once, and every limit declared on it holds
        if ref.key not in refs or ref.limit_j < refs[ref.key].limit_j:
            refs[ref.key] = ref
    return tuple(refs.values())
