"""Capabilities on cards (checked at load), capability-aware decisions, the tools task by rule, and the rule for
every OpenAI parameter (acted on, passed through, ignored, or a 400)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from router import Router, RouterConfig
from router._request import check_params, validate_messages
from router.cards import load_card, load_cards
from router.classify.base import Classification
from router.errors import BadRequestError, CapabilityError, ConfigError, ContextLengthError
from router.policy.engine import decide_pure
from router.policy.schema import Policy

ROOT = Path(__file__).resolve().parent.parent
REVIEW = [{"role": "user", "content": "Is this review positive or negative? 'a gorgeous, witty film'"}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
SCHEMA = {"type": "json_schema", "json_schema": {"name": "p", "strict": True, "schema": {
    "type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}}}
POLICY = Policy.model_validate({"name": "t", "accuracy": {"min_accuracy": 0.0}})


def remote(name: str, caps: str, tier: str = "large", per_call_j: float = 5.0) -> str:
    return textwrap.dedent(f"""\
        name: {name}
        tier: {tier}
        backend: {{type: openai, base_url: "http://127.0.0.1:9/v1", model: m}}
        capabilities: {caps}
        context_length: 8192
        energy: {{per_call_j: {per_call_j}, source: estimate, citation: test card}}
        """)


@pytest.fixture(scope="module")
def shipped():
    return {n: c for n, c in load_cards(ROOT / "models").items() if c.callable}


# -- cards --------------------------------------------------------------------------------------------------
def test_shipped_cards_declare_what_their_backend_can_do(shipped) -> None:
    assert set(shipped["smollm2-135m"].capabilities) == {"tools", "json_object", "json_schema", "logprobs"}
    assert "tools" not in shipped["gemma3-270m"].capabilities  # completion-style: no chat turns for tool calls
    assert shipped["sentiment-onnx"].capabilities == []
    assert set(load_card(ROOT / "models" / "examples" / "remote-large.yaml").capabilities) >= {"tools", "json_schema"}


@pytest.mark.parametrize(("card", "needle"), [
    ("smollm2-135m.yaml", "reasoning"),  # llama.cpp models here have no reasoning_effort
    ("gemma3-270m.yaml", "tools"),  # a completion-style card cannot call tools
    ("sentiment-onnx.yaml", "json_object"),  # a specialist answers with a label
    ("smollm2-135m.yaml", "teleport"),  # not a capability at all
])
def test_impossible_capabilities_are_refused_at_load(tmp_path: Path, card: str, needle: str) -> None:
    text = (ROOT / "models" / card).read_text()
    text = text.replace("capabilities:", "old_capabilities:") if "capabilities:" in text else text
    lines = [ln for ln in text.splitlines() if not ln.startswith("old_capabilities:")]
    lines.append(f"capabilities: [{needle}]")
    (tmp_path / card).write_text("\n".join(lines) + "\n")
    if card == "sentiment-onnx.yaml":
        (tmp_path / "sentiment").symlink_to(ROOT / "models" / "sentiment")
    with pytest.raises(ConfigError) as err:
        load_card(tmp_path / card)
    assert "capabilities" in str(err.value) and needle in str(err.value)


def test_a_remote_card_declares_its_capabilities(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(remote("r", "[tools, json_object, json_schema, logprobs, reasoning]"))
    assert load_card(tmp_path / "r.yaml").can("reasoning")


# -- decisions ----------------------------------------------------------------------------------------------
def chat() -> Classification:
    return Classification("chat", {"chat": 1.0}, {"smollm2-135m": 0.5, "gemma3-270m": 0.9})


def test_only_capable_models_are_candidates_and_the_reason_says_so(shipped) -> None:
    plain = decide_pure(chat(), shipped, None, POLICY, {})
    d = decide_pure(chat(), shipped, None, POLICY, {"capabilities": frozenset({"tools"})})
    assert set(d.candidates) == {"smollm2-135m"} and d.model == "smollm2-135m"
    assert "needs tools: only models that can were candidates (smollm2-135m)" in d.reason
    assert "needs" not in plain.reason and len(plain.candidates) > 1
    d = decide_pure(chat(), shipped, None, POLICY, {"capabilities": frozenset({"json_schema"})})
    assert set(d.candidates) == {"smollm2-135m", "gemma3-270m"}


def test_no_capable_model_is_a_400_naming_the_capability(shipped) -> None:
    local = {n: c for n, c in shipped.items() if n != "smollm2-135m"}
    with pytest.raises(CapabilityError) as err:
        decide_pure(chat(), local, None, POLICY, {"capabilities": frozenset({"tools"})})
    assert err.value.http_status == 400 and err.value.param == "tools" and "tools" in err.value.message
    assert err.value.code == "capability_unsupported"
    with pytest.raises(CapabilityError) as err:  # a pinned model that cannot
        decide_pure(chat(), shipped, None, POLICY, {"pinned": "gemma3-270m", "capabilities": frozenset({"tools"})})
    assert "gemma3-270m" in err.value.message and err.value.param == "tools"


def test_a_prompt_too_long_for_every_model_is_context_length_exceeded(shipped) -> None:
    with pytest.raises(ContextLengthError) as err:
        decide_pure(chat(), shipped, None, POLICY, {"input_tokens_hint": 50_000})
    assert err.value.param == "messages" and err.value.code == "context_length_exceeded"


def test_tools_too_long_for_the_context_are_context_length_exceeded_before_the_model_runs(tmp_path: Path) -> None:
    """The tools' names, descriptions and schemas are part of the prompt a model reads: 100 of them are twice
    SmolLM2's 2048 tokens. Counted, the request is refused before the model runs (uncounted, the model failed on
    it: a 502, and a failure towards its cooldown)."""
    many = [{"type": "function", "function": {
        "name": f"tool_{i}", "description": f"Does thing number {i} with care and precision",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "the city"}}}}}
        for i in range(100)]
    with Router(RouterConfig.load(ledger_url=f"sqlite:///{tmp_path / 'l.sqlite3'}")) as router:
        with pytest.raises(ContextLengthError) as err:
            router.complete(REVIEW, tools=many, max_tokens=8)
        assert err.value.param == "messages" and "the prompt with the tools offered is" in err.value.message
        assert "smollm2-135m holds 2048" in err.value.message and "offer fewer tools" in err.value.message
        small = router.backend("smollm2-135m")
        assert small.consecutive_failures == 0  # type: ignore[attr-defined]
        assert router.ledger.records() == []  # no model ran


def test_a_request_with_tools_is_the_tools_task_and_never_the_specialists(tmp_path: Path) -> None:
    """A sentiment review goes to the specialist; the same text with tools is the tools task by rule."""
    router = Router(RouterConfig.load(ledger_url=f"sqlite:///{tmp_path / 'l.sqlite3'}"))
    try:
        assert router.prepare(REVIEW).decision.model == "sentiment-onnx"
        for params in ({"tools": [WEATHER]}, {"functions": [WEATHER["function"]]}):
            d = router.prepare(REVIEW, **params).decision
            assert d.task == "tools" and d.model == "smollm2-135m" and "sentiment-onnx" not in d.candidates
        history = REVIEW + [{"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
        assert router.prepare(history).decision.task == "tools"  # history alone needs a model that reads it
        d = router.prepare(REVIEW, response_format=SCHEMA).decision
        assert d.model != "sentiment-onnx" and "needs json_schema" in d.reason
    finally:
        router.close()


# -- the parameter rules --------------------------------------------------------------------------------------
def test_parameter_rules() -> None:
    p = check_params(top_p=0.5, seed=3, logit_bias={"42": -100}, presence_penalty=0.1, user="u", store=True,
                     metadata={"a": "b"}, prediction={"type": "content", "content": "x"}, verbosity="low",
                     reasoning_effort="high", modalities=["text"], service_tier="auto")
    opts = p["options"]
    assert dict(opts.passthrough) == {"top_p": 0.5, "seed": 3, "logit_bias": {"42": -100}, "presence_penalty": 0.1}
    assert opts.reasoning_effort == "high" and opts.plain
    given = {"seed": 1, "top_p": 0.5, "presence_penalty": 0.1, "frequency_penalty": 0.2, "logit_bias": {"7": 1}}
    for order in (list(given), list(reversed(given))):  # a set's order could match one of the two, never both
        assert list(check_params(**{k: given[k] for k in order})["options"].passthrough) == order
    with pytest.raises(BadRequestError) as err:  # two bad ones: the first the caller sent is the one reported
        check_params(top_p=3, seed="x")
    assert err.value.param == "top_p"
    with pytest.raises(BadRequestError) as err:
        check_params(seed="x", top_p=3)
    assert err.value.param == "seed"
    for bad, param in (({"audio": {"voice": "alloy"}}, "audio"), ({"modalities": ["text", "audio"]}, "modalities"),
                       ({"web_search_options": {}}, "web_search_options")):
        with pytest.raises(CapabilityError) as err:
            check_params(**bad)
        assert err.value.param == param
    with pytest.raises(BadRequestError, match="frobnicate"):
        check_params(frobnicate=1)
    for bad, param in (({"top_p": 3}, "top_p"), ({"logit_bias": {"x": 1}}, "logit_bias"),
                       ({"logit_bias": {"\u00b2": 1}}, "logit_bias"), ({"logit_bias": {"\u0662": 1}}, "logit_bias"),
                       ({"logit_bias": {"1" * 5000: 1}}, "logit_bias"),  # int() refuses these; a model would fail
                       ({"temperature": 10**400}, "temperature"), ({"max_energy_j": 10**400}, "max_energy_j"),
                       ({"deadline_s": -(10**400)}, "deadline_s"), ({"top_p": 10**400}, "top_p"),
                       ({"logit_bias": {"42": 10**400}}, "logit_bias"),  # beyond any float: no OverflowError
                       ({"top_logprobs": 3}, "top_logprobs"), ({"logprobs": True, "top_logprobs": 30}, "top_logprobs"),
                       ({"tools": [{"type": "function"}]}, "tools[0]"),
                       ({"tools": [{"type": "function", "function": {"name": "get_weather\n"}}]},
                        "tools[0].function.name"),  # `$` would match before a final newline
                       ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
                        "tool_choice"),
                       ({"tool_choice": "required"}, "tool_choice"),
                       ({"response_format": {"type": "xml"}}, "response_format.type"),
                       ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
                           "type": "objekt"}}}}, "response_format.json_schema.schema")):
        with pytest.raises(BadRequestError) as err:
            check_params(**bad)
        assert err.value.param == param, bad
    assert check_params(logprobs=True, top_logprobs=2)["options"].capabilities == {"logprobs"}
    assert check_params(response_format={"type": "text"})["options"].response_format is None
    legacy = check_params(functions=[WEATHER["function"]], function_call={"name": "get_weather"})["options"].tools
    assert legacy is not None and legacy.legacy and legacy.choice == "get_weather" and not legacy.parallel


def test_stop_and_tools_given_as_a_tuple_or_a_generator_are_taken_as_the_openai_sdk_takes_them() -> None:
    """The openai SDK types ``stop`` as any sequence of strings and ``tools`` (and ``functions``) as any iterable:
    a tuple or a generator was a 400 here ("`stop` must be a string or a list", "`tools` must be a list"). They are
    read once as the list they hold; OpenAI's limits hold as for a list, an endless generator included."""
    assert check_params(stop=("\n", "END"))["stop"] == ["\n", "END"]
    for offered in ((WEATHER,), (t for t in [WEATHER])):
        tools = check_params(tools=offered, tool_choice="required")["options"].tools
        assert tools is not None and [t.name for t in tools.tools] == ["get_weather"] and tools.choice == "required"
    legacy = check_params(functions=(f for f in [WEATHER["function"]]))["options"].tools
    assert legacy is not None and legacy.legacy and [t.name for t in legacy.tools] == ["get_weather"]
    many = [{"type": "function", "function": {"name": f"f{i}"}} for i in range(129)]
    for bad, param, needle in (({"stop": ("a", "b", "c", "d", "e")}, "stop", "at most 4"),
                               ({"stop": (1,)}, "stop", "must be a string or a list"),
                               ({"tools": ()}, "tools", "`tools` is empty"),
                               ({"tools": tuple(many)}, "tools", "at most 128 tools"),
                               ({"tools": (WEATHER for _ in iter(int, 1))}, "tools", "at most 128 tools"),  # endless
                               ({"tools": WEATHER}, "tools", "must be a list"),  # one tool on its own
                               ({"functions": "get_weather"}, "functions", "must be a list")):
        with pytest.raises(BadRequestError, match=needle) as err:
            check_params(**bad)
        assert err.value.param == param, bad


def test_content_parts_and_tool_calls_given_as_a_tuple_or_a_generator_are_taken_as_the_sdk_takes_them() -> None:
    """The openai SDK types a message's content parts and an assistant turn's ``tool_calls`` as any iterable: a
    tuple was a 400 ("messages[0].content must be a string, got tuple", "messages[1].tool_calls must be a list")."""
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    msgs = validate_messages([
        {"role": "user", "content": ({"type": "text", "text": "weather "}, {"type": "text", "text": "in Paris?"})},
        {"role": "assistant", "content": None, "tool_calls": (c for c in [call])},
        {"role": "tool", "tool_call_id": "c1", "content": (p for p in [{"type": "text", "text": "sunny"}])},
    ], 10_000, 100)[0]
    assert msgs[0].content == "weather in Paris?" and msgs[2].content == "sunny"
    assert [c["id"] for c in msgs[1].tool_calls] == ["c1"]
    for bad, param, needle in (
            ([{"role": "user", "content": ({"type": "image_url"},)}], "messages[0].content", "only text parts"),
            ([{"role": "user", "content": {"type": "text", "text": "hi"}}], "messages[0].content", "got an object"),
            ([{"role": "user", "content": "x"}, {"role": "assistant", "content": None, "tool_calls": call}],
             "messages[1].tool_calls", "must be a list"),  # one call on its own
            ([{"role": "user", "content": "x"}, {"role": "assistant", "content": None,
                                                 "tool_calls": (call for _ in iter(int, 1))}],
             "messages[1].tool_calls", "has more than 128 calls")):  # endless
        with pytest.raises(BadRequestError, match=needle) as err:
            validate_messages(bad, 10_000, 100)
        assert err.value.param == param, bad


def test_a_tool_choice_that_demands_a_call_needs_a_function_offered() -> None:
    """No `functions` offers nothing, so the request is plain text: a choice that demands a call is a 400, not a
    text answer where the caller asked for a call. `tools: []` and `functions: []` are 400s themselves, as on OpenAI
    ("[] is too short - 'functions'"), whatever the choice: `functions: []` was answered as a plain request, which
    OpenAI refuses."""
    with pytest.raises(BadRequestError, match="needs `functions` with at least one function") as err:
        check_params(function_call={"name": "get_weather"})
    assert err.value.param == "function_call"
    named = {"type": "function", "function": {"name": "get_weather"}}
    for choice in (None, "none", "auto", "required", named):
        with pytest.raises(BadRequestError, match="`tools` is empty") as err:
            check_params(tools=[], tool_choice=choice)
        assert err.value.param == "tools", choice
    for choice in (None, "none", "auto", {"name": "get_weather"}):
        with pytest.raises(BadRequestError, match="`functions` is empty") as err:
            check_params(functions=[], function_call=choice)
        assert err.value.param == "functions", choice
    for plain in ({"function_call": "none"}, {"tool_choice": "none"}):
        assert check_params(**plain)["options"].tools is None, plain


def test_tool_history_messages() -> None:
    msgs = validate_messages([
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "sunny"}]},
        {"role": "assistant", "content": None, "function_call": {"name": "get_weather", "arguments": "{}"}},
        {"role": "function", "name": "get_weather", "content": "rain"},
    ], 10_000, 100)[0]
    assert msgs[1].content is None and msgs[1].tool_calls[0]["function"]["arguments"] == '{"city": "Paris"}'
    assert msgs[2].tool_call_id == "c1" and msgs[2].content == "sunny"
    assert msgs[3].tool_calls[0]["id"] == msgs[4].tool_call_id and msgs[4].role == "tool"  # legacy, paired by name
    for bad, param in (([{"role": "user", "content": "x"}, {"role": "tool", "content": "r"}],
                        "messages[1].tool_call_id"),
                       ([{"role": "user", "content": "x"}, {"role": "assistant", "content": None}],
                        "messages[1].content"),
                       ([{"role": "user", "content": "x", "tool_calls": []}], "messages[0].tool_calls")):
        with pytest.raises(BadRequestError) as err:
            validate_messages(bad, 10_000, 100)
        assert err.value.param == param
