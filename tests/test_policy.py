"""The policy engine's rules, overrides and reasons, and the policy file loader's errors (issue 6)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from router.classify.base import Classification
from router.errors import BadRequestError, ConfigError
from router.ledger import hash_key
from router.policy.base import BudgetState, DecisionRequest
from router.policy.engine import decide_batch, decide_pure
from router.policy.loader import check_models, load_policies, load_policy, write_calibrated
from router.policy.schema import Calibrated, Policy
from router.policy.steps import largest

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"


def pol(**kw) -> Policy:
    base = {"name": "t", "accuracy": {"min_accuracy": 0.8}}
    base.update(kw)
    return Policy.model_validate(base)


def cls(task: str, **p: float) -> Classification:
    return Classification(task=task, task_probs={task: 0.9}, p_correct={k.replace("_", "-"): v for k, v in p.items()})


@pytest.fixture(scope="module")
def local(cards):
    return {n: c for n, c in cards.items() if c.callable}


# -- shipped files --------------------------------------------------------------------------------------------
def test_shipped_policies_load_name_known_models_and_are_calibrated(cards):
    policies = load_policies(POLICIES, recursive=True)
    assert {"eco", "balanced", "quality", "per-key"} <= set(policies)
    for p in policies.values():
        check_models(p, set(cards))
    for name in ("eco", "balanced", "quality"):
        cal = policies[name].calibrated
        assert cal is not None and cal.target == policies[name].accuracy.value
        assert cal.held_out is not None and cal.held_out["n"] > 1000
        assert (POLICIES / f"{name}.yaml").read_text().startswith(f"# {name}:")  # documented in the file


# -- rules ----------------------------------------------------------------------------------------------------
def test_specialist_only_for_its_task_and_reason_names_the_facts(local):
    d = decide_pure(cls("sentiment", sentiment_onnx=0.86, smollm2_135m=0.3, gemma3_270m=0.1), local, None, pol(),
                    {"input_tokens_hint": 20})
    assert d.model == "sentiment-onnx" and d.tier == "specialist"
    expected = (r"sentiment task → sentiment-onnx; predicted 0\.86 ≥ target 0\.80; "
                r"[0-9.]+ J vs [0-9.]+ J for smollm2-135m")
    assert re.match(expected, d.reason), d.reason
    assert "for smollm2-135m" in d.reason
    assert d.predicted_accuracy == 0.86 and d.target == 0.8
    assert d.estimated_j == pytest.approx(local["sentiment-onnx"].energy.joules(20, 1), rel=0.5)
    chat = decide_pure(cls("chat", sentiment_onnx=0.99, smollm2_135m=0.3), local, None, pol(), None)
    assert chat.model != "sentiment-onnx"  # a specialist never takes a task that is not on its card
    assert "sentiment-onnx" not in chat.candidates


def test_least_energy_model_that_meets_the_target(local):
    d = decide_pure(cls("chat", smollm2_135m=0.5, gemma3_270m=0.9), local, None, pol(), None)
    assert d.model == "gemma3-270m" and "predicted 0.90 ≥ target 0.80" in d.reason
    d = decide_pure(cls("chat", smollm2_135m=0.85, gemma3_270m=0.9), local, None, pol(), None)
    assert d.model == "smollm2-135m" and d.fallbacks[0] == "gemma3-270m"


def test_relative_target_uses_the_largest_candidate(local):
    p = pol(accuracy={"relative_to_largest": 0.9})
    d = decide_pure(cls("chat", smollm2_135m=0.72, gemma3_270m=0.8), local, None, p, None)
    assert d.model == "smollm2-135m" and d.target == pytest.approx(0.72)
    assert "90% of gemma3-270m's 0.80" in d.reason
    d = decide_pure(cls("chat", smollm2_135m=0.71, gemma3_270m=0.8), local, None, p, None)
    assert d.model == "gemma3-270m"


def test_the_largest_is_chosen_by_the_cards_never_by_learned_joules(catalogue):
    """Two large models whose learned joules cross as the ledger fills: the reference of a relative target stays
    the one with the most parameters, so the same request keeps the same target."""
    three = {n: catalogue[n] for n in ("llama-3-8b-instruct", "falcon-40b-instruct", "llama-3-70b-instruct")}
    c = Classification("chat", {"chat": 0.9}, {"llama-3-8b-instruct": 0.5, "falcon-40b-instruct": 0.8,
                                               "llama-3-70b-instruct": 0.6})
    p = pol(accuracy={"relative_to_largest": 0.9})
    for learned in ({}, {"falcon-40b-instruct": (900.0, "ledger:200 calls")},
                    {"falcon-40b-instruct": (900.0, "ledger:200 calls"), "llama-3-70b-instruct": (5.0, "ledger:9")}):
        d = decide_pure(c, three, None, p, {"energy_estimates": learned})
        assert d.target == pytest.approx(0.54) and "90% of llama-3-70b-instruct's 0.60" in d.reason, learned


def test_the_largest_by_parameters_parsed_else_by_the_cards_own_profile(catalogue):
    base = catalogue["llama-3-70b-instruct"]

    def card(name: str, parameters: str, joules: float):
        energy = base.energy.model_copy(update={"per_call_j": joules, "per_input_token_j": 0.0,
                                                "per_output_token_j": 0.0})
        return base.model_copy(update={"name": name, "parameters": parameters, "active_parameters_b": None,
                                       "energy": energy})

    sized = [card("a", "135M", 50.0), card("b", "7B (dense)", 1.0), card("c", "2.78b", 9.0)]
    assert [x.size_b for x in sized] == pytest.approx([0.135, 7.0, 2.78])
    assert largest(sized).name == "b"  # by size, though its card's joules are the least
    unsized = [*sized, card("d", "undisclosed", 20.0)]  # sizes are not comparable with it: the card profiles decide
    assert unsized[3].size_b is None and largest(unsized).name == "a"
    assert largest([*sized, catalogue["llama-3-8b-instruct"]]).name == "b"  # a small model is never the largest


def test_relative_to_best_uses_the_best_predicted_candidate(catalogue):
    """On real data the largest model is not always the best (AlpacaEval: the judge prefers long answers): a
    target relative to the best predicted candidate follows the best one, whichever it is."""
    four = {n: catalogue[n] for n in ("fusechat-llama-3.2-3b", "fusechat-qwen-2.5-7b", "fusechat-gemma-2-9b",
                                      "llama-3-70b-instruct")}
    c = Classification("chat", {"chat": 0.9}, {"fusechat-llama-3.2-3b": 0.60, "fusechat-qwen-2.5-7b": 0.66,
                                               "fusechat-gemma-2-9b": 0.70, "llama-3-70b-instruct": 0.30})
    best = decide_pure(c, four, None, pol(accuracy={"relative_to_best": 0.9}), None)
    assert best.model == "fusechat-qwen-2.5-7b" and best.target == pytest.approx(0.63)
    assert "90% of fusechat-gemma-2-9b's 0.70" in best.reason
    largest = decide_pure(c, four, None, pol(accuracy={"relative_to_largest": 0.9}), None)
    assert largest.model == "fusechat-llama-3.2-3b" and largest.target == pytest.approx(0.27)  # 90 % of the 70B's 0.30
    with pytest.raises(ValidationError, match="exactly one"):
        pol(accuracy={"relative_to_best": 0.9, "relative_to_largest": 0.9})


def test_a_model_cooling_down_is_ranked_last_unless_every_candidate_is(local):
    c = cls("chat", smollm2_135m=0.85, gemma3_270m=0.9)
    d = decide_pure(c, local, None, pol(), {"cooling": frozenset({"smollm2-135m"})})
    assert d.model == "gemma3-270m" and d.fallbacks == ("smollm2-135m",) and "cooling_down" in d.flags
    assert "smollm2-135m cooling down after failing" in d.reason
    both = decide_pure(c, local, None, pol(), {"cooling": frozenset({"smollm2-135m", "gemma3-270m"})})
    assert both.model == "smollm2-135m" and not both.flags  # no other model: the order is the policy's


def test_what_a_decision_reuses_of_a_policy_and_cards_is_never_another_ones(local):
    """The part of a decision that depends only on the policy, the key, the task and the cards is worked out once
    and reused (router/policy/plan.py): a policy or a card built anew under the same name, another key or another
    task is decided by its own settings, however many were decided before it."""
    c = cls("chat", smollm2_135m=0.85, gemma3_270m=0.9)
    for target, model in [(0.8, "smollm2-135m"), (0.88, "gemma3-270m")] * 3:  # each policy dropped after its use
        assert decide_pure(c, local, None, pol(accuracy={"min_accuracy": target}), None).model == model
    spent = pol(budgets=[{"model": "smollm2-135m", "joules": 1e-6, "per": "hour"}])
    d = decide_pure(c, local, BudgetState({}, 0.0), spent, None)
    assert d.model == "gemma3-270m" and "budget_fallback" in d.flags
    assert decide_pure(c, local, BudgetState({}, 0.0), pol(), None).model == "smollm2-135m"
    key = hash_key("sk-team-a")
    keyed = pol(keys=[{"key_hash": key, "allowed_models": ["gemma3-270m"], "accuracy": {"min_accuracy": 0.5}}])
    assert decide_pure(c, local, None, keyed, None).model == "smollm2-135m"
    by_key = decide_pure(c, local, None, keyed, {"key_hash": key})
    assert by_key.model == "gemma3-270m" and by_key.target == 0.5
    policy = pol()  # one policy, other cards and tasks
    math_only = {**local, "smollm2-135m": local["smollm2-135m"].model_copy(update={"tasks": ["math"]})}
    assert decide_pure(c, local, None, policy, None).model == "smollm2-135m"
    assert decide_pure(c, math_only, None, policy, None).model == "gemma3-270m"
    math = cls("math", smollm2_135m=0.85, gemma3_270m=0.9)
    assert decide_pure(math, math_only, None, policy, None).model == "smollm2-135m"
    assert decide_pure(c, math_only, None, policy, None).model == "gemma3-270m"


def test_the_share_and_budget_keys_a_plan_keeps_are_its_own_policys_and_keys(local):
    """What the reason and ``Decision.budgets`` take from the plan (the share as written, each model's budget keys)
    follows the policy and the key of this decision, never those of a plan decided before it."""
    c = cls("chat", smollm2_135m=0.85, gemma3_270m=0.9)
    for share in (0.9, 0.5, 0.9):  # a new policy object each time: its own plan
        d = decide_pure(c, local, None, pol(accuracy={"relative_to_largest": share}), None)
        assert f"({share:.0%} of gemma3-270m's 0.90)" in d.reason
    relative = pol(accuracy={"relative_to_largest": 0.9})
    own = decide_pure(c, local, None, relative, None)
    by_caller = decide_pure(c, local, None, relative, {"accuracy_target": 0.5})
    assert "90% of" in own.reason and " of " not in by_caller.reason.split(";")[1]
    assert decide_pure(c, local, None, relative, None).reason == own.reason
    key = hash_key("sk-team-a")
    for window in ("hour", "day"):
        budgeted = pol(budgets=[{"model": "smollm2-135m", "joules": 1e6, "per": window, "scope": "per_key"}])
        assert decide_pure(c, local, BudgetState({}, 0.0), budgeted, None).budgets == ()
        keyed = decide_pure(c, local, BudgetState({}, 0.0), budgeted, {"key_hash": key})
        assert keyed.budgets == tuple(r.key for r in keyed.model_budgets["smollm2-135m"])
        assert keyed.budgets and all(key in k and k.endswith(f"{int(budgeted.budgets[0].window_s)}s")
                                     for k in keyed.budgets)


def test_no_model_meets_target_picks_the_most_accurate_and_flags(local):
    d = decide_pure(cls("chat", smollm2_135m=0.4, gemma3_270m=0.3), local, None, pol(), None)
    assert d.model == "smollm2-135m" and "target_unmet" in d.flags and "no candidate meets" in d.reason


def test_missing_classifier_estimate_falls_back_to_card_prior_then_tier_default(local):
    d = decide_pure(cls("sentiment"), local, None, pol(accuracy={"min_accuracy": 0.7}), None)
    assert d.model == "sentiment-onnx" and d.prediction_source == "card prior" and "(card prior)" in d.reason
    d = decide_pure(cls("chat"), local, None, pol(accuracy={"min_accuracy": 0.6}), None)
    assert d.prediction_source == "tier default" and d.model == "gemma3-270m"  # large default 0.7 ≥ 0.6 > 0.5


def test_overrides_accuracy_target_max_energy_and_pin(local):
    c = cls("chat", smollm2_135m=0.6, gemma3_270m=0.9)
    assert decide_pure(c, local, None, pol(), None).model == "gemma3-270m"
    assert decide_pure(c, local, None, pol(), {"accuracy_target": 0.5}).model == "smollm2-135m"
    capped = decide_pure(c, local, None, pol(), DecisionRequest(max_energy_j=40.0, input_tokens_hint=10))
    assert capped.model == "smollm2-135m"
    with pytest.raises(BadRequestError, match="max_energy_j=0.001"):
        decide_pure(c, local, None, pol(), {"max_energy_j": 0.001})
    pinned = decide_pure(c, local, None, pol(), {"pinned": "smollm2-135m"})
    assert pinned.model == "smollm2-135m" and "pinned by the caller" in pinned.reason
    with pytest.raises(BadRequestError, match="unknown override"):
        decide_pure(c, local, None, pol(), {"acuracy_target": 0.5})


def test_policy_pins_and_allowed_models(local):
    c = cls("sentiment", sentiment_onnx=0.9, smollm2_135m=0.3, gemma3_270m=0.2)
    d = decide_pure(c, local, None, pol(pinned={"sentiment": "gemma3-270m"}), None)
    assert d.model == "gemma3-270m" and "policy `t` pins sentiment" in d.reason
    d = decide_pure(c, local, None, pol(allowed_models=["smollm2-135m", "gemma3-270m"]), None)
    assert d.model == "smollm2-135m" and "sentiment-onnx" not in d.candidates
    with pytest.raises(BadRequestError, match="not allowed"):
        decide_pure(c, local, None, pol(allowed_models=["smollm2-135m"]), {"pinned": "gemma3-270m"})


def test_calibrated_offsets_apply_only_to_the_policys_own_target(local):
    cal = Calibrated(target_kind="absolute", target=0.8, offsets={"smollm2-135m": -0.1}, confidence=0.9,
                     n_calibration=100)
    c = cls("chat", smollm2_135m=0.75, gemma3_270m=0.9)
    d = decide_pure(c, local, None, pol(calibrated=cal), None)
    assert d.model == "smollm2-135m" and d.calibrated and "calibrated margin -0.100" in d.reason
    assert decide_pure(c, local, None, pol(calibrated=cal), {"accuracy_target": 0.8}).model == "gemma3-270m"


def test_cascade_escalates_to_the_next_more_accurate_model(local):
    p = pol(accuracy={"min_accuracy": 0.5}, cascade={"enabled": True, "escalate_below": 0.7})
    d = decide_pure(cls("chat", smollm2_135m=0.6, gemma3_270m=0.9), local, None, p, None)
    assert d.model == "smollm2-135m" and d.escalate_to == ("gemma3-270m",) and d.escalate_below == 0.7
    cheap = pol(accuracy={"min_accuracy": 0.8}, cascade={"enabled": True, "start": "cheapest"})
    d = decide_pure(cls("chat", smollm2_135m=0.6, gemma3_270m=0.9), local, None, cheap, None)
    assert d.model == "smollm2-135m" and d.escalate_to == ("gemma3-270m",)


@pytest.mark.parametrize("request_", [None, {"pinned": "gemma3-270m"}, {"cooling": frozenset({"gemma3-270m"})}])
def test_a_single_candidate_has_no_fallbacks_and_nothing_to_escalate_to(local, request_):
    """Whatever the cascade and the target say: the one model that can answer does, alone."""
    only = {"gemma3-270m": local["gemma3-270m"]}
    for start in ("target", "cheapest"):
        p = pol(accuracy={"min_accuracy": 0.95}, cascade={"enabled": True, "escalate_below": 0.7, "start": start})
        d = decide_pure(cls("chat", gemma3_270m=0.6), only, None, p, request_)
        assert (d.model, d.fallbacks, d.escalate_to, d.escalate_below) == ("gemma3-270m", (), (), None)
        assert d.candidates == {"gemma3-270m": 0.6} and "escalates" not in d.reason
        assert ("target_unmet" in d.flags) is (request_ is None or "cooling" in request_)


def test_decide_pure_is_pure_and_deterministic(local):
    c = cls("chat", smollm2_135m=0.6, gemma3_270m=0.9)
    state = BudgetState({"tier:large:3600s": 10.0}, now=123.0)
    p = pol(budgets=[{"model": "tier:large", "joules": 1000, "per": "hour"}])
    assert decide_pure(c, local, state, p, None) == decide_pure(c, local, state, p, None)


def test_decide_batch_matches_decide_pure(catalogue):
    hosted = {n: catalogue[n] for n in ("llama-3-8b-instruct", "mixtral-8x7b-instruct", "llama-3-70b-instruct",
                                    "gpt-4-1106-preview")}
    names = list(hosted)
    rng = np.random.default_rng(0)
    p = rng.uniform(0.2, 0.95, size=(300, len(names)))
    for spec in ({"min_accuracy": 0.7}, {"relative_to_largest": 0.9}, {"relative_to_best": 0.9}):
        policy = pol(accuracy=spec)
        energies = np.array([hosted[n].energy.joules(64, 128) for n in names])
        ref = np.argmax(p, axis=1) if "relative_to_best" in spec else int(np.argmax(energies))
        batch = decide_batch(p, energies, policy.accuracy.value, relative="min_accuracy" not in spec,
                             reference=ref)
        for i in range(len(p)):
            c = cls("multiple_choice", **{n.replace("-", "_"): float(v) for n, v in zip(names, p[i], strict=True)})
            assert names[batch[i]] == decide_pure(c, hosted, None, policy, {"input_tokens_hint": 64}).model


# -- loader errors -------------------------------------------------------------------------------------------
def write(tmp_path: Path, text: str, name: str = "bad.yaml") -> Path:
    f = tmp_path / name
    f.write_text(textwrap.dedent(text))
    return f


def test_unknown_field_names_file_line_field_and_fix(tmp_path):
    f = write(tmp_path, """\
        name: bad
        accuracy:
          min_accuracy: 0.8
        budgets:
          - model: gemma3-270m
            jouls: 100
        """)
    with pytest.raises(ConfigError) as err:
        load_policy(f)
    msg = str(err.value)
    assert f"{f}:6: field `budgets.0.jouls`" in msg and "fix: remove it or check the spelling" in msg


def test_a_budget_names_one_unit(tmp_path):
    f = write(tmp_path, """\
        name: bad
        accuracy:
          min_accuracy: 0.8
        budgets:
          - model: gemma3-270m
            per: hour
        """)
    with pytest.raises(ConfigError, match="give exactly one of `joules` .energy. or `g_co2e`"):
        load_policy(f)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("accuracy: {min_accuracy: 0.8, relative_to_largest: 0.9}\n", "give exactly one of `min_accuracy`"),
        ("accuracy: {min_accuracy: 1.5}\n", "field `accuracy.min_accuracy`"),
        ("accuracy: {min_accuracy: 0.8}\non_budget_exhausted: explode\n", "bad.yaml:2: field `on_budget_exhausted`"),
        ("accuracy: {min_accuracy: 0.8}\nbudgets: [{joules: 5, per: -3}]\n", "window in seconds must be positive"),
        ("name: bad\n", "field `accuracy`: Field required"),
        ("accuracy: [unclosed\n", "not valid YAML"),
        ("- just a list\n", "a policy is a YAML mapping"),
    ],
)
def test_bad_policy_files(tmp_path, body, needle):
    with pytest.raises(ConfigError) as err:
        load_policy(write(tmp_path, body))
    assert needle in str(err.value) and "bad.yaml" in str(err.value)


def test_a_misspelt_tier_in_a_budget_is_refused_not_a_budget_that_covers_nothing(tmp_path):
    key = "key-0123456789abcdef"
    body = ("accuracy: {min_accuracy: 0.8}\nbudgets: [{model: 'tier:specialst', joules: 5}]\n"
            f"keys: [{{key_hash: {key}, budgets: [{{model: 'tier:lage', joules: 5}}]}}]\n")
    msg = str(pytest.raises(ConfigError, load_policy, write(tmp_path, body)).value)
    assert "bad.yaml:2: field `budgets.0.model`: unknown tier `specialst`" in msg
    assert "bad.yaml:3: field `keys.0.budgets.0.model`: unknown tier `lage`" in msg
    assert "`tier:specialist`, `tier:small`, `tier:large`" in msg
    for tier in ("specialist", "small", "large"):
        good = f"accuracy: {{min_accuracy: 0.8}}\nbudgets: [{{model: 'tier:{tier}', joules: 5}}]\n"
        assert load_policy(write(tmp_path, good)).budgets[0].covers("any", tier)


def test_unknown_model_in_policy_is_named(tmp_path, cards):
    p = load_policy(write(tmp_path, "accuracy: {min_accuracy: 0.8}\npinned: {sentiment: gpt-17}\n"))
    with pytest.raises(ConfigError, match="unknown model.*gpt-17.*use one of"):
        check_models(p, set(cards), "bad.yaml")


def test_a_pin_for_a_task_no_request_has_is_named_when_the_router_loads_its_policies(tmp_path, cards, caplog):
    from router._parts import load_engine
    from router.config import RouterConfig

    write(tmp_path, "accuracy: {min_accuracy: 0.8}\npinned: {sentimnt: smollm2-135m, tools: gemma3-270m}\n", "p.yaml")
    with caplog.at_level("WARNING", logger="router"):
        load_engine(RouterConfig(policies_dir=tmp_path), cards, "p")
    warned = [r.getMessage() for r in caplog.records if "pinned" in r.getMessage()]
    assert len(warned) == 1 and str(tmp_path / "p.yaml") in warned[0], warned
    assert "task 'sentimnt'" in warned[0] and "sentiment, multiple_choice, math, chat, tools" in warned[0]
    caplog.clear()
    write(tmp_path, "accuracy: {min_accuracy: 0.8}\npinned: {sentiment: sentiment-onnx, tools: gemma3-270m}\n",
          "p.yaml")
    with caplog.at_level("WARNING", logger="router"):
        load_engine(RouterConfig(policies_dir=tmp_path), cards, "p")
    assert not [r for r in caplog.records if "pinned" in r.getMessage()]


def test_a_pin_to_a_model_that_does_not_serve_the_task_is_refused_when_the_router_loads_its_policies(tmp_path,
                                                                                                   cards):
    """`pinned: {chat: sentiment-onnx}` was accepted, and every chat request was answered "positive" or "negative"
    by the sentiment specialist: a pin overrides the rule that keeps a specialist on its own tasks."""
    from router._parts import load_engine
    from router.config import RouterConfig

    write(tmp_path, "accuracy: {min_accuracy: 0.8}\npinned: {chat: sentiment-onnx}\n", "p.yaml")
    with pytest.raises(ConfigError) as err:
        load_engine(RouterConfig(policies_dir=tmp_path), cards, "p")
    assert str(err.value).startswith(f"{tmp_path / 'p.yaml'}: field `pinned.chat`: `sentiment-onnx` does not serve "
                                     "chat (its card's tasks: sentiment)"), err.value
    assert "fix: pin chat to a model whose card serves it" in str(err.value)
    write(tmp_path, "accuracy: {min_accuracy: 0.8}\npinned: {sentiment: sentiment-onnx, chat: smollm2-135m}\n",
          "p.yaml")
    assert load_engine(RouterConfig(policies_dir=tmp_path), cards, "p").policy("p").pinned["chat"] == "smollm2-135m"


def test_a_policy_saved_as_yml_is_loaded_and_named_by_its_file(tmp_path, cards):
    """`eco.yml` used to be skipped (only `*.yaml` was read) while the proxy listed it as a policy."""
    from router._parts import load_engine
    from router.config import RouterConfig
    from router.policy.engine import PolicyEngine

    eco = write(tmp_path, "accuracy: {min_accuracy: 0.8}\n", "eco.yml")
    engine = load_engine(RouterConfig(policies_dir=tmp_path), cards, "eco")
    assert isinstance(engine, PolicyEngine) and set(engine.policies) == {"eco"}
    assert engine.policies["eco"].file == eco
    write(tmp_path, "accuracy: {min_accuracy: 0.8}\nallowed_models: [gpt-17]\n", "eco.yml")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(eco))}: policy `eco` names unknown model"):
        load_engine(RouterConfig(policies_dir=tmp_path), cards, "eco")
    write(tmp_path, "accuracy: {min_accuracy: 0.8}\n", "eco.yaml")
    with pytest.raises(ConfigError, match=r"eco\.yml: policy name `eco` is already used by .*eco\.yaml"):
        load_policies(tmp_path)


def test_an_unknown_escalate_to_names_the_keywords_as_well_as_the_models(tmp_path, cards):
    """`escalate_to: larg` used to say only "unknown model(s) larg", as if a model were the only choice."""
    p = load_policy(write(tmp_path, "accuracy: {min_accuracy: 0.8}\ncascade: {enabled: true, escalate_to: larg}\n"))
    with pytest.raises(ConfigError) as err:
        check_models(p, set(cards), "bad.yaml")
    msg = str(err.value)
    assert msg.startswith("bad.yaml: field `cascade.escalate_to`: `larg` is neither `next` (the cheapest more accurate "
                          "model), a tier (`specialist`, `small`, `large`) nor a model; fix: use one of those, or one "
                          "of: gemma3-270m, ")
    for good in ("next", "large", "specialist", "smollm2-135m"):
        check_models(pol(cascade={"enabled": True, "escalate_to": good}), set(cards), "ok.yaml")


def test_a_cascade_to_a_model_the_policy_does_not_allow_is_refused_when_the_router_loads_its_policies(tmp_path,
                                                                                                     cards, local):
    """`allowed_models: [smollm2-135m, sentiment-onnx]` with `escalate_to: gemma3-270m` (or `large`) was accepted,
    and no low-confidence answer was ever escalated: the cascade only escalates to candidates."""
    from router._parts import load_engine
    from router.config import RouterConfig

    allowed = "allowed_models: [smollm2-135m, sentiment-onnx]\n"
    for target in ("gemma3-270m", "large"):
        body = f"accuracy: {{min_accuracy: 0.8}}\n{allowed}cascade: {{enabled: true, escalate_to: {target}}}\n"
        write(tmp_path, body, "p.yaml")
        with pytest.raises(ConfigError) as err:
            load_engine(RouterConfig(policies_dir=tmp_path), cards, "p")
        msg = str(err.value)
        assert msg.startswith(f"{tmp_path / 'p.yaml'}: field `cascade.escalate_to`: "), msg
        assert "(smollm2-135m, sentiment-onnx), so no request could escalate" in msg
        assert "fix: add the model to `allowed_models`" in msg
        # what the engine did with it: the cascade named no model to escalate to
        decided = decide_pure(cls("chat", smollm2_135m=0.5), local, None, load_policy(tmp_path / "p.yaml"), None)
        assert decided.escalate_to == ()
    for fine in (f"{allowed}cascade: {{enabled: true, escalate_to: small}}\n",
                 f"{allowed}cascade: {{enabled: false, escalate_to: gemma3-270m}}\n",
                 "allowed_models: [smollm2-135m, gemma3-270m]\ncascade: {enabled: true, escalate_to: gemma3-270m}\n"):
        write(tmp_path, f"accuracy: {{min_accuracy: 0.8}}\n{fine}", "p.yaml")
        load_engine(RouterConfig(policies_dir=tmp_path), cards, "p")


def test_a_grid_switch_to_an_unknown_policy_names_the_policy_file(tmp_path, cards):
    from router._parts import load_engine
    from router.config import RouterConfig

    follow = write(tmp_path, "accuracy: {min_accuracy: 0.8}\ngrid: {above_g_per_kwh: 300, use_policy: ecco}\n",
                   "follow.yaml")
    write(tmp_path, "accuracy: {min_accuracy: 0.6}\n", "eco.yaml")
    with pytest.raises(ConfigError) as err:
        load_engine(RouterConfig(policies_dir=tmp_path), cards, "follow")
    assert str(err.value) == (f"{follow}: policy `follow`: field `grid.use_policy` names `ecco`, which is not a policy "
                              "here (eco, follow); fix the name")


def test_write_calibrated_keeps_comments_and_replaces_the_block(tmp_path):
    f = write(tmp_path, "# keep me\nname: x\naccuracy:\n  min_accuracy: 0.7  # and me\n", "x.yaml")
    block = Calibrated(target_kind="absolute", target=0.7, offsets={"a": 0.01}, confidence=0.9, n_calibration=5)
    write_calibrated(f, block)
    write_calibrated(f, block.model_copy(update={"offsets": {"a": 0.02}}))
    text = f.read_text()
    assert text.count("calibrated:") == 1 and "# keep me" in text and "# and me" in text
    assert load_policy(f).calibrated.offsets == {"a": 0.02}


def test_a_mistyped_policies_dir_is_a_config_error_not_a_silent_first_rule(tmp_path, cards):
    """A typo in `policies_dir` used to log one warning and run without any of the operator's budgets."""
    from router._parts import load_engine
    from router.config import RouterConfig
    from router.policy.first_rule import FirstRuleEngine

    with pytest.raises(ConfigError, match=r"policies_dir .*polices is not a folder"):
        load_engine(RouterConfig(policies_dir=tmp_path / "polices"), cards, "balanced")
    assert isinstance(load_engine(RouterConfig(policies_dir=tmp_path), cards, "balanced"), FirstRuleEngine)
