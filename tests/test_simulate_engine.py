"""The simulator decides with the policy engine's own code: the vectorised path equals decide_pure."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from test_simulate_helpers import ROOT, make_cards_dir

from router.backends.base import estimated_tokens, utf8_size
from router.cards import ModelCard, load_cards
from router.classify.base import Classification
from router.classify.onnx_classifier import load_default_classifier
from router.policy.engine import decide_pure
from router.policy.schema import Policy
from router.simulate.importers import import_routellm
from router.simulate.outcomes import load_outcomes
from router.simulate.policy_bridge import PolicyEngineBridge
from router.simulate.simulator import Simulator

POLICIES = [
    Policy(name="abs", accuracy={"min_accuracy": 0.72}),
    Policy(name="rel", accuracy={"relative_to_largest": 0.95}),
    Policy(name="best", accuracy={"relative_to_best": 0.9}),
    Policy(name="only-hosted", accuracy={"min_accuracy": 0.6},
           allowed_models=["mixtral-8x7b-instruct", "gpt-4-1106-preview", "smollm2-135m"]),
    Policy(name="pin", accuracy={"min_accuracy": 0.8}, pinned={"sentiment": "smollm2-135m"}),
    Policy(name="cal", accuracy={"min_accuracy": 0.7},
           calibrated={"target_kind": "absolute", "target": 0.7, "offsets": {"mixtral-8x7b-instruct": 0.05},
                       "confidence": 0.9, "n_calibration": 100}),
    Policy(name="casc", accuracy={"min_accuracy": 0.7}, cascade={"enabled": True, "start": "cheapest"}),
]


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("eng")
    cards = load_cards(make_cards_dir(tmp))
    rng = random.Random(7)
    mmlu = tmp / "mmlu.jsonl"
    import_routellm(ROOT / "data" / "routellm_mmlu", mmlu, cards)
    def rows(path: Path) -> list[str]:
        return [x for x in path.read_text(encoding="utf-8").split("\n") if x.strip()]

    lines = rng.sample(rows(mmlu), 150) + rng.sample(rows(ROOT / "data" / "outcomes" / "sentiment_local.jsonl"), 60)
    f = tmp / "mixed.jsonl"
    f.write_text("\n".join(lines) + "\n")
    table = load_outcomes(f, cards)
    clf = load_default_classifier(ROOT / "models")
    return table, cards, clf.classify_batch(table.prompts)


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.name)
@pytest.mark.parametrize("target", [None, 0.3, 0.65, 0.8, 0.95])
def test_vectorised_equals_decide_pure(sample, policy: Policy, target: float | None) -> None:
    table, cards, cls = sample
    bridge = PolicyEngineBridge(policy)
    overrides = {} if target is None else {"accuracy_target": target}
    for mask in {tuple(r) for r in table.group_mask.tolist()}:
        idx = [g for g, r in enumerate(table.group_mask.tolist()) if tuple(r) == mask]
        sub = {m: cards[m] for m, on in zip(table.models, mask, strict=True) if on}
        tokens = [estimated_tokens(utf8_size(table.prompts[g])) for g in idx]
        fast = bridge.decide_many([cls[g] for g in idx], sub, overrides, tokens)
        slow = [bridge.decide(cls[g], sub, overrides, t).model for g, t in zip(idx, tokens, strict=True)]
        assert fast == slow
        # and the bridge's scalar path is decide_pure itself, with the request's token estimate
        g = idx[0]
        direct = decide_pure(cls[g], sub, None, policy,
                             {**overrides, "input_tokens_hint": tokens[0]})
        assert direct.model == slow[0]


def test_simulation_uses_the_engine_end_to_end(sample) -> None:
    table, cards, _ = sample
    clf = load_default_classifier(ROOT / "models")
    bridge = PolicyEngineBridge(POLICIES[0])
    res = Simulator(table, cards, clf, bridge).run(policy_name="abs", classifier_name="onnx", want_reasons=True)
    # every request's model is what decide_pure picks for its prompt
    for row in range(0, table.n, 17):
        g = table.group[row]
        sub = {m: cards[m] for m, on in zip(table.models, table.group_mask[g], strict=True) if on}
        expect = bridge.decide(clf.classify(table.prompts[g]), sub, {}, estimated_tokens(utf8_size(table.prompts[g])))
        assert table.models[res.chosen[row]] == expect.model
        assert res.reasons[g] == expect.reason
    assert json.dumps(res.to_json(), default=str)


def test_always_best_is_the_best_single_model_not_the_largest(tmp_path: Path) -> None:
    """On AlpacaEval the largest model is not the best: the report's always-best follows the best mean score."""
    from test_simulate_helpers import FixedClassifier

    from router.cards import load_catalogue

    cards = load_catalogue(ROOT / "models")
    small, large = "fusechat-gemma-2-9b", "llama-3-70b-instruct"
    lines = [json.dumps({"id": f"r{i}", "prompt": f"q{i}", "task": "alpaca_eval/koala",
                         "outcomes": {small: {"correct": 0.8 if i % 4 else 0.2, "output_tokens": 100},
                                      large: {"correct": 0.3, "output_tokens": 100}}}) for i in range(40)]
    f = tmp_path / "o.jsonl"
    f.write_text("\n".join(lines) + "\n")
    table = load_outcomes(f, cards)
    clf = FixedClassifier({f"q{i}": {small: 0.7, large: 0.3} for i in range(40)}, task="chat")
    result = Simulator(table, cards, clf, PolicyEngineBridge(Policy(name="b", accuracy={"relative_to_best": 0.9}))
                       ).run(policy_name="b", classifier_name="fixed")
    assert result.best_single == {f"{small}+{large}" if table.models[0] == small else f"{large}+{small}": small}
    best = result.baselines["always-best"]
    assert best.quality_vs_best == pytest.approx(1.0) and best.share_requests[small] == 1.0
    assert result.router.share_requests[small] == 1.0  # 0.9 x the best prediction (0.7): only the 9B qualifies
    large_run = result.baselines["always-large"]
    assert large_run.quality_vs_best == pytest.approx(0.3 / 0.65) and large_run.energy_vs_best > 1


def test_max_tokens_caps_the_output_tokens_on_both_paths() -> None:
    """Two models whose order by joules flips with the answer's length: at the policy's 128 output tokens the one
    with a dear call but cheap tokens is the cheaper; capped at max_tokens=5, the other is."""
    base = load_cards(ROOT / "models")["smollm2-135m"]

    def card(name: str, per_call_j: float, per_output_token_j: float) -> ModelCard:
        energy = base.energy.model_copy(update={"per_call_j": per_call_j, "per_input_token_j": 0.0,
                                                "per_output_token_j": per_output_token_j})
        return base.model_copy(update={"name": name, "energy": energy})

    cards = {"flat": card("flat", 10.0, 0.01), "steep": card("steep", 0.0, 0.5)}
    bridge = PolicyEngineBridge(Policy(name="abs", accuracy={"min_accuracy": 0.5}))
    chat = [Classification("chat", {"chat": 1.0}, {"flat": 0.9, "steep": 0.9})]
    for overrides, cheaper in (({}, "flat"), ({"max_tokens": 5}, "steep")):
        assert bridge.decide_many(chat, cards, overrides, [64]) == [cheaper]
        assert bridge.decide(chat[0], cards, overrides, 64).model == cheaper


def test_both_paths_take_the_largest_by_parameters_not_by_joules() -> None:
    """Two large models, the bigger one the cheaper by its card: both paths measure a relative target against
    the bigger one (90 % of its 0.65 lets the small model answer; 90 % of the other's 0.9 would not)."""
    base = load_cards(ROOT / "models")["smollm2-135m"]

    def card(name: str, tier: str, size_b: float, per_call_j: float) -> ModelCard:
        energy = base.energy.model_copy(update={"per_call_j": per_call_j, "per_input_token_j": 0.0,
                                                "per_output_token_j": 0.0})
        return base.model_copy(update={"name": name, "tier": tier, "active_parameters_b": size_b, "energy": energy})

    cards = {"s": card("s", "small", 1.0, 1.0), "big": card("big", "large", 70.0, 10.0),
             "mid": card("mid", "large", 13.0, 100.0)}
    bridge = PolicyEngineBridge(Policy(name="rel", accuracy={"relative_to_largest": 0.9}))
    chat = [Classification("chat", {"chat": 1.0}, {"s": 0.6, "big": 0.65, "mid": 0.9})]
    assert bridge.decide_many(chat, cards, {}, [64]) == ["s"]
    assert bridge.decide(chat[0], cards, {}, 64).model == "s"
