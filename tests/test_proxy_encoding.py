"""Request bodies with a ``Content-Encoding`` on a real ``router serve`` (over the instant TEST UPSTREAM): gzip and
deflate are inflated on every route that takes a body, under the same size limit as a plain body, counted inflated
(a zip bomb is a 413 long before it has all arrived); any other coding is a 415 that says what is accepted."""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import zlib
from collections.abc import Callable, Iterator

import httpx
import pytest
from servers.procs import ROOT, models_dir, remote_card, router_serve, upstream

CHAT = {"model": "remote-echo", "messages": [{"role": "user", "content": "say something"}]}
LINE = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": CHAT}


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("encoding")
    with upstream(tmp) as up:
        models = models_dir(tmp / "models", {"remote-echo": remote_card("remote-echo", up, "echo", tier="small")},
                            specialist=False)
        config = tmp / "router.yaml"
        config.write_text(f"models_dir: {models}\nledger_url: sqlite:///{tmp / 'ledger.sqlite3'}\n"
                          "proxy: {warm_up: false, body_timeout_s: 5}\n")
        with router_serve(config, tmp, env={"PYTHONPATH": str(ROOT)}) as served:
            yield served


def _compress(data: bytes, coding: str) -> bytes:
    return gzip.compress(data) if coding == "gzip" else zlib.compress(data)


def _post(url: str, path: str, body: bytes, **headers: str) -> httpx.Response:
    sent = {"content-type": "application/json"} | {name.replace("_", "-"): value for name, value in headers.items()}
    return httpx.post(f"{url}{path}", content=body, headers=sent, timeout=30)


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_a_compressed_body_is_inflated_on_every_route(url: str, coding: str) -> None:
    chat = _post(url, "/v1/chat/completions", _compress(json.dumps(CHAT).encode(), coding), content_encoding=coding)
    assert chat.status_code == 200, chat.text
    assert chat.json()["choices"][0]["message"]["content"]

    feedback = _post(url, "/v1/feedback", _compress(json.dumps({"id": chat.json()["id"], "score": 0.8}).encode(),
                                                    coding), content_encoding=coding)
    assert feedback.status_code == 200, feedback.text
    assert feedback.json()["response_id"] == chat.json()["id"]

    form = httpx.Request("POST", f"{url}/v1/files", data={"purpose": "batch"},
                         files={"file": ("in.jsonl", json.dumps(LINE).encode() + b"\n")})
    upload = _post(url, "/v1/files", _compress(form.read(), coding), content_encoding=coding,
                   content_type=form.headers["content-type"])
    assert upload.status_code == 200, upload.text
    assert upload.json()["filename"] == "in.jsonl"

    # read as JSON, the body names a file that does not exist: a 404, where an unread gzip body was a 400
    batch = _post(url, "/v1/batches", _compress(json.dumps({"input_file_id": "file-none", "endpoint":
                                                            "/v1/chat/completions", "completion_window": "24h"})
                                                .encode(), coding), content_encoding=coding)
    assert batch.status_code == 404, batch.text


def _raw_deflate(data: bytes) -> bytes:
    """``deflate`` as some clients send it: the deflate stream without zlib's header and checksum."""
    packer = zlib.compressobj(6, zlib.DEFLATED, -15)
    return packer.compress(data) + packer.flush()


def _gzip_members(data: bytes) -> bytes:
    """One gzip body of three members one after another (what ``cat a.gz b.gz c.gz`` makes)."""
    third = len(data) // 3
    return b"".join(gzip.compress(piece) for piece in (data[:third], data[third:2 * third], data[2 * third:]))


@pytest.mark.parametrize(("coding", "compress"), [("deflate", _raw_deflate), ("gzip", _gzip_members)])
def test_raw_deflate_and_multi_member_gzip_bodies_are_inflated(url: str, coding: str,
                                                               compress: Callable[[bytes], bytes]) -> None:
    chat = _post(url, "/v1/chat/completions", compress(json.dumps(CHAT).encode()), content_encoding=coding)
    assert chat.status_code == 200, chat.text
    assert chat.json()["choices"][0]["message"]["content"]
    feedback = _post(url, "/v1/feedback", compress(json.dumps({"id": chat.json()["id"], "score": 0.8}).encode()),
                     content_encoding=coding)
    assert feedback.status_code == 200, feedback.text


@pytest.mark.parametrize(("coding", "compress"), [("deflate", _raw_deflate), ("gzip", _gzip_members)])
def test_a_bomb_in_raw_deflate_or_in_many_gzip_members_is_a_413(url: str, coding: str,
                                                                compress: Callable[[bytes], bytes]) -> None:
    """The size limit counts every member's inflated bytes together (9 MiB of zeros, over the 8 MiB limit)."""
    r = _post(url, "/v1/chat/completions", compress(bytes(9 << 20)), content_encoding=coding)
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "request_too_large" and "once inflated" in r.json()["error"]["message"]


def test_no_content_encoding_or_identity_reads_the_body_as_it_is(url: str) -> None:
    assert _post(url, "/v1/chat/completions", json.dumps(CHAT).encode()).status_code == 200
    assert _post(url, "/v1/chat/completions", json.dumps(CHAT).encode(), content_encoding="identity"
                 ).status_code == 200


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/feedback", "/v1/batches", "/v1/files"])
@pytest.mark.parametrize("coding", ["br", "gzip, br"])
def test_another_coding_is_a_415_that_says_what_is_accepted(url: str, path: str, coding: str) -> None:
    r = _post(url, path, json.dumps(CHAT).encode(), content_encoding=coding)
    assert r.status_code == 415, r.text
    error = r.json()["error"]
    assert error["code"] == "unsupported_content_encoding" and error["type"] == "invalid_request_error"
    assert repr(coding) in error["message"] and "gzip, deflate" in error["message"]
    assert r.headers["accept-encoding"] == "gzip, deflate"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/feedback"])
def test_a_body_that_is_not_what_its_coding_says_is_a_400_that_says_so(url: str, path: str) -> None:
    plain = _post(url, path, json.dumps(CHAT).encode(), content_encoding="gzip")
    cut = _post(url, path, gzip.compress(json.dumps(CHAT).encode())[:-12], content_encoding="gzip")
    assert (plain.status_code, cut.status_code) == (400, 400)
    assert "not valid gzip data" in plain.json()["error"]["message"]
    assert "ends before its gzip stream does" in cut.json()["error"]["message"]


def _bomb_start(size: int) -> bytes:
    """The first part of a gzip stream of zeros that inflates to ``size`` bytes (about 1,000 times smaller)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    return b"".join(packer.compress(zeros) for _ in range(size >> 20)) + packer.flush(zlib.Z_FULL_FLUSH)


@pytest.mark.parametrize(("path", "limit"), [("/v1/chat/completions", 8 << 20), ("/v1/feedback", 64 << 10),
                                             ("/v1/batches", 1 << 20)])
def test_a_gzip_bomb_is_a_413_before_it_has_all_arrived(url: str, path: str, limit: int) -> None:
    """Twice the limit of zeros is sent, compressed, as a chunked body that is never ended: the inflated size
    alone must bring the 413 (a server that waited for the whole body would answer the body timeout's 408)."""
    start = _bomb_start(max(2 * limit, 1 << 20) + (1 << 20))
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=15) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     f"Content-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        sock.sendall(b"%x\r\n%s\r\n" % (len(start), start))  # and no last chunk: the body never ends
        reply = b""
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
    assert reply.startswith(b"HTTP/1.1 413"), reply
    assert b"request_too_large" in reply and b"once inflated" in reply, reply

