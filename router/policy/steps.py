"""The steps of the policy engine's rule, one function each, in the order :func:`~router.policy.engine.decide_pure`
calls them (the rule itself is stated in :mod:`router.policy.engine`).

They run before every model call, so each is one pass over the candidates, and they hand their results on as
plain tuples that ``decide_pure`` unpacks into named variables: a named tuple per step made a decision about 8 %
slower (creation and attribute reads) for no gain in what the code says.

Length: the functions are the rule's steps, read in order; they share only small helpers (units, sizes)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, NamedTuple

from ..capabilities import PARAM_OF
from ..cards import ModelCard
from ..classify.base import Classification
from ..errors import BadRequestError, BudgetExhaustedError, CapabilityError, ConfigError, ContextLengthError
from ..types import TIER_ORDER
from .base import BudgetState, DecisionRequest
from .decision import BudgetRef
from .schema import Policy

if TYPE_CHECKING:
    from .plan import Plan

TIER_DEFAULT_ACCURACY = {"specialist": 0.5, "small": 0.5, "large": 0.7}
"""Used only when neither the classifier nor the card says anything about a model on a task."""
EPS = 1e-9
"""Tolerance of every comparison of accuracies and joules (the vectorised rule uses the same)."""
_NO_OFFSETS: Mapping[str, float] = {}


def fmt_j(joules: float) -> str:
    """Joules for a sentence: 3 significant figures below 10 J, whole joules above."""
    if joules >= 10:
        return f"{joules:,.0f} J"
    return f"{joules:.3g} J"


def predicted(classification: Classification, card: ModelCard) -> tuple[float, str]:
    """(P(correct), where it came from) for one model on this request."""
    p = classification.p_correct.get(card.name)
    if p is not None and math.isfinite(p):
        return float(p), "classifier"
    prior = card.prior_accuracy.get(classification.task)
    if prior is not None:
        return float(prior), "card prior"
    return TIER_DEFAULT_ACCURACY.get(card.tier, 0.5), "tier default"


# -- the steps ---------------------------------------------------------------------------------------------------
class Target(NamedTuple):
    """Step 3's result, which the reason spells out."""

    value: float
    """The accuracy to meet on this request."""
    kind: str
    """``absolute``, ``relative`` (to the largest candidate) or ``relative_best`` (to the best predicted one)."""
    share: float
    """The number the policy (or caller) gave: the absolute target, or the share of the largest's prediction."""
    share_text: str
    """``share`` as the reason writes a relative target's (a whole percentage); empty for an absolute target."""
    reference: ModelCard | None
    """The largest (or best predicted) candidate, for a relative target (``None`` for an absolute one)."""
    offsets: Mapping[str, float]
    """Calibrated margins that apply to this target (empty when none do)."""
    adequate: dict[str, bool]


def candidates(task: str, cards: Mapping[str, ModelCard], policy: Policy, plan: Plan, req: DecisionRequest,
               out_tokens: int) -> tuple[list[ModelCard], dict[str, float], str | None, str]:
    """Step 1: ``(pool, energy, pinned, pin_source)``: the models that may answer; the estimated joules of every
    model that passed the context check (those over ``max_energy_j`` too); the pinned model and who pinned it.
    ``out_tokens``: what a general model's estimate assumes (:func:`output_tokens`)."""
    pinned, pin_source = _pin(task, cards, policy, req, plan.allowed)
    needs = req.capabilities
    if needs and pinned is not None and req.pinned:
        _check_pin_capable(cards[pinned], needs)
    in_tokens = req.input_tokens_hint
    floor = req.context_tokens_floor
    learned = req.energy_estimates or {}
    left_out = plan.excluded
    excluded: dict[str, str] = {}  # why each other model is out, for the error when none is left
    pool: list[ModelCard] = []
    energy: dict[str, float] = {}
    for card in cards.values():
        name = card.name
        est_out = 1 if card.tier == "specialist" else out_tokens
        why = left_out.get(name)
        if why is not None and (name != pinned or why == "not allowed"):  # a pin overrides the task's exclusions
            excluded[name] = why
        elif name != pinned and (in_tokens + est_out if floor is None else floor) > card.context_length:
            excluded[name] = "context too short"
        elif needs and not needs <= set(card.capabilities):
            excluded[name] = "cannot do " + ", ".join(sorted(needs - set(card.capabilities)))
        else:
            pool.append(card)
            known = learned.get(name)
            energy[name] = known[0] if known is not None else card.energy.joules(in_tokens, est_out)
    if not pool:
        _no_candidate(task, policy, excluded, needs, (in_tokens, out_tokens), floor, _room(cards, excluded, req),
                      req.max_tokens_param)
        reasons = {k: f"does not serve {task}" if v == "does not serve" else v for k, v in excluded.items()}
        raise BadRequestError(
            f"no model can serve this {task} request under policy `{policy.name}` "
            f"({'; '.join(f'{k}: {v}' for k, v in sorted(reasons.items()))})"
        )
    if req.max_energy_j is not None:
        pool = _within(pool, energy, req.max_energy_j)
    if pinned is not None and all(c.name != pinned for c in pool):
        if req.pinned:  # only max_energy_j can leave out the caller's own pin: allowed models were checked above
            raise BadRequestError(
                f"model {pinned!r} needs about {fmt_j(energy[pinned])}, over max_energy_j={req.max_energy_j:g} J; "
                "raise the limit or pin a cheaper model", param="max_energy_j")
        pinned, pin_source = None, ""  # the policy's pin is not open to this request (its key or its limit)
    return pool, energy, pinned, pin_source


def output_tokens(policy: Policy, req: DecisionRequest) -> int:
    """The output tokens a card's joule estimate assumes: the caller's hint, else the policy's estimate, never more
    than the request's ``max_tokens``."""
    out = req.output_tokens_hint or policy.output_tokens_estimate
    return out if req.max_tokens is None else min(out, req.max_tokens)


def _check_pin_capable(card: ModelCard, needs: frozenset[str]) -> None:
    missing = sorted(needs - set(card.capabilities))
    if missing:
        raise CapabilityError(
            f"model {card.name!r} cannot do {', '.join(missing)} (its card lists: "
            f"{', '.join(card.capabilities) or 'nothing besides text'}); pin a model that can, or use 'router'",
            param=PARAM_OF[missing[0]])


def _room(cards: Mapping[str, ModelCard], excluded: Mapping[str, str],
          req: DecisionRequest) -> tuple[ModelCard, int] | None:
    """Where ``max_tokens`` alone kept the request out of every model: the longest context left out for being too
    short, and the tokens its prompt needs without ``max_tokens`` (less than that context). None otherwise."""
    short = [cards[name] for name, why in excluded.items() if why == "context too short"]
    if req.max_tokens is None or not short:
        return None
    longest = max(short, key=lambda c: c.context_length)
    prompt = req.input_tokens_hint if req.context_tokens_floor is None else req.context_tokens_floor - req.max_tokens
    return (longest, prompt) if prompt < longest.context_length else None


def _no_candidate(task: str, policy: Policy, excluded: Mapping[str, str], needs: frozenset[str],
                  tokens: tuple[int, int], floor: int | None, room: tuple[ModelCard, int] | None,
                  limit: str) -> None:
    """The typed error when no model is left for a reason the caller can act on: the prompt is too long for every
    model that would serve it (``context_length_exceeded``: on ``max_tokens`` where the prompt alone would fit,
    ``room``), or no model has a capability the request needs. ``limit``: the name the caller gave
    ``max_tokens`` under."""
    serving = [v for v in excluded.values() if v not in ("does not serve", "specialist without tasks", "not allowed")]
    if serving and all(v == "context too short" for v in serving) and room is not None:
        card, prompt = room
        raise ContextLengthError(  # max_tokens itself is not named: it may have thousands of digits
            f"{limit} leaves no model under policy `{policy.name}` room to answer: the prompt needs "
            f"{'about' if floor is None else 'at least'} {prompt} token{'s' * (prompt != 1)} and the longest "
            f"context, {card.name}'s, holds {card.context_length}; lower {limit} to at most "
            f"{card.context_length - prompt}",
            param=limit)
    if serving and all(v == "context too short" for v in serving):
        need = (f"about {tokens[0]} tokens, +{tokens[1]} to generate" if floor is None
                else f"at least {floor} tokens with {limit}")
        raise ContextLengthError(
            f"the request ({need}) does not fit the context of any model under policy `{policy.name}`; shorten the "
            f"messages or lower {limit}", param="messages")
    missing = [set(v.removeprefix("cannot do ").split(", ")) for v in serving if v.startswith("cannot do ")]
    if needs and missing:
        blamed = sorted(set.intersection(*missing)) or sorted(needs)
        raise CapabilityError(
            f"no model can do {' and '.join(blamed)} for this {task} request under policy `{policy.name}` "
            f"({'; '.join(f'{k}: {v}' for k, v in sorted(excluded.items()))}); list `{blamed[0]}` in the "
            "`capabilities` of a card whose model supports it", param=PARAM_OF[blamed[0]])


def _pin(task: str, cards: Mapping[str, ModelCard], policy: Policy, req: DecisionRequest,
         allowed: frozenset[str] | None) -> tuple[str | None, str]:
    """The pinned model (the caller's, else the policy's for this task) and who pinned it."""
    pinned = req.pinned or policy.pinned.get(task)
    pin_source = ""
    if pinned is not None:
        pin_source = "pinned by the caller" if req.pinned else f"policy `{policy.name}` pins {task}"
        if pinned not in cards:
            raise (BadRequestError if req.pinned else ConfigError)(
                f"{pin_source}: model {pinned!r} is not among the candidates ({', '.join(sorted(cards))})"
            )
    if req.pinned and allowed is not None and req.pinned not in allowed:
        raise BadRequestError(
            f"model {req.pinned!r} is not allowed by policy `{policy.name}` (allowed: {', '.join(sorted(allowed))})",
            param="model",
        )
    return pinned, pin_source


def _within(pool: list[ModelCard], energy: Mapping[str, float], max_energy_j: float) -> list[ModelCard]:
    within = [c for c in pool if energy[c.name] <= max_energy_j + EPS]
    if not within:
        cheapest = min(pool, key=lambda c: energy[c.name])
        raise BadRequestError(
            f"no model answers within max_energy_j={max_energy_j:g} J: the cheapest candidate, "
            f"{cheapest.name}, needs about {fmt_j(energy[cheapest.name])}; raise the limit",
            param="max_energy_j",
        )
    return within


def predictions(classification: Classification,
                pool: list[ModelCard]) -> tuple[dict[str, float], dict[str, str]]:
    """Step 2: ``(p, source)``: P(correct) per candidate, and where each came from."""
    p: dict[str, float] = {}
    source: dict[str, str] = {}
    for card in pool:
        p[card.name], source[card.name] = predicted(classification, card)
    return p, source


def target(plan: Plan, req: DecisionRequest, pool: list[ModelCard], energy: Mapping[str, float],
           p: Mapping[str, float]) -> Target:
    """Step 3: the accuracy to meet, and which candidates meet it (with calibrated margins where they apply: only
    for the policy's own target, never for one the caller gave)."""
    if req.accuracy_target is not None:
        kind, share, share_text, offsets = "absolute", float(req.accuracy_target), "", _NO_OFFSETS
    else:
        kind, share, share_text, offsets = plan.kind, plan.share, plan.share_text, plan.offsets
    ref = None
    if kind == "relative":
        ref = largest(pool)
    elif kind == "relative_best":
        ref = _best(pool, energy, p)
    value = share if ref is None else share * p[ref.name]
    adequate = {n: v - value >= offsets.get(n, 0.0) - EPS for n, v in p.items()}
    return Target(value, kind, share, share_text, ref, offsets, adequate)


def _best(pool: list[ModelCard], energy: Mapping[str, float], p: Mapping[str, float]) -> ModelCard:
    """The reference of ``relative_to_best``: the highest predicted accuracy, the cheaper of equals."""
    return max(pool, key=lambda c: (p[c.name], -energy[c.name], c.name))


REFERENCE_CALL = (100, 100)
"""The input and output tokens of the call whose card joules rank models of unstated size as the reference."""


_LARGEST: dict[tuple[int, ...], tuple[tuple[ModelCard, ...], ModelCard]] = {}
""":func:`largest` per pool of cards (by identity; each entry holds its cards, so their ids are not reused). The
answer depends on the cards alone, and the same few pools come back on every request: computing it each time was
about 8 µs of the proxy's CPU per request in ``benchmarks/ab_proxy.py``'s profile."""


def largest(pool: Iterable[ModelCard]) -> ModelCard:
    """The reference of a relative target: among the general models (if any) of the highest tier, the most
    parameters (:attr:`ModelCard.size_b`) where each of them states its size, else the most joules by its card's
    own profile for a :data:`REFERENCE_CALL`; then the name. Only the cards decide, never joules learned from the
    ledger: two large models' learned figures cross as they move, and the reference (with it the target of the
    same request) would change from one hour to the next."""
    cards = tuple(pool)
    key = tuple(map(id, cards))
    found = _LARGEST.get(key)
    if found is None:
        if len(_LARGEST) >= 256:  # pools come from a Router's few cards; many Routers (tests) must not grow it
            _LARGEST.clear()
        found = _LARGEST[key] = (cards, _largest(cards))
    return found[1]


def _largest(pool: tuple[ModelCard, ...]) -> ModelCard:
    top = max(_rank(c) for c in pool)
    group = [c for c in pool if _rank(c) == top]
    if all(c.size_b is not None for c in group):
        return max(group, key=lambda c: (c.size_b or 0.0, c.name))
    return max(group, key=lambda c: (c.energy.joules(*REFERENCE_CALL), c.name))


def _rank(card: ModelCard) -> tuple[bool, int]:
    return card.tier != "specialist", TIER_ORDER.get(card.tier, 1)


def ranking(pool: list[ModelCard], energy: Mapping[str, float], p: Mapping[str, float], adequate: Mapping[str, bool],
            pinned: str | None, cards: Mapping[str, ModelCard]) -> tuple[list[ModelCard], list[ModelCard]]:
    """Step 4: ``(by_energy, ranked)``: the candidates by joules, and in the order to try them."""
    if len(pool) == 1:  # a single candidate is every order (a pin is always in the pool)
        return pool, pool
    by_energy = sorted(pool, key=lambda c: (energy[c.name], TIER_ORDER.get(c.tier, 1), c.name))
    ranked = [c for c in by_energy if adequate[c.name]]
    if len(ranked) < len(by_energy):
        ranked += sorted((c for c in by_energy if not adequate[c.name]), key=lambda c: (-p[c.name], energy[c.name]))
    if pinned is not None:
        ranked = [cards[pinned], *(c for c in ranked if c.name != pinned)]
    return by_energy, ranked


def cooled(ranked: list[ModelCard], cooling: frozenset[str]) -> tuple[list[ModelCard], list[str], list[str]]:
    """Step 4b: ``(ranked, flags, notes)``: the models cooling down moved after the others (while another can
    answer), so every request meanwhile neither waits on nor records a call that would fail at once."""
    if not cooling or all(c.name in cooling for c in ranked):
        return ranked, [], []
    healthy = [c for c in ranked if c.name not in cooling]
    passed = [c.name for c in ranked[: ranked.index(healthy[0])]]
    ranked = healthy + [c for c in ranked if c.name in cooling]
    if not passed:
        return ranked, [], []
    return ranked, ["cooling_down"], [f"{', '.join(passed)} cooling down after failing: tried only if no "
                                      "other model answers"]


def budgets(policy: Policy, plan: Plan, ranked: list[ModelCard], energy: Mapping[str, float],
            state: BudgetState, tokens: tuple[int, int], max_tokens_param: str = "max_tokens",
            ) -> tuple[ModelCard, dict[str, tuple[BudgetRef, ...]], set[str], list[BudgetRef], list[str], list[str]]:
    """Step 5: ``(chosen, refs, blocked, spent, flags, notes)``: the first ranked model whose budgets have room
    (or what the policy says when the first has none); each ranked model's budgets; the models one of whose
    budgets this request's estimate would overrun; the first choice's budgets without room. ``tokens``: the
    input and output tokens the estimates assume, so a refusal advises a lower ``max_tokens`` (``max_tokens_param``:
    the name the caller gave it under) only where one would fit. ``refs`` has every ranked model's budgets (more
    models' where none is budgeted)."""
    if not plan.budgeted:  # no model here is budgeted: the first ranked model answers
        return ranked[0], plan.refs, set(), [], [], []
    refs = {c.name: plan.refs[c.name] for c in ranked}
    used = state.used
    unreadable = state.unreadable

    def cost(name: str, r: BudgetRef, joules: float | None = None) -> float:
        joules = energy.get(name, 0.0) if joules is None else joules
        return joules if r.unit == "J" else joules * state.g_per_j.get(name, 0.0)

    def shorter_fits(card: ModelCard, b: BudgetRef) -> bool:
        """Whether a call writing one token (by its card) would fit the whole of ``b``: only then does a lower
        ``max_tokens`` help a call dearer than its budget."""
        in_tokens, out_tokens = tokens
        if card.tier == "specialist" or out_tokens <= 1:
            return False
        return cost(card.name, b, card.energy.joules(in_tokens, 1)) <= b.limit_j + EPS

    def blocking(name: str) -> list[BudgetRef]:
        return [r for r in refs[name] if r.key in unreadable or used.get(r.key, 0.0) + cost(name, r) > r.limit_j + EPS]

    blocked = {name for name, rs in refs.items() if rs and blocking(name)}  # checked once per model
    first = chosen = ranked[0]
    flags: list[str] = []
    notes: list[str] = []
    spent = blocking(first.name) if first.name in blocked else []
    unread = [r for r in spent if r.key in unreadable]
    spent = [r for r in spent if r.key not in unreadable]  # a budget known to be spent speaks first
    if not spent and unread and policy.on_budget_exhausted == "fallback":
        # cannot be enforced, so not reserved against while another model can answer; without one the
        # reservation refuses the request (503), as the ledger's budgets fail closed
        room = next((c for c in ranked[1:] if c.name not in blocked), None)
        if room is not None:
            chosen = room
            flags.append("budget_fallback")
    left_out = sorted(n for n, rs in refs.items() if n != chosen.name and any(r.key in unreadable for r in rs))
    if left_out:
        keys = sorted({r.key for n in left_out for r in refs[n] if r.key in unreadable})
        flags.append("budget_unreadable")
        notes.append(f"budget {', '.join(keys)} could not be read (the ledger's store is unavailable): "
                     f"{', '.join(left_out)} not tried")
    if spent:
        too_small = next((r for r in spent if cost(first.name, r) > r.limit_j + EPS), None)
        b = too_small or spent[0]
        if too_small is not None:
            need, limit = ((fmt_j(cost(first.name, b)), fmt_j(b.limit_j)) if b.unit == "J"
                           else (f"{cost(first.name, b):.3g} g CO2e", f"{b.limit_j:.3g} g CO2e"))
            what = (f"{first.name}'s call needs about {need}, more than the whole of its budget {b.key} "
                    f"({limit} a window)")
        elif b.unit == "J":  # what the call needs too: a budget can refuse it with most of the window left
            # the figure is spent plus held, and a call still running holds its estimate
            what = (f"{first.name}'s budget {b.key} is spent or held by calls in flight "
                    f"({fmt_j(used.get(b.key, 0.0))} of {fmt_j(b.limit_j)} this window, the call needs "
                    f"~{fmt_j(cost(first.name, b))})")
        else:
            what = (f"{first.name}'s carbon budget {b.key} is spent or held by calls in flight "
                    f"({used.get(b.key, 0.0):.3g} of "
                    f"{b.limit_j:.3g} g CO2e this window, the call needs ~{cost(first.name, b):.3g} g)")
        mode = policy.on_budget_exhausted
        if mode == "allow_and_flag":
            flags.append("over_budget_allowed")
            notes.append(f"{what}; allowed and flagged")
        else:
            room = next((c for c in ranked[1:] if c.name not in blocked), None)
            if mode == "reject" or room is None:
                # a budget smaller than the call has room in no window: waiting helps only the other models
                waiting = [c.name for c in (ranked if mode == "fallback" else ranked[:1])
                           if all(cost(c.name, r) <= r.limit_j + EPS for r in refs[c.name])]
                retry = min((state.resets_in(r.window_s) for n in waiting for r in blocking(n)), default=None)
                raise BudgetExhaustedError(
                    f"budget_exhausted: {what}; policy `{policy.name}` says {mode}"
                    + ("" if mode == "reject" else " but no other model has room")
                    + (f"; retry in {math.ceil(retry)} s or raise the budget" if retry is not None
                       else f"; lower {max_tokens_param} or raise the budget" if too_small and shorter_fits(first, b)
                       else "; raise the budget"),
                    retry_after_s=retry, model=first.name, budgets=tuple(r.key for r in refs[first.name]),
                )
            chosen = room
            flags.append("budget_fallback")
            notes.append(f"{what} → fell back to {room.name}")
    return chosen, refs, blocked, spent, flags, notes


def cascade(policy: Policy, chosen: ModelCard, pinned: str | None, spent: list[BudgetRef], blocked: set[str],
            by_energy: list[ModelCard], ranked: list[ModelCard], energy: Mapping[str, float],
            p: Mapping[str, float], adequate: Mapping[str, bool]) -> tuple[ModelCard, tuple[str, ...], float | None,
                                                                           list[str]]:
    """Step 6: ``(chosen, escalate_to, escalate_below, notes)``: the model to start with, and the ones to escalate
    to when its own confidence is below ``escalate_below``."""
    casc = policy.cascade
    if not casc.enabled or pinned is not None:
        return chosen, (), None, []
    notes: list[str] = []
    if casc.start == "cheapest" and not spent:
        cheapest = next((c for c in by_energy if c.name not in blocked), chosen)
        if energy[cheapest.name] < energy[chosen.name]:
            chosen = cheapest
            notes.append(f"cascade starts with the cheapest model, {cheapest.name}")
    with_room = [c for c in ranked if c.name != chosen.name and c.name not in blocked]
    if not with_room:  # nothing to escalate to (a single candidate, often)
        return chosen, (), None, notes
    if casc.escalate_to == "next":
        ups = sorted((c for c in with_room if p[c.name] > p[chosen.name] + EPS),
                     key=lambda c: (not adequate[c.name], energy[c.name]))
    elif casc.escalate_to in TIER_ORDER:
        ups = sorted((c for c in with_room if c.tier == casc.escalate_to), key=lambda c: energy[c.name])
    else:
        ups = [c for c in with_room if c.name == casc.escalate_to]
    if not ups:
        return chosen, (), None, notes
    return chosen, tuple(c.name for c in ups[:2]), casc.escalate_below, notes


def reason(task: str, chosen: ModelCard, p: Mapping[str, float], source: str, tgt: Target, pinned: str | None,
           pin_source: str, by_energy: list[ModelCard], energy: Mapping[str, float], escalate_to: tuple[str, ...],
           escalate_below: float | None, learned: Mapping[str, tuple[float, str]] | None = None) -> str:
    """Step 7: the head of the reason (the caller appends the budget and cascade notes). When the caller gave
    learned estimates, each figure says where it comes from (``ledger:212 calls`` or ``card``)."""
    name = chosen.name
    pc = p[name]
    pc_s = f"{pc:.2f}"  # formatted once: the reference of a relative target is often the chosen model
    value, _, _, share_text, ref, offsets, adequate = tgt
    src_note = "" if source == "classifier" else f" ({source})"
    target_s = f"target {value:.2f}"
    if ref is not None:
        target_s += f" ({share_text} of {ref.name}'s {pc_s if ref.name == name else format(p[ref.name], '.2f')})"
    if pinned is not None and name == pinned:
        head = f"{task} task → {name}, {pin_source}; predicted {pc_s}{src_note} vs {target_s}"
    elif adequate[name]:
        cmp = "≥" if pc >= value - EPS else "<"
        cal_s = f" (calibrated margin {offsets[name]:+.3f})" if name in offsets else ""
        head = f"{task} task → {name}; predicted {pc_s}{src_note} {cmp} {target_s}{cal_s}"
    else:
        head = f"{task} task → {name}; no candidate meets {target_s}; best predicted {pc_s}{src_note}"
    own = energy[name]
    dearer = [c for c in by_energy if energy[c.name] > own]
    if dearer:
        other = dearer[0] if dearer[0].tier != chosen.tier or len(dearer) == 1 else dearer[-1]
        head += f"; {_joules(name, energy, learned)} vs {_joules(other.name, energy, learned)} for {other.name}"
    else:
        head += f"; {_joules(name, energy, learned)}"
    if escalate_to:
        head += f"; escalates to {escalate_to[0]} if confidence < {escalate_below:.2f}"
    return head


def _joules(model: str, energy: Mapping[str, float], learned: Mapping[str, tuple[float, str]] | None) -> str:
    """A model's estimated joules for the reason, with where the figure comes from when the caller learned any."""
    if learned is None:
        return fmt_j(energy[model])
    return f"{fmt_j(energy[model])} ({learned[model][1] if model in learned else 'card'})"
