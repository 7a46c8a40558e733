"""``POST /v1/feedback`` on a real ``router serve``, with the official ``openai`` client (its generic ``post``, and its
exceptions for OpenAI's error shapes) and raw httpx: stored beside the ledger record, the right 4xx for bad input,
unknown ids and other keys' responses, an admin key. Models: the shipped sentiment specialist and a card on the
instant TEST UPSTREAM, so this takes seconds."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from servers.procs import ROOT, models_dir, only_policy, policies_dir, remote_card, router_serve, upstream

from router.ledger import open_ledger

REVIEW = "Is this review positive or negative? 'a gorgeous, witty film with a heart of gold'"
KEYS = {"sk-team-a": "team-a", "sk-team-b": "team-b", "sk-ops": "ops"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    tmp = tmp_path_factory.mktemp("feedback-proxy")
    with upstream(tmp) as up:
        models = models_dir(tmp / "models", {"remote-echo": remote_card("remote-echo", up, "echo", tier="small"),
                                             "remote-broken": remote_card("remote-broken", up, "broken",
                                                                          max_retries=0)})
        keys = "".join(f"  - {{name: {n}, sha256: {hashlib.sha256(k.encode()).hexdigest()}"
                       f"{', admin: true' if n == 'ops' else ''}}}\n" for k, n in KEYS.items())
        ledger_url = f"sqlite:///{tmp / 'ledger.sqlite3'}"
        config = tmp / "router.yaml"
        policies = policies_dir(tmp / "policies", {"onlybroken": only_policy("remote-broken")})
        config.write_text(f"models_dir: {models}\npolicies_dir: {policies}\nledger_url: {ledger_url}\n"
                          "proxy: {warm_up: false}\n"
                          f"keys:\n{keys}")
        with router_serve(config, tmp, env={"PYTHONPATH": str(ROOT)}) as url:
            yield url, ledger_url


def _client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=20)


def _feedback(client: openai.OpenAI, body: dict[str, Any]) -> dict[str, Any]:
    return client.post("/feedback", cast_to=object, body=body)  # type: ignore[return-value]


def test_feedback_through_the_openai_client_is_stored_beside_the_record(served: tuple[str, str]) -> None:
    url, ledger_url = served
    client = _client(url, "sk-team-a")
    resp = client.chat.completions.create(model="router", messages=[{"role": "user", "content": REVIEW}])
    got = _feedback(client, {"id": resp.id, "score": 0.8, "comment": "right label"})
    assert got["object"] == "feedback" and got["response_id"] == resp.id and got["score"] == 0.8
    assert got["source"] == "user" and got["id"].startswith("fb-")
    led = open_ledger(ledger_url)
    try:
        stored = led.feedback(resp.id)
        assert [(f.score, f.comment, f.key_hash) for f in stored] == [(0.8, "right label",
                                                                       "key-" + hashlib.sha256(b"sk-team-a")
                                                                       .hexdigest()[:16])]
        assert led.request_record(resp.id).model == "sentiment-onnx"  # type: ignore[union-attr]
        assert led.prompts() == [], "prompts are not stored unless the config opts in"
    finally:
        led.close()


def test_only_the_requesting_key_or_an_admin_key_may_score(served: tuple[str, str]) -> None:
    url, _ = served
    resp = _client(url, "sk-team-a").chat.completions.create(
        model="remote-echo", messages=[{"role": "user", "content": "hello"}])
    with pytest.raises(openai.PermissionDeniedError) as info:
        _feedback(_client(url, "sk-team-b"), {"id": resp.id, "score": 0.1})
    assert info.value.status_code == 403 and info.value.code == "permission_denied"
    with pytest.raises(openai.AuthenticationError):
        _feedback(_client(url, "sk-nobody"), {"id": resp.id, "score": 0.1})
    assert _feedback(_client(url, "sk-ops"), {"id": resp.id, "score": 0.3})["score"] == 0.3


def test_another_key_cannot_take_over_a_chosen_response_id(served: tuple[str, str]) -> None:
    url, ledger_url = served
    first = _client(url, "sk-team-a").chat.completions.create(
        model="remote-echo", messages=[{"role": "user", "content": "hello"}], extra_headers={"x-request-id": "t-42"})
    assert first.id == "t-42"
    with pytest.raises(openai.PermissionDeniedError) as info:
        _client(url, "sk-team-b").chat.completions.create(
            model="remote-echo", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-request-id": "t-42"})
    assert info.value.status_code == 403 and info.value.body["param"] == "request_id"  # type: ignore[index]
    with pytest.raises(openai.PermissionDeniedError):
        _feedback(_client(url, "sk-team-b"), {"id": "t-42", "score": 0.0})
    again = _client(url, "sk-team-a").chat.completions.with_raw_response.create(
        model="remote-echo", messages=[{"role": "user", "content": "hello"}], extra_headers={"x-request-id": "t-42"})
    assert again.headers["x-request-id"] == "t-42" and again.parse().id == "t-42"
    plain = _client(url, "sk-team-b").chat.completions.with_raw_response.create(
        model="remote-echo", messages=[{"role": "user", "content": "hi"}])
    assert plain.headers["x-request-id"] == plain.parse().id != "t-42"


@pytest.mark.parametrize(("body", "param"), [
    ({"id": "PLACEHOLDER", "score": 1.2}, "score"), ({"id": "PLACEHOLDER", "score": "high"}, "score"),
    ({"id": "PLACEHOLDER", "score": 10**400}, "score"),  # JSON's integers have no bound; a float's range does
    ({"id": "PLACEHOLDER"}, "score"), ({"score": 0.5}, "id"), ({"id": 7, "score": 0.5}, "id"),
    ({"id": "PLACEHOLDER", "score": 0.5, "rating": 5}, "rating"),
    ({"id": "PLACEHOLDER", "score": 0.5, "comment": ["a"]}, "comment"),
])  # fmt: skip
def test_bad_input_is_a_400_naming_the_field(served: tuple[str, str], body: dict[str, Any], param: str) -> None:
    url, _ = served
    client = _client(url, "sk-team-a")
    resp = client.chat.completions.create(model="remote-echo", messages=[{"role": "user", "content": "hi"}])
    body = {k: (resp.id if v == "PLACEHOLDER" else v) for k, v in body.items()}
    with pytest.raises(openai.BadRequestError) as info:
        _feedback(client, body)
    assert info.value.status_code == 400 and info.value.param == param


def test_a_score_beyond_a_floats_range_says_what_it_read(served: tuple[str, str]) -> None:
    """``1e400`` is valid JSON that reads as inf: "must be a finite number, got a number" left the caller staring
    at a number; the 400 says it read inf, and why."""
    url, _ = served
    client = _client(url, "sk-team-a")
    resp = client.chat.completions.create(model="remote-echo", messages=[{"role": "user", "content": "hi"}])
    auth = {"authorization": "Bearer sk-team-a", "content-type": "application/json"}
    for literal, said in ((b"1e400", "got inf (a number too large for a float, such as 1e400, reads as inf)"),
                          (b"-1e400", "got -inf"), (b"NaN", "got NaN")):
        r = httpx.post(f"{url}/v1/feedback", headers=auth,
                       content=b'{"id": "%s", "score": %s}' % (resp.id.encode(), literal))
        error = r.json()["error"]
        assert r.status_code == 400 and error["param"] == "score", r.text
        assert said in error["message"], r.text
        assert "got a number" not in error["message"]


def test_a_request_that_failed_has_no_answer_to_score(served: tuple[str, str]) -> None:
    """The caller got an error, not an answer: a score for it was taken (200) and then silently left out of
    ``router data from-ledger``'s export. It is a 404 naming the failure, as for a refused request; another key
    is told only that the response is not its own."""
    url, ledger_url = served
    with pytest.raises(openai.APIStatusError) as failed:
        _client(url, "sk-team-a").chat.completions.create(  # the policy leaves no model to fall back to
            model="remote-broken", messages=[{"role": "user", "content": "hi"}], extra_body={"policy": "onlybroken"})
    rid = failed.value.response.headers["x-request-id"]
    with pytest.raises(openai.PermissionDeniedError):
        _feedback(_client(url, "sk-team-b"), {"id": rid, "score": 0.0})
    for key in ("sk-team-a", "sk-ops"):
        with pytest.raises(openai.NotFoundError) as info:
            _feedback(_client(url, key), {"id": rid, "score": 0.0})
        assert info.value.param == "id" and "that request failed" in info.value.message
        assert "got no answer to score" in info.value.message
    led = open_ledger(ledger_url)
    try:
        assert led.request_record(rid).outcome == "error"  # type: ignore[union-attr]
        assert led.feedback(rid) == []
    finally:
        led.close()


def test_unknown_id_is_a_404_and_raw_errors_have_openais_shape(served: tuple[str, str]) -> None:
    url, _ = served
    with pytest.raises(openai.NotFoundError) as info:
        _feedback(_client(url, "sk-team-a"), {"id": "chatcmpl-never-issued", "score": 0.5})
    assert info.value.code == "not_found" and info.value.param == "id"
    auth = {"authorization": "Bearer sk-team-a"}
    for content in (b"not json", b"[1, 2]", b"", b"[" * 5000 + b"]" * 5000):
        r = httpx.post(f"{url}/v1/feedback", content=content, headers=auth)
        assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}, r.text
    r = httpx.post(f"{url}/v1/feedback", content=b"", headers=auth)
    assert r.json()["error"]["message"].startswith("the request body is empty")  # as the chat route says it
    r = httpx.post(f"{url}/v1/feedback", content=b'{"id": ' + b"[" * 5000 + b"]" * 5000 + b"}", headers=auth)
    assert "nests arrays and objects too deeply" in r.json()["error"]["message"]
    r = httpx.post(f"{url}/v1/feedback", json={"id": "x", "score": 0.5})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = httpx.get(f"{url}/v1/feedback", headers=auth)
    assert r.status_code == 405


def test_a_chunked_body_over_the_limit_is_refused_before_it_ends(served: tuple[str, str]) -> None:
    """A chunked body declares no length: the 413 comes once 64 KiB have arrived, while the client is still
    sending, rather than after the whole body (which the server held in memory, however large) has ended."""
    url, _ = served
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(b"POST /v1/feedback HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer sk-team-a\r\n"
                     b"content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
        part = b'{"id": "x", "comment": "' + b"a" * (256 * 1024)
        sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))  # no last chunk: the body has not ended
        answer = sock.recv(4096)  # without the early refusal nothing comes before the 30 s body timeout
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b'"code": "request_too_large"' in answer


def _errors_counted(url: str) -> dict[tuple[str, str], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", headers={"authorization": "Bearer sk-ops"}).text
    return {(s.labels["type"], s.labels["status"]): s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "router_errors_total"}


def test_feedback_errors_count_in_router_errors_total(served: tuple[str, str]) -> None:
    """The route's own refusals (a bad body, an unknown id, no key) are errors like any route's: an operator's
    error rate must see a client scoring wrongly."""
    url, _ = served
    before = _errors_counted(url)
    assert httpx.post(f"{url}/v1/feedback", content=b"{not json",
                      headers={"authorization": "Bearer sk-team-a"}).status_code == 400
    assert httpx.post(f"{url}/v1/feedback", json={"id": "chatcmpl-nowhere", "score": 0.5},
                      headers={"authorization": "Bearer sk-team-a"}).status_code == 404
    assert httpx.post(f"{url}/v1/feedback", json={"id": "chatcmpl-nowhere", "score": 0.5}).status_code == 401
    after = _errors_counted(url)
    for counted in (("invalid_request", "400"), ("not_found", "404"), ("invalid_api_key", "401")):
        assert after.get(counted, 0.0) - before.get(counted, 0.0) == 1.0, (counted, before, after)
