"""The OpenAI-compatible HTTP backend against a real local endpoint (the instant TEST UPSTREAM, whose ``model``
field picks what it does, e.g. ``status:400``): which of its failures count towards a cooldown, how its connections
on each event loop are closed, and the usage it estimates when the endpoint reports none."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import gc
import logging
import os
import re
import socket
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel
from servers.instant_upstream import ERROR_200, REASONING, REFUSAL
from servers.procs import (
    free_port,
    models_dir,
    only_policy,
    policies_dir,
    remote_card,
    router_serve,
    upstream,
    wait_for_record,
)

import router._closing
from router import (
    BackendError,
    BackendRefusedError,
    BackendUnavailableError,
    BadRequestError,
    CancelledError,
    ConfigError,
    Router,
    RouterClosedError,
    RouterConfig,
    RouterError,
)
from router.backends import Backend, GenerationRequest, StreamEvent, openai_http
from router.backends.base import estimated_tokens, utf8_size
from router.backends.cooldown import CooldownBackend
from router.backends.openai_http import OpenAIHTTPBackend, _count, retry_after_s
from router.cards import ModelCard, load_card
from router.ledger import LedgerRecord, open_ledger
from router.types import ChatCompletionChunk, ChatMessage

REQUEST = GenerationRequest(messages=[ChatMessage(role="user", content="hello")], max_tokens=16)
PATHS = ("generate", "agenerate", "astream")


@pytest.fixture(scope="module")
def upstream_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with upstream(tmp_path_factory.mktemp("upstream")) as url:
        yield url


def _card(folder: Path, name: str, base_url: str, model: str, capabilities: str = "", **kw: object) -> ModelCard:
    text = remote_card(name, base_url, model, **kw)  # type: ignore[arg-type]
    if capabilities:
        text = text.replace("context_length:", f"capabilities: [{capabilities}]\ncontext_length:")
    file = folder / f"{name}.yaml"
    file.write_text(text, encoding="utf-8")
    return load_card(file)


async def _events(backend: Backend, request: GenerationRequest) -> list[object]:
    return [event async for event in backend.astream(request)]


def _call(backend: Backend, path: str) -> object:
    if path == "generate":
        return backend.generate(REQUEST)
    if path == "agenerate":
        return asyncio.run(backend.agenerate(REQUEST))
    return asyncio.run(_events(backend, REQUEST))


# -- what counts towards a cooldown ---------------------------------------------------------------------------
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("status", "counts"), [(400, False), (413, False), (422, False), (401, True), (403, True),
                                                 (404, True), (500, True)])
def test_only_the_endpoints_own_failures_cool_a_model_down(upstream_url: str, tmp_path: Path, path: str,
                                                           status: int, counts: bool) -> None:
    """An endpoint refusing the request (400, 413, 422: a parameter it does not take) is a BackendRefusedError,
    which says nothing about the model; a bad key (401/403), a wrong URL or model name (404) or a server error
    fail every request there and cool the model down."""
    inner = OpenAIHTTPBackend(_card(tmp_path, "remote", upstream_url, f"status:{status}", max_retries=0))
    breaker = CooldownBackend(inner, failures=3, cooldown_s=300)
    try:
        for _ in range(3):
            with pytest.raises(BackendError, match=f"HTTP {status}") as err:
                _call(breaker, path)
            assert isinstance(err.value, BackendRefusedError) is not counts
            # the log's detail (never the client's message) names the usual cause of a 404: a base_url short of
            # the API's root
            assert ("is base_url the API's root" in (err.value.detail or "")) is (status == 404)
            assert "base_url" not in err.value.message
        assert breaker.state == ("open" if counts else "closed")
        assert breaker.consecutive_failures == (3 if counts else 0)
    finally:
        breaker.close()


def test_a_refused_request_moves_on_to_the_next_model_and_cools_nothing_down(upstream_url: str,
                                                                              tmp_path: Path) -> None:
    """The model pinned refuses every request with a 400: each request is answered by the next model, with the
    refusal in its attempts, and the refusing model is still tried (not cooling down) on the next request."""
    cards = {card.name: card for card in (
        _card(tmp_path, "remote-refusing", upstream_url, "status:400", tier="small", max_retries=0),
        _card(tmp_path, "remote-echo", upstream_url, "echo", tier="large"))}
    config = RouterConfig.load(ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}",
                               cooldown={"failures": 2, "seconds": 300})
    with Router(config, cards=cards) as router:
        for _ in range(4):
            resp = router.complete([{"role": "user", "content": "hello"}], model="remote-refusing")
            assert resp.routing is not None and resp.routing.model == "remote-echo"
            assert [(a.model, a.outcome) for a in resp.routing.attempts] == [("remote-refusing", "error"),
                                                                             ("remote-echo", "ok")]
        refusing = router.loaded_backends()["remote-refusing"]
        assert isinstance(refusing, CooldownBackend) and refusing.state == "closed" and refusing.opened_total == 0


def test_the_answers_latency_is_its_attempts_latencies_added_up(upstream_url: str, tmp_path: Path) -> None:
    """``routing.latency_ms`` is the sum of the attempts' ``latency_ms``: the one attempt's when one model answered,
    both added up when the first refused."""
    cards = {card.name: card for card in (
        _card(tmp_path, "remote-refusing", upstream_url, "status:400", tier="small", max_retries=0),
        _card(tmp_path, "remote-echo", upstream_url, "echo", tier="large"))}
    with Router(RouterConfig.load(ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}"), cards=cards) as router:
        for pinned, attempts in (("remote-echo", 1), ("remote-refusing", 2)):
            routing = router.complete([{"role": "user", "content": "hello"}], model=pinned).routing
            assert routing is not None and len(routing.attempts) == attempts
            assert routing.latency_ms == sum(a.latency_ms for a in routing.attempts)
            assert all(a.latency_ms > 0 for a in routing.attempts)


def _served_config(tmp_path: Path, models: Path) -> Path:
    """A config for ``router serve`` over the cards in ``models``, with its ledger in ``tmp_path``."""
    config = tmp_path / "router.yaml"
    config.write_text(f"models_dir: {models}\nproxy: {{warm_up: false}}\n"
                      f"ledger_url: sqlite:///{tmp_path / 'ledger.sqlite3'}\n")
    return config


def _pinned_then_echo(tmp_path: Path, upstream_url: str, mode: str, path: str) -> tuple[Any, list[LedgerRecord]]:
    """A request pinned to ``remote-pinned`` (the test upstream's ``mode``, no retries) with ``remote-echo`` next,
    by ``path`` (complete, acomplete or stream): its routing and the ledger's records."""
    cards = {card.name: card for card in (
        _card(tmp_path, "remote-pinned", upstream_url, mode, tier="small", max_retries=0),
        _card(tmp_path, "remote-echo", upstream_url, "echo", tier="large"))}
    ask = [{"role": "user", "content": "hello"}]
    with Router(RouterConfig.load(ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}"), cards=cards) as router:
        if path == "stream":
            routing = [c for c in router.complete(ask, model="remote-pinned", stream=True)][-1].routing
        else:
            routing = (router.complete(ask, model="remote-pinned") if path == "complete"
                       else asyncio.run(router.acomplete(ask, model="remote-pinned"))).routing
        return routing, router.ledger.records()


@pytest.mark.parametrize("path", ["complete", "acomplete", "stream"])
def test_a_fallbacks_energy_and_co2e_are_its_attempts_added_up_as_the_ledger_has_them(upstream_url: str,
                                                                                      tmp_path: Path,
                                                                                      path: str) -> None:
    """The pinned model's endpoint fails (503) and the next model answers: ``routing.energy_j`` (the proxy's
    ``x-router-energy-j``) and ``co2e_g`` count the failed call's joules too, as its ledger record and its budget
    do, so the answer's figures are the request's records added up."""
    routing, records = _pinned_then_echo(tmp_path, upstream_url, "broken", path)
    assert routing is not None and [(a.model, a.outcome) for a in routing.attempts] == [("remote-pinned", "error"),
                                                                                        ("remote-echo", "ok")]
    assert [(r.model, r.outcome) for r in records] == [("remote-pinned", "error"), ("remote-echo", "ok")]
    assert records[0].energy_j > 0, "the failed call is charged its card's joules per call"
    assert routing.energy_j == pytest.approx(sum(a.energy_j for a in routing.attempts))
    assert routing.energy_j == pytest.approx(sum(r.energy_j for r in records))
    assert routing.co2e_g == pytest.approx(sum(r.co2e_g or 0.0 for r in records))
    assert routing.energy_source == "estimated:token-profile"


PINNED_BUDGET = "model:remote-pinned:86400s"
"""The daily energy budget :func:`_budgeted` puts on the pinned model."""


def _budgeted(tmp_path: Path) -> RouterConfig:
    """A config with its ledger in ``tmp_path`` whose default policy puts :data:`PINNED_BUDGET` (1000 J a day) on
    ``remote-pinned``."""
    policy = ("name: budgeted\naccuracy: {min_accuracy: 0.0}\n"
              "budgets: [{model: remote-pinned, joules: 1000, per: day}]\n")
    return RouterConfig.load(ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}", default_policy="budgeted",
                             policies_dir=policies_dir(tmp_path / "policies", {"budgeted": policy}))


def _pinned_under_a_budget(
        tmp_path: Path, upstream_url: str, mode: str, path: str, max_retries: int = 0, timeout_s: float = 20,
        pinned_url: str | None = None) -> tuple[Any, list[LedgerRecord], float]:
    """A request pinned to ``remote-pinned`` (the test upstream's ``mode``, or an endpoint at ``pinned_url``; 5 J
    a call, under a daily budget :data:`PINNED_BUDGET`) with ``remote-echo`` next, by ``path`` (complete,
    acomplete, stream or astream): its routing, the ledger's records and the joules the budget has spent."""
    tmp_path.mkdir()
    cards = {card.name: card for card in (
        _card(tmp_path, "remote-pinned", pinned_url or upstream_url, mode, tier="small", per_call_j=5.0,
              max_retries=max_retries, timeout_s=timeout_s),
        _card(tmp_path, "remote-echo", upstream_url, "echo", tier="large"))}
    ask = [{"role": "user", "content": "hello"}]
    with Router(_budgeted(tmp_path), cards=cards) as router:
        if path == "stream":
            routing = [c for c in router.complete(ask, model="remote-pinned", stream=True)][-1].routing
        elif path == "astream":
            async def last_chunk() -> Any:
                return [c async for c in await router.acomplete(ask, model="remote-pinned", stream=True)][-1]

            routing = asyncio.run(last_chunk()).routing
        else:
            routing = (router.complete(ask, model="remote-pinned") if path == "complete"
                       else asyncio.run(router.acomplete(ask, model="remote-pinned"))).routing
        return routing, router.ledger.records(), router.ledger.budget_used(PINNED_BUDGET, 86400)


@pytest.mark.parametrize("path", ["complete", "acomplete", "stream"])
@pytest.mark.parametrize("status", [400, 401, 404, 413, 422, 429])
def test_a_call_the_endpoint_refuses_with_a_4xx_is_charged_nothing_and_one_failing_with_a_5xx_its_estimate(
        upstream_url: str, tmp_path: Path, path: str, status: int) -> None:
    """An endpoint answering 4xx (a bad request, key, URL or model name, its rate limit) turned the request away
    before its model ran: the call's record says 0 J, ``estimated:none``, its budget keeps nothing of what it held,
    and the answer's ``routing.energy_j`` is the ledger's records added up. A 503 may come after the model began,
    so that call keeps its card's 5 J per call, in its record and its budget, as does a call refused on its retry
    after a 503."""
    routing, records, spent = _pinned_under_a_budget(tmp_path / "refused", upstream_url, f"status:{status}", path)
    assert routing is not None and [(a.model, a.outcome) for a in routing.attempts] == [("remote-pinned", "error"),
                                                                                        ("remote-echo", "ok")]
    refused = records[0]
    assert (refused.model, refused.outcome) == ("remote-pinned", "error")
    assert f"HTTP {status}" in (refused.error or "")
    assert (refused.energy_j, refused.energy_source) == (0.0, "estimated:none"), refused
    assert (routing.attempts[0].energy_j, routing.attempts[0].energy_source) == (0.0, "estimated:none")
    assert spent == 0.0, "the refused call's hold is settled at 0 J"
    assert routing.energy_j == pytest.approx(sum(r.energy_j for r in records)) == records[1].energy_j
    assert routing.energy_source == "estimated:token-profile"

    for mode, retries in (("broken", 0), (f"statuses:503,{status}", 1)):  # the model may have run: estimated
        routing, records, spent = _pinned_under_a_budget(tmp_path / mode.replace(",", "-"), upstream_url, mode,
                                                         path, max_retries=retries)
        assert routing is not None and [r.outcome for r in records] == ["error", "ok"]
        failed = records[0]
        assert (failed.energy_j, failed.energy_source) == (5.0, "estimated:token-profile"), (mode, failed)
        assert spent == pytest.approx(5.0), mode
        assert routing.energy_j == pytest.approx(sum(r.energy_j for r in records)), mode


@pytest.mark.parametrize("path", ["complete", "acomplete", "stream"])
def test_a_call_rate_limited_on_every_retry_until_its_timeout_is_charged_nothing(upstream_url: str, tmp_path: Path,
                                                                                  path: str) -> None:
    """The TEST UPSTREAM answers 429 to every attempt, each 1.2 s after it is sent, and the card retries until
    its 2 s timeout_s cuts the second attempt off: the endpoint turned the request away each time it answered, so
    the call is recorded as its refusals are, 0 J ``estimated:none``, its error saying the endpoint answered 429
    until the timeout, and its budget keeps nothing. An endpoint that is merely slow (no refusal) and cut off by
    the same timeout may have run its model: that call keeps the card's 5 J per call."""
    routing, records, spent = _pinned_under_a_budget(tmp_path / "limited", upstream_url, "slowstatus:1.2:429",
                                                     path, max_retries=20, timeout_s=2)
    assert routing is not None and [(a.model, a.outcome) for a in routing.attempts] == [("remote-pinned", "error"),
                                                                                        ("remote-echo", "ok")]
    limited = records[0]
    assert limited.error is not None and "answered HTTP 429 to every attempt until the card's timeout_s (2 s)" \
        in limited.error, limited.error
    assert (limited.energy_j, limited.energy_source) == (0.0, "estimated:none"), limited
    assert (routing.attempts[0].energy_j, routing.attempts[0].energy_source) == (0.0, "estimated:none")
    assert spent == 0.0, "the rate-limited call's hold is settled at 0 J"
    assert routing.energy_j == pytest.approx(sum(r.energy_j for r in records)) == records[1].energy_j

    routing, records, spent = _pinned_under_a_budget(tmp_path / "slow", upstream_url, "sleep:5", path,
                                                     max_retries=20, timeout_s=2)
    slow = records[0]
    assert slow.outcome == "error" and "timed out" in (slow.error or ""), slow
    assert (slow.energy_j, slow.energy_source) == (5.0, "estimated:token-profile"), slow
    assert spent == pytest.approx(5.0)


@contextlib.contextmanager
def _host_taking_no_connection() -> Iterator[str]:
    """FAULT INJECTION: a base URL whose host takes no connection, as a machine that is down behind a firewall
    dropping packets: a listening socket whose accept queue is full and never read, so a new connection's SYN goes
    unanswered and connecting times out."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    queued = []
    for _ in range(4):  # more than the queue holds
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        queued.append(filler)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        for sock in (*queued, listener):
            sock.close()


@pytest.mark.parametrize("path", ["complete", "acomplete", "stream", "astream"])
def test_a_call_that_never_connected_is_charged_nothing(upstream_url: str, tmp_path: Path, path: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The pinned model's host takes no connection: its call sent nothing, so it is recorded at 0 J,
    ``estimated:none``, its budget keeps nothing, and its error says no connection was made, whether connecting
    timed out before the card's timeout_s (0.3 s of 2 s) or the timeout_s ran out while connecting (1 s)."""
    monkeypatch.setattr(openai_http, "_CONNECT_S", 0.3)
    with _host_taking_no_connection() as unreachable:
        for timeout_s, said in ((2, "endpoint is unreachable"),
                                (0.3, "no connection to the model's endpoint was made before the card's timeout_s")):
            routing, records, spent = _pinned_under_a_budget(tmp_path / str(timeout_s), upstream_url, "echo", path,
                                                             timeout_s=timeout_s, pinned_url=unreachable)
            assert routing is not None and [(a.model, a.outcome) for a in routing.attempts] == [
                ("remote-pinned", "error"), ("remote-echo", "ok")]
            failed = records[0]
            assert said in (failed.error or ""), (timeout_s, failed.error)
            assert (failed.energy_j, failed.energy_source) == (0.0, "estimated:none"), (timeout_s, failed)
            assert spent == 0.0, timeout_s
            assert routing.energy_j == pytest.approx(records[1].energy_j)


class _SilentProxy:
    """FAULT INJECTOR: an HTTP proxy (an asyncio server on its own thread) that takes every connection, reads what
    it is sent (a ``CONNECT`` for an ``https://`` endpoint, the request itself for an ``http://`` one) and never
    answers; ``requests`` keeps the first line of each."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _take(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.requests.append(await reader.readline())
        await reader.read()  # until the client gives up and closes

    def __enter__(self) -> str:
        self._thread.start()
        server = asyncio.run_coroutine_threadsafe(asyncio.start_server(self._take, "127.0.0.1", 0), self._loop)
        self._server = server.result(10)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def __exit__(self, *_: object) -> None:
        async def stop() -> None:
            self._server.close()
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def _proxy_in_the_environment(monkeypatch: pytest.MonkeyPatch, proxy: str) -> None:
    """``proxy`` for every endpoint but this machine's (the TEST UPSTREAM's model answers directly)."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.setenv("HTTPS_PROXY", proxy)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.mark.parametrize("scheme", ["http://", ""])
@pytest.mark.parametrize("path", [*PATHS, "stream"])
def test_every_call_goes_through_the_proxy_named_in_the_environment(upstream_url: str, tmp_path: Path, path: str,
                                                                   scheme: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """With HTTP_PROXY naming a proxy (here the TEST UPSTREAM, which answers a request sent to it as to a proxy)
    for an endpoint whose name does not resolve, sync calls and streams are carried through it as async ones are
    (they once dialled the endpoint directly and failed as unreachable). A value without a scheme
    (``proxy.corp:3128``) is an http:// proxy, as httpx and curl read it: the Router once refused to start."""
    _proxy_in_the_environment(monkeypatch, scheme + upstream_url.removesuffix("/v1").removeprefix("http://"))
    backend = OpenAIHTTPBackend(_card(tmp_path, "remote", "http://upstream.invalid/v1", "echo", max_retries=0,
                                      timeout_s=10))
    try:
        answer = _call(backend, path) if path != "stream" else list(backend.stream(REQUEST))
    finally:
        backend.close()
    text = answer.text if not isinstance(answer, list) else "".join(getattr(e, "text", "") or "" for e in answer)
    assert text.startswith("echo: hello"), answer


@pytest.mark.parametrize("path", ["complete", "acomplete", "stream", "astream"])
def test_a_call_whose_proxy_never_connected_it_is_charged_nothing(upstream_url: str, tmp_path: Path, path: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Behind an HTTP proxy named in the environment (HTTPS_PROXY, HTTP_PROXY), the pinned model's card timeout_s
    (1 s) runs out before the request reaches its endpoint: the proxy takes no connection, or it never answers the
    CONNECT that opens the tunnel to an ``https://`` endpoint. The call sent nothing, so it is recorded at 0 J,
    ``estimated:none``, saying no connection was made, as a call to an endpoint that takes no connection is. A
    proxy that was sent the request to an ``http://`` endpoint and never answers may have passed it on: that call
    keeps the card's 5 J per call."""
    injector = _SilentProxy()
    with injector as silent, _host_taking_no_connection() as unreachable:
        for proxy, endpoint, charged in ((unreachable.removesuffix("/v1"), "https://upstream.example/v1", 0.0),
                                         (silent, "https://upstream.example/v1", 0.0),
                                         (silent, "http://upstream.example/v1", 5.0)):
            _proxy_in_the_environment(monkeypatch, proxy)
            routing, records, spent = _pinned_under_a_budget(
                tmp_path / f"{len(list(tmp_path.iterdir()))}", upstream_url, "echo", path, timeout_s=1,
                pinned_url=endpoint)
            assert routing is not None and [(a.model, a.outcome) for a in routing.attempts] == [
                ("remote-pinned", "error"), ("remote-echo", "ok")], (proxy, endpoint)
            failed = records[0]
            if charged:
                assert "timed out" in (failed.error or ""), (endpoint, failed.error)
                assert (failed.energy_j, failed.energy_source) == (5.0, "estimated:token-profile"), failed
            else:
                assert "no connection to the model's endpoint was made before the card's timeout_s (1 s)" in (
                    failed.error or ""), (proxy, endpoint, failed.error)
                assert (failed.energy_j, failed.energy_source) == (0.0, "estimated:none"), (proxy, endpoint, failed)
            assert spent == pytest.approx(charged), (proxy, endpoint)
            assert routing.energy_j == pytest.approx(sum(r.energy_j for r in records))
        seen = injector.requests
        assert b"CONNECT upstream.example:443 HTTP/1.1\r\n" in seen, seen
        assert b"POST http://upstream.example/v1/chat/completions HTTP/1.1\r\n" in seen, seen


@pytest.mark.parametrize("path", ["complete", "acomplete", "stream"])
@pytest.mark.parametrize(("proxy", "says"), [
    ("socks5://127.0.0.1:9", "ALL_PROXY names a SOCKS proxy (socks5://) for https://upstream.example/v1, and "
     "calling through one needs the 'socksio' package, which is not installed; fix: pip install 'httpx[socks]'"),
    ("socks4://127.0.0.1:9", "ALL_PROXY names a proxy for https://upstream.example/v1 whose scheme socks4:// is not "
     "one httpx can call through")])
def test_a_proxy_httpx_cannot_call_through_fails_the_models_start_naming_the_variable_and_the_fix(
        upstream_url: str, tmp_path: Path, path: str, proxy: str, says: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """ALL_PROXY names a SOCKS proxy for the pinned model's endpoint where socksio (httpx's SOCKS support) is not
    installed (FAULT INJECTION: ``sys.modules["socksio"] = None`` stands for a machine without it), or a proxy
    scheme httpx has no transport for: every call failed with httpx's ImportError (ValueError), an internal error
    with no ledger record and no fallback. The model now fails its start with a ConfigError naming the card, the
    variable and the fix: the next model answers, the failed attempt is recorded, the reason is logged. (A proxy
    named before the Router starts stops its start, tests/test_proxy_at_start.py; here the app names it after.)"""
    monkeypatch.setitem(sys.modules, "socksio", None)
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    pinned = _card(tmp_path, "remote-pinned", "https://upstream.example/v1", "echo", tier="small", max_retries=0)
    cards = {pinned.name: pinned, "remote-echo": _card(tmp_path, "remote-echo", upstream_url, "echo", tier="large")}
    ask = [{"role": "user", "content": "hello"}]
    caplog.set_level(logging.WARNING, logger="router")
    with Router(RouterConfig.load(ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}"), cards=cards) as router:
        monkeypatch.setenv("ALL_PROXY", proxy)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # the TEST UPSTREAM's model answers directly
        with pytest.raises(ConfigError, match=r"remote-pinned\.yaml: field `backend.base_url`: the environment "
                           "variable " + re.escape(says)):
            OpenAIHTTPBackend(pinned)
        if path == "stream":
            routing = list(router.complete(ask, model="remote-pinned", stream=True))[-1].routing
        else:
            routing = (router.complete(ask, model="remote-pinned") if path == "complete"
                       else asyncio.run(router.acomplete(ask, model="remote-pinned"))).routing
        records = router.ledger.records()
    assert routing is not None and [(a.model, a.outcome) for a in routing.attempts] == [
        ("remote-pinned", "error"), ("remote-echo", "ok")]
    assert [(r.model, r.outcome) for r in records] == [("remote-pinned", "error"), ("remote-echo", "ok")]
    assert "its backend could not start" in (records[0].error or "")
    assert any(says in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize("path", ["complete", "acomplete", "stream"])
def test_a_call_cancelled_while_it_waits_to_retry_a_refusal_is_charged_nothing(upstream_url: str, tmp_path: Path,
                                                                                path: str) -> None:
    """The TEST UPSTREAM answers 429 with ``Retry-After: 2`` and the caller cancels during those seconds' wait:
    the model never ran, so the call is recorded ``cancelled`` at 0 J, ``estimated:none``, and its budget hold
    is settled at 0 J, as a call ending on the refusal itself would be."""
    card = _card(tmp_path, "remote-pinned", upstream_url, "status:429:2", per_call_j=5.0, max_retries=3)
    config = _budgeted(tmp_path)
    cancel = threading.Event()
    ask = [{"role": "user", "content": "hello"}]
    with Router(config, cards={card.name: card}) as router:
        threading.Timer(1.0, cancel.set).start()  # during the retry's wait (the 429 comes back at once)
        with pytest.raises(CancelledError):
            if path == "stream":
                list(router.complete(ask, model="remote-pinned", stream=True, cancel=cancel))
            elif path == "complete":
                router.complete(ask, model="remote-pinned", cancel=cancel)
            else:
                asyncio.run(router.acomplete(ask, model="remote-pinned", cancel=cancel))
        [record] = router.ledger.records()
        assert record.outcome == "cancelled", record
        assert (record.energy_j, record.energy_source) == (0.0, "estimated:none"), record
        assert router.ledger.budget_used(PINNED_BUDGET, 86400) == 0.0


@pytest.mark.parametrize(("value", "count"), [(0, 0), (10, 10), (2**53 - 1, 2**53 - 1), (10.0, 10), (-1, None),
                                              (2**53, None), (10**400, None), (True, None), (False, None),
                                              (10.5, None), (-0.5, None), (float("inf"), None),
                                              (float("nan"), None), ("10", None), (None, None), ([10], None)])
def test_a_token_count_from_the_endpoint_is_taken_only_when_it_is_a_count(value: object, count: int | None) -> None:
    """The endpoint's ``usage`` figures are whole numbers from 0 below 2**53 (a float with no fraction too); anything
    else (negative, huge, fractional, a bool, a string) is no count, and the backend estimates the figure."""
    assert _count(value) == count and type(_count(value)) is (int if count is not None else type(None))


@pytest.mark.parametrize("stream", [False, True])
def test_a_token_count_beyond_the_models_context_is_estimated_not_charged(upstream_url: str, tmp_path: Path,
                                                                          stream: bool) -> None:
    """An endpoint whose ``usage`` says 100,000,000 prompt tokens for a model of 8,192 (a count, but one no call to
    it can reach) is estimated, as an endpoint without usage is: taken as it came, the card's 0.01 J per input token
    made it a 1 MJ record that spent every hourly budget of its tier at once."""
    cards = {card.name: card for card in (
        _card(tmp_path, "remote-beyond", upstream_url, "usage:100000000:9000"),
        _card(tmp_path, "remote-nousage", upstream_url, "nousage"))}
    assert cards["remote-beyond"].context_length == 8192
    ask = [{"role": "user", "content": "hello"}]
    with Router(RouterConfig.load(ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}"), cards=cards) as router:
        for model in cards:
            if stream:
                usage = [c for c in router.complete(ask, model=model, stream=True) if c.usage][-1].usage
            else:
                usage = router.complete(ask, model=model).usage
            assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (
                router.ledger.records()[-1].input_tokens, router.ledger.records()[-1].output_tokens)
        beyond, estimated = router.ledger.records()
    assert (beyond.input_tokens, beyond.output_tokens) == (estimated.input_tokens, estimated.output_tokens)
    assert beyond.energy_j == pytest.approx(estimated.energy_j) and beyond.energy_j < 10


def test_a_seed_beyond_64_bits_is_refused_naming_it_before_any_call(upstream_url: str, tmp_path: Path) -> None:
    """Endpoints take 64-bit seeds (llama.cpp's server, most others): a larger one used to be sent on, refused
    there and reported as the model failing (a 502 from the proxy)."""
    card = _card(tmp_path, "remote-echo", upstream_url, "echo")
    stats = upstream_url.removesuffix("/v1") + "/stats"
    ask = [{"role": "user", "content": "hello"}]
    with Router(RouterConfig.load(ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}"),
                cards={card.name: card}) as router:
        before = httpx.get(stats).json()["calls"]
        for seed in (2**63, -(2**63) - 1, 10**300):
            with pytest.raises(BadRequestError, match="`seed` must be a 64-bit signed integer") as err:
                router.complete(ask, model=card.name, seed=seed)
            assert err.value.param == "seed"
        assert httpx.get(stats).json()["calls"] == before
        assert router.ledger.records() == []
        for seed in (2**63 - 1, -(2**63)):  # the ends of the range are sent on
            assert router.complete(ask, model=card.name, seed=seed).choices[0].message.content == "echo: hello"


# -- an endpoint that says when to come back ------------------------------------------------------------------
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("upstream_model", "retry_after"), [("status:503:7", 7.0), ("status:429:2.5", 2.5),
                                                             ("status:503:86400", 3600.0), ("status:500:7", None),
                                                             ("status:503", None)])
def test_an_endpoints_retry_after_is_kept_on_the_error(upstream_url: str, tmp_path: Path, path: str,
                                                        upstream_model: str, retry_after: float | None) -> None:
    """A busy (429) or down (503) endpoint's ``Retry-After`` becomes the error's ``retry_after_s`` on every call
    path, after the backend's own retry, at most an hour; other statuses' is not read."""
    inner = OpenAIHTTPBackend(_card(tmp_path, "remote", upstream_url, upstream_model, max_retries=1))
    try:
        with pytest.raises(BackendError, match="HTTP") as err:
            _call(inner, path)
        assert err.value.retry_after_s == retry_after
    finally:
        inner.close()


def test_an_endpoints_retry_after_is_waited_out_when_short_and_ends_the_retries_when_long(upstream_url: str,
                                                                                          tmp_path: Path) -> None:
    """The backend's own retry waits what a busy endpoint asks for (1 s here, more than its 0.1 s backoff) and no
    less; asked for longer than its 2 s cap, it does not retry at all: another model may answer, and the caller
    gets the endpoint's Retry-After. It used to retry after 0.1 s whatever the endpoint said."""
    stats = upstream_url.removesuffix("/v1") + "/stats"
    for model, calls, waited in (("status:503:1", 2, 1.0), ("status:429:7", 1, 0.0)):
        inner = OpenAIHTTPBackend(_card(tmp_path, "remote", upstream_url, model, max_retries=1))
        try:
            before = httpx.get(stats).json()["calls"].get(model, 0)
            started = time.monotonic()
            with pytest.raises(BackendError, match="HTTP"):
                inner.generate(REQUEST)
            elapsed = time.monotonic() - started
            assert httpx.get(stats).json()["calls"][model] - before == calls, model
            assert elapsed >= waited, (model, elapsed)
        finally:
            inner.close()


@pytest.mark.parametrize("stream", [False, True])
def test_the_backends_retry_line_names_the_request(upstream_url: str, tmp_path: Path, stream: bool,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """An endpoint answering 503: the backend's warning that it retries carries the request's id, as the
    attempt's own failure line does, so an operator can tell which request each retry belongs to."""
    card = _card(tmp_path, "remote-broken", upstream_url, "broken", max_retries=1)
    caplog.set_level(logging.WARNING, logger="router")
    with Router(RouterConfig.load(ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}"),
                cards={card.name: card}) as router, pytest.raises(BackendUnavailableError):
        answer = router.complete([{"role": "user", "content": "hello"}], model="remote-broken",
                                 request_id="retry-line-1", stream=stream)
        list(answer) if stream else None
    retries = [r.getMessage() for r in caplog.records if r.name == "router.backends.openai_http"]
    assert len(retries) == 1, retries
    assert retries[0].startswith("retry-line-1: remote-broken: the model's endpoint answered HTTP 503 ("), retries
    assert retries[0].endswith("; retrying in 0.1 s"), retries


def test_with_every_model_busy_the_caller_is_told_the_soonest_any_may_answer(upstream_url: str,
                                                                            tmp_path: Path) -> None:
    """Two models whose endpoints answer 503 with Retry-After 30 and 9: whichever was tried last, the error says 9
    s (when one of them may answer again); it used to carry the last one tried's."""
    cards = [_card(tmp_path, "remote-slow-back", upstream_url, "status:503:30", max_retries=0),
             _card(tmp_path, "remote-soon-back", upstream_url, "status:503:9", max_retries=0)]
    with Router(RouterConfig.load(ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}"),
                cards={c.name: c for c in cards}) as router:
        for pinned in ("remote-slow-back", "remote-soon-back"):  # each tried first in turn, the other after it
            with pytest.raises(BackendUnavailableError) as err:
                router.complete([{"role": "user", "content": "hello"}], model=pinned)
            assert err.value.retry_after_s == 9.0, pinned
            assert [r.model for r in router.ledger.records()][-2:][0] == pinned


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("upstream_model", "open_s", "told_s"), [("status:429:45", 45.0, 45.0),
                                                                  ("status:503:3000", 600.0, 3000.0),
                                                                  ("status:429:1", 5.0, 5.0)])
def test_a_cooldown_lasts_as_long_as_the_endpoints_retry_after_asked(upstream_url: str, tmp_path: Path, path: str,
                                                                      upstream_model: str, open_s: float,
                                                                      told_s: float) -> None:
    """A rate-limited endpoint (429, or 503) asking to wait 45 s opens the breaker (cooldown 5 s) for those 45 s:
    it let a trial call through after its own 5 s, which met the same 429 and opened it again. A longer wait is
    bounded (600 s, while the caller is still told what the endpoint asked), and a shorter one leaves the cooldown
    as it is. The caller is told to come back when the breaker lets a call through again."""
    stats = upstream_url.removesuffix("/v1") + "/stats"
    now = [0.0]
    inner = OpenAIHTTPBackend(_card(tmp_path, "remote", upstream_url, upstream_model, max_retries=0))
    breaker = CooldownBackend(inner, failures=2, cooldown_s=5, clock=lambda: now[0])
    try:
        before = httpx.get(stats).json()["calls"].get(upstream_model, 0)
        for _ in range(2):
            with pytest.raises(BackendUnavailableError, match="HTTP") as err:
                _call(breaker, path)
        assert err.value.retry_after_s == told_s
        for at in [t for t in (5.0, open_s - 0.5) if t < open_s]:  # before the breaker's wait ends: no trial call
            now[0] = at
            with pytest.raises(BackendUnavailableError, match="cooling down"):
                _call(breaker, path)
            assert breaker.state == "open", at
        assert httpx.get(stats).json()["calls"][upstream_model] - before == 2
        now[0] = open_s
        assert breaker.state == "half-open"
    finally:
        breaker.close()


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after_s("120") == 120.0 and retry_after_s(" 0.5 ") == 0.5
    assert retry_after_s("-3") == 0.0 and retry_after_s("inf") == 3600.0
    assert retry_after_s(None) is None and retry_after_s("") is None
    assert retry_after_s("soon") is None and retry_after_s("nan") is None
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past: now
    assert retry_after_s("Wed, 21 Oct 2099 07:28:00 GMT") == 3600.0  # bounded
    in_a_minute = retry_after_s(email.utils.formatdate(time.time() + 60, usegmt=True))
    assert in_a_minute is not None and 50 <= in_a_minute <= 61


def test_the_proxy_passes_an_endpoints_retry_after_on_when_no_other_model_answers(upstream_url: str,
                                                                                  tmp_path: Path) -> None:
    """``router serve`` with one policy per model, so no other model answers: the client's 503 (a model down, or
    rate limited: an endpoint's 429 is the service being busy, not the caller's fault) carries the endpoint's
    ``Retry-After`` (a streamed request's too), where it used to
    carry none and an OpenAI SDK retried at once."""
    cards = {"remote-busy": remote_card("remote-busy", upstream_url, "status:503:7"),
             "remote-limited": remote_card("remote-limited", upstream_url, "status:429:30")}
    models = models_dir(tmp_path / "models", cards, specialist=False)
    policies = policies_dir(tmp_path / "policies", {name: only_policy(f"remote-{name[4:]}")
                                                    for name in ("onlybusy", "onlylimited")})
    config = tmp_path / "router.yaml"
    config.write_text(f"models_dir: {models}\npolicies_dir: {policies}\nproxy: {{warm_up: false}}\n"
                      f"ledger_url: sqlite:///{tmp_path / 'ledger.sqlite3'}\ncooldown: {{failures: 100}}\n")
    with router_serve(config, tmp_path) as base, httpx.Client(base_url=base, timeout=30) as client:
        for model, status, retry_after in (("remote-busy", 503, "7"), ("remote-limited", 503, "30")):
            for stream in (False, True):
                res = client.post("/v1/chat/completions", json={
                    "model": model, "policy": f"only{model[7:]}", "stream": stream,
                    "messages": [{"role": "user", "content": "hello"}]})
                assert res.status_code == status, res.text
                assert res.headers.get("retry-after") == retry_after, (model, stream, res.headers)


# -- connections on each event loop ---------------------------------------------------------------------------
async def _ask_both_ways(router: Router, model: str) -> None:
    """A stream (the httpx client) and a plain call (the keep-alive pool)."""
    ask = [{"role": "user", "content": "hello"}]
    assert [chunk async for chunk in await router.acomplete(ask, model=model, stream=True)][-1].routing
    assert (await router.acomplete(ask, model=model)).choices[0].message.content


@pytest.mark.parametrize("closed_on_the_loop", [False, True])
def test_router_close_leaves_no_connection_of_any_event_loop_open(upstream_url: str, tmp_path: Path,
                                                                 closed_on_the_loop: bool) -> None:
    """Two ``asyncio.run`` calls on one Router, each with its own connections, then ``Router.close()`` after them
    or from a call on the last loop: every connection is closed on its own loop, none is left to the garbage
    collector (which would warn of an unclosed socket and transport)."""
    card = _card(tmp_path, "remote-echo", upstream_url, "echo")

    def use_and_close() -> None:
        router = Router(RouterConfig.load(ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}"),
                        cards={card.name: card})
        asyncio.run(_ask_both_ways(router, card.name))

        async def last() -> None:
            await _ask_both_ways(router, card.name)
            if closed_on_the_loop:
                router.close()

        asyncio.run(last())
        if not closed_on_the_loop:
            router.close()

    gc.collect()  # what earlier tests left to the collector warns now, not inside the window below
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        use_and_close()
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_close_does_not_break_a_stream_on_another_event_loop(upstream_url: str, tmp_path: Path) -> None:
    """A stream runs on a loop in another thread when the backend is closed: it goes on to its end (and its
    connection closes when that loop shuts down)."""
    backend = OpenAIHTTPBackend(_card(tmp_path, "remote-slow", upstream_url, "slow"))
    request = GenerationRequest(messages=[ChatMessage(role="user", content="hello")], max_tokens=20)
    begun, closed = threading.Event(), threading.Event()
    events: list[object] = []

    async def stream(backend: Backend) -> None:
        async for event in backend.astream(request):
            events.append(event)
            begun.set()
            await asyncio.to_thread(closed.wait, 30)

    gc.collect()  # what earlier tests left to the collector warns now, not inside the window below
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        reader = threading.Thread(target=asyncio.run, args=(stream(backend),))
        reader.start()
        assert begun.wait(30)
        backend.close()
        closed.set()
        reader.join(30)
        del backend
        gc.collect()
    assert [getattr(e, "text", "") for e in events if getattr(e, "text", "")] == [f"t{i} " for i in range(20)]
    assert getattr(events[-1], "finish_reason", None) == "stop"
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


# -- Router.close() with sync calls running in other threads ---------------------------------------------------
def _call_in_thread(router: Router, model: str, request_id: str, stream: bool) -> tuple[threading.Thread,
                                                                                        list[RouterError]]:
    """``router.complete`` (whole, or its stream read to the end) in a thread; the RouterError it raised, if any."""
    errors: list[RouterError] = []

    def call() -> None:
        try:
            answer = router.complete([{"role": "user", "content": "hello"}], model=model, request_id=request_id,
                                     stream=stream)
            if stream:
                list(answer)
        except RouterError as exc:
            errors.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    return thread, errors


def _wait_for_call(upstream_url: str, model: str, calls: int) -> None:
    """Until the endpoint has received its ``calls``-th call for ``model`` (its /stats count calls on arrival)."""
    stats = upstream_url.removesuffix("/v1") + "/stats"
    while httpx.get(stats).json()["calls"].get(model, 0) < calls:
        time.sleep(0.02)


@pytest.mark.parametrize("stream", [False, True])
def test_close_cancels_a_sync_call_still_waiting_for_its_endpoint_and_records_it(
        upstream_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stream: bool) -> None:
    """A sync call whose endpoint takes 5 s to answer when ``close()`` begins: once close() cancels it, the call
    stops waiting for the answer, writes its ``cancelled`` record while the ledger is open, and its caller is told
    the Router was closed. The cancel used to be read only after a chunk of the answer had come, so the call
    waited on; close() then closed the backend and the ledger under it: no record, and the caller got "the
    backend failed (RuntimeError)"."""
    # close() waits 1 s (not 5) for running calls, then cancels them and waits 1 s more: the call ends in ~0.1 s
    monkeypatch.setattr(router._closing, "CLOSE_WAIT_S", 1.0)
    model = "sleep:5"
    card = _card(tmp_path, "remote-sleepy", upstream_url, model)
    ledger_url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    calls = httpx.get(upstream_url.removesuffix("/v1") + "/stats").json()["calls"].get(model, 0)
    routed = Router(RouterConfig.load(ledger_url=ledger_url), cards={card.name: card})
    thread, errors = _call_in_thread(routed, card.name, "waiting", stream)
    _wait_for_call(upstream_url, model, calls + 1)
    routed.close()
    thread.join(30)
    assert [type(e) for e in errors] == [CancelledError], errors
    assert "the Router was closed while the model was answering" in errors[0].message
    ledger = open_ledger(ledger_url)
    try:
        assert [(r.model, r.outcome) for r in ledger.records() if r.request_id == "waiting"] == [
            ("remote-sleepy", "cancelled")]
    finally:
        ledger.close()


def test_a_sync_call_that_outlives_close_gets_the_router_closed_error(upstream_url: str, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A sync call waiting out its endpoint's Retry-After (a 503, then 1 s before its retry) when ``close()``
    closes the backend under it: its caller gets the RouterClosedError close() documents (503 router_closed),
    not "the backend failed (RuntimeError)" from the closed HTTP client it retried on."""
    # close() does not wait at all (not 2 x 5 s), so the call outlives its waits
    monkeypatch.setattr(router._closing, "CLOSE_WAIT_S", 0.0)
    model = "status:503:1"
    card = _card(tmp_path, "remote-busy", upstream_url, model, max_retries=1)
    calls = httpx.get(upstream_url.removesuffix("/v1") + "/stats").json()["calls"].get(model, 0)
    routed = Router(RouterConfig.load(ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}"),
                    cards={card.name: card})
    thread, errors = _call_in_thread(routed, card.name, "outliving", stream=False)
    _wait_for_call(upstream_url, model, calls + 1)
    routed.close()
    thread.join(30)
    assert [type(e) for e in errors] == [RouterClosedError], errors
    assert errors[0].http_status == 503 and errors[0].code == "router_closed"
    assert "the Router was closed while this call was still running" in errors[0].message


def test_close_on_an_event_loop_says_to_use_aclose_which_lets_the_loops_calls_end(
        upstream_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A sync ``close()`` called on an event loop blocks it, so the calls running on that loop cannot end: once
    close() returned, the loop's call read its answer and returned it, its record refused by the closed ledger (an
    answer without a record), with no word of why. close() now warns and names ``await router.aclose()``, and a call
    that outlived it ends with RouterClosedError; ``aclose()`` waits in a worker thread, so the loop's call ends by
    itself and records ``ok``."""
    # close() waits 2 s for running calls (not 5), then cancels them and waits 2 s more; the call takes 0.5 s
    monkeypatch.setattr(router._closing, "CLOSE_WAIT_S", 2.0)
    card = _card(tmp_path, "remote-sleepy", upstream_url, "sleep:0.5")
    ask = [{"role": "user", "content": "hello"}]

    async def close_while_a_call_runs(use_aclose: bool) -> str:
        routed = Router(RouterConfig.load(ledger_url=f"sqlite:///{tmp_path / f'{use_aclose}.sqlite3'}"),
                        cards={card.name: card})
        call = asyncio.ensure_future(routed.acomplete(ask, model=card.name))
        await asyncio.sleep(0.2)  # the call is waiting for its answer
        if use_aclose:
            await routed.aclose()
        else:
            routed.close()
        try:
            await call
        except RouterError as exc:
            return type(exc).__name__
        return "answered"

    with caplog.at_level(logging.WARNING, logger="router"):
        assert asyncio.run(close_while_a_call_runs(use_aclose=False)) == "RouterClosedError"
    assert any("use `await router.aclose()`" in m for m in caplog.messages), caplog.messages
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="router"):
        assert asyncio.run(close_while_a_call_runs(use_aclose=True)) == "answered"
    assert not any("aclose" in m for m in caplog.messages), caplog.messages
    ledger = open_ledger(f"sqlite:///{tmp_path / 'True.sqlite3'}")
    try:
        assert [r.outcome for r in ledger.records()] == ["ok"]
    finally:
        ledger.close()


# -- a call cancelled while it waits to retry --------------------------------------------------------------------
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("run", ["sync", "async"])
def test_a_call_cancelled_during_its_backoff_ends_at_once_and_sends_nothing_more(
        upstream_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run: str, stream: bool) -> None:
    """A call whose endpoint answered 503 with Retry-After 10 is cancelled (its caller's ``cancel=`` event, set from
    another thread) while it waits to retry: it ends with CancelledError soon after the cancel, and the endpoint gets
    no second call. The wait used to be a plain sleep that read no cancel, and the retry was sent after it anyway."""
    # the backoff's cap raised from 2 s, so "long before the retry" leaves a wide margin on a busy machine
    monkeypatch.setattr(openai_http, "_MAX_BACKOFF_S", 10.0)
    model = "status:503:10"
    card = _card(tmp_path, "remote-down", upstream_url, model, max_retries=1)
    calls = httpx.get(upstream_url.removesuffix("/v1") + "/stats").json()["calls"].get(model, 0)
    cancel = threading.Event()
    cancelled_at: list[float] = []

    def cancel_after_the_first_call() -> None:
        _wait_for_call(upstream_url, model, calls + 1)
        cancelled_at.append(time.monotonic())
        cancel.set()

    ask = [{"role": "user", "content": "hello"}]
    with Router(RouterConfig.load(ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}"),
                cards={card.name: card}) as routed:

        async def acall() -> None:
            answer = await routed.acomplete(ask, model=card.name, cancel=cancel, stream=stream)
            if stream:
                [chunk async for chunk in answer]  # type: ignore[union-attr]

        def call() -> None:
            if run == "async":
                asyncio.run(acall())
            else:
                answer = routed.complete(ask, model=card.name, cancel=cancel, stream=stream)
                if stream:
                    list(answer)  # type: ignore[call-overload]

        canceller = threading.Thread(target=cancel_after_the_first_call)
        canceller.start()
        with pytest.raises(CancelledError):
            call()
        ended = time.monotonic()
        canceller.join(30)
    assert httpx.get(upstream_url.removesuffix("/v1") + "/stats").json()["calls"][model] == calls + 1
    assert ended - cancelled_at[0] < 3.0


# -- usage the endpoint does not report -----------------------------------------------------------------------
DESCRIPTION = "Look up the current weather for a city, in degrees Celsius, with wind and rain. " * 6
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": DESCRIPTION,
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_tokens_estimated_for_an_endpoint_without_usage_count_the_tools_offered(
        upstream_url: str, tmp_path: Path, stream: bool) -> None:
    """An endpoint that reports no usage (llama.cpp's server in a stream): the estimate of the prompt counts the
    tools offered (their descriptions and schemas, often longer than the messages), in the answer's usage and in
    the ledger, not only the messages."""
    card = _card(tmp_path, "remote-nousage", upstream_url, "nousage", capabilities="tools")
    config = RouterConfig.load(ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    with Router(config, cards={card.name: card}) as router:
        def prompt_tokens(**params: object) -> int:
            answer = router.complete([{"role": "user", "content": "Weather in Oslo?"}], model=card.name,
                                     stream=stream, **params)
            usage = [chunk for chunk in answer][-1].usage if stream else answer.usage  # type: ignore[union-attr]
            assert usage is not None
            return usage.prompt_tokens

        plain, offered = prompt_tokens(), prompt_tokens(tools=[WEATHER])
        assert offered - plain >= len(DESCRIPTION) // 4
        assert [r.input_tokens for r in router.ledger.records()] == [plain, offered]


CHINESE = "量子纠缠是一种量子力学现象，其中两个粒子的状态无法独立描述。" * 100
"""3,100 characters, 9,300 bytes: SmolLM2's tokenizer reads its sentence as 1.75 tokens a character, multilingual ones
(GPT-4o's, Qwen's) as 0.6-1."""


def test_a_chinese_prompt_is_counted_by_its_bytes_against_a_remote_models_context(upstream_url: str,
                                                                                  tmp_path: Path) -> None:
    """A remote model's context check counts a Chinese prompt as about a token a character (four UTF-8 bytes a
    token), not four characters a token: this one, too long for the short model's 2,048 tokens, is not sent
    there but answered by the model with room; and an endpoint that reports no usage has it counted the same
    way in the ledger."""
    short = _card(tmp_path, "remote-short", upstream_url, "echo", tier="small")
    short = short.model_copy(update={"context_length": 2048})
    cards = {card.name: card for card in (
        short, _card(tmp_path, "remote-nousage", upstream_url, "nousage", tier="large"))}
    with Router(RouterConfig.load(ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}"), cards=cards) as router:
        resp = router.complete([{"role": "user", "content": CHINESE}], model="remote-short")
        assert resp.routing is not None
        assert [(a.model, a.outcome) for a in resp.routing.attempts] == [("remote-short", "rejected"),
                                                                         ("remote-nousage", "ok")]
        assert resp.usage is not None and resp.usage.prompt_tokens >= len(CHINESE.encode()) // 4
        assert [r.input_tokens for r in router.ledger.records() if r.outcome == "ok"] == [resp.usage.prompt_tokens]



def test_the_decisions_energy_estimate_counts_a_prompt_by_its_bytes(upstream_url: str, tmp_path: Path) -> None:
    """The policy's energy estimate (what the decision ranks models by and a budget reservation holds) reads the
    prompt's tokens as its UTF-8 bytes over four, like the backends' count: 3,000 Chinese characters weigh what
    9,000 ASCII ones do, not a third of it, so a budget is not under-reserved for such prompts."""
    cards = {"remote-echo": _card(tmp_path, "remote-echo", upstream_url, "echo", tier="small")}
    with Router(RouterConfig.load(ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}"), cards=cards) as router:
        def estimate(text: str) -> float:
            prepared = router.prepare([{"role": "user", "content": text}], model="remote-echo", max_tokens=16)
            return prepared.decision.estimates["remote-echo"]

        ascii_same_bytes, ascii_same_chars = estimate("a" * 9000), estimate("a" * 3000)
        assert estimate("中" * 3000) == ascii_same_bytes > ascii_same_chars


def test_an_endpoint_that_compresses_what_the_request_allows_answers_every_path(upstream_url: str,
                                                                                 tmp_path: Path) -> None:
    """A request without ``Accept-Encoding`` allows the server any encoding (RFC 9110), and some gzip their answers
    then: the own HTTP/1.1 client (the async calls' pool) read such a body as it came and failed a good answer as
    malformed. It asks for ``identity``; httpx (the sync calls) decodes what it asks for."""
    cards = {"remote-gzip": _card(tmp_path, "remote-gzip", upstream_url, "gzip", tier="small")}
    with Router(RouterConfig.load(ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}"), cards=cards) as router:
        question = [{"role": "user", "content": "hello there"}]
        answers = [router.complete(question, model="remote-gzip"),
                   asyncio.run(router.acomplete(question, model="remote-gzip"))]
        assert [a.choices[0].message.content for a in answers] == ["echo: hello there"] * 2
        assert [r.outcome for r in router.ledger.records()] == ["ok", "ok"]

# -- an endpoint nothing listens on ---------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["complete", "acomplete", "stream"])
def test_a_call_to_an_endpoint_that_refuses_the_connection_is_charged_nothing(tmp_path: Path, upstream_url: str,
                                                                              path: str) -> None:
    """The request never reached the model, so the call did no work: 0 J in its record and its budget, not the
    card's per-call joules (a read that fails later may come after the model began, and keeps its estimate)."""
    down = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    models = models_dir(tmp_path / "models", {  # `down` is the cheaper: tried first, then `up` answers
        "down": remote_card("down", down, "echo", tier="small", per_call_j=5.0, max_retries=0),
        "up": remote_card("up", upstream_url, "echo", tier="large", per_call_j=50.0)}, specialist=False)
    policy = "name: both\naccuracy: {min_accuracy: 0.0}\nallowed_models: [down, up]\n"
    config = RouterConfig.load(models_dir=models, ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}",
                               policies_dir=policies_dir(tmp_path / "policies", {"both": policy}),
                               default_policy="both")
    with Router(config) as r:
        messages = [{"role": "user", "content": "hello"}]
        if path == "complete":
            r.complete(messages)
        elif path == "acomplete":
            asyncio.run(r.acomplete(messages))
        else:
            assert "".join(c.choices[0].delta.content or "" for c in r.complete(messages, stream=True)
                           if c.choices)
        records = {rec.model: rec for rec in r.ledger.records()}
    assert records["down"].outcome == "error" and records["down"].energy_j == 0.0, records["down"]
    assert records["up"].outcome == "ok", records["up"]


def test_a_forked_child_calls_on_connections_of_its_own(upstream_url: str, tmp_path: Path) -> None:
    """A Router made before the process forks (gunicorn --preload, multiprocessing's fork, Celery's prefork pool):
    the child does not call on the parent's keep-alive connection, where the two processes would read each other's
    answers, and the parent keeps its own."""
    cards = {"remote-peer": _card(tmp_path, "remote-peer", upstream_url, "peer")}

    def connection(router: Router) -> str:
        answer = router.complete([{"role": "user", "content": "hello"}], model="remote-peer").choices[0].message
        return str(answer.content)

    with Router(RouterConfig.load(ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}"), cards=cards) as router:
        parents = connection(router)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child reports the connection it called on and leaves without running pytest's teardown
            try:
                os.write(write_end, connection(router).encode())
            finally:
                os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            childs = pipe.read().decode()
        os.waitpid(pid, 0)
        assert childs.startswith("peer: ")
        assert childs != parents
        assert connection(router) == parents


# -- a model that declines to answer --------------------------------------------------------------------------
class Answer(BaseModel):
    answer: str


ANSWER_FORMAT = {"type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": {
    "type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"],
    "additionalProperties": False}}}


def _refusing_and_answering(upstream_url: str) -> dict[str, str]:
    """A small model that declines (the upstream's ``refusal``) and a large one whose JSON fits ``Answer``, both
    taking a json_schema: were the refusal taken for a malformed answer, the large model would answer instead."""
    schema = "context_length:", "capabilities: [json_schema]\ncontext_length:"
    return {"remote-refusing": remote_card("remote-refusing", upstream_url, "refusal", tier="small").replace(*schema),
            "remote-json": remote_card("remote-json", upstream_url, "json", tier="large").replace(*schema)}


@pytest.mark.parametrize("path", ["complete", "acomplete", "stream"])
def test_a_models_refusal_is_its_answer_not_a_malformed_one_to_escalate_past(upstream_url: str, tmp_path: Path,
                                                                            path: str) -> None:
    """OpenAI's models may decline a structured-output request: ``content`` null and ``message.refusal`` (streamed:
    ``delta.refusal`` pieces). It was dropped: the empty content failed the schema, and the next capable model
    answered what the first had declined. The refusal now comes back as the answer, from the one attempt made,
    recorded ``ok`` with the endpoint's token counts, and flagged ``refusal`` (the ledger's reason says so)."""
    models = models_dir(tmp_path / "models", _refusing_and_answering(upstream_url), specialist=False)
    config = RouterConfig.load(models_dir=models, ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    ask = [{"role": "user", "content": "How do I pick a lock?"}]
    with Router(config) as router:
        params: dict[str, object] = {"model": "remote-refusing", "response_format": ANSWER_FORMAT}
        if path == "stream":  # the sync stream (httpx); acomplete's whole answer goes through the own pool
            chunks = [c for c in router.complete(ask, stream=True, **params) if c.choices]
            refusal = "".join(c.choices[0].delta.refusal or "" for c in chunks)
            assert not "".join(c.choices[0].delta.content or "" for c in chunks)
            routing, usage = chunks[-1].routing, chunks[-1].usage
            assert chunks[-1].choices[0].finish_reason == "stop"
        else:
            resp = (router.complete(ask, **params) if path == "complete"
                    else asyncio.run(router.acomplete(ask, **params)))
            message = resp.choices[0].message
            refusal, routing, usage = message.refusal or "", resp.routing, resp.usage
            assert message.content is None and resp.choices[0].finish_reason == "stop"
        records = router.ledger.records()
    assert refusal == REFUSAL
    assert routing is not None and routing.model == "remote-refusing" and "refusal" in routing.flags
    assert [(a.model, a.outcome) for a in routing.attempts] == [("remote-refusing", "ok")]
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (10, 5)
    (record,) = records
    assert (record.model, record.outcome, record.error) == ("remote-refusing", "ok", None)
    assert "declined to answer (refusal)" in record.reason
    assert (record.input_tokens, record.output_tokens) == (10, 5)


def test_a_refusal_is_stored_as_its_answer_and_never_judged(upstream_url: str, tmp_path: Path) -> None:
    """The learning thread was handed a refusal's empty content: a stored prompt kept an empty answer, and a judge
    would score it. The refusal's text is the stored answer, and no judge call is made for it."""
    cards = {**_refusing_and_answering(upstream_url),
             "remote-judge": remote_card("remote-judge", upstream_url, "judge", tier="large")}
    models = models_dir(tmp_path / "models", cards, specialist=False)
    config = RouterConfig.load(models_dir=models, ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}",
                               prompts={"store": True}, judge={"model": "remote-judge", "share": 1.0})
    with Router(config) as router:
        resp = router.complete([{"role": "user", "content": "How do I pick a lock?"}], model="remote-refusing",
                               response_format=ANSWER_FORMAT)
        assert router.learning is not None and router.learning.drain(30)
        (stored,) = router.ledger.prompts(request_id=resp.id)
        assert stored.answer == REFUSAL and router.learning.stats["judged"] == 0
        assert [r.model for r in router.ledger.records()] == ["remote-refusing"], "no judge call was made"


def test_a_models_refusal_reaches_the_openai_sdk_through_the_proxy(upstream_url: str, tmp_path: Path) -> None:
    """``router serve`` passes a refusal on as OpenAI sends it, so the openai SDK reads it where it looks: whole
    (``message.refusal``, content null), streamed (``delta.refusal`` pieces) and through ``parse`` (``parsed`` None,
    ``refusal`` set); before, the client got ``content: ""`` or another model's answer, or a 502."""
    models = models_dir(tmp_path / "models", _refusing_and_answering(upstream_url), specialist=False)
    config = _served_config(tmp_path, models)
    ask = [{"role": "user", "content": "How do I pick a lock?"}]
    with router_serve(config, tmp_path) as base:
        chat = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=30).chat.completions
        whole = chat.create(model="remote-refusing", messages=ask, response_format=ANSWER_FORMAT)  # type: ignore[arg-type]
        assert (whole.choices[0].message.content, whole.choices[0].message.refusal) == (None, REFUSAL)
        assert whole.model == "remote-refusing" and "refusal" in (whole.model_extra or {})["routing"]["flags"]

        chunks = [c for c in chat.create(model="remote-refusing", messages=ask, stream=True,
                                         response_format=ANSWER_FORMAT) if c.choices]  # type: ignore[arg-type]
        assert "".join(c.choices[0].delta.refusal or "" for c in chunks) == REFUSAL
        assert not "".join(c.choices[0].delta.content or "" for c in chunks)
        assert {c.model for c in chunks} == {"remote-refusing"} and chunks[-1].choices[0].finish_reason == "stop"

        parsed = chat.parse(model="remote-refusing", messages=ask, response_format=Answer)  # type: ignore[arg-type]
        message = parsed.choices[0].message
        assert (message.parsed, message.refusal, parsed.model) == (None, REFUSAL, "remote-refusing")
    ledger = open_ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    try:
        assert [(r.model, r.outcome) for r in ledger.records()] == [("remote-refusing", "ok")] * 3
    finally:
        ledger.close()


# -- a reasoning model's reasoning beside its answer --------------------------------------------------------
REASONING_FIELDS = ["reasoning_content", "reasoning"]


@pytest.mark.parametrize("path", ["complete", "acomplete", "stream"])
@pytest.mark.parametrize("field", REASONING_FIELDS)
def test_a_reasoning_models_reasoning_reaches_the_library_under_the_endpoints_name(upstream_url: str, tmp_path: Path,
                                                                                   field: str, path: str) -> None:
    """A reasoning model behind an OpenAI-compatible endpoint sends its reasoning beside ``content``
    (``reasoning_content`` as DeepSeek does, ``reasoning`` as OpenRouter and vLLM do). It was dropped; it now comes
    back under the same name (``message.model_extra``, ``delta.model_extra``), and the answer's token estimate
    (the endpoint reports no usage) counts it: the model generated it, which took energy."""
    card = _card(tmp_path, "remote-thinking", upstream_url, f"reasoning:{field}")
    ask = [{"role": "user", "content": "hello"}]
    with Router(RouterConfig.load(ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}"),
                cards={card.name: card}) as router:
        if path == "stream":  # the sync stream (httpx); acomplete's whole answer goes through the own pool
            chunks = [c for c in router.complete(ask, model=card.name, stream=True) if c.choices]
            extras = [c.choices[0].delta.model_extra or {} for c in chunks]
            reasoning = {name: "".join(e.get(name, "") for e in extras) for name in {n for e in extras for n in e}}
            content, usage = "".join(c.choices[0].delta.content or "" for c in chunks), chunks[-1].usage
        else:
            resp = (router.complete(ask, model=card.name) if path == "complete"
                    else asyncio.run(router.acomplete(ask, model=card.name)))
            message = resp.choices[0].message
            reasoning, content, usage = message.model_extra or {}, message.content or "", resp.usage
        (record,) = router.ledger.records()
    assert reasoning == {field: REASONING}
    assert content.strip() == "echo: hello"
    answer_tokens = estimated_tokens(utf8_size(content + REASONING))
    assert usage is not None and usage.completion_tokens == answer_tokens
    assert record.output_tokens == answer_tokens


@pytest.mark.parametrize("field", REASONING_FIELDS)
def test_a_collected_stream_keeps_the_reasoning_as_a_whole_answer_does(upstream_url: str, tmp_path: Path,
                                                                       field: str) -> None:
    """The interface's own ``generate`` (what a wrapping backend, such as the fault injector, inherits) collects
    the stream's reasoning pieces as the endpoint's whole answer has them, and counts them in the estimate."""
    inner = OpenAIHTTPBackend(_card(tmp_path, "remote-thinking", upstream_url, f"reasoning:{field}"))
    try:
        whole, collected = inner.generate(REQUEST), Backend.generate(inner, REQUEST)
    finally:
        inner.close()
    for gen in (whole, collected):
        assert gen.reasoning == {field: REASONING}
        assert gen.completion_tokens == estimated_tokens(utf8_size(gen.text + REASONING))


@pytest.mark.parametrize("field", REASONING_FIELDS)
def test_a_reasoning_models_reasoning_reaches_the_openai_sdk_through_the_proxy(upstream_url: str, tmp_path: Path,
                                                                              field: str) -> None:
    """``router serve`` passes the reasoning on under the endpoint's own field name, where the openai SDK keeps
    fields it has no attribute for (``model_extra``): whole, and streamed as deltas before the answer's text."""
    models = models_dir(tmp_path / "models", {"remote-thinking": remote_card(
        "remote-thinking", upstream_url, f"reasoning:{field}")}, specialist=False)
    config = _served_config(tmp_path, models)
    ask = [{"role": "user", "content": "hello"}]
    with router_serve(config, tmp_path) as base:
        chat = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=30).chat.completions
        whole = chat.create(model="remote-thinking", messages=ask)  # type: ignore[arg-type]
        message = whole.choices[0].message
        assert (message.content, message.model_extra) == ("echo: hello", {field: REASONING})
        assert whole.usage is not None
        assert whole.usage.completion_tokens == estimated_tokens(utf8_size("echo: hello" + REASONING))

        chunks = [c for c in chat.create(model="remote-thinking", messages=ask, stream=True) if c.choices]  # type: ignore[arg-type]
        extras = [c.choices[0].delta.model_extra or {} for c in chunks]
        assert {name for e in extras for name in e} == {field}
        assert "".join(e.get(field) or "" for e in extras) == REASONING
        first_text = next(i for i, c in enumerate(chunks) if c.choices[0].delta.content)
        assert all(field not in e for e in extras[first_text:]), "the reasoning comes before the answer's text"
        assert "".join(c.choices[0].delta.content or "" for c in chunks).strip() == "echo: hello"


# -- an endpoint that answers HTTP 200 with an error ---------------------------------------------------------
@pytest.mark.parametrize("path", PATHS)
def test_an_error_answered_with_http_200_is_the_endpoint_failing_quoted_in_the_detail(upstream_url: str,
                                                                                       tmp_path: Path,
                                                                                       path: str) -> None:
    """Gateways such as OpenRouter answer a provider's failure with HTTP 200 and ``{"error": {...}}``. That read as
    "a malformed completion"; it is now the endpoint failing, as a 500 from it is: retried, the same error type,
    and the endpoint's own message, code and type in the error's detail (logged; never in a client's message)."""
    stats = upstream_url.removesuffix("/v1") + "/stats"
    inner = OpenAIHTTPBackend(_card(tmp_path, "remote-gateway", upstream_url, "error200", max_retries=1))
    try:
        before = httpx.get(stats).json()["calls"].get("error200", 0)
        with pytest.raises(BackendError) as err:
            _call(inner, path)
    finally:
        inner.close()
    assert type(err.value) is BackendError
    assert err.value.message == ("remote-gateway: the model's endpoint answered with an error instead of a "
                                 "completion (HTTP 200)")
    upstream_said = ERROR_200["error"]
    for value in upstream_said.values():
        assert repr(str(value)) in (err.value.detail or "")
    assert str(upstream_said["message"]) not in err.value.message
    assert httpx.get(stats).json()["calls"]["error200"] - before == 2, "retried once, as after a 500"


@pytest.mark.parametrize("path", ["complete", "acomplete", "stream"])
def test_a_model_whose_gateway_answers_an_error_with_http_200_falls_back_to_the_next(upstream_url: str,
                                                                                    tmp_path: Path,
                                                                                    path: str) -> None:
    """The model pinned sits behind a gateway that answers errors with HTTP 200: the next model answers, as it
    would after a 5xx, and the failed attempt is recorded with what went wrong."""
    routing, records = _pinned_then_echo(tmp_path, upstream_url, "error200", path)
    assert routing is not None and routing.model == "remote-echo"
    assert [(a.model, a.outcome) for a in routing.attempts] == [("remote-pinned", "error"),
                                                                     ("remote-echo", "ok")]
    assert "answered with an error instead of a completion" in (records[0].error or "")


def test_an_error_answered_with_http_200_reaches_the_openai_sdk_as_a_502_without_the_endpoints_words(
        upstream_url: str, tmp_path: Path) -> None:
    """Through ``router serve``, with no other model to try: the client gets the backend's 502, which says the
    endpoint answered with an error (it said "a malformed completion"), whole and streamed; the endpoint's own
    words stay in the server's log, as every upstream error body does."""
    models = models_dir(tmp_path / "models", {"remote-gateway": remote_card(
        "remote-gateway", upstream_url, "error200", max_retries=0)}, specialist=False)
    config = _served_config(tmp_path, models)
    ask = [{"role": "user", "content": "hello"}]
    with router_serve(config, tmp_path) as base:
        chat = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=30).chat.completions
        for stream in (False, True):
            with pytest.raises(openai.APIStatusError) as err:
                chat.create(model="remote-gateway", messages=ask, stream=stream)  # type: ignore[call-overload]
            assert err.value.status_code == 502, stream
            assert "answered with an error instead of a completion" in err.value.message, stream
            assert str(ERROR_200["error"]["message"]) not in err.value.message, stream


@pytest.mark.parametrize("path", ["complete", "acomplete", "stream", "astream"])
def test_an_answer_carrying_error_null_is_an_answer(upstream_url: str, tmp_path: Path, path: str) -> None:
    """An endpoint that sends ``"error": null`` beside its completion and in every chunk of its stream (as some
    gateways do) answers: the pinned model's echo comes back, whole and streamed, with no fallback (a stream once
    read the null as an error event and fell back to the next model after retrying)."""
    cards = {card.name: card for card in (
        _card(tmp_path, "remote-pinned", upstream_url, "errornull", tier="small", max_retries=1),
        _card(tmp_path, "remote-echo", upstream_url, "echo", tier="large"))}
    ask = [{"role": "user", "content": "hello"}]

    async def astreamed(router: Router) -> list[ChatCompletionChunk]:
        return [c async for c in await router.acomplete(ask, model="remote-pinned", stream=True)]

    with Router(RouterConfig.load(ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}"), cards=cards) as router:
        if path in ("stream", "astream"):
            chunks = (list(router.complete(ask, model="remote-pinned", stream=True)) if path == "stream"
                      else asyncio.run(astreamed(router)))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            routing = chunks[-1].routing
        else:
            answer = (router.complete(ask, model="remote-pinned") if path == "complete"
                      else asyncio.run(router.acomplete(ask, model="remote-pinned")))
            text, routing = answer.choices[0].message.content or "", answer.routing
        assert text.strip() == "echo: hello", text
        assert routing is not None and [(a.model, a.outcome) for a in routing.attempts] == [("remote-pinned", "ok")]
        assert [(r.model, r.outcome) for r in router.ledger.records()] == [("remote-pinned", "ok")]


# -- an endpoint that reports an error inside its stream ------------------------------------------------------
def _stream_events(backend: Backend, path: str, got: list[StreamEvent]) -> None:
    """Streams REQUEST, sync or async, into ``got`` as the events come (so what came before an error is kept)."""
    if path == "stream":
        got.extend(backend.stream(REQUEST))
        return

    async def collect() -> None:
        async for event in backend.astream(REQUEST):
            got.append(event)
    asyncio.run(collect())


def _failed_stream(tmp_path: Path, upstream_url: str, model: str,
                   path: str) -> tuple[BackendError, list[StreamEvent], int]:
    """Stream the test upstream's ``model`` through a backend that retries once, expecting it to fail: the error,
    the events passed on before it, and how many calls the upstream saw."""
    stats = upstream_url.removesuffix("/v1") + "/stats"
    inner = OpenAIHTTPBackend(_card(tmp_path, "remote-gateway", upstream_url, model, max_retries=1))
    got: list[StreamEvent] = []
    try:
        before = httpx.get(stats).json()["calls"].get(model, 0)
        with pytest.raises(BackendError) as err:
            _stream_events(inner, path, got)
    finally:
        inner.close()
    return err.value, got, httpx.get(stats).json()["calls"][model] - before


@pytest.mark.parametrize("path", ["stream", "astream"])
def test_an_error_event_before_any_output_is_the_endpoint_failing_and_after_output_an_error_mid_stream(
        upstream_url: str, tmp_path: Path, path: str) -> None:
    """OpenRouter, vLLM and LiteLLM report a failure inside a stream they answered with HTTP 200. As its first event,
    nothing of an answer has been passed on: the endpoint failing, as a 5xx before the stream is, so retried (it
    said "an error mid-stream" and sent nothing again). After output, it stays an error mid-stream, not retried
    (the caller holds part of the answer). The endpoint's words go to ``detail`` only."""
    for model, calls, message in (
            ("streamerror", 2, "the model's endpoint answered with an error instead of a completion (HTTP 200)"),
            ("streamerror:later", 1, "the model's endpoint reported an error mid-stream")):
        error, got, sent = _failed_stream(tmp_path, upstream_url, model, path)
        assert type(error) is BackendError, model
        assert error.message == f"remote-gateway: {message}"
        assert "".join(e.text for e in got) == ("echo: " if model == "streamerror:later" else ""), model
        assert sent == calls, model
        assert str(ERROR_200["error"]["message"]) in (error.detail or ""), model
        assert str(ERROR_200["error"]["message"]) not in error.message, model


@pytest.mark.parametrize("path", ["stream", "astream"])
def test_a_stream_whose_first_event_is_an_error_falls_back_and_a_later_one_ends_the_partial_answer(
        upstream_url: str, tmp_path: Path, path: str) -> None:
    """Through ``Router.complete(stream=True)`` and ``acomplete(stream=True)``: an error as the stream's first event
    is retried as the backend retries a 5xx, then the next model answers the whole answer, and the ledger records
    both models; one after output ends the stream the caller is reading, with what was sent kept."""
    stats = upstream_url.removesuffix("/v1") + "/stats"
    ask = [{"role": "user", "content": "hello"}]

    def streamed(router: Router, got: list[ChatCompletionChunk]) -> None:
        if path == "stream":
            got.extend(router.complete(ask, model="remote-gateway", stream=True))
            return

        async def collect() -> None:
            async for chunk in await router.acomplete(ask, model="remote-gateway", stream=True):
                got.append(chunk)
        asyncio.run(collect())

    for model in ("streamerror", "streamerror:later"):
        folder = tmp_path / model.replace(":", "-")
        folder.mkdir()
        cards = {card.name: card for card in (
            _card(folder, "remote-gateway", upstream_url, model, tier="small", max_retries=1),
            _card(folder, "remote-echo", upstream_url, "echo", tier="large"))}
        got: list[ChatCompletionChunk] = []
        before = httpx.get(stats).json()["calls"]
        with Router(RouterConfig.load(ledger_url=f"sqlite:///{folder / 'ledger.sqlite3'}"), cards=cards) as router:
            if model == "streamerror":
                streamed(router, got)
            else:
                with pytest.raises(BackendError, match="reported an error mid-stream") as err:
                    streamed(router, got)
                assert str(ERROR_200["error"]["message"]) not in err.value.message
            records = router.ledger.records()
        calls = {name: count - before.get(name, 0) for name, count in httpx.get(stats).json()["calls"].items()
                 if count != before.get(name, 0)}
        text = "".join(c.choices[0].delta.content or "" for c in got if c.choices)
        if model == "streamerror":
            assert text.strip() == "echo: hello"
            routing = got[-1].routing
            assert routing is not None and routing.model == "remote-echo"
            assert [(a.model, a.outcome) for a in routing.attempts] == [("remote-gateway", "error"),
                                                                         ("remote-echo", "ok")]
            assert [(r.model, r.outcome) for r in records] == [("remote-gateway", "error"), ("remote-echo", "ok")]
            assert "answered with an error instead of a completion" in (records[0].error or "")
            assert calls == {"streamerror": 2, "echo": 1}, "retried once, as after a 500, then the next model"
        else:
            assert text == "echo: "
            assert [(r.model, r.outcome) for r in records] == [("remote-gateway", "error")]
            assert "reported an error mid-stream" in (records[0].error or "")
            assert calls == {"streamerror:later": 1}, "nothing sent again, no other model asked"


@pytest.mark.parametrize("path", ["stream", "astream"])
@pytest.mark.parametrize("model", ["emptystream", "emptystream:comments"])
def test_a_stream_the_endpoint_ends_before_any_event_is_retried_then_falls_back(upstream_url: str, tmp_path: Path,
                                                                               path: str, model: str) -> None:
    """An endpoint answers a stream with HTTP 200 and closes it before any event (an empty body, or only SSE
    comments): nothing of an answer was passed on, so it is the endpoint failing as a 5xx before the stream is,
    retried by the backend and then answered by the next model through ``Router.complete(stream=True)`` /
    ``acomplete(stream=True)``, with both attempts in the ledger. It was a plain BackendError, sent once and
    failing the request."""
    error, got, sent = _failed_stream(tmp_path, upstream_url, model, path)
    assert error.message == "remote-gateway: the model's endpoint ended the stream before sending any of an answer"
    assert got == [] and sent == 2, "retried once, as after a 500"

    cards = {card.name: card for card in (
        _card(tmp_path, "remote-gateway", upstream_url, model, tier="small", max_retries=1),
        _card(tmp_path, "remote-echo", upstream_url, "echo", tier="large"))}
    ask = [{"role": "user", "content": "hello"}]

    async def astreamed(router: Router) -> list[ChatCompletionChunk]:
        return [c async for c in await router.acomplete(ask, model="remote-gateway", stream=True)]

    with Router(RouterConfig.load(ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}"), cards=cards) as router:
        chunks = (list(router.complete(ask, model="remote-gateway", stream=True)) if path == "stream"
                  else asyncio.run(astreamed(router)))
        records = router.ledger.records()
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip() == "echo: hello"
    routing = chunks[-1].routing
    assert routing is not None and [(a.model, a.outcome) for a in routing.attempts] == [
        ("remote-gateway", "error"), ("remote-echo", "ok")]
    assert [(r.model, r.outcome) for r in records] == [("remote-gateway", "error"), ("remote-echo", "ok")]
    assert "ended the stream before sending any of an answer" in (records[0].error or "")


def test_a_stream_error_event_reaches_the_openai_sdk_as_a_fallback_before_output_and_an_error_after(
        upstream_url: str, tmp_path: Path) -> None:
    """Through ``router serve`` with the openai SDK streaming: an error as the upstream stream's first event is
    retried, then the next model answers, whole, and the ledger has both attempts; one after output leaves the
    client the part it got and an error, without the endpoint's words."""
    stats = upstream_url.removesuffix("/v1") + "/stats"
    ask = [{"role": "user", "content": "hello"}]
    for model in ("streamerror", "streamerror:later"):
        folder = tmp_path / model.replace(":", "-")
        models = models_dir(folder / "models", {
            "remote-gateway": remote_card("remote-gateway", upstream_url, model, tier="small", max_retries=1),
            "remote-echo": remote_card("remote-echo", upstream_url, "echo", tier="large")}, specialist=False)
        config = folder / "router.yaml"
        ledger_url = f"sqlite:///{folder / 'ledger.sqlite3'}"
        config.write_text(f"models_dir: {models}\nproxy: {{warm_up: false}}\nledger_url: {ledger_url}\n")
        before = httpx.get(stats).json()["calls"]
        got: list[openai.types.chat.ChatCompletionChunk] = []
        with router_serve(config, folder) as base:
            chat = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=30).chat.completions
            if model == "streamerror":
                got.extend(chat.create(model="remote-gateway", messages=ask, stream=True))  # type: ignore[arg-type]
            else:
                with pytest.raises(openai.APIError) as err:
                    got.extend(chat.create(model="remote-gateway", messages=ask,  # type: ignore[arg-type]
                                           stream=True))
                assert "reported an error mid-stream" in err.value.message
                assert str(ERROR_200["error"]["message"]) not in err.value.message
            wanted = 2 if model == "streamerror" else 1
            records = [wait_for_record(ledger_url, got[0].id, timeout=10, poll=0.05)]
            deadline = time.monotonic() + 10
            while len(records) < wanted and time.monotonic() < deadline:  # written after the answer went out
                ledger = open_ledger(ledger_url)
                try:
                    records = [r for r in ledger.records() if r.request_id == got[0].id]
                finally:
                    ledger.close()
        calls = {name: count - before.get(name, 0) for name, count in httpx.get(stats).json()["calls"].items()
                 if count != before.get(name, 0)}
        text = "".join(c.choices[0].delta.content or "" for c in got if c.choices)
        if model == "streamerror":
            assert text.strip() == "echo: hello"
            assert [(r.model, r.outcome) for r in records] == [("remote-gateway", "error"), ("remote-echo", "ok")]
            assert "answered with an error instead of a completion" in (records[0].error or "")
            assert calls == {"streamerror": 2, "echo": 1}, "retried once, as after a 500, then the next model"
        else:
            assert text == "echo: "
            assert [(r.model, r.outcome) for r in records] == [("remote-gateway", "error")]
            assert calls == {"streamerror:later": 1}
