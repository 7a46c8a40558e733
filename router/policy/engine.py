"""The policy engine: the least-energy model whose predicted accuracy meets the target and whose budget has room.

``decide_pure(classification, cards, budget_state, policy, request)`` is a pure function: the same inputs give
the same :class:`Decision`, with no clock, ledger or randomness inside. :class:`PolicyEngine` (the
:class:`~router.policy.base.Engine` the Router and the simulator use) resolves the request's policy and calls it
with the budget snapshot its caller read; the vectorised ``decide_batch`` gives the same choices for sweeps. So
what is simulated is what runs.

The rule, step by step (one function each in :mod:`router.policy.steps`; every step is named in the decision's
reason):

1. ``candidates``: the cards given (the Router passes its callable ones), minus models the policy (or the
   caller's key) does not allow, models that do not serve the task (a specialist serves only the tasks on its
   card), models whose context is too short, models without a capability the request needs (tools, a JSON
   schema, ...: ``DecisionRequest.capabilities``) and models over the caller's ``max_energy_j``; with the
   estimated joules of each.
2. ``predictions``: per candidate, the classifier's ``p_correct``, else the card's ``prior_accuracy[task]``,
   else a tier default (said so in the reason).
3. ``target``: ``min_accuracy`` as is, or ``relative_to_largest × predicted accuracy of the largest candidate``
   (the highest tier, then the most parameters on the cards: never learned joules, so the reference is stable).
   A model is *adequate* when ``predicted - target ≥ offset``; the offset is 0 unless the policy carries
   calibrated thresholds for its own target (``router calibrate``), which then decide.
4. ``ranking``: adequate models by estimated joules (cheapest first), then the others by predicted accuracy.
   A pinned model (caller or policy per task) goes first. ``cooled``: models cooling down after repeated
   failures or a failed start (``DecisionRequest.cooling``) move after the others, tried only when no other
   model answers.
5. ``budgets``: the first ranked model whose budgets have room; when the first choice's budget is spent the
   policy says ``fallback`` (next ranked with room), ``reject`` (:class:`BudgetExhaustedError` with the time
   until the window rolls) or ``allow_and_flag`` (keep the choice, flag it).
6. ``cascade`` (when enabled): escalation models and the confidence below which the Router escalates.
7. ``reason``: the sentence a person reads (task, model, predicted vs target, joules vs the alternative).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..cards import ModelCard
from ..classify.base import Classification
from ..errors import BadRequestError, ConfigError
from .base import BudgetState, DecisionRequest, Engine
from .batch import decide_batch
from .decision import BudgetRef, Decision
from .plan import budgets_for, plan_for, resolve_budgets
from .schema import Policy, budget_key_hash, budget_window_s
from .steps import (
    budgets,
    candidates,
    cascade,
    cooled,
    fmt_j,
    output_tokens,
    predicted,
    predictions,
    ranking,
    reason,
    target,
)

log = logging.getLogger("router")


def decide_pure(
    classification: Classification,
    cards: Mapping[str, ModelCard],
    budget_state: BudgetState | None,
    policy: Policy,
    request: DecisionRequest | Mapping[str, Any] | None = None,
) -> Decision:
    """The routing decision for one request under ``policy`` (already resolved: ``request.policy`` is not read).

    Pure: no I/O, no clock (the snapshot carries ``now``). It runs before every model call, so each step is one
    pass over the candidates and each model's budgets are checked once."""
    req = DecisionRequest.of(request)
    state = budget_state or BudgetState.empty()
    task = classification.task
    plan = plan_for(policy, cards, req.key_hash, task)
    out_tokens = output_tokens(policy, req)
    pool, energy, pinned, pin_source = candidates(task, cards, policy, plan, req, out_tokens)
    p, source = predictions(classification, pool)
    tgt = target(plan, req, pool, energy, p)
    adequate = tgt.adequate
    by_energy, ranked = ranking(pool, energy, p, adequate, pinned, cards)
    ranked, cool_flags, cool_notes = cooled(ranked, req.cooling)
    chosen, refs, blocked, spent, flags, budget_notes = budgets(policy, plan, ranked, energy, state,
                                                             (req.input_tokens_hint, out_tokens),
                                                             req.max_tokens_param)
    alone = len(ranked) == 1  # no other model to start with, escalate or fall back to
    escalate_to: tuple[str, ...]
    cascade_notes: list[str]
    if alone:
        escalate_to, escalate_below, cascade_notes = (), None, []
    else:
        chosen, escalate_to, escalate_below, cascade_notes = cascade(
            policy, chosen, pinned, spent, blocked | req.cooling, by_energy, ranked, energy, p, adequate
        )
    name = chosen.name
    head = reason(task, chosen, p, source[name], tgt, pinned, pin_source, by_energy, energy, escalate_to,
                  escalate_below, req.energy_estimates)

    if "over_budget_allowed" in flags:  # allowed over budget: every model stays a fallback but those whose
        # budget could not be read, which cannot be reserved against
        blocked = {n for n, rs in refs.items() if any(r.key in state.unreadable for r in rs)}
    fallbacks = () if alone else tuple(c.name for c in ranked if c.name != name and c.name not in blocked)
    if not (pinned is not None and name == pinned) and not adequate[name]:
        flags.append("target_unmet")
    model_budgets: dict[str, tuple[BudgetRef, ...]] = {}
    if any(refs.values()):
        called = {name, *fallbacks, *escalate_to}
        model_budgets = {n: r for n, r in refs.items() if r and n in called}
    offsets = tgt.offsets
    rounded = {n: round(v, 4) for n, v in p.items()}
    return Decision(
        model=name,
        tier=chosen.tier,
        reason="; ".join([head, *capability_note(req, pool), *cool_notes, *budget_notes, *cascade_notes]),
        task=task,
        policy=policy.name,
        predicted_accuracy=rounded[name],
        estimated_j=energy[name],
        fallbacks=fallbacks,
        escalate_to=escalate_to,
        escalate_below=escalate_below,
        budgets=plan.budget_keys[name],
        flags=(*cool_flags, *flags),
        candidates=rounded,
        target=round(tgt.value, 4),
        target_kind=tgt.kind,
        prediction_source=source[name],
        estimates=energy,
        model_budgets=model_budgets,
        on_budget_exhausted=policy.on_budget_exhausted,
        calibrated=not offsets.keys().isdisjoint(p),
        deadline_s=policy.deadline_s,
    )


def capability_note(req: DecisionRequest, pool: list[ModelCard]) -> list[str]:
    """The reason's note on the capabilities the request needs (none when it needs none)."""
    if not req.capabilities:
        return []
    names = ", ".join(c.name for c in pool)
    return [f"needs {' and '.join(sorted(req.capabilities))}: only models that can were candidates ({names})"]


# -- the Engine --------------------------------------------------------------------------------------------------
class PolicyEngine(Engine):
    """The :class:`Engine` over a set of policies: picks the request's policy and applies :func:`decide_pure` to
    the budget snapshot the caller read.

    ``cards`` are the candidates as given: the Router passes its callable cards, the simulator the cards of the
    models measured for a request. ``default_policy`` answers requests that name none (default: the only policy,
    when there is one)."""

    def __init__(self, cards: Mapping[str, ModelCard], policies: Mapping[str, Policy], *,
                 default_policy: str | None = None) -> None:
        if not policies:
            raise ConfigError("no policies: ship at least one policies/*.yaml")
        self.cards = dict(cards)
        self.policies = dict(policies)
        if default_policy is None and len(self.policies) == 1:
            default_policy = next(iter(self.policies))
        self.default_policy = default_policy
        for p in self.policies.values():
            if p.grid is not None and p.grid.use_policy not in self.policies:
                where = f"{p.file}: policy `{p.name}`" if p.file is not None else f"policy `{p.name}`"
                raise ConfigError(f"{where}: field `grid.use_policy` names `{p.grid.use_policy}`, which is not a "
                                  f"policy here ({', '.join(sorted(self.policies))}); fix the name")
        self._refs: dict[tuple[str | None, str | None], tuple[BudgetRef, ...]] = {}

    def policy(self, name: str | None) -> Policy:
        """The policy of this name (``None``: the default policy)."""
        found = self.policies.get(name if name is not None else self.default_policy or "")
        if found is None:
            what = f"unknown policy {name!r}" if name is not None else "the request names no policy and none is default"
            raise BadRequestError(f"{what}; use one of: {', '.join(sorted(self.policies))}", param="policy")
        return found

    def budget_refs(self, request: DecisionRequest) -> tuple[BudgetRef, ...]:
        # asked before every decision; the answer depends only on the policy name and the key
        cache_key = (request.policy, request.key_hash)
        found = self._refs.get(cache_key)
        if found is None:
            policy = self.policy(request.policy)
            seen: dict[str, BudgetRef] = {}
            # a grid switch may decide with another policy: its budgets are read too
            policies = [policy] if policy.grid is None else [policy, self.policy(policy.grid.use_policy)]
            for pol in policies:
                for card in self.cards.values():
                    for ref in budgets_for(pol, card, request.key_hash):
                        seen.setdefault(ref.key, ref)
            found = tuple(seen.values())
            if len(self._refs) >= 4096:  # one entry per API key seen; stay small
                self._refs.clear()
            self._refs[cache_key] = found
        return found

    def decide(self, classification: Classification, request: DecisionRequest, budgets: BudgetState) -> Decision:
        policy = self.policy(request.policy)
        switch = policy.grid
        g = request.grid_g_per_kwh
        if switch is None or g is None or g <= switch.above_g_per_kwh:
            return decide_pure(classification, self.cards, budgets, policy, request)
        decision = decide_pure(classification, self.cards, budgets, self.policy(switch.use_policy), request)
        note = (f"grid {g:.0f} g/kWh > {switch.above_g_per_kwh:g}: policy `{switch.use_policy}` instead of "
                f"`{policy.name}`")
        return dataclasses.replace(decision, reason=f"{note}; {decision.reason}")

    def budget_specs(self) -> list[tuple[str, float, float, str]]:
        """Every budget a request can be reserved against, for reports and metrics: ``(ledger key, limit per
        window, window seconds, policy)``, one row per policy that names the budget (policies may share a
        counter with different limits). The limit is in the budget's unit, which its key tells
        (:func:`~router.policy.schema.budget_unit`: joules, or grams CO2e for a ``gco2e:`` key). Per-key budgets
        are listed for the key hashes the policies name; a policy-wide ``scope: per_key`` budget has no key to
        list until a request with a key uses it (:meth:`budget_specs_for` lists those)."""
        return self._specs(lambda policy: [None, *(k.key_hash for k in policy.keys)])

    def budget_specs_for(self, budget_keys: Iterable[str]) -> list[tuple[str, float, float, str]]:
        """The rows of :meth:`budget_specs` for these ledger keys, under every policy that reserves against them:
        what a policy-wide ``scope: per_key`` budget is for a key no policy names (a key that has been seen, e.g.
        in a decision's ``budgets``). Keys no policy here would build have no row."""
        wanted = set(budget_keys)
        key_hashes = [None, *sorted({h for h in map(budget_key_hash, wanted) if h is not None})]
        return [row for row in self._specs(lambda _: key_hashes) if row[0] in wanted]

    def _specs(self, key_hashes: Callable[[Policy], Iterable[str | None]]) -> list[tuple[str, float, float, str]]:
        rows: dict[tuple[str, str], tuple[float, float]] = {}
        for policy in self.policies.values():
            for key_hash in key_hashes(policy):
                for card in self.cards.values():
                    for ref in resolve_budgets(policy, card, key_hash):
                        rows.setdefault((ref.key, policy.name), (ref.limit_j, ref.window_s))
        return [(key, limit, window, name) for (key, name), (limit, window) in sorted(rows.items())]


BudgetRow = tuple[str, "float | None", float, "str | None"]
"""``(ledger key, limit per window or None, window seconds, policy or None)``: a budget as reports show it."""


def known_budgets(engine: object, seen: Iterable[str]) -> list[BudgetRow]:
    """Every budget to show (``/metrics``, the dashboard), one row per (budget, policy): the engine's
    ``budget_specs()``; for the budget keys ``seen`` in decisions that those omit (a ``scope: per_key`` budget of a
    key no policy names), ``budget_specs_for(seen)``; and a seen budget that no row covers (an engine without those
    methods) with no limit, in the window its key ends in. An engine method that fails is logged and skipped: a
    report must not fail because an engine cannot list its budgets."""
    seen = sorted(seen)
    rows: list[BudgetRow] = [*_engine_rows(engine, "budget_specs"),
                             *(_engine_rows(engine, "budget_specs_for", seen) if seen else [])]
    by_pair = {(b, p): (b, lim, w, p) for b, lim, w, p in rows}  # a seen budget a policy names comes twice
    covered = {b for b, _ in by_pair}
    for budget in seen:
        if budget not in covered and (window_s := budget_window_s(budget)) is not None:
            by_pair[budget, None] = (budget, None, window_s, None)
    return list(by_pair.values())


def _engine_rows(engine: object, method: str, *args: object) -> list[BudgetRow]:
    specs_fn = getattr(engine, method, None)
    if not callable(specs_fn):
        return []
    try:
        return [(str(b), float(lim), float(w), str(p)) for b, lim, w, p in specs_fn(*args)]
    except Exception:
        log.exception("could not list the policy engine's budgets (%s)", method)
        return []


__all__ = ["BudgetRow", "PolicyEngine", "budgets_for", "decide_batch", "decide_pure", "fmt_j", "known_budgets",
           "predicted"]
