"""Streams from an OpenAI-compatible endpoint (the instant TEST UPSTREAM, whose ``model`` field picks what it does)
that must end as their whole answers do: a streamed answer that fails the request's ``response_format`` is followed
by the next model's, as a whole answer is, through ``Router.complete(stream=True)``, ``acomplete(stream=True)`` and
``router serve`` with the openai SDK."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from pydantic import BaseModel
from servers.procs import models_dir, remote_card, router_serve, upstream, wait_for_record

from router import Router, RouterConfig, StructuredOutputError
from router.backends import openai_http
from router.ledger import open_ledger
from router.types import ChatCompletionChunk

ASK = [{"role": "user", "content": "hello"}]
ANSWER_FORMAT = {"type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": {
    "type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"],
    "additionalProperties": False}}}
class Answer(BaseModel):
    answer: str


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}
FORMAT_CAPABLE = "capabilities: [json_object, json_schema, tools]\ncontext_length:"


@pytest.fixture(scope="module")
def upstream_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with upstream(tmp_path_factory.mktemp("upstream")) as url:
        yield url


def _prose_then_json(folder: Path, upstream_url: str, large: str = "json") -> Path:
    """A config whose small model answers prose whatever it is asked (the upstream's ``echo``) and whose large one
    the upstream's ``large`` (JSON that fits :data:`ANSWER_FORMAT` for ``json``), both taking a json_schema, routed
    cheapest first with the other as the fallback."""
    models = models_dir(folder / "models", {
        "remote-prose": remote_card("remote-prose", upstream_url, "echo", tier="small").replace(
            "context_length:", FORMAT_CAPABLE),
        "remote-json": remote_card("remote-json", upstream_url, large, tier="large").replace(
            "context_length:", FORMAT_CAPABLE)}, specialist=False)
    policies = folder / "policies"
    policies.mkdir()
    (policies / "any.yaml").write_text("name: any\naccuracy: {min_accuracy: 0.0}\n")
    config = folder / "router.yaml"
    config.write_text(f"models_dir: {models}\npolicies_dir: {policies}\ndefault_policy: any\n"
                      f"proxy: {{warm_up: false}}\nledger_url: sqlite:///{folder / 'ledger.sqlite3'}\n")
    return config


def _streamed(router: Router, path: str, **params: object) -> list[ChatCompletionChunk]:
    if path == "stream":
        return list(router.complete(ASK, stream=True, **params))

    async def collect() -> list[ChatCompletionChunk]:
        return [c async for c in await router.acomplete(ASK, stream=True, **params)]

    return asyncio.run(collect())


@pytest.mark.parametrize("path", ["stream", "astream"])
def test_a_streamed_answer_that_fails_the_schema_is_followed_by_the_next_models(upstream_url: str, tmp_path: Path,
                                                                               path: str) -> None:
    """The small model answers prose to a json_schema request. Whole, the next capable model answers; streamed, the
    prose had already gone to the caller and the request ended in StructuredOutputError. A stream now collects an
    answer another model may replace before sending any of it: the caller gets the large model's JSON alone, and
    the ledger has both calls as a whole answer's are."""
    with Router(RouterConfig.load(_prose_then_json(tmp_path, upstream_url))) as router:
        whole = router.complete(ASK, response_format=ANSWER_FORMAT)
        chunks = _streamed(router, path, response_format=ANSWER_FORMAT)
        records = router.ledger.records()
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert json.loads(text) == json.loads(whole.choices[0].message.content or "") == {"answer": "echo: hello"}
    assert {c.model for c in chunks} == {"remote-json"}
    routing = chunks[-1].routing
    assert routing is not None and whole.routing is not None
    assert [(a.model, a.outcome) for a in routing.attempts] == [(a.model, a.outcome) for a in whole.routing.attempts]
    assert [(a.model, a.outcome) for a in routing.attempts] == [("remote-prose", "escalated"), ("remote-json", "ok")]
    streamed = [r for r in records if r.request_id == chunks[0].id]
    assert [(r.model, r.outcome) for r in streamed] == [("remote-prose", "escalated"), ("remote-json", "ok")]
    assert "invalid_model_output" in (streamed[0].error or "")


@pytest.mark.parametrize("path", ["stream", "astream"])
def test_the_last_models_streamed_answer_that_fails_the_schema_says_the_caller_holds_it(upstream_url: str,
                                                                                        tmp_path: Path,
                                                                                        path: str) -> None:
    """With no model left after it, an answer streams as it comes; when it fails the format, the error says that
    what the caller received was it, after naming what every model before it did wrong (as a whole answer's)."""
    with Router(RouterConfig.load(_prose_then_json(tmp_path, upstream_url, large="echo"))) as router:
        got: list[ChatCompletionChunk] = []
        with pytest.raises(StructuredOutputError) as err:
            got.extend(router.complete(ASK, stream=True, response_format=ANSWER_FORMAT) if path == "stream"
                       else _streamed(router, path, response_format=ANSWER_FORMAT))
        records = router.ledger.records()
    message = err.value.message
    assert message.startswith("remote-json: the answer is not valid JSON")
    assert "it had been streamed as it came (the caller holds it): discard it" in message
    assert "(tried before: remote-prose: the answer is not valid JSON" in message
    if path == "stream":  # the large model's prose went out as it came; the small model's never did
        assert {c.model for c in got} == {"remote-json"}
    assert [(r.model, r.outcome) for r in records] == [("remote-prose", "escalated"), ("remote-json", "error")]


def test_a_streamed_answer_that_fails_the_schema_falls_back_through_the_proxy(upstream_url: str,
                                                                             tmp_path: Path) -> None:
    """Through ``router serve`` with the openai SDK streaming a json_schema request (``create`` with ``stream``,
    and the SDK's own ``chat.completions.stream`` helper, which parses the JSON as it arrives): the client reads
    the large model's JSON alone, never the small model's prose, as the whole answer does."""
    config = _prose_then_json(tmp_path, upstream_url)
    with router_serve(config, tmp_path) as base:
        chat = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=30).chat.completions
        chunks = list(chat.create(messages=ASK, model="router", stream=True,  # type: ignore[arg-type]
                                  response_format=ANSWER_FORMAT))  # type: ignore[arg-type]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert json.loads(text) == {"answer": "echo: hello"}
        assert {c.model for c in chunks} == {"remote-json"}
        with chat.stream(messages=ASK, model="router", response_format=Answer) as stream:  # type: ignore[arg-type]
            final = stream.get_final_completion()
        assert final.choices[0].message.parsed == Answer(answer="echo: hello")
        ledger_url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
        wait_for_record(ledger_url, final.id, timeout=10, poll=0.05)
    ledger = open_ledger(ledger_url)
    try:
        for request_id in (chunks[0].id, final.id):
            assert [(r.model, r.outcome) for r in ledger.records() if r.request_id == request_id] == [
                ("remote-prose", "escalated"), ("remote-json", "ok")]
    finally:
        ledger.close()



@pytest.mark.parametrize("path", ["stream", "astream"])
def test_a_streamed_answer_without_the_call_tool_choice_demands_is_followed_by_the_next_models(
        upstream_url: str, tmp_path: Path, path: str) -> None:
    """``tool_choice: required``: the small model answers prose instead of a call. Whole, the next model called the
    tool; streamed, the prose had gone out and the request ended in StructuredOutputError. Now the stream carries
    the large model's call alone, as the whole answer does."""
    config = _prose_then_json(tmp_path, upstream_url, large="calls")
    params = {"tools": [WEATHER], "tool_choice": "required"}
    with Router(RouterConfig.load(config)) as router:
        whole = router.complete(ASK, **params)
        chunks = _streamed(router, path, **params)
    assert not "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    calls = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or []]
    assert [c.function.name for c in calls if c.function and c.function.name] == [
        call.function.name for call in whole.choices[0].message.tool_calls or []] == ["get_weather"]
    routing = chunks[-1].routing
    assert routing is not None and [(a.model, a.outcome) for a in routing.attempts] == [
        ("remote-prose", "escalated"), ("remote-json", "ok")]


# -- an endpoint that ignores "stream": true ------------------------------------------------------------------

@pytest.mark.parametrize("path", ["stream", "astream"])
@pytest.mark.parametrize("model", ["nostream", "nostream:sse", "nostream:calls"])
def test_an_endpoint_that_answers_a_stream_with_one_json_body_is_read_as_a_one_piece_stream(
        upstream_url: str, tmp_path: Path, path: str, model: str) -> None:
    """Some OpenAI-compatible servers and gateways ignore ``"stream": true`` and answer one JSON completion (as
    ``application/json``, or labelled ``text/event-stream``). The stream failed, retried and then fell back, as
    "the model's endpoint ended the stream before sending any of an answer", which sent an operator looking for a
    connection problem. The answer is now the stream: the same text (or tool calls), finish reason and the
    endpoint's token counts as the whole answer, from one call recorded ``ok``."""
    models = models_dir(tmp_path / "models", {"remote-plain": remote_card("remote-plain", upstream_url, model)
                                              .replace("context_length:", "capabilities: [tools]\ncontext_length:")},
                        specialist=False)
    config = RouterConfig.load(models_dir=models, ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    params: dict[str, object] = {"model": "remote-plain"}
    if model == "nostream:calls":
        params["tools"] = [WEATHER]
    with Router(config) as router:
        whole = router.complete(ASK, **params)
        chunks = _streamed(router, path, **params)
        records = router.ledger.records()
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == (whole.choices[0].message.content or "")
    calls = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or []]
    if model == "nostream:calls":
        assert [(c.id, c.function and c.function.name, c.function and c.function.arguments) for c in calls] == [
            ("call_0", "get_weather", "{}")]
        assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason == "tool_calls"
    else:
        assert text == "echo: hello" and not calls
        assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason == "stop"
    usage = chunks[-1].usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (10, 5)
    routing = chunks[-1].routing
    assert routing is not None and [(a.model, a.outcome) for a in routing.attempts] == [("remote-plain", "ok")]
    streamed = [r for r in records if r.request_id == chunks[0].id]
    assert [(r.model, r.outcome, r.input_tokens, r.output_tokens) for r in streamed] == [
        ("remote-plain", "ok", 10, 5)]


def test_an_endpoint_that_answers_a_stream_with_one_json_body_streams_to_the_openai_sdk(upstream_url: str,
                                                                                       tmp_path: Path) -> None:
    """Through ``router serve``, the openai SDK streaming from a model whose endpoint ignores ``"stream": true``
    reads the answer as chunks, its usage last (``stream_options.include_usage``), not an error."""
    models = models_dir(tmp_path / "models", {
        "remote-plain": remote_card("remote-plain", upstream_url, "nostream", max_retries=0)}, specialist=False)
    config = tmp_path / "router.yaml"
    config.write_text(f"models_dir: {models}\nproxy: {{warm_up: false}}\n"
                      f"ledger_url: sqlite:///{tmp_path / 'ledger.sqlite3'}\n")
    with router_serve(config, tmp_path) as base:
        chat = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=30).chat.completions
        chunks = list(chat.create(model="remote-plain", messages=ASK, stream=True,  # type: ignore[arg-type]
                                  stream_options={"include_usage": True}))
        record = wait_for_record(f"sqlite:///{tmp_path / 'ledger.sqlite3'}", chunks[0].id, timeout=10, poll=0.05)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: hello"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    assert (record.model, record.outcome) == ("remote-plain", "ok")



def test_a_plain_body_that_is_no_chat_completion_is_named_an_answer_without_streaming() -> None:
    """A stream answered with one JSON body that is neither a completion nor an error is the endpoint failing
    (retried, then the next model), named for what it is, not "ended the stream"."""
    parser = openai_http._SSEParser("remote-plain", 8192, lambda raw: [])
    for line in ('{"object": "list",', '"data": []}'):
        assert parser.feed(line) == []
    with pytest.raises(openai_http._Retryable) as failure:
        parser.finish()
    assert failure.value.error.message == (
        "remote-plain: the model's endpoint answered without streaming, with a body that is not a chat completion")

# -- an endpoint that refuses stream_options ------------------------------------------------------------------
@pytest.mark.parametrize("path", ["stream", "astream"])
def test_a_stream_refused_for_its_stream_options_is_sent_again_without_them(upstream_url: str, tmp_path: Path,
                                                                           path: str) -> None:
    """Every stream asks for the usage at its end (``stream_options``), which Azure OpenAI's older API versions and
    some gateways refuse with a 400 (``Unknown parameter: 'stream_options'``) where the same request unstreamed is
    answered: every streamed request to such a model failed (the next model answered, or none). The stream is now
    sent again at once without them, and later streams to that endpoint go without them from the start; the
    answer's token counts are estimated (the endpoint reports none) and the call is recorded ``ok``."""
    stats = upstream_url.removesuffix("/v1") + "/stats"
    model = "refuse:stream_options"
    models = models_dir(tmp_path / "models", {"remote-azure": remote_card("remote-azure", upstream_url, model,
                                                                          max_retries=0)}, specialist=False)
    config = RouterConfig.load(models_dir=models, ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    with Router(config) as router:
        calls = []
        answers = []
        for _ in range(2):
            before = httpx.get(stats).json()["calls"].get(model, 0)
            chunks = _streamed(router, path, model="remote-azure")
            calls.append(httpx.get(stats).json()["calls"][model] - before)
            answers.append(chunks)
        records = router.ledger.records()
    assert calls == [2, 1], "refused once, sent again without them, then sent without them from the start"
    for chunks in answers:
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip() == "echo: hello"
        usage = chunks[-1].usage
        assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert [(r.model, r.outcome) for r in records] == [("remote-azure", "ok")] * 2
