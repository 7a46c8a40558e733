"""The first rule (no policy file): it honours what every engine must, the request's capabilities, its
``max_energy_j`` and its ``accuracy_target``, with the typed errors the policy engine gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from router import Router
from router.classify.base import Classification
from router.config import RouterConfig
from router.errors import BadRequestError, CapabilityError
from router.policy.base import BudgetState, DecisionRequest
from router.policy.first_rule import FirstRuleEngine

WEATHER_TOOL = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
PLANET = [{"role": "user", "content": "Name a planet"}]


@pytest.fixture
def first_rule_router(tmp_path: Path, cards, small_backend, large_backend):  # type: ignore[no-untyped-def]
    """The shipped cards and real backends, with an empty policies folder: the Router decides by the first rule."""
    (tmp_path / "policies").mkdir()
    config = RouterConfig.load(policies_dir=tmp_path / "policies",
                               ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    router = Router(config, cards=cards,
                    backends={"smollm2-135m": small_backend, "gemma3-270m": large_backend})
    assert isinstance(router.engine, FirstRuleEngine)
    yield router
    router.close()


def test_a_request_with_tools_goes_to_a_model_that_can_call_tools(first_rule_router: Router) -> None:
    """`quality` asks for the large tier, whose gemma3-270m has no tools: the tools went to it anyway."""
    resp = first_rule_router.complete([{"role": "user", "content": "What is the weather in Paris?"}],
                                      policy="quality", tools=WEATHER_TOOL, max_tokens=24)
    assert resp.routing.model == "smollm2-135m"
    assert "needs tools" in resp.routing.reason


def test_a_pinned_model_without_the_capability_is_a_capability_error(first_rule_router: Router) -> None:
    with pytest.raises(CapabilityError, match="model 'gemma3-270m' cannot do tools") as caught:
        first_rule_router.complete(PLANET, model="gemma3-270m", tools=WEATHER_TOOL, max_tokens=4)
    assert caught.value.param == "tools"


def test_max_energy_j_is_honoured(first_rule_router: Router) -> None:
    """With 5 tokens to write, smollm2-135m's card estimates ~3.6 J and gemma3-270m's ~5.8 J: `quality` took
    gemma3-270m over a 5 J limit."""
    resp = first_rule_router.complete(PLANET, policy="quality", max_energy_j=5.0, max_tokens=5)
    assert resp.routing.model == "smollm2-135m"
    assert "max_energy_j 5 J" in resp.routing.reason
    with pytest.raises(BadRequestError, match="no model answers within max_energy_j=1 J") as caught:
        first_rule_router.complete(PLANET, max_energy_j=1.0, max_tokens=5)
    assert caught.value.param == "max_energy_j"
    with pytest.raises(BadRequestError, match="'gemma3-270m' needs about .* over max_energy_j=5 J"):
        first_rule_router.complete(PLANET, model="gemma3-270m", max_energy_j=5.0, max_tokens=5)


def test_accuracy_target_leaves_out_models_predicted_below_it(cards) -> None:
    engine = FirstRuleEngine(cards)
    chat = Classification("chat", {"chat": 1.0}, {"smollm2-135m": 0.4, "gemma3-270m": 0.8})
    assert engine.decide(chat, DecisionRequest(), BudgetState.empty()).model == "smollm2-135m"
    met = engine.decide(chat, DecisionRequest(accuracy_target=0.7), BudgetState.empty())
    assert met.model == "gemma3-270m" and "accuracy_target 0.7" in met.reason and not met.flags
    unmet = engine.decide(chat, DecisionRequest(accuracy_target=0.9), BudgetState.empty())
    assert unmet.model == "gemma3-270m" and unmet.flags == ("target_unmet",)
    pinned = engine.decide(chat, DecisionRequest(accuracy_target=0.7, pinned="smollm2-135m"), BudgetState.empty())
    assert pinned.model == "smollm2-135m"
