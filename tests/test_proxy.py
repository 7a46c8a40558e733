"""The proxy end to end: a real ``router serve`` subprocess, talked to with the official ``openai`` client and raw
httpx. Models: the shipped sentiment specialist (in-process, instant) and cards pointing at the instant TEST
UPSTREAM (tests/servers/instant_upstream.py), so these tests take seconds."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion
from servers.procs import (
    ROOT,
    free_port,
    models_dir,
    only_policy,
    policies_dir,
    remote_card,
    router_serve,
    upstream,
    wait_for_record,
)

from router.ledger import LedgerRecord, hash_key, open_ledger

REVIEW = "Is this review positive or negative? 'a gorgeous, witty film with a heart of gold'"
QUESTION = "What is the capital of France?"
KEY_ECO = "sk-test-eco-0123456789"
KEY_QUALITY = "sk-test-quality-abcdef"
MAX_BODY = 64 * 1024


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


class Served:
    def __init__(self, url: str, upstream_url: str, ledger_url: str) -> None:
        self.url = url
        self.upstream_url = upstream_url
        self.ledger_url = ledger_url

    def client(self, key: str = "unused", **kw: object) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=20, **kw)

    def records(self) -> list[LedgerRecord]:
        ledger = open_ledger(self.ledger_url)
        try:
            return ledger.records()
        finally:
            ledger.close()

    def record(self, request_id: str, timeout: float = 10.0) -> LedgerRecord:
        """The ledger record of one request (the proxy writes records from a background thread)."""
        return wait_for_record(self.ledger_url, request_id, timeout, poll=0.05)  # type: ignore[no-any-return]

    def upstream_stats(self) -> dict[str, dict[str, int]]:
        return httpx.get(self.upstream_url.removesuffix("/v1") + "/stats").json()


def _config(tmp: Path, up: str, extra: str = "") -> tuple[Path, str]:
    cards = {
        "remote-echo": remote_card("remote-echo", up, "echo", tier="small"),
        "remote-slow": remote_card("remote-slow", up, "slow", tier="large", per_call_j=5.0),
        "remote-broken": remote_card("remote-broken", up, "broken", tier="large", per_call_j=5.0),
    }
    models = models_dir(tmp / "models", cards)
    policies = policies_dir(tmp / "policies", {"onlybroken": only_policy("remote-broken")})
    ledger_url = f"sqlite:///{tmp / 'ledger.sqlite3'}"
    config = tmp / "config.yaml"
    config.write_text(
        f"models_dir: {models}\npolicies_dir: {policies}\nledger_url: {ledger_url}\n"
        f"proxy: {{max_body_bytes: {MAX_BODY}}}\ncooldown: {{failures: 2, seconds: 300}}\n{extra}"
    )
    return config, ledger_url


@pytest.fixture(scope="module")
def upstream_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with upstream(tmp_path_factory.mktemp("upstream")) as url:
        yield url


@pytest.fixture(scope="module")
def served(upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("proxy")
    config, ledger_url = _config(tmp, upstream_url)
    with router_serve(config, tmp) as url:
        yield Served(url, upstream_url, ledger_url)


@pytest.fixture(scope="module")
def keyed(upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("proxy_keys")
    keys = (
        "keys:\n"
        f"    - {{name: eco-team, sha256: {hashlib.sha256(KEY_ECO.encode()).hexdigest()}, policy: eco}}\n"
        f"    - {{name: quality-team, sha256: {hashlib.sha256(KEY_QUALITY.encode()).hexdigest()}, policy: quality}}\n"
    )
    config, ledger_url = _config(tmp, upstream_url, keys)
    with router_serve(config, tmp) as url:
        yield Served(url, upstream_url, ledger_url)


# -- the official client: non-streaming ---------------------------------------------------------------------
def test_sentiment_request_answered_by_the_specialist(served: Served) -> None:
    raw = served.client().chat.completions.with_raw_response.create(model="router", messages=user(REVIEW))
    resp = raw.parse()
    assert resp.choices[0].message.content == "positive"
    assert resp.model == "sentiment-onnx"
    assert raw.headers["x-router-model"] == "sentiment-onnx"
    assert raw.headers["x-router-tier"] == "specialist"
    assert float(raw.headers["x-router-energy-j"]) > 0
    assert raw.headers["x-router-reason"].isascii() and raw.headers["x-router-reason"]
    routing = resp.model_extra["routing"]
    assert routing["model"] == "sentiment-onnx" and routing["energy_j"] > 0 and routing["reason"]
    assert resp.usage is not None and resp.usage.total_tokens > 0


def test_general_request_goes_through_the_http_backend(served: Served) -> None:
    raw = served.client().chat.completions.with_raw_response.create(model="remote-echo", messages=user(QUESTION),
                                                                    max_tokens=16)
    resp = raw.parse()
    assert resp.choices[0].message.content.startswith("echo: What is the capital")
    assert raw.headers["x-router-model"] == "remote-echo"
    assert resp.model_extra["routing"]["energy_source"].startswith("estimated")
    rec = served.record(resp.id)
    assert rec.model == "remote-echo" and rec.outcome == "ok" and rec.energy_j > 0


def test_the_energy_headers_say_where_the_joules_come_from(served: Served) -> None:
    """`x-router-energy-j` came without its source, which only the body had (a local model's joules may be measured
    or estimated from CPU time; a remote model's are estimated from its card's token profile): a client reading
    the headers could not tell a meter's reading from an estimate. A stream's joules and their source are known only
    at its end, so its headers carry neither and its last chunk's `routing` has both."""
    chat = served.client().chat.completions
    for model, text in (("router", REVIEW), ("remote-echo", QUESTION)):
        raw = chat.with_raw_response.create(model=model, messages=user(text), max_tokens=16)
        routing = raw.parse().model_extra["routing"]
        assert raw.headers["x-router-energy-source"] == routing["energy_source"], model
        assert routing["energy_source"].startswith(("measured:", "estimated:")), routing
        assert float(raw.headers["x-router-energy-j"]) == pytest.approx(routing["energy_j"], rel=1e-5)
    assert raw.headers["x-router-energy-source"] == "estimated:token-profile"  # remote-echo's card profile
    raw_stream = chat.with_raw_response.create(model="remote-echo", messages=user(QUESTION), max_tokens=16,
                                               stream=True)
    assert raw_stream.headers["x-router-model"] == "remote-echo"
    assert "x-router-energy-source" not in raw_stream.headers and "x-router-energy-j" not in raw_stream.headers
    last = list(raw_stream.parse())[-1]
    assert last.model_extra["routing"]["energy_source"] == "estimated:token-profile"


def test_x_request_id_is_used_as_the_ledger_id(served: Served) -> None:
    resp = served.client().chat.completions.create(model="router", messages=user(REVIEW),
                                                   extra_headers={"x-request-id": "req-from-client-1"})
    assert resp.id == "req-from-client-1"
    assert served.record("req-from-client-1").outcome == "ok"


# -- the official client: streaming -------------------------------------------------------------------------
def test_stream_with_usage_chunk(served: Served) -> None:
    stream = served.client().chat.completions.create(
        model="remote-echo", messages=user(QUESTION), stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip().startswith("echo: What is the capital")
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    assert chunks[-1].model_extra["routing"]["model"] == "remote-echo"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert len({c.id for c in chunks}) == 1


def test_stream_specialist_usage_in_last_chunk_by_default(served: Served) -> None:
    with httpx.stream("POST", f"{served.url}/v1/chat/completions", timeout=20,
                      json={"model": "router", "messages": user(REVIEW), "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-router-model"] == "sentiment-onnx"
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    last = json.loads(lines[-2][6:])
    assert last["usage"]["total_tokens"] > 0 and last["routing"]["tier"] == "specialist"
    assert "".join(json.loads(x[6:])["choices"][0]["delta"].get("content") or "" for x in lines[:-1]) == "positive"


# -- errors through the official client ---------------------------------------------------------------------
def test_unknown_model_is_404(served: Served) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        served.client().chat.completions.create(model="gpt-17-ultra", messages=user(QUESTION))
    assert err.value.status_code == 404 and err.value.code == "model_not_found"


def test_empty_messages_is_400(served: Served) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        served.client().chat.completions.create(model="router", messages=[])
    assert err.value.param == "messages"


def test_numbers_beyond_a_float_are_400_naming_the_parameter(served: Served) -> None:
    """JSON's integers have no bound: one with 400 digits is a bad parameter, not an OverflowError (a 500)."""
    chat = served.client().chat.completions
    for params, param in (({"temperature": 10**400}, "temperature"), ({"top_p": -(10**400)}, "top_p"),
                          ({"extra_body": {"max_energy_j": 10**400}}, "max_energy_j"),
                          ({"extra_body": {"accuracy_target": 10**400}}, "accuracy_target")):
        with pytest.raises(openai.BadRequestError) as err:
            chat.create(model="router", messages=user(QUESTION), **params)  # type: ignore[arg-type]
        assert err.value.param == param and "too large for a float" in err.value.message, params
    for params, param in (({"max_tokens": 10**400}, "max_tokens"), ({"n": 10**400}, "n"),
                          ({"logprobs": True, "top_logprobs": 10**400}, "top_logprobs")):
        with pytest.raises(openai.BadRequestError) as err:  # max_tokens was blamed on the messages, which fit
            chat.create(model="router", messages=user(QUESTION), **params)  # type: ignore[arg-type]
        assert err.value.param == param, (params, err.value.message)
    for param, literal in (("temperature", "1e400"), ("top_p", "-1e400"), ("max_energy_j", "1e400")):
        body = f'{{"model": "router", "messages": {json.dumps(user(QUESTION))}, "{param}": {literal}}}'
        r = httpx.post(f"{served.url}/v1/chat/completions", content=body,  # the openai SDK never sends inf
                       headers={"content-type": "application/json"})
        error = r.json()["error"]  # 1e400 reads as inf: the 400 says so, not "got a number"
        assert r.status_code == 400 and error["param"] == param, r.text
        assert f"got {literal[0] if literal[0] == '-' else ''}inf (a number too large for a float" in error["message"]


def test_context_errors_name_the_token_limit_the_request_used(served: Served) -> None:
    """``max_completion_tokens`` (OpenAI's newer name for ``max_tokens``) too large for every model when deciding,
    and for the pinned model's context when calling it: the 400 names the field the request sent."""
    chat = served.client().chat.completions
    for limit in ("max_completion_tokens", "max_tokens"):
        for model, tokens in (("router", 9000), ("remote-echo", 8190)):
            with pytest.raises(openai.BadRequestError) as err:
                chat.create(model=model, messages=user(QUESTION * 20), **{limit: tokens})  # type: ignore[arg-type]
            assert err.value.code == "context_length_exceeded", err.value.message
            assert err.value.param == limit and f"lower {limit} to at most" in err.value.message, err.value.message
            if limit == "max_completion_tokens":
                assert "max_tokens" not in err.value.message, err.value.message


def test_max_tokens_and_a_different_max_completion_tokens_are_400_and_reach_no_model(served: Served) -> None:
    """Both token limits, different: max_completion_tokens was used and max_tokens dropped without a word (OpenAI
    refuses the pair). The same value under both names drops nothing and is answered."""
    chat = served.client().chat.completions
    before = served.upstream_stats()
    with pytest.raises(openai.BadRequestError) as err:
        chat.create(model="remote-echo", messages=user(QUESTION), max_tokens=5, max_completion_tokens=12)
    assert err.value.param == "max_tokens" and "max_completion_tokens" in err.value.message, err.value.message
    assert served.upstream_stats() == before
    resp = chat.create(model="remote-echo", messages=user(QUESTION), max_tokens=12, max_completion_tokens=12)
    assert resp.choices[0].message.content.startswith("echo:")


def test_a_seed_beyond_64_bits_is_400_naming_it_and_reaches_no_model(served: Served) -> None:
    """Endpoints take 64-bit seeds: a larger one used to be sent on, refused there and answered as the model's
    failure (a 502)."""
    before = served.upstream_stats()
    for seed in (2**63, -(2**63) - 1, 10**300):
        with pytest.raises(openai.BadRequestError) as err:
            served.client().chat.completions.create(model="remote-echo", messages=user(QUESTION), seed=seed)
        assert err.value.param == "seed" and "64-bit signed integer" in err.value.message, err.value.message
    assert served.upstream_stats() == before
    for seed in (2**63 - 1, -(2**63)):
        resp = served.client().chat.completions.create(model="remote-echo", messages=user(QUESTION), seed=seed)
        assert resp.choices[0].message.content.startswith("echo:")


def test_backend_failure_fallback_and_cooldown(served: Served) -> None:
    """Policy `onlybroken` allows only the broken model: no fallback, 503. The default policy falls back to the
    next adequate model. After 2 consecutive failures (config: cooldown) the broken backend cools down:
    calls to it fail at once without reaching the upstream, visible in the ledger and the metrics."""
    client = served.client()
    only_broken = {"policy": "onlybroken"}
    before = served.upstream_stats()["calls"].get("broken", 0)
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(model="remote-broken", messages=user(QUESTION), extra_body=only_broken)
    assert err.value.status_code == 503 and err.value.code == "backend_unavailable"

    resp = client.chat.completions.create(model="remote-broken", messages=user(QUESTION))  # default policy
    attempts = resp.model_extra["routing"]["attempts"]
    assert resp.model != "remote-broken" and attempts[0]["model"] == "remote-broken"
    assert attempts[0]["outcome"] == "error" and attempts[-1]["outcome"] == "ok"
    after_failures = served.upstream_stats()["calls"]["broken"]
    assert after_failures - before == 4  # each call: 1 try + 1 retry with backoff

    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(model="remote-broken", messages=user(QUESTION), extra_body=only_broken)
    assert err.value.status_code == 503 and "cooling down" in str(err.value.message)
    assert served.upstream_stats()["calls"]["broken"] == after_failures  # short-circuited: upstream not called
    # a client (the openai SDK retries 503s) is told to come back when the trial call is let through
    left = float(str(err.value.message).split("cooling down for ")[1].split(" s more")[0])  # rounded to 0.1 s
    assert left <= int(err.value.response.headers["retry-after"]) <= left + 1, err.value.response.headers

    deadline = time.time() + 10
    while len([r for r in served.records() if r.model == "remote-broken"]) < 3 and time.time() < deadline:
        time.sleep(0.05)
    errors = [r for r in served.records() if r.model == "remote-broken"]
    assert [r.outcome for r in errors[-3:]] == ["error"] * 3 and "cooling down" in (errors[-1].error or "")
    metrics = httpx.get(f"{served.url}/metrics").text
    assert 'router_backend_cooling_down{model="remote-broken"} 1.0' in metrics
    assert 'router_backend_cooldowns{model="remote-broken"} 1.0' in metrics
    failed = sum(r.outcome == "error" for r in errors)  # every failed call, the ones no fallback answered too
    assert f'router_backend_failures_total{{model="remote-broken"}} {float(failed)}' in metrics and failed >= 3
    assert 'router_errors_total{status="503",type="backend_unavailable"} 2.0' in metrics


# -- raw HTTP: malformed bodies -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, None),
        (b"", 400, None),
        (b"[1, 2]", 400, None),
        (b'"just a string"', 400, None),
        (b'{"model": "router"}', 400, "messages"),
        (b'{"model": "router", "messages": "hi"}', 400, "messages"),
        (b'{"model": "router", "messages": [{"role": "user", "content": 5}]}', 400, "messages[0].content"),
        (b'{"model": "router", "messages": [{"role": "wizard", "content": "hi"}]}', 400, "messages[0].role"),
        (b'{"model": "router", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}', 400,
         "temperature"),
        (b'{"model": "router", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "ten"}', 400,
         "max_tokens"),
        (b'{"model": "router", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -3}', 400,
         "max_tokens"),
        (b'{"model": "router", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', 400, "stream"),
        (b'{"model": 42, "messages": [{"role": "user", "content": "hi"}]}', 400, "model"),
        (b'{"model": "router", "messages": [{"role": "user", "content": "hi"}], "accuracy_target": "high"}', 400,
         "accuracy_target"),
        (b'{"model": "router", "messages": [{"role": "user", "content": "hi"}], "frobnicate": 1}', 400,
         "frobnicate"),
        (b'{"model": "router", "messages": [{"role": "user", "content": "hi"}], "api_key": "x"}', 400, "api_key"),
        (b'{"model": "router", "messages": [{"role": "user", "content": "hi"}], "request_id": null}', 400,
         "request_id"),
        # the openai SDK's client-side arguments never belong in a body (the library applies them)
        (b'{"model": "router", "messages": [{"role": "user", "content": "hi"}], "extra_body": {"request_id": "x"}}',
         400, "extra_body"),
        (b'{"model": "router", "messages": [{"role": "user", "content": "hi"}], "timeout": 5}', 400, "timeout"),
        (b'{"model": "router", "messages": [{"role": "user", "content": "hi"}], "stop": [1]}', 400, "stop"),
        (b'{"model": "router", "messages": [{"role": "user", "content": "hi"}], "n": 3}', 400, "n"),
        (b'{"model": "nope", "messages": [{"role": "user", "content": "hi"}]}', 404, "model"),
    ],
)
def test_malformed_bodies_get_openai_shaped_errors(served: Served, body: bytes, status: int,
                                                   param: str | None) -> None:
    r = httpx.post(f"{served.url}/v1/chat/completions", content=body,
                   headers={"content-type": "application/json"}, timeout=10)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["param"] == param


def test_body_too_large_is_413_by_content_length_and_by_size(served: Served) -> None:
    big = json.dumps({"model": "router", "messages": user("x" * (MAX_BODY + 10))}).encode()
    r = httpx.post(f"{served.url}/v1/chat/completions", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunked() -> Iterator[bytes]:  # no Content-Length: the size is counted while reading
        for i in range(0, len(big), 8192):
            yield big[i : i + 8192]

    r = httpx.post(f"{served.url}/v1/chat/completions", content=chunked(),
                   headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_unknown_route_and_method(served: Served) -> None:
    r = httpx.get(f"{served.url}/v1/nothing-here")
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(f"{served.url}/v1/chat/completions")
    assert r.status_code == 405 and "error" in r.json()
    assert r.headers["allow"] == "POST"  # a 405 names the methods the route takes
    r = httpx.post(f"{served.url}/v1/models", json={})
    assert r.status_code == 405 and set(r.headers["allow"].split(", ")) == {"GET", "HEAD"}


# -- models, health, metrics ----------------------------------------------------------------------------------
def test_models_lists_router_aliases_and_cards(served: Served) -> None:
    ids = {m.id for m in served.client().models.list()}
    assert {"router", "sentiment-onnx", "remote-echo", "remote-slow", "remote-broken"} <= ids
    for policy in [*(ROOT / "policies").glob("*.yaml"), Path("onlybroken.yaml")]:
        assert f"router:{policy.stem}" in ids


def test_health(served: Served) -> None:
    r = httpx.get(f"{served.url}/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert "date" in r.headers and "server" not in r.headers  # no server fingerprint (router serve)


def test_metrics_count_requests_joules_and_decisions(served: Served) -> None:
    served.client().chat.completions.create(model="router", messages=user(REVIEW))
    text = httpx.get(f"{served.url}/metrics").text
    # the official client always sends a key; none are configured here, so it is no label: an unconfigured key
    # would let every client mint new series
    key = 'key="-"'
    assert hash_key("unused") not in text
    assert f'router_requests_total{{{key},model="sentiment-onnx",outcome="ok",tier="specialist"}}' in text
    assert f'router_energy_joules_total{{{key},model="sentiment-onnx",tier="specialist"}}' in text
    assert "router_decision_seconds_bucket" in text and "router_request_seconds_count" in text
    assert "router_errors_total" in text
    # budgets, read from the ledger at scrape time: the shipped policies share the large tier's hourly counter
    used = float(text.split('router_budget_used_joules{budget="tier:large:3600s"} ')[1].split()[0])
    for policy, limit in (("eco", 20_000), ("balanced", 200_000), ("quality", 1_000_000)):
        line = f'router_budget_remaining_joules{{budget="tier:large:3600s",policy="{policy}"}} '
        assert float(text.split(line)[1].split()[0]) == max(0.0, limit - used)


# -- keys -----------------------------------------------------------------------------------------------------
def test_keys_missing_or_wrong_is_401(keyed: Served) -> None:
    r = httpx.post(f"{keyed.url}/v1/chat/completions", json={"model": "router", "messages": user(REVIEW)})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        keyed.client("sk-wrong").chat.completions.create(model="router", messages=user(REVIEW))


def test_each_key_gets_its_policy_and_is_hashed_everywhere(keyed: Served, tmp_path: Path) -> None:
    eco = keyed.client(KEY_ECO).chat.completions.create(model="router", messages=user(REVIEW))
    quality = keyed.client(KEY_QUALITY).chat.completions.create(model="router", messages=user(QUESTION))
    assert eco.model_extra["routing"]["policy"] == "eco"
    assert quality.model_extra["routing"]["policy"] == "quality"
    assert keyed.record(eco.id).key_hash == hash_key(KEY_ECO)
    assert keyed.record(quality.id).key_hash == hash_key(KEY_QUALITY)
    assert httpx.get(f"{keyed.url}/metrics").status_code == 401  # keys configured: metrics need one too
    metrics = httpx.get(f"{keyed.url}/metrics", headers={"authorization": f"Bearer {KEY_ECO}"}).text
    assert f'key="{hash_key(KEY_ECO)}"' in metrics
    ledger_file = Path(keyed.ledger_url.removeprefix("sqlite:///"))
    for key in (KEY_ECO, KEY_QUALITY):
        assert key not in metrics
        for f in ledger_file.parent.glob("ledger.sqlite3*"):  # the file, its WAL, and the journal folder's files
            for part in f.iterdir() if f.is_dir() else [f]:
                assert key.encode() not in part.read_bytes()
        for log in ledger_file.parent.glob("*.log"):
            assert key not in log.read_text(errors="replace")


def test_models_say_what_router_means_for_the_callers_key(keyed: Served) -> None:
    """`router` in /v1/models once named the config's default policy for every key, while a chat request with
    model="router" from a key with `policy: eco` is routed by eco."""
    for key, policy in ((KEY_ECO, "eco"), (KEY_QUALITY, "quality")):
        client = keyed.client(key)
        listed = {m.id: m for m in client.models.list()}
        assert listed["router"].model_extra["description"] == f"routes each request; policy {policy}"
        assert client.models.retrieve("router").model_extra["description"] == f"routes each request; policy {policy}"


def test_an_open_models_route_still_answers_for_the_callers_key(upstream_url: str, tmp_path: Path) -> None:
    """With `proxy.open_routes: [models]` the model list needs no key, but it read none either: a key with
    `policy: eco` was told `router` meant the config's default policy, and a key with `lock_policy` was offered
    policies it is refused. A configured key is now read there too; none, or one not configured, gets the list
    for no key, as before."""
    locked = "sk-open-models-locked"
    keys = ("keys:\n"
            f"  - {{name: eco-team, sha256: {hashlib.sha256(KEY_ECO.encode()).hexdigest()}, policy: eco}}\n"
            f"  - {{name: held, sha256: {hashlib.sha256(locked.encode()).hexdigest()}, policy: quality, "
            "lock_policy: true}\n")
    config, _ = _config(tmp_path, upstream_url, keys)
    config.write_text(config.read_text().replace("proxy: {", "proxy: {open_routes: [models], "))
    with router_serve(config, tmp_path) as url:
        def client(key: str) -> openai.OpenAI:
            return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=20)

        listed = {m.id: m for m in client(KEY_ECO).models.list()}
        assert listed["router"].model_extra["description"] == "routes each request; policy eco"
        assert client(KEY_ECO).models.retrieve("router").model_extra["description"] == "routes each request; policy eco"
        assert {m.id for m in client(locked).models.list() if m.id.startswith("router")} == {"router", "router:quality"}
        for anonymous in ("not-a-configured-key", KEY_QUALITY):  # neither is a key of this server
            listed = {m.id: m for m in client(anonymous).models.list()}
            assert listed["router"].model_extra["description"] == "routes each request; policy balanced"
            assert "router:eco" in listed and "router:quality" in listed
        assert httpx.get(f"{url}/v1/models", timeout=20).status_code == 200  # no key at all


def test_a_key_its_policy_leaves_no_model_stops_router_serve_at_start(upstream_url: str, tmp_path: Path) -> None:
    """A policy's ``keys`` entry narrows its ``allowed_models``; one sharing no model with them made every request
    of that key a 400 ("no model allowed") long after the server started. ``router serve`` now ends at start
    (exit 2, one line) naming the key's entry and id, the policy and both lists, never the key."""
    import subprocess
    import sys

    config, _ = _config(tmp_path, upstream_url)
    key = "sk-narrowed-to-nothing"
    (tmp_path / "policies" / "held.yaml").write_text(
        "name: held\naccuracy: {min_accuracy: 0.0}\nallowed_models: [remote-echo]\n"
        f"keys: [{{key_hash: {hash_key(key)}, allowed_models: [remote-slow]}}]\n")
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(f"keys:\n  - {{name: narrowed, sha256: {hashlib.sha256(key.encode()).hexdigest()}, "
                         "policy: held}\n")
    out = subprocess.run([sys.executable, "-m", "router", "serve", "--config", str(config), "--keys", str(keys_file),
                          "--port", str(free_port())], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert f"API key 'narrowed' ({hash_key(key)}) could be answered by no model under policy `held`" in out.stderr
    assert "allows remote-slow, and the policy's `allowed_models` (remote-echo) has none of them" in out.stderr
    assert "held.yaml" in out.stderr and key not in out.stderr and "sha256" not in out.stderr


def test_a_key_with_lock_policy_stays_within_its_spent_budget(upstream_url: str, tmp_path: Path) -> None:
    """A key whose per-key budget is spent (429) once got a 200 by naming another policy, in the body or as
    ``router:<policy>``. With ``lock_policy: true`` that is a 403 that names the key's policy, and a pinned model
    is decided under the key's policy (its budget: 429; its ``allowed_models``: 400). A key without the option
    may still choose another policy."""
    config, _ = _config(tmp_path, upstream_url)
    (tmp_path / "policies" / "held.yaml").write_text(
        "name: held\naccuracy: {min_accuracy: 0.0}\nallowed_models: [remote-echo]\non_budget_exhausted: reject\n"
        "budgets:\n  - {model: 'tier:small', joules: 0.001, per: hour, scope: per_key}\n")
    (tmp_path / "policies" / "onlyecho.yaml").write_text(only_policy("remote-echo"))
    locked, unlocked = "sk-locked-to-held", "sk-held-by-default"
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(
        "keys:\n"
        f"  - {{name: locked, sha256: {hashlib.sha256(locked.encode()).hexdigest()}, policy: held,\n"
        "      lock_policy: true}\n"
        f"  - {{name: unlocked, sha256: {hashlib.sha256(unlocked.encode()).hexdigest()}, policy: held}}\n")

    def ask(client: openai.OpenAI, model: str = "router", **extra_body: str) -> ChatCompletion:
        return client.chat.completions.create(model=model, messages=user(QUESTION), max_tokens=8,
                                              extra_body=extra_body or None)

    with router_serve(config, tmp_path, "--keys", str(keys_file)) as url:
        held = openai.OpenAI(base_url=f"{url}/v1", api_key=locked, max_retries=0, timeout=20)
        free = openai.OpenAI(base_url=f"{url}/v1", api_key=unlocked, max_retries=0, timeout=20)
        routers = {c: {m.id for m in c.models.list() if m.id.startswith("router")} for c in (held, free)}
        assert routers[held] == {"router", "router:held"}, "a locked key is offered its own policy alone"
        assert {"router:held", "router:onlyecho", "router:eco"} <= routers[free]
        for client in (held, free):
            with pytest.raises(openai.RateLimitError):  # each key's own budget cannot pay for a call
                ask(client)
        for model, extra_body in (("router", {"policy": "onlyecho"}), ("router:quality", {}),
                                  ("remote-echo", {"policy": "eco"})):
            with pytest.raises(openai.PermissionDeniedError) as denied:
                ask(held, model, **extra_body)
            error = denied.value.body
            assert isinstance(error, dict) and error["code"] == "permission_denied", error
            assert "held to policy 'held'" in error["message"] and "lock_policy" in error["message"]
            assert error["param"] == ("policy" if extra_body else "model")
        for model, extra_body in (("router:held", {}), ("router", {"policy": "held"}), ("remote-echo", {})):
            with pytest.raises(openai.RateLimitError):
                ask(held, model, **extra_body)
        with pytest.raises(openai.BadRequestError, match="not allowed by policy `held`"):
            ask(held, "remote-slow")
        for model, extra_body in (("router", {"policy": "onlyecho"}), ("router:onlyecho", {})):
            answer = ask(free, model, **extra_body)  # without lock_policy a key may choose another policy
            assert answer.model_extra["routing"]["policy"] == "onlyecho"


# -- client gone mid-stream -----------------------------------------------------------------------------------
def test_disconnect_mid_stream_stops_generation_and_is_recorded(served: Served) -> None:
    before = served.upstream_stats()["closed_early"].get("slow", 0)
    with httpx.stream("POST", f"{served.url}/v1/chat/completions", timeout=20,
                      json={"model": "remote-slow", "messages": user(QUESTION), "stream": True,
                            "max_tokens": 200}) as r:
        assert r.status_code == 200
        got = 0
        for line in r.iter_lines():
            if line.startswith("data: ") and '"content":"t' in line:
                got += 1
                if got == 5:
                    break  # hang up after five tokens (the upstream needs ~4 s for all 200)
        request_id = json.loads(line[6:])["id"]
    deadline = time.time() + 10
    rec = None
    while time.time() < deadline:
        rec = next((r for r in served.records() if r.request_id == request_id), None)
        if rec is not None:
            break
        time.sleep(0.1)
    assert rec is not None, "no ledger record for the cancelled stream"
    assert rec.outcome == "cancelled" and rec.model == "remote-slow"
    assert "the caller went away" in (rec.error or ""), rec.error  # not the server shutting down
    assert 0 < rec.output_tokens < 100 and rec.energy_j > 0  # what was produced before the hang-up, not 200
    while time.time() < deadline and served.upstream_stats()["closed_early"].get("slow", 0) == before:
        time.sleep(0.1)
    assert served.upstream_stats()["closed_early"].get("slow", 0) == before + 1  # upstream generation stopped


# -- the fast path's pieces, in-process ------------------------------------------------------------------------
def test_remote_fast_path_dict_is_exactly_the_public_response(upstream_url: str, tmp_path: Path) -> None:
    """The proxy serialises the remote path's plain dict; it must be what ``ChatCompletion`` would give, key for
    key and byte for byte, with a fallback attempt in it too."""
    from pydantic_core import to_json

    from router import Router
    from router.config import RouterConfig
    from router.types import ChatCompletion

    config, _ = _config(tmp_path, upstream_url)
    router = Router(RouterConfig.load(config))

    async def run() -> list[dict[str, object]]:
        out = []
        for model in ("remote-echo", "remote-broken"):  # the broken one falls back: two attempts
            ctx = router.prepare(user(QUESTION), model=model, max_tokens=16)
            out.append(await router.asend(ctx, as_dict=True))
        public = await router.acomplete(user(QUESTION), model="remote-echo", max_tokens=16)
        assert isinstance(public, ChatCompletion) and public.routing.model == "remote-echo"
        return out

    try:
        for raw in asyncio.run(run()):
            assert isinstance(raw, dict)
            model = ChatCompletion.model_validate(raw)
            assert model.model_dump() == raw
            assert list(model.model_dump()) == list(raw)  # same key order: the same JSON text
            assert to_json(raw) == model.model_dump_json().encode()
        assert [a["outcome"] for a in raw["routing"]["attempts"]] == ["error", "ok"]  # type: ignore[index]
    finally:
        router.close()


def test_a_legacy_functions_request_asks_the_endpoint_for_one_call(upstream_url: str, tmp_path: Path) -> None:
    """A legacy answer holds one ``function_call``: the endpoint is asked for one call (as a request with
    ``parallel_tool_calls: false`` asks it), so an endpoint that calls every function offered in parallel unless
    told not to answers with one call, whole and streamed, not with an answer the router then refuses."""
    card = remote_card("remote-calls", upstream_url, "calls").replace(
        "context_length:", "capabilities: [tools]\ncontext_length:")
    models = models_dir(tmp_path / "models", {"remote-calls": card}, specialist=False)
    config = tmp_path / "config.yaml"
    config.write_text(f"models_dir: {models}\npolicies_dir: {ROOT / 'policies'}\n"
                      f"ledger_url: sqlite:///{tmp_path / 'ledger.sqlite3'}\n")
    functions = [{"name": name, "parameters": {"type": "object", "properties": {}}}
                 for name in ("get_weather", "get_time")]
    with router_serve(config, tmp_path) as url:
        chat = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=20).chat.completions
        whole = chat.create(model="remote-calls", messages=user("Weather and time in Paris?"),
                            functions=functions)  # type: ignore[call-overload]
        assert whole.choices[0].finish_reason == "function_call"
        assert whole.choices[0].message.function_call.name == "get_weather"  # type: ignore[union-attr]
        assert [a["outcome"] for a in whole.model_extra["routing"]["attempts"]] == ["ok"]  # type: ignore[index]
        chunks = list(chat.create(model="remote-calls", messages=user("Weather and time in Paris?"),
                                  functions=functions, stream=True))  # type: ignore[call-overload]
        calls = [c.choices[0].delta.function_call for c in chunks if c.choices and c.choices[0].delta.function_call]
        assert [c.name for c in calls if c.name] == ["get_weather"]
        assert json.loads("".join(c.arguments or "" for c in calls)) == {}
        assert chunks[-1].choices[0].finish_reason == "function_call"


class _Scripted:
    """A raw TCP server on 127.0.0.1 that answers each request with the next scripted reply (bytes, or a
    callable given the writer), counting connections and requests."""

    def __init__(self, replies: list[object]) -> None:
        self.replies = list(replies)
        self.connections = 0
        self.requests = 0

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1/chat/completions"

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                await reader.readexactly(length)
                self.requests += 1
                reply = self.replies.pop(0) if self.replies else _ok(b'{"n": 0}')
                if callable(reply):
                    await reply(writer)
                    return
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def _ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
        len(body), extra, body)


def _pool(url: str, **kw: float) -> object:
    from router.backends._http11 import HTTPPool

    return HTTPPool(url, {"Content-Type": "application/json"}, timeout_s=kw.get("timeout_s", 5.0),
                     connect_timeout_s=2.0, loop=asyncio.get_running_loop(), limit=int(kw.get("limit", 256)))


def test_http_pool_keeps_connections_alive_and_reads_every_framing() -> None:
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"4\r\n{\"n\"\r\n4\r\n: 2}\r\n0\r\n\r\n")

    async def until_close(writer: asyncio.StreamWriter) -> None:  # no length: the body ends with the connection
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{\"n\": 3}")
        await writer.drain()

    async def run() -> None:
        server = _Scripted([_ok(b'{"n": 1}'), chunked, until_close, _ok(b'{"n": 4}')])
        async with server as url:
            pool = _pool(url)
            assert (await pool.post(b"{}"))[:2] == (200, b'{"n": 1}')
            assert (await pool.post(b"{}"))[:2] == (200, b'{"n": 2}')
            assert server.connections == 1  # kept alive
            assert (await pool.post(b"{}"))[:2] == (200, b'{"n": 3}')
            assert (await pool.post(b"{}"))[:2] == (200, b'{"n": 4}')  # a fresh connection after the close
            assert server.connections == 2 and server.requests == 4
            pool.close()

    asyncio.run(run())


def test_http_pool_resends_once_when_an_idle_connection_was_closed() -> None:
    async def close_without_answer(writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()  # what a server closing an idle keep-alive connection looks like to us

    async def run() -> None:
        server = _Scripted([_ok(b"first"), close_without_answer, _ok(b"second")])
        async with server as url:
            pool = _pool(url)
            assert (await pool.post(b"{}"))[:2] == (200, b"first")
            assert (await pool.post(b"{}"))[:2] == (200, b"second")  # resent on a fresh connection, no error
            assert server.connections == 2
            pool.close()

    asyncio.run(run())


def test_http_pool_failures_are_oserrors_that_agenerate_retries() -> None:
    async def never(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async def run() -> None:
        async with _Scripted([never]) as url:
            with pytest.raises(TimeoutError):
                await _pool(url, timeout_s=0.2).post(b"{}")
        async with _Scripted([b"HTTP/1.1 abc\r\n\r\n"]) as url:
            with pytest.raises(ConnectionError, match="malformed"):
                await _pool(url).post(b"{}")
        port = free_port()
        with pytest.raises(OSError):
            await _pool(f"http://127.0.0.1:{port}/v1/chat/completions").post(b"{}")

    asyncio.run(run())


def test_http_pool_limits_open_connections() -> None:
    async def slow(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.05)
        writer.write(_ok(b"slow"))
        await writer.drain()

    async def run() -> None:
        server = _Scripted([slow] * 12)
        async with server as url:
            pool = _pool(url, limit=3)
            results = await asyncio.gather(*(pool.post(b"{}") for _ in range(12)))
            assert [r[:2] for r in results] == [(200, b"slow")] * 12
            assert server.connections <= 12 and pool._busy == 0 and not pool._queue
            peak = 0

            async def watch() -> None:
                nonlocal peak
                for _ in range(20):
                    peak = max(peak, pool._busy)
                    await asyncio.sleep(0.005)

            server.replies = [slow] * 6
            await asyncio.gather(watch(), *(pool.post(b"{}") for _ in range(6)))
            assert peak == 3
            pool.close()

    asyncio.run(run())


def test_background_ledger_batches_in_order_and_flushes(tmp_path: Path) -> None:
    from router.ledger import SQLiteLedger
    from router.proxy.ledger_writer import BackgroundLedger

    class Batching(SQLiteLedger):
        def __init__(self, path: Path) -> None:
            super().__init__(path)
            self.batches: list[int] = []

        def record_many(self, recs: list[LedgerRecord]) -> None:
            self.batches.append(len(recs))
            for rec in recs:
                self.record(rec)

    inner = Batching(tmp_path / "l.sqlite3")
    ledger = BackgroundLedger(inner, interval_s=0.02)
    for i in range(200):
        ledger.record(LedgerRecord(request_id=f"r{i}", model="m", tier="small", energy_j=1.0,
                                   energy_source="estimated:x"))
    assert [r.request_id for r in ledger.records()] == [f"r{i}" for i in range(200)]  # records() flushes first
    assert inner.batches and max(inner.batches) > 1  # records that gathered while it paused went as one batch
    time.sleep(0.1)  # idle: the writer sleeps on its event; the next record wakes it
    ledger.record(LedgerRecord(request_id="late", model="m", tier="small", energy_j=1.0, energy_source="e:x"))
    assert ledger.flush(5) and ledger.written == 201
    ledger.record(LedgerRecord(request_id="last", model="m", tier="small", energy_j=1.0, energy_source="e:x"))
    ledger.close()  # drains
    reopened = SQLiteLedger(tmp_path / "l.sqlite3")
    assert [r.request_id for r in reopened.records()][-2:] == ["late", "last"]
    reopened.close()


def test_background_ledger_never_writes_a_record_twice_when_a_batch_fails(tmp_path: Path) -> None:
    """A failed batch is written again one record at a time, whether or not the store's batches are
    all-or-nothing: record ids make the records already written a no-op, so each lands exactly once."""
    from router.ledger import Ledger, SQLiteLedger
    from router.proxy.ledger_writer import BackgroundLedger

    class FailingRecordDouble(SQLiteLedger):  # TEST DOUBLE: refuses one record, the first time it is offered
        def __init__(self, path: Path, atomic: bool) -> None:
            super().__init__(path)
            self.atomic_batches = atomic
            self.refused = False

        def record(self, rec: LedgerRecord) -> None:
            if rec.request_id == "r2" and not self.refused:
                self.refused = True
                raise OSError("injected write failure")
            super().record(rec)

        def record_many(self, recs: list[LedgerRecord]) -> None:
            if self.atomic_batches:
                if any(r.request_id == "r2" for r in recs) and not self.refused:
                    self.refused = True
                    raise OSError("injected batch failure")  # a transaction that wrote nothing
                super().record_many(recs)
            else:
                Ledger.record_many(self, recs)  # the base default: one at a time, stops at the failure

    for atomic in (False, True):
        inner = FailingRecordDouble(tmp_path / f"l-{atomic}.sqlite3", atomic)
        ledger = BackgroundLedger(inner, interval_s=0.05)
        for i in range(5):
            ledger.record(LedgerRecord(request_id=f"r{i}", model="m", tier="small", energy_j=1.0,
                                       energy_source="estimated:x"))
        assert [r.request_id for r in ledger.records()] == ["r0", "r1", "r2", "r3", "r4"]
        assert ledger.failed == 0 and ledger.written == 5
        ledger.close()


def test_one_write_transport_joins_an_iterations_writes_and_never_holds_past_it() -> None:
    from router.proxy.server import _OneWrite

    class Recorder:
        def __init__(self) -> None:
            self.writes: list[bytes] = []
            self.closed = False

        def write(self, data: bytes) -> None:
            self.writes.append(bytes(data))

        def is_closing(self) -> bool:
            return self.closed

        def close(self) -> None:
            self.closed = True

        def get_write_buffer_size(self) -> int:
            return 0

        def get_extra_info(self, name: str) -> str:
            return f"info:{name}"

    async def run() -> None:
        raw = Recorder()
        t = _OneWrite(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
        t.write(b"HEAD ")
        t.write(b"BODY")
        assert raw.writes == [] and t.get_write_buffer_size() == len(b"HEAD BODY")  # held until the iteration ends
        await asyncio.sleep(0)
        assert raw.writes == [b"HEAD BODY"]  # one system call for both
        t.write(b"stream head")
        await asyncio.sleep(0)  # the next iteration: a lone write goes out on its own
        assert raw.writes == [b"HEAD BODY", b"stream head"]
        t.write(b"chunk 1")
        await asyncio.sleep(0)
        assert raw.writes[-1] == b"chunk 1"  # every chunk leaves before the next is awaited
        t.write(b"last words")
        t.close()  # close flushes first
        assert raw.writes[-1] == b"last words" and raw.closed
        assert t.get_extra_info("peername") == "info:peername"

    asyncio.run(run())


def test_budget_specs_list_every_budget_with_its_policy(tmp_path: Path) -> None:
    """What the ``router_budget_*`` gauges list: global budgets once per policy, per-key budgets for the key
    hashes a policy names (their own and the policy-wide ``scope: per_key`` ones)."""
    from router.cards import load_cards
    from router.policy.engine import PolicyEngine
    from router.policy.loader import load_policies
    from router.policy.schema import budget_key_hash

    folder = tmp_path / "policies"
    folder.mkdir()
    shutil.copy(ROOT / "policies" / "examples" / "per-key.yaml", folder / "per-key.yaml")
    shutil.copy(ROOT / "policies" / "eco.yaml", folder / "eco.yaml")
    cards = {n: c for n, c in load_cards(ROOT / "models").items() if c.callable}  # what the Router passes
    engine = PolicyEngine(cards, load_policies(folder))
    specs = engine.budget_specs()
    assert ("tier:large:86400s", 500_000.0, 86400.0, "per-key") in specs
    assert ("tier:large:3600s", 20_000.0, 3600.0, "eco") in specs
    team_a, team_b = "key-8879f6a4ae35c420", "key-292d075b18c9240a"
    for key in (team_a, team_b):  # the policy-wide per-key budget, for each key the policy names
        assert (f"key:{key}:tier:large:86400s", 50_000.0, 86400.0, "per-key") in specs
    assert (f"key:{team_a}:model:gemma3-270m:3600s", 5000.0, 3600.0, "per-key") in specs  # the key's own
    assert len(specs) == len(set(specs))
    # a key no policy names: its counter of the policy-wide per-key budget, once seen, is listed on request
    other = hash_key("sk-someone-else")
    seen = [f"key:{other}:tier:large:86400s", f"key:{other}:tier:large:3600s", "tier:large:86400s", "junk"]
    assert engine.budget_specs_for(seen) == [(f"key:{other}:tier:large:86400s", 50_000.0, 86400.0, "per-key"),
                                             ("tier:large:86400s", 500_000.0, 86400.0, "per-key")]
    assert engine.budget_specs_for(["tier:large:3600s"]) == [("tier:large:3600s", 20_000.0, 3600.0, "eco")]
    assert budget_key_hash(f"gco2e:key:{other}:tier:large:3600s") == other
    assert budget_key_hash("tier:large:3600s") is None


def test_agenerate_honours_a_proxy_named_in_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With HTTP_PROXY set, the call goes through that proxy (httpx reads the variable), not the own pool that
    would dial the endpoint directly; here the scripted server is the proxy and the endpoint does not exist."""
    from router.backends import GenerationRequest
    from router.backends.openai_http import OpenAIHTTPBackend
    from router.cards import load_card
    from router.types import ChatMessage

    answer = b'{"choices": [{"message": {"content": "via proxy"}, "finish_reason": "stop"}], "usage": {}}'
    card_file = tmp_path / "remote.yaml"
    card_file.write_text(remote_card("remote", "http://upstream.invalid/v1", "m"), encoding="utf-8")

    async def run() -> None:
        server = _Scripted([_ok(answer)])
        async with server as url:
            monkeypatch.setenv("HTTP_PROXY", url.removesuffix("/v1/chat/completions"))
            monkeypatch.delenv("NO_PROXY", raising=False)
            monkeypatch.delenv("no_proxy", raising=False)
            backend = OpenAIHTTPBackend(load_card(card_file))
            assert backend._use_pool is False
            out = await backend.agenerate(GenerationRequest(messages=[ChatMessage(role="user", content="hi")]))
            assert out.text == "via proxy" and server.requests == 1
            backend.close()
        monkeypatch.delenv("HTTP_PROXY")
        assert OpenAIHTTPBackend(load_card(card_file))._use_pool is True

    asyncio.run(run())


def test_ledger_group_setting_reaches_the_writer_and_is_checked(upstream_url: str, tmp_path: Path) -> None:
    from router.config import RouterConfig
    from router.errors import ConfigError
    from router.proxy.app import create_app
    from router.proxy.ledger_writer import BackgroundLedger

    def app_with(extra: str) -> object:
        folder = tmp_path / f"c{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        config, _ = _config(folder, upstream_url)
        text = config.read_text().replace("proxy: {max_body_bytes", f"proxy: {{{extra}max_body_bytes")
        config.write_text(text)
        return create_app(config=RouterConfig.load(config))

    app = app_with("")
    assert isinstance(app.state.router.ledger, BackgroundLedger) and app.state.router.ledger.interval_s == 0.02
    app.state.router.close()
    app = app_with("ledger_group_ms: 5, ")
    assert app.state.router.ledger.interval_s == 0.005
    app.state.router.close()
    for bad in ("-1", "'soon'", "true", "5000"):
        with pytest.raises(ConfigError, match="ledger_group_ms"):
            app_with(f"ledger_group_ms: {bad}, ")


def test_an_app_that_fails_to_start_leaves_no_ledger_threads(upstream_url: str, tmp_path: Path) -> None:
    """The proxy opens its ledger (background writer, journal threads) before the Router checks the policies; a
    config error then must not leave them running in the process that called ``create_app``."""
    import threading

    from router.config import RouterConfig
    from router.errors import ConfigError
    from router.proxy.app import create_app

    def ledger_threads() -> int:
        return sum(t.name.startswith(("ledger-", "ledger_")) for t in threading.enumerate())

    config, _ = _config(tmp_path, upstream_url)
    config.write_text(config.read_text() + "default_policy: no-such-policy\n")
    before = ledger_threads()
    for _ in range(3):
        with pytest.raises(ConfigError, match="no-such-policy"):
            create_app(config=RouterConfig.load(config))
    assert ledger_threads() == before


def test_background_ledger_queues_settlements_and_applies_them_in_groups(tmp_path: Path) -> None:
    """A settlement is queued like a record: the writer applies the queued ones with one ``settle_many``;
    ``flush`` and ``close`` wait for them; a failed group leaves the holds at their estimates (logged)."""
    from router.ledger import SQLiteLedger
    from router.proxy.ledger_writer import BackgroundLedger

    class CountingSettlements(SQLiteLedger):
        def __init__(self, path: Path) -> None:
            super().__init__(path)
            self.groups: list[int] = []

        def settle_many(self, settlements: list) -> None:  # type: ignore[type-arg]
            self.groups.append(len(settlements))
            super().settle_many(settlements)

    inner = CountingSettlements(tmp_path / "l.sqlite3")
    ledger = BackgroundLedger(inner, interval_s=0.05)
    held = [ledger.try_reserve("b", 10.0, 1000.0, 3600) for _ in range(20)]
    assert all(held) and ledger.budget_used("b", 3600) == 200.0  # reservations are synchronous
    for r in held:
        ledger.settle(r, 1.0)  # type: ignore[arg-type]
    assert ledger.flush(5)
    assert ledger.budget_used("b", 3600) == 20.0 and ledger.settled == 20
    assert sum(inner.groups) == 20 and max(inner.groups) > 1  # settlements that queued together went together
    last = ledger.try_reserve("b", 10.0, 1000.0, 3600)
    ledger.settle(last, 0.0)  # type: ignore[arg-type]
    ledger.close()  # drains
    assert SQLiteLedger(tmp_path / "l.sqlite3").budget_used("b", 3600) == 20.0

    class FailingSettlementsFault(SQLiteLedger):  # fault injection: the store refuses settlements
        def settle_many(self, settlements: list) -> None:  # type: ignore[type-arg]
            raise OSError("disk gone")

    faulty = BackgroundLedger(FailingSettlementsFault(tmp_path / "f.sqlite3"), interval_s=0.01)
    r = faulty.try_reserve("b", 10.0, 1000.0, 3600)
    faulty.settle(r, 1.0)  # type: ignore[arg-type]
    assert faulty.flush(5) and faulty.failed_settlements == 1
    assert faulty.budget_used("b", 3600) == 10.0  # the hold stays at its estimate: budgets err towards refusing
    faulty.close()


def test_serve_on_port_0_says_the_port_the_system_chose(upstream_url: str, tmp_path: Path) -> None:
    """``--port 0`` lets the system choose a free port; the start-up line said ``http://127.0.0.1:0/v1``, which no
    client can use, while uvicorn's own line with the real port is off at the default log level."""
    import os
    import re
    import subprocess
    import sys

    from servers.procs import stop, wait_ready

    config, _ = _config(tmp_path, upstream_url)
    log = tmp_path / "serve.log"
    router_bin = shutil.which("router") or str(Path(sys.executable).parent / "router")
    with log.open("wb") as fh:
        proc = subprocess.Popen([router_bin, "serve", "--port", "0", "--config", str(config)], stdout=fh,
                                stderr=subprocess.STDOUT, env=dict(os.environ))
    try:
        deadline = time.time() + 60
        while not (found := re.search(r"router serve: http://127\.0\.0\.1:(\d+)/v1 ", log.read_text())):
            assert proc.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(0.1)
        port = int(found.group(1))
        assert port != 0
        wait_ready(f"http://127.0.0.1:{port}/health", proc, log)
    finally:
        stop(proc)


def test_serve_says_where_it_listens_and_what_it_serves(upstream_url: str, tmp_path: Path) -> None:
    """uvicorn's own lines are off at the default log level; ``router serve`` still says on stderr where an OpenAI
    client should point and, per worker, when its models are loaded, with the policies it serves and how many
    API keys it checks (never the keys themselves)."""
    config, _ = _config(tmp_path, upstream_url)
    digests = [hashlib.sha256(k.encode()).hexdigest() for k in (KEY_ECO, KEY_QUALITY)]
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(f"keys:\n  - {{name: eco-team, sha256: {digests[0]}, policy: eco}}\n"
                         f"  - {{name: quality-team, sha256: {digests[1]}, policy: quality}}\n")
    with router_serve(config, tmp_path, "--keys", str(keys_file)) as url:
        port = url.rsplit(":", 1)[1]
        text = (tmp_path / f"serve-{port}.log").read_text()
    assert f"router serve: http://127.0.0.1:{port}/v1 (an OpenAI client's base_url), 1 worker" in text, text
    assert "policy balanced" in text and "ready in" in text and "remote-echo" in text, text
    (ready,) = [line for line in text.splitlines() if " ready in " in line]
    assert ready.endswith("; policies balanced, eco, onlybroken, quality; 2 API keys"), ready
    assert not any(d in text or d[:12] in text for d in digests) and KEY_ECO not in text, text


def test_serve_without_policy_files_starts_and_says_it_routes_by_the_first_rule(upstream_url: str,
                                                                                tmp_path: Path) -> None:
    """The start-up line read the engine's policies, which the first rule (used without policy files) has not:
    every worker failed to start, and `--workers N` started them again for ever."""
    config, _ = _config(tmp_path, upstream_url)
    empty = tmp_path / "no-policies"
    empty.mkdir()
    config.write_text(config.read_text().replace(f"policies_dir: {tmp_path / 'policies'}", f"policies_dir: {empty}"))
    assert f"policies_dir: {empty}" in config.read_text()
    with router_serve(config, tmp_path) as url:
        assert httpx.post(f"{url}/v1/chat/completions", json={"model": "router", "messages": user(QUESTION),
                                                               "max_tokens": 8}, timeout=20).status_code == 200
        text = (tmp_path / f"serve-{url.rsplit(':', 1)[1]}.log").read_text()
    (ready,) = [line for line in text.splitlines() if " ready in " in line]
    assert ready.endswith("; no policy files (the first rule); no API keys (open)"), ready


def test_serve_log_level_is_a_choice_and_the_access_log_logs_at_the_default_level(upstream_url: str,
                                                                                   tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from router.cli import app

    res = CliRunner().invoke(app, ["serve", "--log-level", "warnig"])  # was uvicorn's KeyError traceback
    assert res.exit_code == 2 and "Invalid value for '--log-level': 'warnig' is not one of" in res.output, res.output
    config, _ = _config(tmp_path, upstream_url)
    with router_serve(config, tmp_path, "--access-log") as url:  # the default level: warning
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        log = tmp_path / f"serve-{url.rsplit(':', 1)[1]}.log"
        deadline = time.monotonic() + 10
        while '"GET /health HTTP/1.1" 200' not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert '"GET /health HTTP/1.1" 200' in log.read_text(), log.read_text()


def test_serve_says_ready_once_it_listens(upstream_url: str, tmp_path: Path) -> None:
    """'ready' came before uvicorn had bound the port: a client that trusted it could be refused."""
    import socket
    import subprocess
    import sys

    from servers.procs import stop

    config, _ = _config(tmp_path, upstream_url)
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "router", "serve", "--port", str(port), "--config", str(config),
                                 "--log-level", "info"], stdout=fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "ready in" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.01)
        socket.create_connection(("127.0.0.1", port), timeout=10).close()  # listening: not refused
        text = log.read_text()
        assert text.index(f"Uvicorn running on http://127.0.0.1:{port}") < text.index("ready in"), text
    finally:
        stop(proc)


def test_serve_reads_the_config_that_router_proxy_config_names(upstream_url: str, tmp_path: Path) -> None:
    """ROUTER_PROXY_CONFIG set before `router serve` without --config was what the worker served, while the
    command itself checked and announced the shipped default (its models, its ledger); both read that file now,
    and --help names the variable."""
    import os
    import subprocess
    import sys

    from servers.procs import stop, wait_ready
    from typer.testing import CliRunner

    from router.cli import app

    config, ledger_url = _config(tmp_path, upstream_url)
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "router", "serve", "--port", str(port)], stdout=fh,
                                stderr=subprocess.STDOUT, env={**os.environ, "ROUTER_PROXY_CONFIG": str(config)})
    try:
        wait_ready(f"http://127.0.0.1:{port}/health", proc, log)
    finally:
        stop(proc)
    text = log.read_text()
    assert f"models from {tmp_path / 'models'}, policy balanced, ledger {ledger_url};" in text, text
    assert "remote-echo" in text, text
    help_text = CliRunner().invoke(app, ["serve", "--help"], terminal_width=200).output
    assert "[env var: ROUTER_PROXY_CONFIG]" in help_text and "[env var: ROUTER_PROXY_KEYS]" in help_text, help_text


def test_serve_reads_a_linked_configs_relative_paths_from_the_folder_it_was_named_in(upstream_url: str,
                                                                                    tmp_path: Path) -> None:
    """A config file that is a link (a dotfiles checkout, a Kubernetes ConfigMap) names its relative paths from
    the folder the link is in, as RouterConfig.load reads it: `router serve --config LINK` checked and announced
    those, while its worker read them from the link target's folder and failed to start ('model card folder does
    not exist', naming a folder the user never wrote)."""
    config, _ = _config(tmp_path / "Über Ordner" / "日本", upstream_url)
    here = config.parent
    config.write_text(config.read_text().replace(f"models_dir: {here / 'models'}", "models_dir: models")
                      .replace(f"policies_dir: {here / 'policies'}", "policies_dir: policies"))
    stored = tmp_path / "dotfiles" / "router.yaml"  # the real file, with no models or policies beside it
    stored.parent.mkdir()
    config.rename(stored)
    config.symlink_to(stored)
    with router_serve(config, tmp_path) as url:
        assert httpx.post(f"{url}/v1/chat/completions", json={"model": "router", "messages": user(QUESTION),
                                                               "max_tokens": 8}, timeout=20).status_code == 200
        text = (tmp_path / f"serve-{url.rsplit(':', 1)[1]}.log").read_text()
    assert f"models from {here / 'models'}," in text and "remote-echo" in text, text


def test_serve_on_a_port_in_use_fails_at_once(upstream_url: str, tmp_path: Path) -> None:
    """The port is checked before the models load: one line, exit 2, no 'ready' (uvicorn's own failure came only
    after every model had loaded, with exit 3)."""
    import socket
    import subprocess
    import sys

    config, _ = _config(tmp_path, upstream_url)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "router", "serve", "--port", str(port), "--config", str(config)],
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == (f"error: port {port} on 127.0.0.1 is in use (another router serve or another "
                                  "program listens there); stop it or choose another --port")
    out = subprocess.run([sys.executable, "-m", "router", "serve", "--host", "203.0.113.9", "--config", str(config)],
                         capture_output=True, text=True, timeout=60)  # an address this machine does not have
    assert out.returncode == 2 and out.stderr.startswith("error: cannot listen on 203.0.113.9 port 8000: "), out.stderr

