"""The engine interface: both engines implement it, the Router's budget reads come from it, ``router.policy``
imports neither the ledger nor training, and the rule split into steps decides exactly as the single function
it replaced (randomised, against that function loaded from git history)."""

from __future__ import annotations

import ast
import math
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from router.cards import ModelCard, load_cards, load_catalogue
from router.classify.base import TASKS, Classification
from router.errors import RouterError
from router.ledger import hash_key
from router.policy.base import BudgetState, DecisionRequest, Engine
from router.policy.engine import PolicyEngine, budgets_for, decide_pure
from router.policy.first_rule import FirstRuleEngine
from router.policy.loader import load_policies
from router.policy.schema import Policy

ROOT = Path(__file__).resolve().parent.parent
"""The last commit with the single-function ``decide_pure`` (and the ledger-reading ``PolicyEngine``)."""


@pytest.fixture(scope="module")
def all_cards() -> dict[str, ModelCard]:
    """The shipped cards and the four hosted ones that sat beside them before the catalogue (same order)."""
    hosted = load_catalogue(ROOT / "models", with_models=False)
    cards = {**load_cards(ROOT / "models"), **{n: hosted[n] for n in HOSTED}}
    return dict(sorted(cards.items(), key=lambda kv: kv[1].path.name if kv[1].path else kv[0]))


HOSTED = ("gpt-4-1106-preview", "llama-3-70b-instruct", "llama-3-8b-instruct", "mixtral-8x7b-instruct")


@pytest.fixture(scope="module")
def shipped() -> dict[str, Policy]:
    return load_policies(ROOT / "policies", recursive=True)


def chat(**p: float) -> Classification:
    return Classification("chat", {"chat": 1.0}, {k.replace("_", "-"): v for k, v in p.items()})


# -- the interface ----------------------------------------------------------------------------------------------
def test_both_engines_implement_the_interface(all_cards, shipped) -> None:
    local = {n: c for n, c in all_cards.items() if c.callable}
    for engine in (PolicyEngine(local, shipped), FirstRuleEngine(all_cards)):
        assert isinstance(engine, Engine)
        req = DecisionRequest(policy="balanced")
        d = engine.decide(chat(smollm2_135m=0.4, gemma3_270m=0.9), req, BudgetState.empty())
        assert d.model in local and d.policy == "balanced"
    assert FirstRuleEngine(all_cards).budget_refs(DecisionRequest(policy="balanced")) == ()
    with pytest.raises(TypeError):
        Engine()  # type: ignore[abstract]


def test_budget_refs_cover_every_candidate_once_with_the_keys_own(all_cards, shipped) -> None:
    local = {n: c for n, c in all_cards.items() if c.callable}
    engine = PolicyEngine(local, shipped)
    assert [r.key for r in engine.budget_refs(DecisionRequest(policy="balanced"))] == ["tier:large:3600s"]
    team_a = hash_key("sk-team-a")  # per-key.yaml gives team A 5 kJ per hour on gemma3-270m, on top of the rest
    refs = {r.key: r for r in engine.budget_refs(DecisionRequest(policy="per-key", key_hash=team_a))}
    own = f"key:{team_a}:model:gemma3-270m:3600s"
    assert set(refs) == {"tier:large:86400s", f"key:{team_a}:tier:large:86400s", own}
    assert refs[f"key:{team_a}:model:gemma3-270m:3600s"].limit_j == 5000
    # the snapshot the caller builds from those refs is what the decision reads: the key's own hour is spent
    full = BudgetState({f"key:{team_a}:model:gemma3-270m:3600s": 5000.0}, now=30.0)
    with pytest.raises(RouterError, match="budget_exhausted"):  # per-key rejects when a budget is spent
        engine.decide(chat(smollm2_135m=0.1, gemma3_270m=0.9), DecisionRequest(policy="per-key", key_hash=team_a),
                      full)


def test_a_request_without_a_policy_uses_the_default(all_cards, shipped) -> None:
    local = {n: c for n, c in all_cards.items() if c.callable}
    only = PolicyEngine(local, {"eco": shipped["eco"]})
    assert only.decide(chat(), DecisionRequest(), BudgetState.empty()).policy == "eco"
    assert PolicyEngine(local, shipped, default_policy="quality").policy(None).name == "quality"
    with pytest.raises(RouterError, match="names no policy"):
        PolicyEngine(local, shipped).decide(chat(), DecisionRequest(), BudgetState.empty())
    with pytest.raises(RouterError, match="unknown policy 'nope'"):
        PolicyEngine(local, shipped).budget_refs(DecisionRequest(policy="nope"))
    with pytest.raises(RouterError, match="unknown override"):
        DecisionRequest.of({"acuracy_target": 0.5})


# -- what router.policy imports ---------------------------------------------------------------------------------
FORBIDDEN = ("router.ledger", "router.training")


def test_policy_modules_import_neither_ledger_nor_training() -> None:
    """Loaded in a fresh interpreter without ``router/__init__`` (which imports the Router, and so the ledger):
    what the policy modules themselves pull in."""
    code = f"""
import pkgutil, sys, types, importlib
pkg = types.ModuleType("router")
pkg.__path__ = [{str(ROOT / "router")!r}]
sys.modules["router"] = pkg
import router.policy
for info in pkgutil.iter_modules(router.policy.__path__):
    importlib.import_module("router.policy." + info.name)
print(" ".join(sorted(m for m in sys.modules if m.startswith({FORBIDDEN!r}))))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == ""


def test_policy_modules_have_no_deferred_imports_of_ledger_or_training() -> None:
    """Also imports inside functions, which the fresh interpreter above never runs."""
    found = []
    for path in sorted((ROOT / "router" / "policy").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ["router", "policy"][: 2 - node.level + 1] if node.level else []
                names = [".".join([*base, node.module or ""]).rstrip(".")]
            found += [f"{path.name}: {n}" for n in names if n.startswith(FORBIDDEN)]
    assert found == []


# -- random decisions: a decision that holds together, or a typed error -----------------------------------
KEYS = [hash_key(f"sk-{i}") for i in range(3)] + [hash_key("sk-team-a"), hash_key("sk-team-b")]


def _random_policy(rng: random.Random, name: str, cards: list[str]) -> Policy:
    tiers = ["tier:specialist", "tier:small", "tier:large"]

    def budget() -> dict[str, Any]:
        return {"model": rng.choice([*cards, *tiers, "*"]), "joules": 10 ** rng.uniform(-2, 5),
                "per": rng.choice(["minute", "hour", "day", 7.0, 1800.0]), "scope": rng.choice(["global", "per_key"])}

    def accuracy() -> dict[str, float]:
        if rng.random() < 0.5:
            return {"min_accuracy": round(rng.uniform(0.2, 0.95), 2)}
        return {"relative_to_largest": round(rng.uniform(0.5, 1.0), 2)}

    acc = accuracy()
    spec: dict[str, Any] = {
        "name": name,
        "accuracy": acc,
        "budgets": [budget() for _ in range(rng.choice([0, 0, 1, 2, 3]))],
        "on_budget_exhausted": rng.choice(["fallback", "reject", "allow_and_flag"]),
        "output_tokens_estimate": rng.choice([1, 16, 128, 1000]),
    }
    if rng.random() < 0.35:
        spec["cascade"] = {"enabled": True, "escalate_below": round(rng.uniform(0.2, 0.9), 2),
                           "escalate_to": rng.choice(["next", "next", "small", "large", "specialist", *cards]),
                           "start": rng.choice(["target", "cheapest"])}
    if rng.random() < 0.25:
        spec["allowed_models"] = rng.sample(cards, rng.randint(1, len(cards)))
    if rng.random() < 0.2:
        spec["pinned"] = {rng.choice(TASKS): rng.choice(cards)}
    if rng.random() < 0.3:
        kind, value = next(iter(acc.items()))
        spec["calibrated"] = {
            "target_kind": "absolute" if kind == "min_accuracy" else "relative",
            "target": value if rng.random() < 0.8 else 0.5,
            "offsets": {m: round(rng.uniform(-0.2, 0.2), 3) for m in rng.sample(cards, rng.randint(1, len(cards)))},
            "confidence": 0.9, "n_calibration": 100,
        }
    spec["keys"] = []
    for key in rng.sample(KEYS, rng.choice([0, 0, 1, 2])):
        entry: dict[str, Any] = {"key_hash": key}
        if rng.random() < 0.4:
            entry["accuracy"] = accuracy()
        if rng.random() < 0.5:
            entry["budgets"] = [budget() for _ in range(rng.randint(1, 2))]
        if rng.random() < 0.3:
            entry["allowed_models"] = rng.sample(cards, rng.randint(1, len(cards)))
        spec["keys"].append(entry)
    return Policy.model_validate(spec)


def _random_classification(rng: random.Random, cards: list[str]) -> Classification:
    p: dict[str, float] = {}
    for m in cards:
        r = rng.random()
        if r < 0.15:
            continue  # no prediction: the card prior or the tier default decides
        p[m] = math.nan if r < 0.2 else (round(rng.random(), 1) if r < 0.4 else rng.random())  # ties too
    task = rng.choice([*TASKS, "translation"])
    return Classification(task, {task: rng.random()}, p)


def _random_request(rng: random.Random, candidates: list[str]) -> dict[str, Any]:
    req: dict[str, Any] = {"input_tokens_hint": rng.choice([1, 12, 64, 400, 3000, 9000, 40_000, 300_000])}
    if rng.random() < 0.25:
        req["accuracy_target"] = round(rng.uniform(0.0, 1.0), 2)
    if rng.random() < 0.2:
        req["max_energy_j"] = 10 ** rng.uniform(-2, 4)
    if rng.random() < 0.15:
        req["pinned"] = rng.choice(candidates)
    if rng.random() < 0.5:
        req["key_hash"] = rng.choice(KEYS)
    if rng.random() < 0.2:
        req["output_tokens_hint"] = rng.choice([1, 50, 500])
    return req


def _random_used(rng: random.Random, keys: dict[str, float]) -> dict[str, float]:
    return {k: limit * rng.choice([0.0, 0.5, 0.999, 1.0, 1.5]) for k, limit in keys.items() if rng.random() < 0.6}


def test_random_decisions_hold_together_or_raise_typed_errors(all_cards, shipped) -> None:
    """2,000 random requests (pins, limits, keys, budgets at every level of use) against random and shipped
    policies: each decision names a candidate, keeps the caller's pin first, never falls back to a model whose
    budget is spent, or the request ends in a RouterError, never another exception."""
    rng = random.Random(20261123)
    names = list(all_cards)
    decided = refused = 0
    for i in range(2000):
        subset = rng.sample(names, rng.randint(1, len(names))) if rng.random() < 0.5 else names
        cards = {n: all_cards[n] for n in subset}
        policy = rng.choice(list(shipped.values())) if i % 4 == 0 else _random_policy(rng, f"p{i}", subset)
        c = _random_classification(rng, subset)
        req = DecisionRequest.of(_random_request(rng, subset))
        limits = {r.key: r for card in cards.values() for r in budgets_for(policy, card, req.key_hash)}
        used = _random_used(rng, {k: r.limit_j for k, r in limits.items()})
        try:
            d = decide_pure(c, cards, BudgetState(used, rng.uniform(0, 1e6)), policy, req)
        except RouterError:
            refused += 1
            continue
        decided += 1
        assert d.model in cards and d.model not in d.fallbacks, i
        if req.pinned is not None:  # the pin answers unless its budget is spent and the policy falls back
            assert d.model == req.pinned or "budget_fallback" in d.flags, i
        for fallback in d.fallbacks:  # a fallback's own estimate fits each of its budgets
            over = [r for r in d.model_budgets.get(fallback, ())
                    if used.get(r.key, 0.0) + d.estimates[fallback] > r.limit_j + 1e-9]
            assert not over or "over_budget_allowed" in d.flags, (i, fallback, over)
    assert decided > 500 and refused > 100  # both kinds of outcome were exercised
