"""Pass-through to a real OpenAI-compatible server: llama.cpp's own ``llama_cpp.server`` (function-calling chat
format, the shipped SmolLM2 GGUF) behind ``router serve``, driven by the openai SDK and LangChain. Tools, the
tool's result and JSON mode reach the upstream as sent; its tool calls come back whole and streamed in OpenAI's
shape; a capability the card does not declare is a 400."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from servers.procs import ROOT, llama_server, models_dir, remote_card, router_serve, wait_for_record

pytestmark = pytest.mark.slow

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
FORCED = {"type": "function", "function": {"name": "get_weather"}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def upstream(cards, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama.cpp's server with its function-calling chat handler (``chatml-function-calling``)."""
    from router.backends.weights import resolve_gguf

    card = cards["smollm2-135m"]
    with llama_server(resolve_gguf(card.backend.weights, card), tmp_path_factory.mktemp("llama_tools_server"),
                      "--chat_format", "chatml-function-calling") as base:
        yield base


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The proxy's folder: its models, config and ledger."""
    return tmp_path_factory.mktemp("agents_passthrough")


@pytest.fixture(scope="module")
def proxy(upstream: str, home: Path) -> Iterator[str]:
    # llama.cpp's function-calling handler runs a grammar over a 135M model on the runner's cores: 20 s (the
    # helper's default) was not enough beside other work on a 2-core runner, and a timeout is not what is tested
    card = remote_card("remote-smollm2", upstream, "smollm2", tier="large", timeout_s=90).replace(
        "context_length:", "capabilities: [tools, json_object]\ncontext_length:")
    models = models_dir(home / "models", {"remote-smollm2": card})
    config = home / "config.yaml"
    config.write_text(f"models_dir: {models}\npolicies_dir: {ROOT / 'policies'}\n"
                      f"ledger_url: sqlite:///{home / 'ledger.sqlite3'}\n")
    with router_serve(config, home) as url:
        yield url


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_tool_call_round_trip_through_the_proxy(proxy: str) -> None:
    chat = client(proxy).chat.completions
    first = chat.create(model="router", messages=ASK, tools=[WEATHER], tool_choice=FORCED, max_tokens=40)
    assert first.model_extra["routing"]["model"] == "remote-smollm2"
    msg = first.choices[0].message
    call = msg.tool_calls[0]
    assert call.function.name == "get_weather" and isinstance(json.loads(call.function.arguments), dict)
    history = [*ASK, msg.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": "sunny, 18 C"}]
    second = chat.create(model="router", messages=history, tools=[WEATHER], tool_choice="none", max_tokens=30)
    assert second.choices[0].message.content


def test_streamed_tool_calls_through_the_proxy(proxy: str, home: Path) -> None:
    """llama.cpp's server sends no usage in a stream: the router counts the calls' tokens itself, for the client's
    usage and for the ledger (an answer that is only tool calls has no text to count)."""
    chunks = list(client(proxy).chat.completions.create(
        model="router", messages=ASK, tools=[WEATHER], tool_choice=FORCED, stream=True, max_tokens=40,
        stream_options={"include_usage": True}, extra_headers={"x-request-id": "streamed-calls"}))
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert deltas and deltas[0].function.name == "get_weather"
    arguments = "".join(d.function.arguments or "" for d in deltas)
    assert isinstance(json.loads(arguments), dict)
    assert chunks[-1].model_extra["routing"]["model"] == "remote-smollm2"
    assert chunks[-1].usage.completion_tokens > len(arguments) // 4  # the arguments, and the call's name
    record = wait_for_record(f"sqlite:///{home / 'ledger.sqlite3'}", "streamed-calls", timeout=20, poll=0.2)
    assert record.output_tokens == chunks[-1].usage.completion_tokens


def test_json_object_passes_through_and_undeclared_json_schema_is_a_400(proxy: str) -> None:
    chat = client(proxy).chat.completions
    # a short object asked for at temperature 0: a 135M model's free description runs past any small max_tokens
    ask = [{"role": "user", "content": 'Answer with a JSON object with one key, "country": the country of Paris.'}]
    text = chat.create(model="router", messages=ask, response_format={"type": "json_object"}, max_tokens=60,
                       temperature=0).choices[0].message.content
    assert isinstance(json.loads(text), dict)
    with pytest.raises(openai.BadRequestError) as err:  # the card does not declare json_schema
        chat.create(model="router", messages=ASK, max_tokens=20, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}})
    assert err.value.code == "capability_unsupported" and err.value.param == "response_format"


def test_langchain_bind_tools_round_trip_through_the_proxy(proxy: str) -> None:
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        return f"sunny in {city}"

    llm = ChatOpenAI(model="router", base_url=f"{proxy}/v1", api_key="unused", max_retries=0, timeout=120,
                     max_tokens=40)
    messages = [HumanMessage("What is the weather in Paris?")]
    ai = llm.bind_tools([get_weather], tool_choice="get_weather").invoke(messages)
    assert ai.tool_calls and ai.tool_calls[0]["name"] == "get_weather"
    messages += [ai, ToolMessage(get_weather.invoke(ai.tool_calls[0]["args"]), tool_call_id=ai.tool_calls[0]["id"])]
    assert llm.bind_tools([get_weather], tool_choice="none").invoke(messages).content
