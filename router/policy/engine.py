"""The policy engine: the least-energy model whose predicted accuracy meets the target and whose budget has room.

``decide_pure(classification, cards, budget_state, policy, overrides)`` is a pure function: the same inputs give
the same :class:`Decision`, with no clock, ledger or randomness inside. The live :class:`PolicyEngine` only adds
a budget snapshot read from the ledger; offline simulation calls ``decide_pure`` (or the vectorised
``decide_batch``) with an empty or replayed snapshot. So what is simulated is what runs.

The rule, step by step (every step is named in the decision's reason):

1. Candidates: the cards given (the Router passes its callable ones), minus models the policy (or the caller's
   key) does not allow, models that do not serve the task (a specialist serves only the tasks on its card),
   models whose context is too short, and models over the caller's ``max_energy_j``.
2. Predicted accuracy per candidate: the classifier's ``p_correct``, else the card's ``prior_accuracy[task]``,
   else a tier default (said so in the reason).
3. Target: ``min_accuracy`` as is, or ``relative_to_largest × predicted accuracy of the largest candidate``.
   A model is *adequate* when ``predicted - target ≥ offset``; the offset is 0 unless the policy carries
   calibrated thresholds for its own target (``router calibrate``), which then decide.
4. Ranking: adequate models by estimated joules (cheapest first), then the others by predicted accuracy.
   A pinned model (caller or policy per task) goes first.
5. Budgets: the first ranked model whose budgets have room; when the first choice's budget is spent the policy
   says ``fallback`` (next ranked with room), ``reject`` (:class:`BudgetExhaustedError` with the time until the
   window rolls) or ``allow_and_flag`` (keep the choice, flag it).
6. Cascade (when enabled): escalation models and the confidence below which the Router escalates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..cards import ModelCard
from ..classify.base import Classification
from ..errors import BadRequestError, BudgetExhaustedError, ConfigError
from ..ledger import Ledger
from .decision import BudgetRef, Decision
from .schema import AccuracyTarget, Budget, Policy

TIER_RANK = {"specialist": 0, "small": 1, "large": 2}
TIER_DEFAULT_ACCURACY = {"specialist": 0.5, "small": 0.5, "large": 0.7}
"""Used only when neither the classifier nor the card says anything about a model on a task."""
_EPS = 1e-9


@dataclass(frozen=True)
class BudgetState:
    """A plain snapshot of budget use: ledger key -> joules spent or held in the current window, and the clock
    reading the snapshot was taken at (for ``retry_after_s``). Keys absent from ``used`` count as 0."""

    used: Mapping[str, float] = field(default_factory=dict)
    now: float = 0.0

    @staticmethod
    def empty() -> BudgetState:
        return BudgetState({}, 0.0)

    def resets_in(self, window_s: float) -> float:
        return window_s - (self.now % window_s)


@dataclass(frozen=True)
class Overrides:
    """Per-request settings from the caller (all optional)."""

    accuracy_target: float | None = None
    max_energy_j: float | None = None
    pinned: str | None = None
    key_hash: str | None = None
    input_tokens_hint: int = 64
    output_tokens_hint: int | None = None

    @staticmethod
    def of(value: Overrides | Mapping[str, Any] | None) -> Overrides:
        if value is None:
            return Overrides()
        if isinstance(value, Overrides):
            return value
        known = set(Overrides.__dataclass_fields__)
        bad = set(value) - known
        if bad:
            raise BadRequestError(f"unknown override(s) {sorted(bad)}; known: {sorted(known)}")
        return Overrides(**dict(value))


def fmt_j(joules: float) -> str:
    """Joules for a sentence: 3 significant figures below 10 J, whole joules above."""
    if joules >= 10:
        return f"{joules:,.0f} J"
    return f"{joules:.3g} J"


_BUDGET_REFS: dict[tuple[int, str, str, str | None], tuple[Policy, tuple[BudgetRef, ...]]] = {}


def budgets_for(policy: Policy, card: ModelCard, key_hash: str | None) -> tuple[BudgetRef, ...]:
    """The budgets a call to ``card`` is reserved against under ``policy`` (and the caller's key entry).

    Remembered per (policy object, model, key): every decision asks for each candidate's budgets, and the
    answer only changes with the policy, which is not edited once loaded (a policy switched per key is a new
    object). The cache holds the policy itself, so its ``id`` cannot be reused by another object meanwhile."""
    cache_key = (id(policy), card.name, card.tier, key_hash)
    hit = _BUDGET_REFS.get(cache_key)
    if hit is not None and hit[0] is policy:
        return hit[1]
    refs = _budgets_for(policy, card, key_hash)
    if len(_BUDGET_REFS) >= 4096:  # per-key policy copies come and go; stay small
        _BUDGET_REFS.clear()
    _BUDGET_REFS[cache_key] = (policy, refs)
    return refs


def _budgets_for(policy: Policy, card: ModelCard, key_hash: str | None) -> tuple[BudgetRef, ...]:
    budgets: list[Budget] = list(policy.budgets)
    entry = policy.key_policy(key_hash)
    if entry is not None:
        budgets += [b.model_copy(update={"scope": "per_key"}) for b in entry.budgets]
    refs = []
    for b in budgets:
        if not b.covers(card.name, card.tier):
            continue
        if b.scope == "per_key" and key_hash is None:
            continue  # per-key budgets apply to requests that carry a key
        refs.append(BudgetRef(b.key(card.name, key_hash), b.joules, b.window_s))
    return tuple(refs)


def predicted(classification: Classification, card: ModelCard) -> tuple[float, str]:
    """(P(correct), where it came from) for one model on this request."""
    p = classification.p_correct.get(card.name)
    if p is not None and math.isfinite(p):
        return float(p), "classifier"
    prior = card.prior_accuracy.get(classification.task)
    if prior is not None:
        return float(prior), "card prior"
    return TIER_DEFAULT_ACCURACY.get(card.tier, 0.5), "tier default"


def _largest(cards: list[ModelCard], energy: Mapping[str, float]) -> ModelCard:
    general = [c for c in cards if c.tier != "specialist"] or cards
    return max(general, key=lambda c: (TIER_RANK.get(c.tier, 1), energy[c.name], c.name))


def decide_pure(
    classification: Classification,
    cards: Mapping[str, ModelCard],
    budget_state: BudgetState | None,
    policy: Policy,
    overrides: Overrides | Mapping[str, Any] | None = None,
) -> Decision:
    """The routing decision for one request. Pure: no I/O, no clock (the snapshot carries ``now``).

    It runs on every request (before the model is called), so each step is one pass over the candidates and
    the budget checks are made once per model, not once per question asked of them."""
    ov = Overrides.of(overrides)
    state = budget_state or BudgetState.empty()
    used = state.used
    task = classification.task
    key_hash = ov.key_hash
    entry = policy.key_policy(key_hash)
    in_tokens = ov.input_tokens_hint
    out_tokens = ov.output_tokens_hint or policy.output_tokens_estimate

    # 1. candidates, and the estimated joules of each
    allowed = set(policy.allowed_models) if policy.allowed_models is not None else None
    if entry is not None and entry.allowed_models is not None:
        allowed = set(entry.allowed_models) if allowed is None else allowed & set(entry.allowed_models)
    pinned = ov.pinned or policy.pinned.get(task)
    pin_source = ""
    if pinned is not None:
        pin_source = "pinned by the caller" if ov.pinned else f"policy `{policy.name}` pins {task}"
        if pinned not in cards:
            raise (BadRequestError if ov.pinned else ConfigError)(
                f"{pin_source}: model {pinned!r} is not among the candidates ({', '.join(sorted(cards))})"
            )
    if ov.pinned and allowed is not None and ov.pinned not in allowed:
        raise BadRequestError(
            f"model {ov.pinned!r} is not allowed by policy `{policy.name}` (allowed: {', '.join(sorted(allowed))})",
            param="model",
        )
    excluded: dict[str, str] = {}
    pool: list[ModelCard] = []
    energy: dict[str, float] = {}
    for card in cards.values():
        name = card.name
        specialist = card.tier == "specialist"
        est_out = 1 if specialist else out_tokens
        if allowed is not None and name not in allowed:
            excluded[name] = "not allowed"
        elif name != pinned and not card.serves(task):
            excluded[name] = f"does not serve {task}"
        elif name != pinned and specialist and not card.tasks:
            excluded[name] = "specialist without tasks"
        elif name != pinned and in_tokens + est_out > card.context_length:
            excluded[name] = "context too short"
        else:
            pool.append(card)
            energy[name] = card.energy.joules(in_tokens, est_out)
    if not pool:
        raise BadRequestError(
            f"no model can serve this {task} request under policy `{policy.name}` "
            f"({'; '.join(f'{k}: {v}' for k, v in sorted(excluded.items()))})"
        )
    if ov.max_energy_j is not None:
        within = [c for c in pool if energy[c.name] <= ov.max_energy_j + _EPS]
        if not within:
            cheapest = min(pool, key=lambda c: energy[c.name])
            raise BadRequestError(
                f"no model answers within max_energy_j={ov.max_energy_j:g} J: the cheapest candidate, "
                f"{cheapest.name}, needs about {fmt_j(energy[cheapest.name])}; raise the limit",
                param="max_energy_j",
            )
        pool = within

    # 2. predictions
    preds = {c.name: predicted(classification, c) for c in pool}
    p = {name: pred[0] for name, pred in preds.items()}

    # 3. target
    spec: AccuracyTarget = entry.accuracy if entry is not None and entry.accuracy is not None else policy.accuracy
    if ov.accuracy_target is not None:
        kind, value = "absolute", float(ov.accuracy_target)
    else:
        kind, value = spec.kind, spec.value
    ref = _largest(pool, energy)
    target = value if kind == "absolute" else value * p[ref.name]
    cal = policy.calibrated
    use_cal = (
        cal is not None and ov.accuracy_target is None and cal.target_kind == kind and abs(cal.target - value) < 1e-9
    )
    offsets = dict(cal.offsets) if use_cal and cal is not None else {}
    adequate = {n: v - target >= offsets.get(n, 0.0) - _EPS for n, v in p.items()}

    # 4. ranking
    by_energy = sorted(pool, key=lambda c: (energy[c.name], TIER_RANK.get(c.tier, 1), c.name))
    ranked = [c for c in by_energy if adequate[c.name]]
    if len(ranked) < len(by_energy):
        ranked += sorted((c for c in by_energy if not adequate[c.name]), key=lambda c: (-p[c.name], energy[c.name]))
    if pinned is not None:
        ranked = [cards[pinned], *(c for c in ranked if c.name != pinned)]
    refs = {c.name: budgets_for(policy, c, key_hash) for c in ranked}

    def blocking(name: str) -> list[BudgetRef]:
        return [r for r in refs[name] if used.get(r.key, 0.0) + energy.get(name, 0.0) > r.limit_j + _EPS]

    # models one of whose budgets this request's estimate would overrun: checked once each
    blocked = {name for name, rs in refs.items() if rs and blocking(name)}

    # 5. budgets
    first = ranked[0]
    flags: list[str] = []
    notes: list[str] = []
    chosen = first
    spent = blocking(first.name) if first.name in blocked else []
    if spent:
        b = spent[0]
        what = f"{first.name}'s budget {b.key} is spent ({used.get(b.key, 0.0):,.0f} of {b.limit_j:,.0f} J)"
        if policy.on_budget_exhausted == "allow_and_flag":
            flags.append("over_budget_allowed")
            notes.append(f"{what}; allowed and flagged")
        else:
            room = next((c for c in ranked[1:] if c.name not in blocked), None)
            if policy.on_budget_exhausted == "reject" or room is None:
                retry = min(state.resets_in(r.window_s) for r in spent)
                raise BudgetExhaustedError(
                    f"budget_exhausted: {what}; policy `{policy.name}` says {policy.on_budget_exhausted}"
                    + ("" if policy.on_budget_exhausted == "reject" else " but no other model has room")
                    + f"; retry in {retry:.0f} s or raise the budget",
                    retry_after_s=retry,
                )
            chosen = room
            flags.append("budget_fallback")
            notes.append(f"{what} → fell back to {room.name}")

    # 6. cascade
    escalate_to: tuple[str, ...] = ()
    escalate_below: float | None = None
    casc = policy.cascade
    if casc.enabled and pinned is None:
        if casc.start == "cheapest" and not spent:
            cheapest = next((c for c in by_energy if c.name not in blocked), chosen)
            if energy[cheapest.name] < energy[chosen.name]:
                chosen = cheapest
                notes.append(f"cascade starts with the cheapest model, {cheapest.name}")
        with_room = [c for c in ranked if c.name != chosen.name and c.name not in blocked]
        if casc.escalate_to == "next":
            ups = sorted((c for c in with_room if p[c.name] > p[chosen.name] + _EPS),
                         key=lambda c: (not adequate[c.name], energy[c.name]))
        elif casc.escalate_to in TIER_RANK:
            ups = sorted((c for c in with_room if c.tier == casc.escalate_to), key=lambda c: energy[c.name])
        else:
            ups = [c for c in with_room if c.name == casc.escalate_to]
        if ups:
            escalate_to = tuple(c.name for c in ups[:2])
            escalate_below = casc.escalate_below

    if "over_budget_allowed" in flags:
        fallbacks = tuple(c.name for c in ranked if c.name != chosen.name)
    else:
        fallbacks = tuple(c.name for c in ranked if c.name != chosen.name and c.name not in blocked)

    # reason
    pc, src = preds[chosen.name]
    src_note = "" if src == "classifier" else f" ({src})"
    target_s = f"target {target:.2f}"
    if kind == "relative":
        target_s += f" ({value:.0%} of {ref.name}'s {p[ref.name]:.2f})"
    if pinned is not None and chosen.name == pinned:
        head = f"{task} task → {chosen.name}, {pin_source}; predicted {pc:.2f}{src_note} vs {target_s}"
    elif adequate[chosen.name]:
        cmp = "≥" if pc >= target - _EPS else "<"
        cal_s = f" (calibrated margin {offsets[chosen.name]:+.3f})" if chosen.name in offsets else ""
        head = f"{task} task → {chosen.name}; predicted {pc:.2f}{src_note} {cmp} {target_s}{cal_s}"
    else:
        head = (f"{task} task → {chosen.name}; no candidate meets {target_s}; "
                f"best predicted {pc:.2f}{src_note}")
        flags.append("target_unmet")
    dearer = [c for c in by_energy if energy[c.name] > energy[chosen.name]]
    if dearer:
        other = dearer[0] if dearer[0].tier != chosen.tier or len(dearer) == 1 else dearer[-1]
        head += f"; {fmt_j(energy[chosen.name])} vs {fmt_j(energy[other.name])} for {other.name}"
    else:
        head += f"; {fmt_j(energy[chosen.name])}"
    if escalate_to:
        head += f"; escalates to {escalate_to[0]} if confidence < {escalate_below:.2f}"
    reason = "; ".join([head, *notes])

    model_budgets: dict[str, tuple[BudgetRef, ...]] = {}
    if any(refs.values()):
        called = {chosen.name, *fallbacks, *escalate_to}
        model_budgets = {n: r for n, r in refs.items() if r and n in called}
    return Decision(
        model=chosen.name,
        tier=chosen.tier,
        reason=reason,
        task=task,
        policy=policy.name,
        predicted_accuracy=round(pc, 4),
        estimated_j=energy[chosen.name],
        fallbacks=fallbacks,
        escalate_to=escalate_to,
        escalate_below=escalate_below,
        budgets=tuple(r.key for r in refs[chosen.name]),
        flags=tuple(flags),
        candidates={n: round(v, 4) for n, v in p.items()},
        target=round(target, 4),
        target_kind=kind,
        prediction_source=src,
        estimates=energy,
        model_budgets=model_budgets,
        on_budget_exhausted=policy.on_budget_exhausted,
        calibrated=bool(offsets) and any(n in offsets for n in p),
    )


def decide_batch(
    p_correct: np.ndarray,
    energies: np.ndarray,
    target: float,
    *,
    relative: bool = False,
    offsets: np.ndarray | None = None,
    eligible: np.ndarray | None = None,
    reference: int | np.ndarray | None = None,
) -> np.ndarray:
    """Vectorised step 3-4 of :func:`decide_pure` for simulation: the chosen column per row.

    ``p_correct`` [N, M] predicted accuracies; ``energies`` [M] or [N, M] estimated joules; ``target`` the
    policy's value (absolute, or the share of the reference model's prediction when ``relative``);
    ``offsets`` [M] calibrated margins (0 where none); ``eligible`` [N, M] bool (default all);
    ``reference`` the column of the "largest" model (default: the most energy per row among eligible).
    Same rule as ``decide_pure`` without pins, specialists' task rules and budgets (give those through
    ``eligible``): the cheapest adequate model, else the most accurate (ties: the cheaper).
    """
    p = np.asarray(p_correct, dtype=np.float64)
    n, m = p.shape
    e = np.broadcast_to(np.asarray(energies, dtype=np.float64), (n, m))
    ok = np.ones((n, m), dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool)
    off = np.zeros(m) if offsets is None else np.asarray(offsets, dtype=np.float64)
    if relative:
        if reference is None:
            ref = np.argmax(np.where(ok, e, -np.inf), axis=1)
        else:
            ref = np.broadcast_to(np.asarray(reference), (n,))
        t = target * p[np.arange(n), ref]
    else:
        t = np.full(n, float(target))
    adequate = ok & (p - t[:, None] >= off[None, :] - _EPS)
    cheapest_adequate = np.argmin(np.where(adequate, e, np.inf), axis=1)
    # most accurate, ties broken by energy: lexicographic via a tiny energy penalty on equal p
    score = np.where(ok, p, -np.inf)
    best_p = score.max(axis=1, keepdims=True)
    best = np.argmin(np.where(np.abs(score - best_p) <= _EPS, e, np.inf), axis=1)
    return np.where(adequate.any(axis=1), cheapest_adequate, best)


class PolicyEngine:
    """The live engine: resolves the policy, reads a budget snapshot from the ledger, calls :func:`decide_pure`.

    ``decide`` has the keyword signature the Router calls; ``cards`` are the Router's callable cards."""

    def __init__(self, cards: Mapping[str, ModelCard], policies: Mapping[str, Policy], ledger: Ledger | None = None,
                 *, clock: Any = None) -> None:
        if not policies:
            raise ConfigError("no policies: ship at least one policies/*.yaml")
        self.cards = {n: c for n, c in cards.items() if c.callable}
        self.all_cards = dict(cards)
        self.policies = dict(policies)
        self.ledger = ledger
        import time

        self._clock = clock or time.time

    def policy(self, name: str) -> Policy:
        found = self.policies.get(name)
        if found is None:
            raise BadRequestError(
                f"unknown policy {name!r}; use one of: {', '.join(sorted(self.policies))}", param="policy"
            )
        return found

    def budget_specs(self) -> list[tuple[str, float, float, str]]:
        """Every budget a request can be reserved against, for reports and metrics: ``(ledger key, joules per
        window, window seconds, policy)``, one row per policy that names the budget (policies may share a
        counter with different limits). Per-key budgets are listed for the key hashes the policies name; a
        policy-wide ``scope: per_key`` budget has no key to list until a request with a key uses it."""
        rows: dict[tuple[str, str], tuple[float, float]] = {}
        for policy in self.policies.values():
            for key_hash in [None, *(k.key_hash for k in policy.keys)]:
                for card in self.cards.values():
                    for ref in budgets_for(policy, card, key_hash):
                        rows.setdefault((ref.key, policy.name), (ref.limit_j, ref.window_s))
        return [(key, limit, window, name) for (key, name), (limit, window) in sorted(rows.items())]

    def snapshot(self, policy: Policy, key_hash: str | None) -> BudgetState:
        """Budget use for every budget any candidate could be reserved against (one read each)."""
        now = float(self._clock())
        if self.ledger is None:
            return BudgetState({}, now)
        used: dict[str, float] = {}
        for card in self.cards.values():
            for ref in budgets_for(policy, card, key_hash):
                if ref.key not in used:
                    used[ref.key] = self.ledger.budget_used(ref.key, ref.window_s)
        return BudgetState(used, now)

    def decide(
        self,
        classification: Classification,
        *,
        policy: str,
        pinned: str | None = None,
        accuracy_target: float | None = None,
        max_energy_j: float | None = None,
        key_hash: str | None = None,
        input_tokens_hint: int = 64,
        **_: object,
    ) -> Decision:
        chosen = self.policy(policy)
        entry = chosen.key_policy(key_hash)
        if entry is not None and entry.policy and entry.policy != chosen.name:
            base = self.policy(entry.policy)
            # the key's own budgets, accuracy and allowed models still apply on top of the policy it switches to
            chosen = base.model_copy(update={"keys": [entry.model_copy(update={"policy": None}), *base.keys]})
        cards = self.cards
        if pinned is not None and pinned not in cards:
            cards = {**cards, pinned: self.all_cards[pinned]}
        overrides = Overrides(accuracy_target=accuracy_target, max_energy_j=max_energy_j, pinned=pinned,
                              key_hash=key_hash, input_tokens_hint=input_tokens_hint)
        return decide_pure(classification, cards, self.snapshot(chosen, key_hash), chosen, overrides)


__all__ = ["BudgetState", "Overrides", "PolicyEngine", "budgets_for", "decide_batch", "decide_pure", "fmt_j"]
