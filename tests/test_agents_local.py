"""Agents and structured output end to end with real clients (the openai SDK, LangChain's ChatOpenAI) against a
real ``router serve`` on the shipped local models, and the library's own ``Router.complete``. Only SmolLM2 can call
tools here; at 135M it proves the plumbing (grammars hold its calls to the schema), not the choice of tool."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from pydantic import BaseModel
from servers.procs import ROOT, models_dir, router_serve, wait_for_record

from router import Router, RouterConfig

pytestmark = pytest.mark.slow

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                   "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


class Person(BaseModel):
    name: str
    age: int


class Local:
    def __init__(self, url: str, ledger_url: str) -> None:
        self.url = url
        self.ledger_url = ledger_url

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=180)

    def record(self, request_id: str, timeout: float = 20.0) -> object:
        return wait_for_record(self.ledger_url, request_id, timeout, poll=0.2)


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Local]:
    tmp = tmp_path_factory.mktemp("agents_local")
    models = models_dir(tmp / "models", {})
    for card in ("smollm2-135m.yaml", "gemma3-270m.yaml"):
        shutil.copy(ROOT / "models" / card, models / card)
    ledger_url = f"sqlite:///{tmp / 'ledger.sqlite3'}"
    config = tmp / "config.yaml"
    config.write_text(f"models_dir: {models}\npolicies_dir: {ROOT / 'policies'}\nledger_url: {ledger_url}\n")
    with router_serve(config, tmp, timeout=180) as url:
        yield Local(url, ledger_url)


# -- the openai SDK -------------------------------------------------------------------------------------------
def test_openai_sdk_tool_call_round_trip_with_a_tool_result(local: Local) -> None:
    chat = local.client().chat.completions
    first = chat.create(model="router", messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=40)
    msg = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls" and msg.content is None
    call = msg.tool_calls[0]
    assert call.function.name == "get_weather" and isinstance(json.loads(call.function.arguments)["city"], str)
    routing = first.model_extra["routing"]
    assert routing["model"] == "smollm2-135m" and routing["task"] == "tools" and "needs tools" in routing["reason"]

    history = [*ASK, msg.model_dump(exclude_none=True),  # the assistant turn as the SDK gives it back
               {"role": "tool", "tool_call_id": call.id, "content": '{"temperature_c": 18, "sky": "sunny"}'}]
    second = chat.create(model="router", messages=history, tools=[WEATHER], tool_choice="none", max_tokens=30)
    assert second.choices[0].message.content and second.choices[0].finish_reason in ("stop", "length")


def test_openai_sdk_streamed_tool_calls(local: Local) -> None:
    stream = local.client().chat.completions.create(
        model="router", messages=ASK, tools=[WEATHER], stream=True, max_tokens=40,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    chunks = list(stream)
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert deltas[0].index == 0 and deltas[0].id and deltas[0].function.name == "get_weather"
    assert {d.index for d in deltas} == {0}  # a named tool_choice: one call
    assert all(d.id is None and d.function.name is None for d in deltas[1:])  # later deltas: argument pieces
    arguments = "".join(d.function.arguments or "" for d in deltas if d.index == 0)
    assert json.loads(arguments)["city"]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_openai_sdk_parse_json_object_and_logprobs(local: Local) -> None:
    chat = local.client().chat.completions
    parsed = chat.parse(model="router", messages=[{"role": "user", "content": "Invent a person."}],
                        response_format=Person, max_tokens=60)
    assert isinstance(parsed.choices[0].message.parsed, Person)
    assert parsed.model_extra["routing"]["model"] in ("smollm2-135m", "gemma3-270m")  # never the specialist

    text = chat.create(model="router", messages=[{"role": "user", "content": "Describe Paris as JSON."}],
                       response_format={"type": "json_object"}, max_tokens=80).choices[0].message.content
    assert isinstance(json.loads(text), dict)

    resp = chat.create(model="smollm2-135m", messages=[{"role": "user", "content": "Say hello."}], max_tokens=6,
                       logprobs=True, top_logprobs=2)
    content = resp.choices[0].logprobs.content
    assert "".join(e.token for e in content) == resp.choices[0].message.content
    assert all(e.logprob <= 0 and len(e.top_logprobs) == 2 for e in content)
    assert content[0].top_logprobs[0].logprob >= content[0].top_logprobs[1].logprob


def test_a_logit_bias_key_that_is_no_token_id_is_a_400_and_cools_no_model_down(local: Local) -> None:
    """"²" passes ``str.isdigit`` but not ``int``: were it sent on, every local model would fail on it, and three
    such requests would cool them down for everyone."""
    chat = local.client().chat.completions
    for _ in range(4):  # the default cooldown opens after 3 consecutive failures
        with pytest.raises(openai.BadRequestError) as err:
            chat.create(model="router", messages=ASK, logit_bias={"\u00b2": 1}, max_tokens=4)
        assert err.value.param == "logit_bias"
    resp = chat.create(model="smollm2-135m", messages=ASK, logit_bias={"42": -100}, max_tokens=4)
    assert resp.model == "smollm2-135m" and resp.choices[0].message.content is not None
    metrics = httpx.get(f"{local.url}/metrics").text
    assert 'router_backend_cooldowns{model="smollm2-135m"} 0.0' in metrics


def test_tools_too_long_for_every_context_are_a_400_and_cool_no_model_down(local: Local) -> None:
    """The tools' text counts in the context check: refused before any model runs, not a model failure."""
    many = [{"type": "function", "function": {
        "name": f"tool_{i}", "description": f"Does thing number {i} with care and precision",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "the city"}}}}}
        for i in range(100)]
    chat = local.client().chat.completions
    for _ in range(4):  # the default cooldown opens after 3 consecutive failures
        with pytest.raises(openai.BadRequestError) as err:
            chat.create(model="router", messages=ASK, tools=many, max_tokens=8)  # type: ignore[arg-type]
        assert err.value.code == "context_length_exceeded" and "tools" in err.value.message
    resp = chat.create(model="router", messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=40)
    assert resp.model == "smollm2-135m" and resp.choices[0].finish_reason == "tool_calls"


# -- LangChain --------------------------------------------------------------------------------------------------
def test_langchain_bind_tools_round_trip_and_structured_output(local: Local) -> None:
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        return f"sunny in {city}, 18 C"

    llm = ChatOpenAI(model="router", base_url=f"{local.url}/v1", api_key="unused", max_retries=0, timeout=180,
                     max_tokens=60)
    messages = [HumanMessage("What is the weather in Paris?")]
    ai = llm.bind_tools([get_weather], tool_choice="any").invoke(messages)
    assert ai.tool_calls and ai.tool_calls[0]["name"] == "get_weather"
    messages += [ai, ToolMessage(get_weather.invoke(ai.tool_calls[0]["args"]), tool_call_id=ai.tool_calls[0]["id"])]
    final = llm.bind_tools([get_weather]).invoke(messages)  # the tool's result goes back; the model goes on
    assert final.content or final.tool_calls

    for method in ("json_schema", "function_calling"):
        out = llm.with_structured_output(Person, method=method).invoke("Invent a person.")
        assert isinstance(out, Person), method
    person = {"title": "Person", **Person.model_json_schema()}
    out = llm.with_structured_output(person, method="json_mode").invoke("Invent a person as JSON.")
    assert isinstance(out, dict)


# -- a client that goes away --------------------------------------------------------------------------------------
def test_a_client_gone_from_a_non_streamed_request_stops_generation(local: Local) -> None:
    """The client gives up after 1 s on a 600-token answer (several seconds of SmolLM2 on 2 cores; 200 tokens took
    2.2 s, so a 3 s client could be answered in time): generation stops at the next token and the ledger records
    `cancelled` with what was produced (not 600 tokens generated for nobody; how many were produced depends on
    the machine's load, and is checked exactly in test_paths)."""
    body = {"model": "smollm2-135m", "max_tokens": 600, "temperature": 0.0,
            "messages": [{"role": "user", "content": "Write a long story about a dragon and a knight."}]}
    started = time.time()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{local.url}/v1/chat/completions", json=body, timeout=httpx.Timeout(1.0),
                   headers={"x-request-id": "gone-1"})
    rec = local.record("gone-1")
    assert rec.outcome == "cancelled" and rec.model == "smollm2-135m"  # type: ignore[attr-defined]
    assert rec.output_tokens < 600 and rec.energy_j > 0  # type: ignore[attr-defined]
    assert time.time() - started < 20


def test_a_client_gone_while_a_streamed_cascade_judges_its_first_stage_stops_generation(local: Local) -> None:
    """A streamed cascade buffers its first model's answer to judge it before any of it is sent, so the response
    has not started when the client gives up: the proxy still sees the disconnect, SmolLM2 stops at its next token
    and the ledger records it `cancelled` (not 600 tokens generated for nobody, then `escalated`)."""
    body = {"model": "router", "max_tokens": 600, "temperature": 0.0, "stream": True,
            "messages": [{"role": "user", "content": "Write a long story about a dragon who learns to code."}]}
    with pytest.raises(httpx.ReadTimeout), httpx.stream(  # noqa: PT012 - the headers are what is waited for
            "POST", f"{local.url}/v1/chat/completions", json=body, timeout=httpx.Timeout(1.0),
            headers={"x-request-id": "gone-stream-1"}) as response:
        response.read()
    rec = local.record("gone-stream-1")
    assert rec.model == "smollm2-135m" and rec.outcome == "cancelled"  # type: ignore[attr-defined]
    assert rec.output_tokens < 600 and rec.energy_j > 0  # type: ignore[attr-defined]


# -- the library ------------------------------------------------------------------------------------------------
def test_router_complete_with_tools_and_response_format(tmp_path: Path) -> None:
    with Router(RouterConfig.load(ledger_url=f"sqlite:///{tmp_path / 'l.sqlite3'}")) as router:
        resp = router.complete(ASK, tools=[WEATHER], tool_choice="required", max_tokens=40)
        call = resp.choices[0].message.tool_calls[0]
        assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"])
        resp = router.complete([{"role": "user", "content": "Invent a person."}], max_tokens=60,
                               response_format={"type": "json_schema", "json_schema": {
                                   "name": "person", "strict": True, "schema": Person.model_json_schema()}})
        assert Person.model_validate_json(resp.choices[0].message.content)
        chunks = list(router.complete(ASK, tools=[WEATHER], tool_choice="required", max_tokens=40, stream=True))
        assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_parallel_tool_calls_stay_within_max_tokens(tmp_path: Path) -> None:
    """Each call's ``functions.<name>:`` opening is generated too, so it counts against max_tokens: at 64 tokens
    SmolLM2 used to make 8 calls and report 119 completion tokens. Now the calls stop when the budget is spent
    (those made are whole), usage and the ledger agree, and a budget spent before any answer began is `length`."""
    tools = [{"type": "function", "function": {
        "name": f"tool_{i}", "description": "does things", "parameters": {
            "type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]}}} for i in range(3)]
    ask = [{"role": "user", "content": "Call tool_0 with x=hello"}]
    with Router(RouterConfig.load(ledger_url=f"sqlite:///{tmp_path / 'l.sqlite3'}")) as router:
        resp = router.complete(ask, tools=tools, max_tokens=64, model="smollm2-135m", temperature=0.0)
        calls = resp.choices[0].message.tool_calls
        assert resp.choices[0].finish_reason == "tool_calls" and 1 <= len(calls) < 8
        assert all(isinstance(json.loads(c["function"]["arguments"]), dict) for c in calls)
        assert resp.usage.completion_tokens <= 64
        chunks = list(router.complete(ask, tools=tools, max_tokens=64, model="smollm2-135m", temperature=0.0,
                                      stream=True))
        assert chunks[-1].usage.completion_tokens == resp.usage.completion_tokens
        short = router.complete(ask, tools=tools, max_tokens=3, model="smollm2-135m", temperature=0.0)
        assert short.choices[0].finish_reason == "length" and not short.choices[0].message.tool_calls
        assert short.usage.completion_tokens <= 3
        produced = [r.output_tokens for r in router.ledger.records()]
    assert produced == [resp.usage.completion_tokens, resp.usage.completion_tokens, short.usage.completion_tokens]


def test_a_schema_enum_beyond_the_basic_plane_is_generated_as_written(tmp_path: Path) -> None:
    """An emoji is one code point past U+FFFF: the grammar must ask for its UTF-8 bytes, not for JSON's two
    surrogate halves (which no token spells, so the answer came out as replacement characters)."""
    reaction = {"type": "json_schema", "json_schema": {"name": "reaction", "strict": True, "schema": {
        "type": "object", "properties": {"r": {"enum": ["👍", "👎"]}}, "required": ["r"],
        "additionalProperties": False}}}
    with Router(RouterConfig.load(ledger_url=f"sqlite:///{tmp_path / 'l.sqlite3'}")) as router:
        resp = router.complete([{"role": "user", "content": "React to 'a great film'."}], model="smollm2-135m",
                               response_format=reaction, max_tokens=20)
    assert resp.routing.model == "smollm2-135m"
    assert json.loads(resp.choices[0].message.content)["r"] in ("👍", "👎")


def _logprob_bytes(entries: list) -> bytes:
    return b"".join(bytes(e.bytes) for e in entries)


def test_logprobs_cover_exactly_the_content_a_stop_string_or_stripping_left(tmp_path: Path) -> None:
    """The stop string's tokens are sampled before the text is cut, and leading whitespace is stripped from the
    text: their log probabilities used to stay in the answer (content '1, 2, 3', tokens joining to '1, 2, 3, 4';
    Gemma's ' The' for 'The'). A token the stop string begins inside is kept, cut to the part before it."""
    count = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]
    words = [{"role": "user", "content": "Write one sentence about Paris."}]
    with Router(RouterConfig.load(ledger_url=f"sqlite:///{tmp_path / 'l.sqlite3'}")) as router:
        def answer(ask: list, **params: object) -> tuple[str, list]:
            choice = router.complete(ask, model="smollm2-135m", logprobs=True, max_tokens=24, **params).choices[0]
            return choice.message.content, choice.logprobs.content

        uncut, _ = answer(count)
        assert ", 4" in uncut
        cases = [(count, ", 4", uncut[: uncut.index(", 4")])]
        # a stop string that begins inside a token: two characters into the first long word after the first
        uncut, entries = answer(words)
        tokens = [e.token for e in entries]
        assert "".join(tokens) == uncut
        at = next(i for i, t in enumerate(tokens) if i > 0 and len(t.strip()) >= 4)
        inside = "".join(tokens[:at]) + tokens[at][:2]
        stop = uncut[len(inside): len(inside) + 12]
        assert uncut.index(stop) == len(inside)  # the first place it occurs
        cases.append((words, stop, inside))
        for ask, stop, content in cases:
            text, entries = answer(ask, stop=stop)
            assert text == content
            assert _logprob_bytes(entries) == content.encode()
            assert "".join(e.token for e in entries) == content
            chunks = [c for c in router.complete(ask, model="smollm2-135m", logprobs=True, max_tokens=24,
                                                 stop=stop, stream=True) if c.choices]
            assert "".join(c.choices[0].delta.content or "" for c in chunks) == content
            assert _logprob_bytes([e for c in chunks if c.choices[0].logprobs
                                   for e in c.choices[0].logprobs.content]) == content.encode()
        # Gemma 3 is run completion-style: its answer's first token follows "Answer:" with a space
        resp = router.complete([{"role": "user", "content": "What is the capital of Italy?"}], model="gemma3-270m",
                               logprobs=True, max_tokens=4).choices[0]
        assert resp.message.content and _logprob_bytes(resp.logprobs.content) == resp.message.content.encode()
