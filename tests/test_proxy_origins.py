"""A web page open in the user's browser must not be able to use a ``router serve`` on this machine: no cross-site
request (a "simple" POST with ``Content-Type: text/plain`` needs no CORS preflight) and no DNS rebinding (a hostile
name resolved to 127.0.0.1), while clients that are no browser (the ``openai`` SDK, curl: no ``Origin``), the
dashboard's own requests (same-origin) and the origins of ``proxy.cors_origins`` go on working.
A real ``router serve`` (no keys: the default for a local run) over the instant TEST UPSTREAM; how often a request
is checked, in process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from servers.procs import models_dir, policies_dir, remote_card, router_serve, upstream
from starlette.testclient import TestClient
from test_structured_output import build

from router.proxy.app import create_app

CHAT = {"model": "remote-echo", "messages": [{"role": "user", "content": "hi"}]}
PLAIN = {"content-type": "text/plain"}  # what a page's form or fetch() sends without a preflight


def _config(tmp: Path, up: str, cors: bool = True) -> Path:
    models = models_dir(tmp / "models", {"remote-echo": remote_card("remote-echo", up, "echo", tier="small")},
                        specialist=False)
    config = tmp / "config.yaml"
    cors_origins = "cors_origins: [https://app.example], " if cors else ""
    config.write_text(f"models_dir: {models}\npolicies_dir: {policies_dir(tmp / 'policies')}\n"
                      f"ledger_url: sqlite:///{tmp / 'ledger.sqlite3'}\n"
                      f"proxy: {{{cors_origins}allowed_hosts: [router.example]}}\n")
    return config


@pytest.fixture(scope="module")
def upstream_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with upstream(tmp_path_factory.mktemp("upstream")) as url:
        yield url


@pytest.fixture(scope="module")
def servers(upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Two servers (--host 127.0.0.1, the default): with ``cors_origins``, where every request passes Starlette's
    CORS middleware first, and without, the default, where the app checks each route's requests itself."""
    cors_tmp, plain_tmp = tmp_path_factory.mktemp("origins_cors"), tmp_path_factory.mktemp("origins_plain")
    with router_serve(_config(cors_tmp, upstream_url), cors_tmp) as cors, \
            router_serve(_config(plain_tmp, upstream_url, cors=False), plain_tmp) as plain:
        yield {"cors": cors, "plain": plain}


@pytest.fixture(params=["cors", "plain"])
def url(servers: dict[str, str], request: pytest.FixtureRequest) -> str:
    """What holds for either server."""
    return servers[request.param]


def _refused(r: httpx.Response, code: str) -> str:
    assert r.status_code == 403, r.text
    error = r.json()["error"]
    assert error["type"] == "permission_error" and error["code"] == code, error
    return str(error["message"])


def test_a_cross_site_request_is_refused_on_every_route(url: str) -> None:
    evil = {"origin": "https://evil.example"}
    r = httpx.post(f"{url}/v1/chat/completions", content=json.dumps(CHAT),
                   headers={**PLAIN, **evil, "x-request-id": "page-1"})
    assert "proxy.cors_origins" in _refused(r, "origin_not_allowed")
    assert r.headers["x-request-id"] == "page-1"  # as every other refusal of the chat route
    _refused(httpx.post(f"{url}/v1/feedback", content='{"id": "chatcmpl-1", "score": 1}', headers={**PLAIN, **evil}),
             "origin_not_allowed")
    _refused(httpx.post(f"{url}/v1/files", files={"file": ("b.jsonl", b"{}\n")}, data={"purpose": "batch"},
                        headers=evil), "origin_not_allowed")
    _refused(httpx.get(f"{url}/dashboard", headers=evil), "origin_not_allowed")
    _refused(httpx.post(f"{url}/v1/chat/completions", json=CHAT, headers={"origin": "null"}), "origin_not_allowed")


def test_same_origin_requests_are_answered_and_another_port_is_another_origin(url: str) -> None:
    """The dashboard's own requests carry the origin the proxy is called by; another local server's page (another
    port on the same host) is another site."""
    port = int(url.rsplit(":", 1)[1])
    own = {"origin": url}
    assert httpx.post(f"{url}/v1/chat/completions", json=CHAT, headers=own).status_code == 200
    assert httpx.get(f"{url}/dashboard/api/totals", headers=own).status_code == 200
    assert httpx.get(f"{url}/dashboard", headers=own).status_code == 200
    local = f"http://localhost:{port}"
    r = httpx.post(f"{local}/v1/chat/completions", json=CHAT, headers={"origin": local})
    assert r.status_code == 200, r.text
    _refused(httpx.post(f"{url}/v1/chat/completions", json=CHAT, headers={"origin": f"http://127.0.0.1:{port + 1}"}),
             "origin_not_allowed")


def test_clients_without_origin_work_and_the_same_request_from_a_page_does_not(url: str) -> None:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    answer = client.chat.completions.create(model="remote-echo", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content
    assert client.models.retrieve("router").id == "router"
    assert httpx.get(f"{url}/health").status_code == 200  # a probe, a Prometheus scrape: no Origin
    assert httpx.get(f"{url}/metrics").status_code == 200
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="remote-echo", messages=[{"role": "user", "content": "hi"}],
                                       extra_headers={"origin": "https://evil.example"})


def test_an_origin_in_cors_origins_is_answered_and_no_other(servers: dict[str, str]) -> None:
    url = servers["cors"]
    r = httpx.post(f"{url}/v1/chat/completions", json=CHAT, headers={"origin": "https://app.example"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
    for other in ("http://app.example", "https://app.example.evil.example", "https://app.example:8443"):
        _refused(httpx.post(f"{url}/v1/chat/completions", json=CHAT, headers={"origin": other}), "origin_not_allowed")
    preflight = {"access-control-request-method": "POST", "access-control-request-headers": "content-type"}
    r = httpx.options(f"{url}/v1/chat/completions", headers={**preflight, "origin": "https://app.example"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
    # a preflight of another origin is the same 403 as its request (Starlette's CORS answered a plain-text 400)
    _refused(httpx.options(f"{url}/v1/chat/completions", headers={**preflight, "origin": "https://evil.example"}),
             "origin_not_allowed")


def test_dns_rebinding_is_refused_on_a_loopback_address(url: str) -> None:
    """A hostile name resolved to 127.0.0.1: the browser sends no cross-site Origin (same-origin to it), but the
    request's Host is that name."""
    port = url.rsplit(":", 1)[1]
    rebound = {"host": f"evil.example:{port}"}
    for r in (httpx.get(f"{url}/dashboard", headers=rebound), httpx.get(f"{url}/v1/models", headers=rebound),
              httpx.post(f"{url}/v1/chat/completions", json=CHAT, headers=rebound),
              httpx.post(f"{url}/v1/chat/completions", json=CHAT,
                         headers={**rebound, "origin": f"http://evil.example:{port}"})):
        assert "DNS rebinding" in _refused(r, "host_not_allowed")
    _refused(httpx.get(f"{url}/v1/models", headers={"host": "192.168.1.20"}), "host_not_allowed")
    refused = _refused(httpx.get(f"{url}/v1/models", headers={"host": "app.example"}), "host_not_allowed")
    assert "add 'app.example' to proxy.allowed_hosts" in refused, "a CORS origin is no Host name to answer to"
    for loopback in (f"localhost:{port}", "localhost", "127.0.0.1:1", "[::1]:8000", "router.example:443"):
        assert httpx.get(f"{url}/v1/models", headers={"host": loopback}).status_code == 200, loopback


def test_host_is_not_checked_on_an_exposed_address_but_origin_is(upstream_url: str, tmp_path: Path) -> None:
    """Listening on every interface the operator has exposed the proxy: any name may reach it. A page of another
    site still may not use it."""
    with router_serve(_config(tmp_path, upstream_url), tmp_path, "--host", "0.0.0.0") as served:  # noqa: S104
        port = served.rsplit(":", 1)[1]
        r = httpx.post(f"{served}/v1/chat/completions", json=CHAT, headers={"host": f"router.lan:{port}"})
        assert r.status_code == 200, r.text
        _refused(httpx.post(f"{served}/v1/chat/completions", content=json.dumps(CHAT),
                            headers={**PLAIN, "origin": "https://evil.example"}), "origin_not_allowed")


def test_with_cors_origins_a_request_is_checked_once(tmp_path: Path) -> None:
    """With ``cors_origins`` set, every route's requests pass the CORS middleware: the check before it is the only
    one, on chat and the other routes, answered or refused (a counting spy around the app's own guard)."""
    router = build(tmp_path, {"text": "hello"}, {"text": "hello"})
    proxy = router.config.proxy.model_copy(update={"cors_origins": ["https://app.example"]})
    app = create_app(router=router, config=router.config.model_copy(update={"proxy": proxy}))
    assert app.guard is not None
    checked: list[bytes | None] = []
    check = app.guard.check

    def counting_check(origin: bytes | None, host: bytes | None) -> None:
        checked.append(origin)
        check(origin, host)

    app.guard.check = counting_check  # type: ignore[method-assign]
    chat = {"model": "router", "messages": [{"role": "user", "content": "hi"}]}
    preflight = {"access-control-request-method": "POST"}
    with TestClient(app) as client:
        for method, path, origin, status, headers in (
                ("POST", "/v1/chat/completions", "https://app.example", 200, {}),
                ("POST", "/v1/chat/completions", "https://evil.example", 403, {}),
                ("GET", "/v1/models", "https://app.example", 200, {}),
                ("GET", "/v1/models", "https://evil.example", 403, {}),
                ("OPTIONS", "/v1/chat/completions", "https://app.example", 200, preflight),
                ("OPTIONS", "/v1/chat/completions", "https://evil.example", 403, preflight)):
            checked.clear()
            r = client.request(method, path, json=chat if method == "POST" else None,
                               headers={"origin": origin, **headers})
            assert r.status_code == status, (method, path, origin, r.text)
            assert checked == [origin.encode()], (method, path, origin)
