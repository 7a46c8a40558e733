"""Bind the simulator to the policy engine the Router runs (:mod:`router.policy.engine`).

* :meth:`PolicyEngineBridge.decide` asks a :class:`~router.policy.engine.PolicyEngine` over the models measured
  for the request (the :class:`~router.policy.base.Engine` the Router uses over its callable models), with an
  empty budget snapshot, the request's input-token estimate as ``input_tokens_hint`` (the simulator passes the
  Router's own: :func:`~router.backends.base.estimated_tokens` of the prompt's UTF-8 size) and the Router's context
  floor of a one-turn request (:func:`context_floor_of`), so a model is left out for a short context exactly where
  the Router leaves it out.
* :meth:`PolicyEngineBridge.decide_many` (used for sweeps) feeds the engine's vectorised ``decide_batch`` with the
  same inputs the engine's steps compute (``predicted``, the card energy estimates, eligibility from allowed
  models / tasks / context), then applies the policy's per-task pins and a cascade's ``start: cheapest`` as
  ``decide_pure`` does. ``tests/test_simulate_engine.py`` checks it equals the scalar path on real requests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._request import context_floor
from ..cards import ModelCard
from ..classify.base import Classification
from ..errors import ConfigError
from ..policy.base import BudgetState, DecisionRequest
from ..policy.batch import decide_batch
from ..policy.decision import Decision
from ..policy.engine import PolicyEngine
from ..policy.loader import load_policy
from ..policy.schema import Policy
from ..policy.steps import largest, output_tokens, predicted
from ..yaml_files import YAML_SUFFIXES, named_yaml_file, yaml_files


def resolve_policy(policy: str | Path | Policy, policies_dir: str | Path | None) -> Policy:
    """A :class:`Policy` object, a YAML path, or a name looked up in ``policies_dir``."""
    if isinstance(policy, Policy):
        return policy
    path = Path(policy)
    if path.suffix in YAML_SUFFIXES or path.is_file():
        return load_policy(path)
    if policies_dir is None:
        raise ConfigError(f"policy {policy!r}: give a YAML path or a policies folder")
    folder = Path(policies_dir)
    file = named_yaml_file(folder, str(policy))
    if file is None:
        known = sorted({p.stem for p in yaml_files(folder)})
        raise ConfigError(f"unknown policy {policy!r}: no {folder / policy}.yaml (or .yml); known: "
                          f"{', '.join(known) or '(none)'}")
    return load_policy(file)


class PolicyEngineBridge:
    """The :class:`~router.simulate.simulator.DecisionEngine` the simulator uses, backed by the real engine."""

    def __init__(self, policy: str | Path | Policy, policies_dir: str | Path | None = None) -> None:
        self.policy = resolve_policy(policy, policies_dir)
        self.name = self.policy.name
        self.notes: list[str] = []
        self._engines: dict[tuple[str, ...], PolicyEngine] = {}
        if self.policy.grid is not None:  # its other policy is not loaded: there is no live intensity to switch on
            self.notes.append(
                f"grid: not replayed (policy `{self.policy.grid.use_policy}` above "
                f"{self.policy.grid.above_g_per_kwh:g} g/kWh is a live switch); every request is decided by "
                f"`{self.name}`'s own rules")
            self.policy = self.policy.model_copy(update={"grid": None})
        if self.policy.cascade.enabled:
            self.notes.append(
                "cascade: the simulation scores the first model only (escalation needs the model's own confidence, "
                "which outcome files do not carry)"
            )

    def engine(self, cards: Mapping[str, ModelCard]) -> PolicyEngine:
        """The engine choosing among ``cards`` (one per set of measured models; a file has few)."""
        key = tuple(cards)
        found = self._engines.get(key)
        if found is None:
            found = self._engines[key] = PolicyEngine(cards, {self.name: self.policy})
        return found

    def decide(
        self,
        classification: Classification,
        cards: Mapping[str, ModelCard],
        overrides: Mapping[str, Any],
        input_tokens: int,
    ) -> Decision:
        floor = context_floor_of(classification, overrides.get("max_tokens"))
        request = DecisionRequest.of({**overrides, "input_tokens_hint": int(input_tokens),
                                      "context_tokens_floor": floor})
        return self.engine(cards).decide(classification, request, BudgetState.empty())

    def decide_many(
        self,
        classifications: Sequence[Classification],
        cards: Mapping[str, ModelCard],
        overrides: Mapping[str, Any],
        input_tokens: Sequence[int],
    ) -> list[str]:
        """Chosen model per request via ``decide_batch``; the same rule as :meth:`decide` (budgets empty)."""
        if not classifications:
            return []
        pol = self.policy
        ov0 = DecisionRequest.of(dict(overrides))
        if ov0.pinned is not None or ov0.max_energy_j is not None or ov0.key_hash is not None:
            return [self.decide(c, cards, overrides, t).model
                    for c, t in zip(classifications, input_tokens, strict=True)]
        names = list(cards)
        card_list = [cards[n] for n in names]
        n, m = len(classifications), len(names)
        out_tokens = output_tokens(pol, ov0)
        allowed = set(pol.allowed_models) if pol.allowed_models is not None else None
        p = np.empty((n, m))
        e = np.empty((n, m))
        ok = np.ones((n, m), dtype=bool)
        hints = np.array([int(t) for t in input_tokens])
        if len(hints) != n:
            raise ValueError(f"{n} classifications but {len(hints)} input-token estimates")
        floors = np.array([context_floor_of(c, ov0.max_tokens) for c in classifications])
        for j, card in enumerate(card_list):
            spec = card.tier == "specialist"
            out = 1 if spec else out_tokens
            en = card.energy
            e[:, j] = en.per_call_j + en.per_input_token_j * hints + en.per_output_token_j * out
            p[:, j] = [predicted(c, card)[0] for c in classifications]
            if allowed is not None and card.name not in allowed:
                ok[:, j] = False
            if spec and not card.tasks:
                ok[:, j] = False
            elif card.tasks:
                ok[:, j] &= np.array([card.serves(c.task) for c in classifications])
            ok[:, j] &= floors <= card.context_length
        if ov0.accuracy_target is not None:
            relative, target, offsets = False, float(ov0.accuracy_target), None
        else:
            spec_t = pol.accuracy
            relative, target = spec_t.kind != "absolute", spec_t.value
            cal = pol.calibrated
            offsets = None
            if cal is not None and cal.target_kind == spec_t.kind and abs(cal.target - target) < 1e-9:
                offsets = np.array([cal.offsets.get(x, 0.0) for x in names])
        reference = None
        if relative and ov0.accuracy_target is None and pol.accuracy.kind == "relative_best":
            # decide_pure's "best": the highest prediction, the cheaper of equals, then the name
            key = np.where(ok, p * 1e6 - e / (e.max() + 1.0), -np.inf)
            reference = key.argmax(axis=1)
        elif relative:  # decide_pure's own "largest", once per set of eligible models (a file has few)
            pools, row_pool = np.unique(ok, axis=0, return_inverse=True)
            by_pool = np.array([names.index(largest(c for c, on in zip(card_list, pool, strict=True) if on).name)
                                if pool.any() else 0 for pool in pools])
            reference = by_pool[row_pool.reshape(-1)]
        if not ok.any(axis=1).all():
            bad = int(np.nonzero(~ok.any(axis=1))[0][0])
            self.decide(classifications[bad], cards, overrides, int(hints[bad]))  # raises the engine's own error
        chosen = decide_batch(p, e, target, relative=relative, offsets=offsets, eligible=ok, reference=reference)
        result = [names[int(j)] for j in chosen]
        for i, c in enumerate(classifications):
            pin = pol.pinned.get(c.task)
            if pin is not None:
                result[i] = pin
        if pol.cascade.enabled and pol.cascade.start == "cheapest":
            cheapest = np.argmin(np.where(ok, e, np.inf), axis=1)
            for i, c in enumerate(classifications):
                if pol.pinned.get(c.task) is None and e[i, cheapest[i]] < e[i, names.index(result[i])]:
                    result[i] = names[int(cheapest[i])]
        return result


def context_floor_of(c: Classification, max_tokens: int | None) -> int:
    """The Router's context floor (:func:`router._request.context_floor`) of the request as one user turn: an
    outcomes line holds the prompt the classifier read, not the conversation. The Router leaves a model out only
    where the prompt surely cannot fit and lets its backend count the rest exactly: leaving out every model whose
    context the token estimate overruns would send long prompts to the large model where the Router answers them
    with a small one."""
    return context_floor(int(c.chars), 1, max_tokens)
