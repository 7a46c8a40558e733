"""What the proxy must never do: show a client an upstream's error body or URL, serve metrics or the model list
without a key when keys are configured, let a slow client hold a connection, or hand back an answer that is not
the JSON asked for. And the smaller points: ``GET /v1/models/{id}``, CORS, lone surrogate escapes, harmless
OpenAI parameters, ``stop: [""]``, sub-joule budget messages, a client gone from a non-streamed request.
A real ``router serve`` over the instant TEST UPSTREAM (tests/servers/instant_upstream.py)."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import socket
import time
import typing
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from servers.instant_upstream import LEAK
from servers.procs import (
    ROOT,
    models_dir,
    only_policy,
    policies_dir,
    remote_card,
    router_serve,
    upstream,
    wait_for_record,
)
from starlette.testclient import TestClient
from test_structured_output import build

from router._request import (
    IGNORED_PARAMS,
    ONE_OF,
    PASSED_THROUGH,
    PROMPT_CACHE_OPTIONS,
    REASONING_EFFORTS,
    REFUSED_PARAMS,
    VERBOSITIES,
    check_params,
)
from router.chat_body import _TYPES as CHAT_BODY_TYPES
from router.errors import BadRequestError, CapabilityError, LedgerError
from router.proxy.app import create_app

KEY = "sk-test-hardening-0123456789"
_JSON = "application/json"
CAPS = "capabilities: [tools, json_object, json_schema, logprobs]\ncontext_length:"


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


class Served:
    def __init__(self, url: str, folder: Path, upstream_url: str) -> None:
        self.url = url
        self.folder = folder
        self.upstream_url = upstream_url

    def post(self, body: dict[str, object], **kw: object) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/chat/completions", json=body, timeout=30, **kw)  # type: ignore[arg-type]

    def record(self, request_id: str, timeout: float = 10.0) -> object:
        return wait_for_record(f"sqlite:///{self.folder / 'ledger.sqlite3'}", request_id, timeout, poll=0.1)

    def log(self) -> str:
        return "".join(f.read_text(errors="replace") for f in self.folder.glob("serve-*.log"))


def _config(tmp: Path, up: str, extra: str = "") -> Path:
    cards = {
        "remote-echo": remote_card("remote-echo", up, "echo", tier="small").replace("context_length:", CAPS),
        "remote-json": remote_card("remote-json", up, "json", tier="large", per_call_j=3.0).replace(
            "context_length:", "capabilities: [json_object]\ncontext_length:"),
        "remote-slow": remote_card("remote-slow", up, "slow", tier="large", per_call_j=5.0),
        "remote-broken": remote_card("remote-broken", up, "broken", tier="large", per_call_j=5.0),
        "remote-leaky": remote_card("remote-leaky", up, "leaky", tier="large", per_call_j=5.0),
    }
    models = models_dir(tmp / "models", cards)
    policies = policies_dir(tmp / "policies", {
        "onlybroken": only_policy("remote-broken"), "onlyleaky": only_policy("remote-leaky"),
        "tiny": "name: tiny\naccuracy: {min_accuracy: 0.0}\nallowed_models: [remote-echo]\n"
                "budgets: [{model: remote-echo, joules: 0.5, per: 3600}]\non_budget_exhausted: reject\n"})
    config = tmp / "config.yaml"
    config.write_text(f"models_dir: {models}\npolicies_dir: {policies}\n"
                      f"ledger_url: sqlite:///{tmp / 'ledger.sqlite3'}\ncooldown: {{failures: 100, seconds: 1}}\n"
                      + extra)
    return config


@pytest.fixture(scope="module")
def upstream_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with upstream(tmp_path_factory.mktemp("upstream")) as url:
        yield url


@pytest.fixture(scope="module")
def served(upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("hardened")
    config = _config(tmp, upstream_url, "proxy: {header_timeout_s: 1, body_timeout_s: 1, "
                                        "cors_origins: [https://app.example]}\n")
    with router_serve(config, tmp) as url:
        yield Served(url, tmp, upstream_url)


@pytest.fixture(scope="module")
def keyed(upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("hardened_keys")
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    config = _config(tmp, upstream_url, f"keys: [{{name: t, sha256: {digest}}}]\nproxy: {{open_routes: [metrics]}}\n")
    with router_serve(config, tmp) as url:
        yield Served(url, tmp, upstream_url)


# -- nothing internal reaches a client ------------------------------------------------------------------------
@pytest.mark.parametrize(("policy", "status"), [("onlyleaky", 502), ("onlybroken", 503)])
def test_upstream_error_bodies_and_urls_never_reach_clients(served: Served, policy: str, status: int) -> None:
    r = served.post({"model": "router", "messages": user("hi"), "policy": policy},
                    headers={"x-request-id": f"leak-{policy}"})
    assert r.status_code == status, r.text
    for secret in (LEAK, "sk-live", "/srv/internal", "upstream failure", served.upstream_url, "127.0.0.1"):
        assert secret not in r.text
    assert f"request id leak-{policy}" in r.json()["error"]["message"] and r.headers["x-request-id"] == f"leak-{policy}"
    rec = served.record(f"leak-{policy}")
    assert "sk-live" not in (rec.error or "")  # type: ignore[attr-defined]
    deadline = time.time() + 5
    while f"leak-{policy}" not in served.log() and time.time() < deadline:
        time.sleep(0.1)
    assert f"leak-{policy}" in served.log()  # the detail is in the server's log, under the request id
    if policy == "onlyleaky":
        assert "sk-live" in served.log()


@pytest.mark.parametrize("checksum", [None, "0" * 64])
def test_weights_that_do_not_load_fall_back_and_show_no_file_paths(upstream_url: str, tmp_path: Path,
                                                                   checksum: str | None) -> None:
    """Weights whose checksum is wrong (a config error naming the card, the file and both digests), or a GGUF
    that is not one (llama.cpp's error names the file): the model's attempt fails, the next model answers, and the
    client sees neither the file nor llama.cpp's words, only that the attempt failed."""
    garbage = tmp_path / "not-a-model.gguf"
    garbage.write_bytes(b"GGUF" + b"\0" * 64)
    weights = f"{{path: {garbage}, sha256: '{checksum}'}}" if checksum else f"{{path: {garbage}}}"
    card = (ROOT / "models" / "smollm2-135m.yaml").read_text().split("backend:")[0] + (
        f"backend:\n  type: llama_cpp\n  weights: {weights}\ncontext_length: 2048\n"
        "energy: {per_call_j: 1, source: estimate, citation: test}\n")
    config = _config(tmp_path, upstream_url)
    # no cooldown: the load that failed at warm-up is tried again, so the request makes the failed attempt whose
    # reason must not reach the client (within a cooldown the model would be passed over without an attempt)
    config.write_text(config.read_text().replace("seconds: 1}", "seconds: 0}"))
    (tmp_path / "models" / "smollm2-135m.yaml").write_text(card)
    with router_serve(config, tmp_path) as url:
        r = httpx.post(f"{url}/v1/chat/completions", timeout=60,
                       json={"model": "smollm2-135m", "messages": user("hi")})
    assert r.status_code == 200, r.text
    attempts = [(a["model"], a["outcome"]) for a in r.json()["routing"]["attempts"]]
    assert attempts[0] == ("smollm2-135m", "error") and attempts[-1][1] == "ok"
    assert str(tmp_path) not in r.text and "gguf" not in r.text.lower() and "sha256" not in r.text.lower(), r.text


# -- keys, labels, models -------------------------------------------------------------------------------------
def test_routes_need_a_key_when_keys_are_configured(keyed: Served) -> None:
    assert httpx.get(f"{keyed.url}/v1/models").status_code == 401
    assert httpx.get(f"{keyed.url}/v1/models/router").status_code == 401
    auth = {"authorization": f"Bearer {KEY}"}
    assert httpx.get(f"{keyed.url}/v1/models", headers=auth).status_code == 200
    assert httpx.get(f"{keyed.url}/metrics").status_code == 200  # proxy.open_routes: [metrics]
    assert httpx.get(f"{keyed.url}/health").status_code == 200


def test_models_by_id(served: Served) -> None:
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)
    assert client.models.retrieve("router").id == "router"
    assert client.models.retrieve("router:eco").id == "router:eco"
    echo = client.models.retrieve("remote-echo")
    assert echo.id == "remote-echo" and "tools" in echo.model_extra["capabilities"]
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("gpt-17")
    assert err.value.code == "model_not_found" and "gpt-17" in err.value.message


def test_cors_is_off_by_default_and_follows_the_configured_origins(served: Served, keyed: Served) -> None:
    preflight = {"origin": "https://app.example", "access-control-request-method": "POST",
                 "access-control-request-headers": "authorization, content-type, x-stainless-os"}
    r = httpx.options(f"{keyed.url}/v1/chat/completions", headers=preflight)  # off: another site's page is refused
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
    r = httpx.options(f"{served.url}/v1/chat/completions", headers=preflight)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
    assert "x-stainless-os" in r.headers["access-control-allow-headers"]
    r = served.post({"model": "remote-echo", "messages": user("hi")}, headers={"origin": "https://app.example"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
    exposed = r.headers["access-control-expose-headers"]
    assert "x-router-model" in exposed and "x-router-energy-source" in exposed
    r = httpx.options(f"{served.url}/v1/chat/completions", headers={**preflight, "origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers


# -- slow clients ---------------------------------------------------------------------------------------------
def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def test_slow_headers_cannot_hold_a_connection(served: Served) -> None:
    sock = _connect(served.url)
    started = time.monotonic()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    closed = False
    for i in range(30):  # a header line every 0.2 s would take 6 s; the deadline is 1 s
        try:
            sock.sendall(f"X-Slow-{i}: y\r\n".encode())
            time.sleep(0.2)
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                closed = sock.recv(1024) == b""
            sock.setblocking(True)
        except OSError:
            closed = True
        if closed:
            break
    sock.close()
    assert closed and time.monotonic() - started < 3


def test_headers_that_do_not_end_are_a_431(served: Served) -> None:
    """httptools keeps what has come of unfinished headers: without a limit one connection held all a client could
    send within the header deadline (no key needed), 80 MB in 10 s over loopback."""
    sock = _connect(served.url)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
    answer = b""
    with contextlib.suppress(OSError):  # the server may close while the rest is still being sent
        sock.sendall(b"a" * (1 << 20))
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            answer += chunk
    sock.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 "), answer[:300]
    assert b"\r\nx-request-id: chatcmpl-" in head, head  # one the router makes: the request's was never read
    assert json.loads(body)["error"]["code"] == "request_headers_too_large"
    # ordinary large headers (32 KiB of cookies) still pass, and the server is up
    assert httpx.get(f"{served.url}/health", headers={"Cookie": "c" * 32 * 1024}).status_code == 200


def _error_counts(served: Served) -> dict[tuple[str, ...], float]:
    """``router_requests_total`` by outcome (``("outcome", OUTCOME)``) and ``router_errors_total`` by type and
    status (``("error", TYPE, STATUS)``), summed over their other labels."""
    counts: dict[tuple[str, ...], float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{served.url}/metrics").text):
        for s in family.samples:
            if s.name == "router_requests_total":
                label: tuple[str, ...] = ("outcome", s.labels["outcome"])
            elif s.name == "router_errors_total":
                label = ("error", s.labels["type"], s.labels["status"])
            else:
                continue
            counts[label] = counts.get(label, 0.0) + s.value
    return counts


def _counted_since(served: Served, before: dict[tuple[str, ...], float], label: tuple[str, ...]) -> float:
    """How many more ``label`` counts /metrics has than ``before``, once it has any (the app counts a request the
    server protocol ended when it sees the connection gone, just after the client does)."""
    deadline = time.monotonic() + 10
    while True:
        counted = _error_counts(served).get(label, 0.0) - before.get(label, 0.0)
        if counted or time.monotonic() > deadline:
            return counted
        time.sleep(0.05)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/feedback", "/v1/files"])
def test_a_slow_body_is_a_408(served: Served, path: str) -> None:
    """On every route that reads a body, one too slow is a 408, and /metrics counts the 408 the client got: in
    ``router_errors_total`` (not as a 500 internal error, with tracebacks in the log) and, for a chat request, in
    ``router_requests_total`` as ``rejected`` (not ``cancelled``: the server refused it). The 408 carries the
    request's id as the chat route's other refusals do: its x-request-id, or (none given) one the router makes."""
    before = _error_counts(served)
    tracebacks = served.log().count("Traceback")
    given = b"x-request-id: slow-body-1\r\n" if path == "/v1/chat/completions" else b""
    sock = _connect(served.url)
    started = time.monotonic()
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n".encode()
                 + given + b"Content-Length: 1000\r\n\r\n{\"model\": ")
    reply = sock.recv(4096)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 408") and b"request_timeout" in reply
    head = reply.partition(b"\r\n\r\n")[0].split(b"\r\n")
    assert (b"x-request-id: slow-body-1" in head if given
            else any(line.startswith(b"x-request-id: chatcmpl-") for line in head)), reply
    assert time.monotonic() - started < 3
    assert _counted_since(served, before, ("error", "request_timeout", "408")) == 1
    after = _error_counts(served)
    assert after.get(("error", "internal_error", "500"), 0) == before.get(("error", "internal_error", "500"), 0)
    if path == "/v1/chat/completions":
        assert after.get(("outcome", "rejected"), 0) - before.get(("outcome", "rejected"), 0) == 1
        assert after.get(("outcome", "cancelled"), 0) == before.get(("outcome", "cancelled"), 0)
    assert served.log().count("Traceback") == tracebacks


@pytest.mark.parametrize("path", ["/v1/feedback", "/v1/files"])
def test_a_client_gone_mid_body_is_no_internal_error(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                     path: str) -> None:
    """A client that hangs up while sending a body (a batch file upload over a failing link) is not a 500
    ``internal_error`` in /metrics, nor an 'unhandled error' with a traceback in the log: nobody is left to answer.
    The app is called as the server calls it, with the body's first part and then the disconnect."""
    import asyncio

    app = create_app(router=build(tmp_path, {"text": "hello"}, {"text": "hello"}))
    messages = [{"type": "http.request", "body": b'{"id": ', "more_body": True}, {"type": "http.disconnect"}]
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"x"), (b"content-type", b"application/json"), (b"content-length", b"1000")],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
    with caplog.at_level("ERROR"):
        asyncio.run(app(scope, receive, send))  # raised the client's disconnect, to the server, which logs it too
    assert not [m for m in sent if m.get("status") == 500]
    assert b"internal_error" not in app.state.proxy.metrics.render()
    assert not [rec for rec in caplog.records if rec.levelname == "ERROR"], caplog.text


def test_a_body_still_coming_after_an_early_413_gets_no_second_answer(served: Served) -> None:
    sock = _connect(served.url)
    sock.settimeout(5)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 1000000000\r\n\r\n{")
    reply = b""
    with contextlib.suppress(OSError):
        for _ in range(10):  # keeps sending past the 1 s body deadline, as a client that ignores the 413 would
            time.sleep(0.2)
            sock.sendall(b" ")
    with contextlib.suppress(OSError):
        while chunk := sock.recv(4096):
            reply += chunk
    sock.close()
    assert reply.startswith(b"HTTP/1.1 413"), reply
    assert reply.count(b"HTTP/1.1 ") == 1, reply  # the deadline closes the connection without a 408 after it


# -- structured output from remote models ------------------------------------------------------------------------
def test_a_remote_answer_that_is_not_json_moves_on_to_the_next_capable_model(served: Served) -> None:
    r = served.post({"model": "remote-echo", "messages": user("hi"), "response_format": {"type": "json_object"}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert json.loads(body["choices"][0]["message"]["content"]) == {"answer": "echo: hi"}
    assert [(a["model"], a["outcome"]) for a in body["routing"]["attempts"]] == [
        ("remote-echo", "escalated"), ("remote-json", "ok")]
    r = served.post({"model": "remote-echo", "messages": user("hi"), "policy": "tiny",
                     "response_format": {"type": "json_object"}})
    assert r.status_code in (429, 502)  # no other model allowed: never the prose answer


# -- smaller points -----------------------------------------------------------------------------------------------
def test_harmless_parameters_lone_surrogates_and_empty_stop_strings(served: Served) -> None:
    raw = b'{"model": "remote-echo", "messages": [{"role": "user", "content": "cut emoji \\ud83d here"}]}'
    r = httpx.post(f"{served.url}/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 200 and "\ufffd" in r.json()["choices"][0]["message"]["content"]
    for params in ({"reasoning_effort": "low"}, {"modalities": ["text"]}, {"verbosity": "low", "store": False},
                   {"stop": [""]}, {"stop": ""}):
        r = served.post({"model": "remote-echo", "messages": user("hello"), **params})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "echo: hello", params
    r = served.post({"model": "remote-echo", "messages": user("hello"), "audio": {"voice": "alloy"}})
    assert r.status_code == 400 and r.json()["error"]["code"] == "capability_unsupported"
    assert r.json()["error"]["param"] == "audio"


# What OpenAI answers with a 400, the router must too: a client developed against it would meet them in production.
WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
OPENAI_400S: list[tuple[dict[str, object], str]] = [
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"stream": False, "stream_options": {"include_usage": True}}, "stream_options"),
    ({"parallel_tool_calls": False}, "parallel_tool_calls"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "my schema", "schema": {}}}},
     "response_format.json_schema.name"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "person.v1", "schema": {}}}},
     "response_format.json_schema.name"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "p\n", "schema": {}}}},
     "response_format.json_schema.name"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "p" * 65, "schema": {}}}},
     "response_format.json_schema.name"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    # "tool_choice is only allowed when tools are specified"
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, "tool_choice"),
    # a map of at most 16 string keys (up to 64 characters) to string values (up to 512)
    ({"metadata": {"a": 1}}, "metadata"),
    ({"metadata": {"a": None}}, "metadata"),
    ({"metadata": {"a": {"b": "c"}}}, "metadata"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ({"metadata": {"k" * 65: "v"}}, "metadata"),
    ({"metadata": {"a": "v" * 513}}, "metadata"),
    # "[] is too short - 'tools'"
    ({"tools": []}, "tools"),
    ({"tools": [], "tool_choice": "none"}, "tools"),
    ({"functions": []}, "functions"),  # "[] is too short - 'functions'"
    # the keys and values of the openai SDK's PromptCacheOptions (router/_request.py: PROMPT_CACHE_OPTIONS)
    ({"prompt_cache_options": {"mode": "auto"}}, "prompt_cache_options.mode"),
    ({"prompt_cache_options": {"mode": None}}, "prompt_cache_options.mode"),
    ({"prompt_cache_options": {"ttl": "24h"}}, "prompt_cache_options.ttl"),
    ({"prompt_cache_options": {"ttl": 1800}}, "prompt_cache_options.ttl"),
    ({"prompt_cache_options": {"retention": "24h"}}, "prompt_cache_options.retention"),
    ({"prompt_cache_options": "implicit"}, "prompt_cache_options"),
    # values outside the sets OpenAI takes (router/_request.py: REASONING_EFFORTS, ONE_OF)
    ({"reasoning_effort": "extreme"}, "reasoning_effort"),
    ({"reasoning_effort": "High"}, "reasoning_effort"),
    ({"reasoning_effort": ""}, "reasoning_effort"),
    ({"verbosity": "loud"}, "verbosity"),
    ({"verbosity": "none"}, "verbosity"),
    ({"prompt_cache_retention": "1h"}, "prompt_cache_retention"),
    ({"service_tier": "turbo"}, "service_tier"),
    ({"service_tier": "Auto"}, "service_tier"),
]


@pytest.mark.parametrize(("params", "param"), OPENAI_400S)
def test_what_openai_refuses_is_a_400_naming_the_parameter(served: Served, params: dict[str, object],
                                                          param: str) -> None:
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="remote-echo", messages=user("hello"), **params)  # type: ignore[call-overload]
    assert err.value.status_code == 400 and err.value.param == param, err.value.body
    assert err.value.type == "invalid_request_error", err.value.body


def test_what_openai_accepts_next_to_those_400s_still_runs(served: Served) -> None:
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)
    stopped = client.chat.completions.create(model="remote-echo", messages=user("hello"), stop=["x", "y", "z", "w"])
    assert stopped.choices[0].message.content == "echo: hello"
    chunks = list(client.chat.completions.create(model="remote-echo", messages=user("hello"), stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None
    tooled = client.chat.completions.create(model="remote-echo", messages=user("weather in Oslo?"),
                                            tools=[WEATHER_TOOL], parallel_tool_calls=False)  # type: ignore[list-item]
    assert tooled.choices[0].message.content == "echo: weather in Oslo?"  # the echo model answers in text
    for params in ({"tool_choice": "none"}, {"tools": [WEATHER_TOOL], "tool_choice": "auto"},
                   {"metadata": {f"{i:064d}": "v" * 512 for i in range(16)}}, {"metadata": {}},
                   *({"reasoning_effort": effort} for effort in REASONING_EFFORTS),
                   *({name: value} for name, allowed in ONE_OF.items() for value in allowed),
                   {"prompt_cache_options": {"mode": "implicit", "ttl": "30m"}},
                   {"prompt_cache_options": {"mode": "explicit"}}, {"prompt_cache_options": {}}):
        answer = client.chat.completions.create(model="remote-echo", messages=user("hi"), **params)  # type: ignore[call-overload]
        assert answer.choices[0].message.content == "echo: hi", params


def test_the_400_for_metadata_says_the_rule_and_what_broke_it(served: Served) -> None:
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="remote-echo", messages=user("hi"), metadata={"a": 1})  # type: ignore[dict-item]
    message = err.value.body["message"]  # type: ignore[index]
    assert "at most 16 string keys" in message and "the value of 'a' is an integer, not a string" in message, message
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="remote-echo", messages=user("hi"), tool_choice="auto")
    assert "only allowed when `tools` are specified" in err.value.body["message"]  # type: ignore[index]


def test_the_400_for_reasoning_effort_and_verbosity_lists_what_openai_takes(served: Served) -> None:
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)
    for name, value, allowed in (("reasoning_effort", "extreme", REASONING_EFFORTS),
                                 ("verbosity", "loud", VERBOSITIES)):
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model="remote-echo", messages=user("hi"), **{name: value})  # type: ignore[call-overload]
        message = err.value.body["message"]  # type: ignore[index]
        assert message == f"`{name}` must be one of {', '.join(allowed)}, got {value!r}", message


def test_the_router_knows_every_openai_sdk_chat_parameter_and_its_values() -> None:
    """Every parameter of the installed openai SDK's chat request has a rule here (an unknown one is a 400, which
    a client written for OpenAI meets where OpenAI answers), and the values a parameter is held to are the SDK's.
    The rules are the router's own (an older SDK installed beside it must not narrow them); this says when the
    SDK's grow, so the router's follow."""
    from openai.types.chat.completion_create_params import CompletionCreateParamsBase, PromptCacheOptions
    from openai.types.shared.reasoning_effort import ReasoningEffort

    def literals(hint: object) -> set[str]:
        return {a for a in typing.get_args(hint) if isinstance(a, str)} | {
            v for a in typing.get_args(hint) for v in literals(a)}

    hints = typing.get_type_hints(CompletionCreateParamsBase)
    named = set(inspect.signature(check_params).parameters) - {"params"}
    assert set(hints) - {"messages", "stream"} - named - IGNORED_PARAMS - PASSED_THROUGH - set(REFUSED_PARAMS) == set()
    assert set(hints) <= set(CHAT_BODY_TYPES)  # the proxy checks each one's JSON type
    assert literals(ReasoningEffort) == set(REASONING_EFFORTS)
    for name, allowed in ONE_OF.items():
        assert literals(hints[name]) == set(allowed), name
    cache_options = typing.get_type_hints(PromptCacheOptions)
    assert set(cache_options) == set(PROMPT_CACHE_OPTIONS)
    for key, allowed in PROMPT_CACHE_OPTIONS.items():
        assert literals(cache_options[key]) == set(allowed), key


@pytest.mark.parametrize(("params", "param"), OPENAI_400S)
def test_the_library_refuses_what_openai_refuses(tmp_path: Path, params: dict[str, object], param: str) -> None:
    router = build(tmp_path, {"text": "hello"}, {"text": "hello"})
    try:
        with pytest.raises(BadRequestError) as err:
            router.complete(user("hello"), **params)
        assert err.value.param == param
        if "stream_options" in params:  # in extra_body, as the openai SDK's code passes it, too
            with pytest.raises(BadRequestError) as err:
                router.complete(user("hello"), extra_body=params)
            assert err.value.param == param
            stream = router.complete(user("hello"), stream=True, stream_options={"include_usage": True})
            assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "hello"
    finally:
        router.close()


def test_the_library_takes_openai_schema_names_and_four_stop_strings(tmp_path: Path) -> None:
    answer = '{"name": "Ada", "age": 36}'
    router = build(tmp_path, {"text": answer}, {"text": answer})
    try:
        schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}
        for name in ("person", "Person_v2-1", "p" * 64):
            fmt = {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}
            assert router.complete(user("who?"), response_format=fmt).choices[0].message.content == answer
        assert router.complete(user("who?"), stop=["x", "y", "z", "w"]).choices[0].message.content == answer
        cached = router.complete(user("who?"), prompt_cache_retention="24h", prompt_cache_options={"ttl": "30m"})
        assert cached.choices[0].message.content == answer  # OpenAI's cache settings: nothing to do here
        with pytest.raises(CapabilityError) as refused:
            router.complete(user("who?"), moderation={"model": "omni-moderation-latest"})
        assert refused.value.param == "moderation"
    finally:
        router.close()


def test_a_prompt_too_long_for_every_model_is_context_length_exceeded(served: Served) -> None:
    r = served.post({"model": "router", "messages": user("word " * 100_000)})  # ~125k tokens: over every context
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "context_length_exceeded" and r.json()["error"]["param"] == "messages"


def test_a_sub_joule_budget_message_says_its_joules(served: Served) -> None:
    r = served.post({"model": "router", "messages": user("hello"), "policy": "tiny"})
    assert r.status_code == 429
    assert "0.5 J" in r.json()["error"]["message"] and "0 of 0 J" not in r.json()["error"]["message"]


def test_a_client_gone_from_a_non_streamed_remote_call_closes_it(served: Served) -> None:
    before = httpx.get(served.upstream_url.removesuffix("/v1") + "/stats").json()["closed_early"].get("slow-json", 0)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{served.url}/v1/chat/completions", timeout=httpx.Timeout(0.5),
                   json={"model": "remote-slow", "messages": user("hi"), "max_tokens": 200},
                   headers={"x-request-id": "gone-remote"})
    rec = served.record("gone-remote")
    assert rec.outcome == "cancelled" and rec.model == "remote-slow"  # type: ignore[attr-defined]
    deadline = time.time() + 5
    stats = lambda: httpx.get(served.upstream_url.removesuffix("/v1") + "/stats").json()  # noqa: E731
    while stats()["closed_early"].get("slow-json", 0) == before and time.time() < deadline:
        time.sleep(0.1)
    assert stats()["closed_early"].get("slow-json", 0) == before + 1  # the upstream saw the call end


# -- in process: the app over scripted models (no server, no upstream) --------------------------------------------
@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    router = build(tmp_path_factory.mktemp("in_process"), {"text": "hello"}, {"text": "hello"})
    with TestClient(create_app(router=router)) as client:
        yield client


def _deep(depth: int, surrogate: bool = False) -> bytes:
    content = "hi \\ud83d" if surrogate else "hi"  # a lone surrogate escape takes the lenient reader
    nested = "[" * depth + "]" * depth
    return (f'{{"model": "router", "messages": [{{"role": "user", "content": "{content}"}}], '
            f'"prediction": {{"a": {nested}}}}}').encode()  # a field whose contents go unread


@pytest.mark.parametrize(("depth", "surrogate"), [(100_000, False), (300, False), (250, True), (100_000, True)])
def test_a_body_nested_too_deeply_is_a_400(app: TestClient, depth: int, surrogate: bool) -> None:
    r = app.post("/v1/chat/completions", content=_deep(depth, surrogate), headers={"content-type": _JSON})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and "nests arrays and objects too deeply" in err["message"]
    ok = app.post("/v1/chat/completions", content=_deep(150, surrogate), headers={"content-type": _JSON})
    assert ok.status_code == 200, ok.text  # within the limit either reader takes it


def test_stream_options_are_type_checked(app: TestClient) -> None:
    def usage_chunks(options: object) -> list[dict[str, object]]:
        r = app.post("/v1/chat/completions", json={"model": "router", "messages": user("hi"), "stream": True,
                                                   "stream_options": options})
        assert r.status_code == 200, r.text
        events = [json.loads(line[6:]) for line in r.text.splitlines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
        return [e for e in events if e["choices"] == []]

    for options, param in (({"include_usage": "false"}, "stream_options.include_usage"),
                           ({"include_usage": 1}, "stream_options.include_usage"),
                           ({"include_obfuscation": "no"}, "stream_options.include_obfuscation"),
                           ("include_usage", "stream_options")):
        r = app.post("/v1/chat/completions", json={"model": "router", "messages": user("hi"), "stream": True,
                                                   "stream_options": options})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (options, r.text)
    assert usage_chunks({"include_usage": False}) == []
    assert usage_chunks({"include_usage": None, "include_obfuscation": False, "a_newer_key": 1}) == []
    assert len(usage_chunks({"include_usage": True})) == 1


def test_unknown_routes_say_what_is_served_and_type_errors_read_well(app: TestClient) -> None:
    for method, path in (("POST", "/v1/embeddings"), ("GET", "/v1/nothing-here"), ("GET", "/nothing")):
        r = app.request(method, path)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text
        message = r.json()["error"]["message"]
        assert message.startswith(f"{method} {path} is not served here; the routes are /v1/chat/completions, "
                                  "/v1/models"), message
        assert "/v1/feedback" in message and "/health" in message and "under /v1" not in message
        assert "/chat/completions," not in message.replace("/v1/chat/completions", "")  # no unprefixed twins
    for params, message in (({"max_tokens": "ten"}, "`max_tokens` must be an integer, got a string"),
                            ({"messages": {}}, "`messages` must be an array, got an object"),
                            ({"stop": 3}, "`stop` must be a string or an array, got an integer"),
                            ({"response_format": []}, "`response_format` must be an object, got an array")):
        r = app.post("/v1/chat/completions", json={"model": "router", "messages": user("hi"), **params})
        assert r.status_code == 400 and r.json()["error"]["message"] == message, r.text


def test_an_unexpected_error_off_the_chat_route_gives_a_request_id_the_log_also_names(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from router.proxy.metrics import ProxyMetrics

    def render_fault_injected(self: ProxyMetrics) -> bytes:
        raise RuntimeError("fault injected into /metrics")

    monkeypatch.setattr(ProxyMetrics, "render", render_fault_injected)
    router = build(tmp_path, {"text": "hello"}, {"text": "hello"})
    with TestClient(create_app(router=router), raise_server_exceptions=False) as client, \
            caplog.at_level("ERROR", logger="router"):
        r = client.get("/metrics")
    assert r.status_code == 500, r.text
    request_id = r.headers["x-request-id"]
    assert request_id in r.json()["error"]["message"] and "fault injected" not in r.text
    logged = [rec for rec in caplog.records if request_id in rec.getMessage()]
    assert logged and "fault injected into /metrics" in str(logged[0].exc_info[1])


def test_every_route_s_errors_carry_the_request_id_as_chat_errors_do(served: Served) -> None:
    """Only the chat route's errors carried `x-request-id`: a 404 for an unknown model id, an OpenAI route not
    served here (`/v1/embeddings`, `/v1/completions`) or a bad feedback came without one, so the openai SDK's
    `err.request_id` was None and there was nothing to quote to the operator. Now each carries the client's id, or
    one the router makes."""
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0, timeout=20)
    calls = {"models.retrieve": lambda h: client.models.retrieve("no-such-model", extra_headers=h),
             "embeddings": lambda h: client.embeddings.create(model="router", input="hi", extra_headers=h),
             "completions": lambda h: client.completions.create(model="router", prompt="hi", extra_headers=h),
             "files.retrieve": lambda h: client.files.retrieve("file-nope", extra_headers=h),
             "feedback": lambda h: client.post("/feedback", body={"id": "x"}, cast_to=object,
                                               options={"headers": h})}
    for name, call in calls.items():
        with pytest.raises(openai.APIStatusError) as err:
            call({"x-request-id": f"mine-{name}"})
        assert err.value.status_code in (400, 404) and err.value.request_id == f"mine-{name}", (name, err.value)
        with pytest.raises(openai.APIStatusError) as err:
            call({})
        assert (err.value.request_id or "").startswith("chatcmpl-"), name  # one the router makes, as chat does


def test_errors_off_the_chat_route_carry_the_request_id_however_they_are_made(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Starlette's routing (404, 405), the web-page guard (403) and a route's own server error (503) each answer
    with the request's id; a 5xx also names it in its message, as the chat route's do."""
    router = build(tmp_path, {"text": "hello"}, {"text": "hello"})

    def feedback_fault_injected(*args: object, **kw: object) -> None:
        raise LedgerError("ledger sqlite:///secret/path: the store is down (fault injected)")

    monkeypatch.setattr(router, "feedback", feedback_fault_injected)
    with TestClient(create_app(router=router), raise_server_exceptions=False) as client:
        for method, path, headers, status in (("GET", "/v1/chat/completions", {}, 405),
                                              ("POST", "/v1/embeddings", {}, 404),
                                              ("GET", "/v1/models", {"origin": "https://evil.example"}, 403)):
            r = client.request(method, path, headers={**headers, "x-request-id": "given-1"})
            assert r.status_code == status and r.headers["x-request-id"] == "given-1", (path, r.text)
            r = client.request(method, path, headers={**headers, "x-request-id": "x" * 129})  # too long: replaced
            assert r.headers["x-request-id"].startswith("chatcmpl-"), path
        r = client.post("/v1/feedback", json={"id": "chatcmpl-1", "score": 1}, headers={"x-request-id": "given-2"})
        assert r.status_code == 503 and r.headers["x-request-id"] == "given-2", r.text
        assert "request id given-2" in r.json()["error"]["message"] and "secret" not in r.text


def test_every_route_s_answers_carry_the_request_id_as_chat_answers_do(served: Served, keyed: Served) -> None:
    """A successful answer off the chat route (the model list, a file upload, a batch list, feedback, /health)
    carried no `x-request-id` where every chat answer and every error did, and where OpenAI's answers all do: the
    openai SDK's `_request_id` was None. Now each carries the client's id, or one the router makes; with CORS on
    (`served`) and off (`keyed`)."""
    for proxy, key in ((served, "unused"), (keyed, KEY)):
        _answers_carry_request_ids(proxy, key)


def _answers_carry_request_ids(proxy: Served, key: str) -> None:
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0, timeout=20)
    chat = client.chat.completions.with_raw_response.create(model="remote-echo", messages=user("hi"))
    uploaded = client.files.create(file=("in.jsonl", b"{}\n"), purpose="batch", extra_headers={"x-request-id": "m-1"})
    assert uploaded._request_id == "m-1", proxy.url
    calls = {"models.list": lambda h: client.models.with_raw_response.list(extra_headers=h),
             "models.retrieve": lambda h: client.models.with_raw_response.retrieve("router", extra_headers=h),
             "files.list": lambda h: client.files.with_raw_response.list(extra_headers=h),
             "files.content": lambda h: client.files.with_raw_response.content(uploaded.id, extra_headers=h),
             "batches.list": lambda h: client.batches.with_raw_response.list(extra_headers=h),
             "feedback": lambda h: client.post("/feedback", body={"id": chat.headers["x-request-id"], "score": 1},
                                               cast_to=httpx.Response, options={"headers": h})}
    for name, call in calls.items():
        given = call({"x-request-id": f"mine-{name}"})
        assert given.status_code == 200 and given.headers["x-request-id"] == f"mine-{name}", (proxy.url, name)
        made = call({})
        assert made.headers["x-request-id"].startswith("chatcmpl-"), (proxy.url, name)  # one the router makes
    health = httpx.get(f"{proxy.url}/health", headers={"x-request-id": "mine-health"}, timeout=10)
    assert health.status_code == 200 and health.headers["x-request-id"] == "mine-health"


def test_a_wrong_path_or_method_counts_in_router_errors_total(tmp_path: Path) -> None:
    """A client with a wrong base URL (`/models` without `/v1`) or method got its 404 or 405 while
    `router_errors_total`, "errors on every route", counted none: every request of a misconfigured client failed and
    /metrics showed no error."""
    router = build(tmp_path, {"text": "hello"}, {"text": "hello"})

    def errors(client: TestClient) -> dict[tuple[str, str], float]:
        return {(s.labels["type"], s.labels["status"]): s.value
                for family in text_string_to_metric_families(client.get("/metrics").text)
                for s in family.samples if s.name == "router_errors_total"}

    with TestClient(create_app(router=router)) as client:
        for _ in range(2):
            assert client.get("/models").status_code == 404
            assert client.get("/v1/chat/completions").status_code == 405
        counted = errors(client)
    assert counted[("not_found", "404")] == 2 and counted[("method_not_allowed", "405")] == 2, counted


def test_empty_function_lists_are_400s_as_on_openai(app: TestClient) -> None:
    for name, extra in (("tools", {}), ("functions", {"function_call": "auto"})):
        r = app.post("/v1/chat/completions", json={"model": "router", "messages": user("hi"), name: [], **extra})
        assert r.status_code == 400 and r.json()["error"]["param"] == name, r.text


def test_more_messages_than_max_messages_are_refused_before_each_is_checked(served: Served, tmp_path: Path) -> None:
    """Each message is checked on the proxy's event loop (~4 µs): 280,000 one-letter turns fit the 8 MiB body limit
    and held the loop (every other request, /health) for over a second. More than `max_messages` (10,000) is now a
    400 at once; so are more than 128 tool calls in one history turn, as OpenAI answers them."""
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}] * 5_001
    r = served.post({"model": "router", "messages": turns})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["param"], error["code"]) == ("messages", "array_above_max_length"), error
    assert "10,002 messages" in error["message"] and "at most 10,000" in error["message"], error
    call = {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    history = [*user("weather?"), {"role": "assistant", "content": None, "tool_calls": [call] * 129},
               {"role": "tool", "tool_call_id": "c", "content": "sunny"}, *user("and tomorrow?")]
    r = served.post({"model": "remote-echo", "messages": history})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[1].tool_calls", r.text
    history[1]["tool_calls"] = [call] * 128
    assert served.post({"model": "remote-echo", "messages": history}).status_code == 200
    router = build(tmp_path, {"text": "hello"}, {"text": "hello"})
    try:
        router.config.max_messages = 2  # the library reads the same setting
        with pytest.raises(BadRequestError, match="3 messages; this router accepts at most 2") as err:
            router.complete([*user("a"), {"role": "assistant", "content": "b"}, *user("c")])
        assert err.value.code == "array_above_max_length"
        assert router.complete(user("hello")).choices[0].message.content == "hello"
    finally:
        router.close()
