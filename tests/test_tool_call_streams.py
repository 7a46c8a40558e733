"""Tool-call streams and stream usage as OpenAI-compatible endpoints other than OpenAI's send them, through a real
``router serve`` in front of the instant TEST UPSTREAM (tests/servers/instant_upstream.py): deltas without an
``index``, a call's name in a later delta than its id, token counts that are not counts. The client gets whole,
valid calls in OpenAI's chunk shape, and the ledger records what the client was told."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from servers.procs import ROOT, models_dir, remote_card, router_serve, upstream, wait_for_record

from router.tools import merge_tool_deltas

TOOLS = [{"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {}}}}
         for name in ("get_weather", "get_time")]
ASK = [{"role": "user", "content": "Weather and time in Paris?"}]
UPSTREAM_MODELS = {"remote-noindex": "calls:noindex", "remote-latename": "calls:latename",
                   "remote-objectargs": "calls:objectargs",
                   "remote-negative": "usage:-5:1e30", "remote-fraction": "usage:2.5:true",
                   "remote-nousage": "nousage"}


class Proxy:
    def __init__(self, url: str, ledger_url: str) -> None:
        self.url = url
        self.ledger_url = ledger_url

    def chat(self) -> openai.resources.chat.Completions:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=20).chat.completions


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    home = tmp_path_factory.mktemp("tool_call_streams")
    with upstream(home) as up:
        cards = {name: remote_card(name, up, model).replace("context_length:", "capabilities: [tools]\ncontext_length:")
                 for name, model in UPSTREAM_MODELS.items()}
        models = models_dir(home / "models", cards, specialist=False)
        ledger_url = f"sqlite:///{home / 'ledger.sqlite3'}"
        config = home / "config.yaml"
        config.write_text(f"models_dir: {models}\npolicies_dir: {ROOT / 'policies'}\nledger_url: {ledger_url}\n")
        with router_serve(config, home) as url:
            yield Proxy(url, ledger_url)


def streamed_calls(proxy: Proxy, model: str, request_id: str) -> tuple[list[dict[str, str]], str]:
    """The tool calls a client adds up from the proxy's chunks (by index, as the openai SDK does), and the finish
    reason."""
    chunks = list(proxy.chat().create(model=model, messages=ASK, tools=TOOLS, stream=True,  # type: ignore[call-overload]
                                      extra_headers={"x-request-id": request_id}))
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += delta.id or ""
            call["name"] += (delta.function.name if delta.function else None) or ""
            call["arguments"] += (delta.function.arguments if delta.function else None) or ""
    return [calls[i] for i in sorted(calls)], chunks[-1].choices[0].finish_reason


NO_INDEX = [{"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": ""}},
            {"function": {"arguments": "{"}}, {"function": {"arguments": "}"}},
            {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
            {"id": "call_b", "function": {"arguments": ""}}]


def test_deltas_without_index_are_merged_by_id() -> None:
    """Deltas without an index, merged as they came (as the proxy's own streams pass them on, numbered, the HTTP
    backend reads them by the same rule): a new id starts a call; no id, or a known one, continues it."""
    merged: list[dict[str, Any]] = []
    merge_tool_deltas(merged, NO_INDEX)
    assert merged == [{"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
                      {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]


@pytest.mark.slow
def test_streamed_calls_without_index_come_back_as_separate_calls(proxy: Proxy) -> None:
    """An endpoint that streams tool-call deltas without ``index``: a delta that brings a new call id starts a
    new call, one without an id continues the current call (each call's arguments come in two such deltas)."""
    calls, finish = streamed_calls(proxy, "remote-noindex", "noindex")
    assert [(c["id"], c["name"], json.loads(c["arguments"])) for c in calls] == [
        ("call_0", "get_weather", {}), ("call_1", "get_time", {})]
    assert finish == "tool_calls"
    record = wait_for_record(proxy.ledger_url, "noindex", timeout=20, poll=0.1)
    assert (record.model, record.outcome, record.input_tokens, record.output_tokens) == ("remote-noindex", "ok", 10, 5)


@pytest.mark.slow
def test_a_name_after_the_call_id_is_kept(proxy: Proxy) -> None:
    """An endpoint that streams each call's id first and its name in the next delta: the name is passed on once,
    and the call is the function named, not a call to an unknown function ''."""
    calls, finish = streamed_calls(proxy, "remote-latename", "latename")
    assert [(c["id"], c["name"], json.loads(c["arguments"])) for c in calls] == [
        ("call_0", "get_weather", {}), ("call_1", "get_time", {})]
    assert finish == "tool_calls"
    record = wait_for_record(proxy.ledger_url, "latename", timeout=20, poll=0.1)
    assert (record.model, record.outcome, record.input_tokens, record.output_tokens) == ("remote-latename", "ok", 10, 5)


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_arguments_sent_as_a_json_object_reach_the_client_as_json_text(proxy: Proxy, stream: bool) -> None:
    """An endpoint that sends a call's arguments as a JSON object, not a string holding one (llama.cpp's server
    and TGI have): the client gets OpenAI's shape, the arguments as JSON text, where a whole answer was refused as
    malformed (502) and a stream passed on Python's repr of the object (``{'city': 'Paris'}``), which the
    arguments check then failed."""
    request_id = f"objectargs-{stream}"
    if stream:
        calls, finish = streamed_calls(proxy, "remote-objectargs", request_id)
    else:
        answer = proxy.chat().create(model="remote-objectargs", messages=ASK, tools=TOOLS,  # type: ignore[call-overload]
                                     extra_headers={"x-request-id": request_id})
        calls = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                 for c in answer.choices[0].message.tool_calls or []]
        finish = answer.choices[0].finish_reason
    assert [(c["id"], c["name"], json.loads(c["arguments"])) for c in calls] == [
        ("call_0", "get_weather", {"city": "Paris"}), ("call_1", "get_time", {"city": "Paris"})]
    assert finish == "tool_calls"
    record = wait_for_record(proxy.ledger_url, request_id, timeout=20, poll=0.1)
    assert (record.model, record.outcome) == ("remote-objectargs", "ok")


def usage_and_record(proxy: Proxy, model: str, stream: bool,
                     request_id: str) -> tuple[tuple[int, int], tuple[int, int, float]]:
    """The usage the client is told and the ledger record's tokens and energy, for one question to ``model``."""
    chat = proxy.chat()
    if stream:
        chunks = list(chat.create(model=model, messages=ASK, stream=True, stream_options={"include_usage": True},
                                  extra_headers={"x-request-id": request_id}))
        usage = chunks[-1].usage
    else:
        usage = chat.create(model=model, messages=ASK, extra_headers={"x-request-id": request_id}).usage
    record = wait_for_record(proxy.ledger_url, request_id, timeout=20, poll=0.1)
    assert usage is not None and record.outcome == "ok"
    return (usage.prompt_tokens, usage.completion_tokens), (record.input_tokens, record.output_tokens, record.energy_j)


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("model", ["remote-negative", "remote-fraction"])
def test_token_counts_that_are_not_counts_are_estimated(proxy: Proxy, model: str, stream: bool) -> None:
    """An endpoint reporting token counts that are not counts (negative, absurd, a fraction, ``true``): streamed
    as whole, the client's usage and the ledger's tokens and energy are the router's own estimates, as for an
    endpoint that reports no usage."""
    usage, record = usage_and_record(proxy, model, stream, f"{model}-{stream}")
    estimated_usage, estimated_record = usage_and_record(proxy, "remote-nousage", stream, f"{model}-{stream}-estimated")
    assert usage == estimated_usage and record == estimated_record
    assert usage == record[:2] and min(usage) > 0
