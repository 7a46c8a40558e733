"""The engine interface: both engines implement it, the Router's budget reads come from it, ``router.policy``
imports neither the ledger nor training, and the rule split into steps decides exactly as the single function
it replaced (randomised, against that function loaded from git history)."""

from __future__ import annotations

import ast
import math
import random
import subprocess
import sys
import types
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
BEFORE_SPLIT = "a9587a9"
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


def test_budget_refs_cover_every_candidate_once_and_follow_the_key_switch(all_cards, shipped) -> None:
    local = {n: c for n, c in all_cards.items() if c.callable}
    engine = PolicyEngine(local, shipped)
    assert [r.key for r in engine.budget_refs(DecisionRequest(policy="balanced"))] == ["tier:large:3600s"]
    team_a = hash_key("sk-team-a")  # per-key.yaml switches team A to `eco`, keeping its own budgets on top
    refs = {r.key: r for r in engine.budget_refs(DecisionRequest(policy="per-key", key_hash=team_a))}
    assert set(refs) == {"tier:large:3600s", f"key:{team_a}:model:gemma3-270m:3600s"}
    assert refs["tier:large:3600s"].limit_j == shipped["eco"].budgets[0].joules
    # the snapshot the caller builds from those refs is what the decision reads
    full = BudgetState({r: ref.limit_j for r, ref in refs.items()}, now=30.0)
    d = engine.decide(chat(smollm2_135m=0.5, gemma3_270m=0.9), DecisionRequest(policy="per-key", key_hash=team_a), full)
    assert d.model != "gemma3-270m" and "budget_fallback" in d.flags and d.policy == "eco"


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


# -- the steps decide as the single function did ----------------------------------------------------------------
def _before_split() -> types.ModuleType:
    """``router/policy/engine.py`` as it was before the split, loaded as a module of ``router.policy``."""
    try:
        src = subprocess.run(["git", "show", f"{BEFORE_SPLIT}:router/policy/engine.py"], capture_output=True,
                             text=True, cwd=ROOT, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"git history with {BEFORE_SPLIT} is not available here")
    name = "router.policy._engine_before_split"
    mod = types.ModuleType(name)
    mod.__package__ = "router.policy"
    sys.modules[name] = mod  # dataclasses look their module up while the class is created
    try:
        exec(compile(src, f"{BEFORE_SPLIT}:router/policy/engine.py", "exec"), mod.__dict__)
    finally:
        del sys.modules[name]
    return mod


KEYS = [hash_key(f"sk-{i}") for i in range(3)] + [hash_key("sk-team-a"), hash_key("sk-team-b")]


def _random_policy(rng: random.Random, name: str, cards: list[str], others: list[str]) -> Policy:
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
        if others and rng.random() < 0.4:
            entry["policy"] = rng.choice(others)
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


def _outcome(fn: Any) -> Any:
    try:
        return fn()
    except Exception as exc:  # compared by type, message and retry time
        return (type(exc).__name__, str(exc), getattr(exc, "retry_after_s", None))


def test_decide_pure_equals_the_single_function_on_random_decisions(all_cards, shipped) -> None:
    old = _before_split()
    rng = random.Random(20261123)
    names = list(all_cards)
    same = errors = fixed = 0
    for i in range(2000):
        subset = rng.sample(names, rng.randint(1, len(names))) if rng.random() < 0.5 else names
        cards = {n: all_cards[n] for n in subset}
        policy = rng.choice(list(shipped.values())) if i % 4 == 0 else _random_policy(rng, f"p{i}", subset, [])
        c = _random_classification(rng, subset)
        req = _random_request(rng, subset)
        keys = {r.key: r.limit_j for card in cards.values() for r in budgets_for(policy, card, req.get("key_hash"))}
        used, now = _random_used(rng, keys), rng.uniform(0, 1e6)
        new = _outcome(lambda: decide_pure(c, cards, BudgetState(used, now), policy, req))  # noqa: B023
        before = _outcome(lambda: old.decide_pure(c, cards, old.BudgetState(used, now), policy, req))  # noqa: B023
        if isinstance(before, tuple) and before[0] == "KeyError":
            # the old function crashed when max_energy_j left out a pinned model; now it is a typed error (the
            # caller's pin) or the policy's pin gives way: a fix, not a difference in routing
            assert not isinstance(new, tuple) or new[0] == "BadRequestError", (i, new)
            fixed += 1
            continue
        assert new == before, (i, policy, c, req, used)
        same += 1
        errors += isinstance(new, tuple)
    assert same + fixed == 2000 and fixed < 20 and 100 < errors < 1500  # both kinds of outcome were exercised


class _Ledger:
    def __init__(self, used: dict[str, float]) -> None:
        self.used = used
        self.read: list[str] = []

    def budget_used(self, key: str, window_s: float) -> float:
        self.read.append(key)
        return self.used.get(key, 0.0)


def test_policy_engine_equals_the_ledger_reading_engine_on_random_requests(all_cards, shipped) -> None:
    """The Engine with the caller's snapshot decides as the engine that read the ledger itself did, key policy
    switches included, and the caller reads exactly the budgets that engine read."""
    old = _before_split()
    rng = random.Random(7)
    local = [n for n, c in all_cards.items() if c.callable]
    callable_cards = {n: all_cards[n] for n in local}
    for i in range(500):
        names = [f"q{i}-{k}" for k in range(3)]
        policies = {p.name: p for p in (_random_policy(rng, n, local, [*names, "eco"]) for n in names)}
        policies.update(shipped)
        name = rng.choice(list(policies))
        c = _random_classification(rng, local)
        req = _random_request(rng, local)
        req.pop("output_tokens_hint", None)  # the ledger-reading engine had no such parameter
        keys = {r.key: r.limit_j for p in policies.values() for k in (None, *KEYS) for card in callable_cards.values()
                for r in budgets_for(p, card, k)}
        used, now = _random_used(rng, keys), rng.uniform(0, 1e6)
        ledger_before, ledger_now = _Ledger(used), _Ledger(used)
        before_engine = old.PolicyEngine(all_cards, policies, ledger_before, clock=lambda: now)  # noqa: B023
        before = _outcome(lambda: before_engine.decide(c, policy=name, **req))  # noqa: B023
        engine = PolicyEngine(callable_cards, policies)
        request = DecisionRequest(policy=name, **req)

        def decide() -> Any:
            refs = engine.budget_refs(request)  # noqa: B023
            state = BudgetState({r.key: ledger_now.budget_used(r.key, r.window_s) for r in refs}, now)  # noqa: B023
            return engine.decide(c, request, state)  # noqa: B023

        assert _outcome(decide) == before, (i, name, c, req)
        assert ledger_now.read == ledger_before.read
