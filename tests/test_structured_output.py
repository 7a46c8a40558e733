"""Answers are checked against what the request asked for (JSON, a JSON schema, valid tool calls) on every path:
a bad answer moves on to the next capable model, streamed too (a stream with a ``response_format``, or a
``tool_choice`` that demands a call, collects each answer but the last model's before sending it); none left, or a
bad streamed answer that was not collected, is StructuredOutputError, never a silent bad answer. Tool calls and
log probabilities come back in OpenAI's shapes (checked with the openai package's own types). The models are named
test doubles that answer a fixed text or fixed calls (fault injection: a model that ignores the format it was
asked for)."""

from __future__ import annotations

import asyncio
import http.server
import json
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai.types.chat import ChatCompletion as OpenAIChatCompletion
from openai.types.chat import ChatCompletionChunk as OpenAIChunk
from test_paths import PATHS, Outcome, run

import router as router_package
from router import Router, RouterConfig, errors
from router.backends import Backend, GenerationRequest, StreamEvent
from router.cards import load_cards
from router.errors import BadRequestError, StructuredOutputError

ASK = [{"role": "user", "content": "Describe a person."}]
PERSON = {"type": "json_schema", "json_schema": {"name": "person", "strict": True, "schema": {
    "type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"], "additionalProperties": False}}}
WEATHER = {"type": "function", "function": {"name": "get_weather", "strict": True, "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": False}}}


def test_every_error_the_library_raises_is_importable_from_router() -> None:
    """What the README promises the library raises is caught by name from ``router`` (only the proxy raises the
    rest: a wrong method, headers too long, a slow or oversize body, a body's unknown encoding)."""
    proxy_only = {"HeadersTooLargeError", "MethodNotAllowedError", "PayloadTooLargeError", "RequestTimeoutError",
                  "UnsupportedEncodingError"}
    for name in sorted(set(errors.__all__) - proxy_only):
        assert name in router_package.__all__ and getattr(router_package, name) is getattr(errors, name), name


def schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


class ScriptedAnswerDouble(Backend):
    """Fault injection: a model whose answer is a fixed text and/or fixed tool calls, whatever it was asked."""

    local = False

    def __init__(self, inner_card: Any, text: str = "", calls: list[tuple[str, str]] | None = None,
                 logprobs: bool = False, finish: str = "stop", context_full: bool = False) -> None:
        super().__init__(inner_card)
        self.text = text
        self.calls = calls or []
        self.logprobs = logprobs
        self.finish = finish
        self.context_full = context_full
        self.seen: list[GenerationRequest] = []

    def stream(self, request: GenerationRequest) -> Iterator[StreamEvent]:
        self.seen.append(request)
        request.check(self.card.name)
        for piece in [self.text[i:i + 5] for i in range(0, len(self.text), 5)]:
            entry = {"token": piece, "logprob": -0.5, "bytes": list(piece.encode()), "top_logprobs": []}
            yield StreamEvent(text=piece, logprobs=[entry] if self.logprobs else None)
        for i, (name, args) in enumerate(self.calls):
            yield StreamEvent(tool_calls=[{"index": i, "id": f"call_{i}", "type": "function",
                                           "function": {"name": name, "arguments": ""}}])
            yield StreamEvent(tool_calls=[{"index": i, "function": {"arguments": args}}])
        yield StreamEvent(finish_reason=self.finish, prompt_tokens=5, completion_tokens=3,
                          context_full=self.context_full)


def card(name: str, tier: str, joules: float) -> str:
    return textwrap.dedent(f"""\
        name: {name}
        tier: {tier}
        backend: {{type: openai, base_url: "http://127.0.0.1:9/v1", model: m}}
        capabilities: [tools, json_object, json_schema, logprobs]
        context_length: 8192
        energy: {{per_call_j: {joules}, source: estimate, citation: test card}}
        """)


def build(tmp: Path, cheap: dict[str, Any], dear: dict[str, Any]) -> Router:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "models").mkdir()
    (tmp / "policies").mkdir()
    (tmp / "models" / "cheap.yaml").write_text(card("cheap", "small", 1.0))
    (tmp / "models" / "dear.yaml").write_text(card("dear", "large", 5.0))
    (tmp / "policies" / "t.yaml").write_text("name: t\naccuracy: {min_accuracy: 0.0}\n")
    cards = load_cards(tmp / "models")
    config = RouterConfig.load(models_dir=tmp / "models", policies_dir=tmp / "policies", default_policy="t",
                               ledger_url=f"sqlite:///{tmp / 'ledger.sqlite3'}")
    return Router(config, backends={"cheap": ScriptedAnswerDouble(cards["cheap"], **cheap),
                                    "dear": ScriptedAnswerDouble(cards["dear"], **dear)})


GOOD = '{"name": "Ada", "age": 36}'
CASES: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any], Outcome, Outcome]] = {
    # name: (cheap's answer, dear's answer, request params, outcome of whole answers, outcome of streams)
    # a stream with a response_format, or a tool_choice that demands a call, collects each answer but the last
    # model's before sending it: a bad one is followed by the next model's, as a whole answer is
    "invalid JSON escalates": (
        {"text": "Ada is 36."}, {"text": GOOD}, {"response_format": PERSON},
        Outcome("dear", "ok", [("cheap", "escalated", 0, "invalid_model_output"), ("dear", "ok", 1, "")]),
        Outcome("dear", "ok", [("cheap", "escalated", 0, "invalid_model_output"), ("dear", "ok", 1, "")])),
    "schema mismatch escalates": (
        {"text": '{"name": "Ada"}'}, {"text": GOOD}, {"response_format": PERSON},
        Outcome("dear", "ok", [("cheap", "escalated", 0, "invalid_model_output"), ("dear", "ok", 1, "")]),
        Outcome("dear", "ok", [("cheap", "escalated", 0, "invalid_model_output"), ("dear", "ok", 1, "")])),
    "no model gives valid JSON": (
        {"text": "[1, 2]"}, {"text": "nope"}, {"response_format": {"type": "json_object"}},
        Outcome(None, "StructuredOutputError", [("cheap", "escalated", 0, "invalid_model_output"),
                                                ("dear", "error", 1, "invalid_model_output")]),
        Outcome(None, "StructuredOutputError", [("cheap", "escalated", 0, "invalid_model_output"),
                                                ("dear", "error", 1, "invalid_model_output")])),
    "strict tool arguments checked": (
        {"calls": [("get_weather", '{"town": "Paris"}')]}, {"calls": [("get_weather", '{"city": "Paris"}')]},
        {"tools": [WEATHER], "tool_choice": "required"},
        Outcome("dear", "ok", [("cheap", "escalated", 0, "invalid_model_output"), ("dear", "ok", 1, "")]),
        Outcome("dear", "ok", [("cheap", "escalated", 0, "invalid_model_output"), ("dear", "ok", 1, "")])),
    "a required call missing": (
        {"text": "It is sunny."}, {"calls": [("get_weather", '{"city": "Paris"}')]},
        {"tools": [WEATHER], "tool_choice": "required"},
        Outcome("dear", "ok", [("cheap", "escalated", 0, "invalid_model_output"), ("dear", "ok", 1, "")]),
        Outcome("dear", "ok", [("cheap", "escalated", 0, "invalid_model_output"), ("dear", "ok", 1, "")])),
    "an integer too long to read escalates": (  # JSON, but more digits than Python converts (4300 by default)
        {"text": '{"n": ' + "1" * 5000 + "}"}, {"text": GOOD}, {"response_format": {"type": "json_object"}},
        Outcome("dear", "ok", [("cheap", "escalated", 0, "invalid_model_output"), ("dear", "ok", 1, "")]),
        Outcome("dear", "ok", [("cheap", "escalated", 0, "invalid_model_output"), ("dear", "ok", 1, "")])),
    "valid answers pass": (
        {"text": GOOD}, {"text": GOOD}, {"response_format": PERSON},
        Outcome("cheap", "ok", [("cheap", "ok", 0, "")]), Outcome("cheap", "ok", [("cheap", "ok", 0, "")])),
    "an unresolvable $ref is refused before any model runs": (
        {"text": GOOD}, {"text": GOOD}, {"response_format": schema_format({"$ref": "#/$defs/nope"})},
        Outcome(None, "BadRequestError", []), Outcome(None, "BadRequestError", [])),
    "a schema that cannot be applied is recorded and typed": (
        {"text": GOOD}, {"text": GOOD}, {"response_format": schema_format({"anyOf": [{"$ref": "#"}]})},
        Outcome(None, "BadRequestError", [("cheap", "error", 0, "invalid_request")]),
        Outcome(None, "BadRequestError", [("cheap", "error", 0, "invalid_request")])),
}


@pytest.mark.parametrize("case", list(CASES))
def test_answers_are_checked_on_every_path(case: str, tmp_path: Path) -> None:
    cheap, dear, params, whole, streamed = CASES[case]
    for path in PATHS:
        router = build(tmp_path / path, cheap, dear)
        try:
            got = run(router, path, ASK, **params)
        finally:
            router.close()
        assert got == (streamed if path.endswith("stream") else whole), f"{case} on {path}: {got}"


def test_the_error_says_what_was_wrong(tmp_path: Path) -> None:
    router = build(tmp_path, {"text": "Ada is 36."}, {"text": '{"name": "Ada", "age": "old"}'})
    with pytest.raises(StructuredOutputError) as err:
        router.complete(ASK, response_format=PERSON)
    assert err.value.http_status == 502 and "dear" in err.value.message and "age" in err.value.message
    router.close()


def test_an_integer_too_long_to_read_is_named_in_the_error(tmp_path: Path) -> None:
    router = build(tmp_path, {"text": "[" + "7" * 5000 + "]"}, {"text": "[" + "7" * 5000 + "]"})
    with pytest.raises(StructuredOutputError, match="integer too long to read"):
        router.complete(ASK, response_format={"type": "json_object"})
    router.close()


def test_an_answer_cut_at_max_tokens_says_so(tmp_path: Path) -> None:
    """A call or JSON cut by max_tokens is a bad answer like any other (the same error whole and streamed), and
    the message names max_tokens as the cause."""
    cut_call = {"calls": [("get_weather", '{"city": "Par')], "finish": "length"}
    cut_json = {"text": '{"name": "Ada", "ag', "finish": "length"}
    for cheap, params in ((cut_call, {"tools": [WEATHER], "tool_choice": "required"}),
                          (cut_json, {"response_format": PERSON})):
        for path in PATHS:
            router = build(tmp_path / f"{path}-{len(params)}", cheap, cheap)
            try:
                got = run(router, path, ASK, max_tokens=5, **params)
                errors = [r.error for r in router.ledger.records()]
            finally:
                router.close()
            assert got.status == "StructuredOutputError", (path, got)
            assert errors and all("cut at max_tokens (raise it)" in e for e in errors), errors
    router = build(tmp_path / "one", cut_call, cut_call)
    try:
        with pytest.raises(StructuredOutputError) as err:
            router.complete(ASK, tools=[WEATHER], tool_choice="required", max_tokens=5)
    finally:
        router.close()
    cut = ("the answer was cut at max_tokens (raise it): the arguments of the call to 'get_weather' are not valid "
           "JSON (Unterminated string starting at character 9)")
    assert err.value.message == f"dear: {cut} (tried before: cheap: {cut})"  # every model's fault, the last first


def test_an_answer_cut_by_a_full_context_says_so_not_max_tokens(tmp_path: Path) -> None:
    """A local model's context that fills before max_tokens is spent: raising max_tokens would not help, so the
    message (whole and streamed) says the context is full and what would help."""
    cut_json = {"text": '{"name": "Ada", "ag', "finish": "length", "context_full": True}
    for path in PATHS:
        router = build(tmp_path / path, cut_json, cut_json)
        try:
            got = run(router, path, ASK, response_format=PERSON)
            errors = [r.error for r in router.ledger.records()]
        finally:
            router.close()
        assert got.status == "StructuredOutputError", (path, got)
        assert errors and all("cut because the model's context is full (shorten the prompt or use a model with a "
                              "longer context)" in e and "max_tokens" not in e for e in errors), (path, errors)


def test_tool_calls_in_openai_shapes_whole_and_streamed(tmp_path: Path) -> None:
    router = build(tmp_path, {"calls": [("get_weather", '{"city": "Paris"}'), ("get_weather", '{"city": "Rome"}')]},
                   {"text": "x"})
    try:
        resp = router.complete(ASK, tools=[WEATHER])
        parsed = OpenAIChatCompletion.model_validate(resp.model_dump())
        msg = parsed.choices[0].message
        assert parsed.choices[0].finish_reason == "tool_calls" and msg.content is None
        assert [json.loads(c.function.arguments)["city"] for c in msg.tool_calls] == ["Paris", "Rome"]
        assert msg.tool_calls[0].id == "call_0" and msg.tool_calls[0].type == "function"

        chunks = [OpenAIChunk.model_validate(c.model_dump()) for c in router.complete(ASK, tools=[WEATHER],
                                                                                    stream=True)]
        deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
        assert deltas[0].id == "call_0" and deltas[0].function.name == "get_weather"
        assert "".join(d.function.arguments or "" for d in deltas if d.index == 1) == '{"city": "Rome"}'
        assert chunks[-1].choices[0].finish_reason == "tool_calls"

        # a legacy `functions` request allows one call: two are a bad answer, and the next model's text is taken
        legacy = router.complete(ASK, functions=[WEATHER["function"]])
        assert legacy.routing.model == "dear" and legacy.routing.attempts[0].outcome == "escalated"
    finally:
        router.close()
    router = build(tmp_path / "legacy", {"calls": [("get_weather", '{"city": "Paris"}')]}, {"text": "x"})
    try:
        legacy = router.complete(ASK, functions=[WEATHER["function"]])  # the answer in the legacy shape
        assert legacy.choices[0].finish_reason == "function_call"
        assert legacy.choices[0].message.function_call == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
        assert legacy.choices[0].message.tool_calls is None
        chunks = list(router.complete(ASK, functions=[WEATHER["function"]], stream=True))
        pieces = [c.choices[0].delta.function_call for c in chunks if c.choices[0].delta.function_call]
        assert pieces[0]["name"] == "get_weather" and "".join(p.get("arguments", "") for p in pieces) == \
            '{"city": "Paris"}'
    finally:
        router.close()


def test_tool_calls_read_as_the_openai_client_reads_them(tmp_path: Path) -> None:
    """Code written for the OpenAI client reads a call's fields as attributes (``call.function.name``, a delta's
    ``id`` None after the first): it runs unchanged on the library's answers, whole, streamed, async and legacy,
    while the dict keys still work and a dump is plain JSON."""
    router = build(tmp_path, {"calls": [("get_weather", '{"city": "Paris"}'), ("get_weather", '{"city": "Rome"}')]},
                   {"text": "x"})
    try:
        message = router.complete(ASK, tools=[WEATHER]).choices[0].message
        assert [(c.id, c.type, c.function.name, json.loads(c.function.arguments)["city"])
                for c in message.tool_calls or []] == [("call_0", "function", "get_weather", "Paris"),
                                                      ("call_1", "function", "get_weather", "Rome")]
        assert message.tool_calls[0]["function"]["name"] == "get_weather"  # type: ignore[index]
        assert json.loads(message.model_dump_json())["tool_calls"][1]["function"]["arguments"] == '{"city": "Rome"}'
        with pytest.raises(AttributeError, match="fucntion"):
            message.tool_calls[0].fucntion  # type: ignore[index]  # noqa: B018  # a typo is no silent None

        arguments: dict[int, str] = {}  # the OpenAI cookbook's loop over streamed tool-call deltas
        ids: list[str | None] = []
        for chunk in router.complete(ASK, tools=[WEATHER], stream=True):
            for delta in chunk.choices[0].delta.tool_calls or []:
                ids.append(delta.id)
                arguments[delta.index] = arguments.get(delta.index, "") + (delta.function.arguments or "")
        assert arguments == {0: '{"city": "Paris"}', 1: '{"city": "Rome"}'} and ids == ["call_0", None, "call_1", None]

        async def first_call_name() -> str:
            answer = await router.acomplete(ASK, tools=[WEATHER])
            return str(answer.choices[0].message.tool_calls[0].function.name)  # type: ignore[index]

        assert asyncio.run(first_call_name()) == "get_weather"
    finally:
        router.close()
    router = build(tmp_path / "legacy", {"calls": [("get_weather", '{"city": "Paris"}')]}, {"text": "x"})
    try:
        call = router.complete(ASK, functions=[WEATHER["function"]]).choices[0].message.function_call
        assert call is not None and (call.name, call.arguments) == ("get_weather", '{"city": "Paris"}')
    finally:
        router.close()


def test_logprobs_whole_and_streamed(tmp_path: Path) -> None:
    router = build(tmp_path, {"text": "hello there", "logprobs": True}, {"text": "x"})
    try:
        resp = OpenAIChatCompletion.model_validate(router.complete(ASK, logprobs=True).model_dump())
        assert "".join(e.token for e in resp.choices[0].logprobs.content) == "hello there"
        chunks = [OpenAIChunk.model_validate(c.model_dump()) for c in router.complete(ASK, logprobs=True,
                                                                                    stream=True)]
        entries = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
        assert "".join(e.token for e in entries) == "hello there"
    finally:
        router.close()


def test_options_reach_the_backend(tmp_path: Path) -> None:
    router = build(tmp_path, {"text": GOOD}, {"text": GOOD})
    try:
        router.complete(ASK, response_format=PERSON, top_p=0.3, seed=7)
        seen = router.backend("cheap").seen[-1]
        assert seen.options.response_format.name == "person" and dict(seen.options.passthrough) == {
            "top_p": 0.3, "seed": 7}
    finally:
        router.close()


def test_refs_must_resolve_inside_the_schema_and_nothing_is_fetched(tmp_path: Path) -> None:
    served: list[str] = []

    class Schemas(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the http.server name)
            served.append(self.path)
            body = b'{"type": "object"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Schemas)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    remote = f"http://127.0.0.1:{server.server_address[1]}/s.json"
    router = build(tmp_path, {"text": GOOD}, {"calls": [("get_weather", '{"city": "Paris"}')]})
    strict_tool = {"type": "function", "function": {**WEATHER["function"], "parameters": {"$ref": remote}}}
    try:
        for params, param in (
                ({"response_format": schema_format({"$ref": remote})}, "response_format.json_schema.schema"),
                ({"response_format": schema_format({"$ref": "#/$defs/nope"})}, "response_format.json_schema.schema"),
                ({"response_format": schema_format({"$id": "https://a.example/p", "$ref": "q.json"})},
                 "response_format.json_schema.schema"),
                ({"tools": [strict_tool]}, "tools[0].function.parameters")):
            with pytest.raises(BadRequestError) as err:
                router.complete(ASK, **params)
            assert err.value.http_status == 400 and err.value.param == param, err.value.message
            assert "$ref" in err.value.message and "never fetched" in err.value.message
        # refs that resolve inside the schema (a pointer, an anchor, the schema itself) are fine
        inside = {"$defs": {"n": {"$anchor": "nm", "type": "string"}},
                  "type": "object", "properties": {"name": {"$ref": "#nm"}, "age": {"type": "integer"},
                                                   "child": {"$ref": "#"}}, "required": ["name"]}
        assert router.complete(ASK, response_format=schema_format(inside)).routing.model == "cheap"
        # a function that is not strict is not validated, so its schema is sent as it came
        loose = {"type": "function", "function": {"name": "get_weather", "parameters": {"$ref": remote}}}
        assert router.complete(ASK, tools=[loose], tool_choice="required").choices[0].message.tool_calls
        # no model ran for the refused requests
        assert [r.outcome for r in router.ledger.records()] == ["ok", "escalated", "ok"]
    finally:
        router.close()
        server.shutdown()
    assert served == []


def test_a_check_that_fails_still_leaves_the_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise ValueError("a bug in the check")

    monkeypatch.setattr("router._attempts.output_problem", broken)  # fault injection: the check itself fails
    for path in PATHS:
        router = build(tmp_path / path, {"text": GOOD}, {"text": GOOD})
        try:
            got = run(router, path, ASK, response_format=PERSON)
        finally:
            router.close()
        assert got == Outcome(None, "InternalError", [("cheap", "error", 0, "internal_error")]), f"{path}: {got}"
