"""``POST /v1/chat/completions`` as one plain ASGI handler, answered before FastAPI's middleware and routing.

Why a module of its own: under uvicorn, Starlette's request object, routing and middleware cost about 0.1 ms
of CPU per request, as much as the model call's own HTTP round trip, and do nothing this handler needs (it
parses, limits and answers errors itself). Measured by ``python benchmarks/bench_proxy.py`` (the proxy's CPU per
request and throughput at concurrency 1 and 64) and ``python benchmarks/ab_proxy.py`` (two commits side by side);
figures in ``benchmarks/README.md``, *Proxy*. So: headers are read once from the ASGI scope, the body is parsed
once (pydantic-core's JSON parser), type-checked against a small table (:mod:`router.chat_body`) and handed to
the Router's public ``aprepare``/``asend``; a JSON answer goes out as two ASGI messages; streams and errors use
Starlette response objects, which are ASGI apps themselves.

Length: the whole chat route in one place (body limits and decoding, checks, the JSON and streamed answers, the
error and disconnect paths, their metrics), which a newcomer follows top to bottom.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

from pydantic_core import to_json
from starlette.requests import ClientDisconnect
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from .._ids import new_request_id
from .._request import MAX_REQUEST_ID, PreparedRequest
from .._router import Router
from ..chat_body import chat_request
from ..errors import (
    AuthenticationError,
    BadRequestError,
    BudgetExhaustedError,
    InternalError,
    PayloadTooLargeError,
    RouterClosedError,
    RouterError,
    UnsupportedEncodingError,
)
from ..keys import KeyStore
from ..types import ChatCompletionChunk
from .metrics import ProxyMetrics, decided
from .origins import BrowserGuard
from .public import ACCEPT_ENCODING, BODY_TIMED_OUT, body_decoder, public_error, read_json

log = logging.getLogger("router.proxy")

CHAT_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})
WATCH_AFTER_S = 0.05
"""A request's connection is watched for a disconnect once its JSON answer (or a stream's first chunk) has taken
this long."""
DISCONNECT_GRACE_S = 0.5
"""After a client disconnects, how long a call may take to stop by itself (a local model: one token) before it is
cancelled (a remote model's connection closed)."""
_JSON = "application/json"
_T = TypeVar("_T")
_WANT = "a JSON object with `model` and `messages`"
_READ_HEADERS = {b"authorization": 0, b"content-length": 1, b"x-request-id": 2, b"content-encoding": 3, b"host": 4,
                 b"origin": 5}
"""The request headers the chat route reads, by their place in its list: one dict look-up per header a request
has, whatever the number read (a chain of comparisons grew with each)."""

def ascii_header(text: str, limit: int = 400) -> str:
    """Header values must be latin-1 and one line; keep them plain ASCII and short."""
    text = text.replace("\u2192", "->").replace("\u2265", ">=").replace("\u2264", "<=").replace("\u2248", "~")
    if text.isascii() and text.isprintable() and "  " not in text and text[:1] != " " and text[-1:] != " ":
        # printable ASCII (its only whitespace is " ") with single spaces inside: already one clean line, as every
        # reason the router writes is once its arrows are replaced, so the cleaning below would return it as it is
        return text[:limit]
    text = " ".join(text.split())
    text = text.encode("ascii", "replace").decode("ascii")
    return text[:limit]


def error_response(exc: RouterError, metrics: ProxyMetrics | None = None, request_id: str | None = None) -> Response:
    """The OpenAI-shaped error body with its status (and ``Retry-After`` / ``WWW-Authenticate`` where due). A
    server-side error says what failed and the request id; its details (files, URLs, an upstream's answer) are
    logged under that id and never sent."""
    headers: dict[str, str] = {}
    if exc.retry_after_s is not None:  # whole seconds (RFC 9110); 0 would invite an immediate retry
        headers["retry-after"] = str(max(1, math.ceil(exc.retry_after_s)))
    if isinstance(exc, AuthenticationError):
        headers["www-authenticate"] = "Bearer"
    elif isinstance(exc, UnsupportedEncodingError):
        headers["accept-encoding"] = ACCEPT_ENCODING
    if metrics is not None:
        metrics.observe_error(exc.error_type if not exc.code else exc.code, exc.http_status)
    if request_id is not None:
        headers["x-request-id"] = request_id
    return Response(json.dumps(public_error(exc, request_id)).encode(), status_code=exc.http_status,
                    headers=headers, media_type=_JSON)


ROUTE_REQUEST_ID = "router.request_id"
"""The scope key under which a request to a route other than chat keeps its id once asked for
(:func:`route_request_id`), so that its error's header and body name the same one."""


def route_request_id(scope: Scope) -> str:
    """The id of a request to a route other than chat, taken as the chat route takes it: the client's
    ``x-request-id`` (the first, up to :data:`MAX_REQUEST_ID` characters), else one made now; the same every time it
    is asked for. Those routes write no ledger record: the id is what the client and the server's log share."""
    request_id: str | None = scope.get(ROUTE_REQUEST_ID)
    if request_id is None:
        given = next((value for name, value in scope["headers"] if name == b"x-request-id"), None)
        text = given.decode("latin-1") if given else None
        request_id = text if text and len(text) <= MAX_REQUEST_ID else new_request_id()
        scope[ROUTE_REQUEST_ID] = request_id
    return request_id


class _SSEResponse(StreamingResponse):
    """A stream whose body iterator is always closed when the response ends, also when the client went away
    mid-stream (Starlette then cancels the sending task; after that no cancellation is pending, so ``aclose``
    can run and stop generation).

    A client that goes away sets the request's cancel flag before its stream is stopped, so the stream's record
    says the caller went away; a stream stopped without it was stopped by the server shutting down
    (:attr:`PreparedRequest.task_cancelled_means`)."""

    def __init__(self, prepared: PreparedRequest, content: AsyncIterator[bytes], headers: dict[str, str]) -> None:
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self.prepared = prepared

    async def listen_for_disconnect(self, receive: Receive) -> None:
        await super().listen_for_disconnect(receive)
        self.prepared.cancel.set()  # before Starlette cancels the stream: the client went away

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except ClientDisconnect:  # a server protocol that reports the client leaving on send (ASGI spec 2.4)
            self.prepared.cancel.set()
            raise
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except BaseException:  # noqa: S110 - closing is best effort; the stream records its end
                    log.debug("closing a stream failed", exc_info=True)


def bearer_key(header: str | None, keys: KeyStore) -> str | None:
    """The key of an ``Authorization: Bearer`` header; with keys configured it must be one of them (every route
    that takes a key checks it so)."""
    key = None
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            key = value.strip()
    if not keys:
        return key
    if key is None:
        raise AuthenticationError("missing API key: send `Authorization: Bearer <key>`")
    if keys.lookup(key) is None:
        raise AuthenticationError("invalid API key")
    return key


class ChatHandler:
    """The ASGI app for chat completions: auth, body, checks, then the Router's ``aprepare`` and ``asend``."""

    def __init__(self, router: Router, keys: KeyStore, metrics: ProxyMetrics, max_body_bytes: int,
                 policies: set[str], guard: BrowserGuard | None = None) -> None:
        self.router = router
        self.keys = keys
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.policies = policies
        self.guard = guard or BrowserGuard((), None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        t0 = time.perf_counter()
        found: list[bytes | None] = [None] * len(_READ_HEADERS)
        for name, value in scope["headers"]:  # the first of repeated headers counts, as in Starlette
            slot = _READ_HEADERS.get(name)
            if slot is not None and found[slot] is None:
                found[slot] = value
        auth_value, length, rid_value, encoding_value, host, origin = found
        auth = auth_value.decode("latin-1") if auth_value is not None else None
        rid = rid_value.decode("latin-1") if rid_value is not None else None
        encoding = encoding_value.decode("latin-1") if encoding_value is not None else None
        guard = self.guard
        hosts = guard.accepted_hosts
        given_id = rid if rid and len(rid) <= MAX_REQUEST_ID else None
        request_id = given_id  # the router makes one when none is given; an error before that gets its own
        prepared: PreparedRequest | None = None
        key_label: str | None = None
        try:
            # a web page's request (router/proxy/origins.py); a client that is no browser sends no Origin
            if origin is not None or (hosts is not None and host not in hosts):
                guard.check(origin, host)
            api_key = self.authenticate(auth)
            # a key label only for configured keys: without keys any bearer string would be a new label
            key_label = self.keys.key_hash(api_key) if self.keys else None
            body = self._parse(await self._read_body(receive, length, encoding))
            messages, model, stream, body = chat_request(body, self.policies)
            include_usage = stream and (body.get("stream_options") or {}).get("include_usage") is True
            prepared = await self.router.aprepare(messages, model=model, api_key=api_key, request_id=given_id,
                                                  **body)
            request_id = prepared.request_id
            prepared.task_cancelled_means = SERVER_STOPPING
            self.metrics.observe_prepared(prepared.decision_ms, prepared.decision.budgets)
            if stream:
                response = await self._stream(prepared, key_label, include_usage, receive, t0)
                try:
                    with contextlib.suppress(ClientDisconnect):  # the stream has counted itself (cancelled)
                        await response(scope, receive, send)
                except asyncio.CancelledError:  # the stream has counted itself (cancelled)
                    await _stopped_mid_stream(send, request_id)
                return
            # stopped when the client goes away meanwhile
            completion = await _watched(prepared, receive, self.router.asend(prepared, as_dict=True))
        except RouterError as exc:
            if isinstance(exc, BudgetExhaustedError) and exc.request_id:  # refused in the decision: its record's id
                request_id = request_id or exc.request_id
            self._count_failed(exc, prepared, key_label)
            await error_response(exc, None, request_id or new_request_id())(scope, receive, send)
            return
        except ClientDisconnect:  # the ledger has the 'cancelled' record of a call that was stopped
            timed_out = scope.get(BODY_TIMED_OUT)
            if timed_out is not None:  # the server answered a body too slow with a 408: refused, not given up
                self._count_failed(timed_out, prepared, key_label)
            else:
                self.metrics.observe_request(*decided(prepared), key_label, "cancelled")
            return
        except asyncio.CancelledError:
            request_id = _server_stopped(request_id or new_request_id())
            self.metrics.observe_request(*decided(prepared), key_label, "cancelled")
            await error_response(_STOPPED, None, request_id)(scope, receive, send)
            return
        except Exception:
            request_id = request_id or new_request_id()
            log.exception("%s: unhandled error on %s", request_id, scope.get("path"))
            error = InternalError("internal error")
            self._count_failed(error, prepared, key_label)
            await error_response(error, None, request_id)(scope, receive, send)
            return
        data = to_json(completion)
        r = completion["routing"]
        model, tier = r["model"], r["tier"]
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data)),
                   (b"x-request-id", request_id.encode("latin-1")),
                   *routing_header_list(model, tier, r["reason"], r["energy_j"], r["energy_source"])]
        self.metrics.observe_answered(model, tier, key_label, time.perf_counter() - t0)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    def _count_failed(self, exc: RouterError, prepared: PreparedRequest | None, key_label: str | None) -> None:
        """A request that ended in ``exc``, under the model decided for it (``-`` when it ended before that)."""
        self.metrics.observe_failed_request(exc, *decided(prepared), key_label)

    def authenticate(self, header: str | None) -> str | None:
        """The bearer key, checked when keys are configured (the Router gives it its policy)."""
        return bearer_key(header, self.keys)

    async def _read_body(self, receive: Receive, length: bytes | None, encoding: str | None) -> bytes:
        """The body, refused early when ``Content-Length`` is over the limit and counted while reading; with a
        ``Content-Encoding``, inflated as it arrives and counted inflated."""
        limit = self.max_body_bytes
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                raise BadRequestError("Content-Length is not a number") from None
            if declared > limit:
                raise PayloadTooLargeError(f"request body is {declared:,} bytes; this proxy accepts at most {limit:,}")
        decoder = body_decoder(encoding, limit) if encoding is not None else None
        parts: list[bytes] = []
        size = 0
        while True:  # a body that comes too slowly is the server protocol's to end (router/proxy/server.py)
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            part = message.get("body", b"")
            if part:
                if decoder is not None:
                    part = decoder.feed(part)
                size += len(part)
                if size > limit:
                    raise PayloadTooLargeError(f"request body exceeds {limit:,} bytes")
                parts.append(part)
            if not message.get("more_body", False):
                break
        if decoder is not None:
            decoder.finish()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    @staticmethod
    def _parse(raw: bytes) -> dict[str, Any]:
        body = read_json(raw, _WANT)
        if not isinstance(body, dict):
            raise BadRequestError(f"the request body must be {_WANT}")
        return body

    async def _stream(self, prepared: PreparedRequest, key_label: str | None, include_usage: bool,
                      receive: Receive, t0: float) -> Response:
        # until the first chunk nothing is sent, so nothing would notice the client leaving: an answer another
        # model may replace (a cascade's first stage, one checked against response_format or a required tool call
        # with a model left to try) is buffered whole before any of it is streamed, so it is watched as a JSON
        # answer is
        chunks, first = await _watched(prepared, receive, self._first_chunk(prepared))
        card = self.router.cards[first.model]
        headers = routing_headers(card.name, card.tier, prepared.decision.reason)
        headers["cache-control"] = "no-cache"
        headers["x-accel-buffering"] = "no"
        headers["x-request-id"] = prepared.request_id
        return _SSEResponse(prepared, self._sse(first, chunks, key_label, include_usage, t0), headers)

    async def _first_chunk(self, prepared: PreparedRequest
                           ) -> tuple[AsyncIterator[ChatCompletionChunk], ChatCompletionChunk]:
        chunks = await self.router.asend(prepared, stream=True)
        try:
            return chunks, await chunks.__anext__()
        except StopAsyncIteration:  # pragma: no cover - the Router always sends a final chunk
            raise InternalError("the model produced no stream") from None
        except BaseException:
            await chunks.aclose()
            raise

    async def _sse(self, first: ChatCompletionChunk, chunks: AsyncIterator[ChatCompletionChunk],
                   key_label: str | None, include_usage: bool, t0: float) -> AsyncIterator[bytes]:
        finished = False
        try:
            yield _event(first)
            async for chunk in chunks:
                if chunk.routing is not None:  # the final chunk: usage and routing
                    finished = True
                    r = chunk.routing
                    self.metrics.observe_request(r.model, r.tier, key_label, "ok")
                    if include_usage:  # OpenAI's shape: usage in an extra chunk with no choices
                        usage_chunk = chunk.model_copy(update={"choices": []})
                        chunk = chunk.model_copy(update={"usage": None, "routing": None})
                        yield _event(chunk)
                        yield _event(usage_chunk)
                        continue
                yield _event(chunk)
            yield b"data: [DONE]\n\n"
            self.metrics.observe_latency(time.perf_counter() - t0)
        except RouterError as exc:  # after the first chunk the status is sent: report in the stream
            finished = True
            card = self.router.cards[first.model]
            self.metrics.observe_failed_request(exc, card.name, card.tier, key_label)
            yield b"data: " + json.dumps(public_error(exc, first.id)).encode() + b"\n\n"
        except Exception:
            finished = True
            log.exception("%s: stream failed", first.id)
            error = InternalError("the stream failed")
            card = self.router.cards[first.model]
            self.metrics.observe_failed_request(error, card.name, card.tier, key_label)
            yield b"data: " + json.dumps(public_error(error, first.id)).encode() + b"\n\n"
        finally:
            if not finished:  # the client went away mid-stream; the ledger has the 'cancelled' record
                card = self.router.cards[first.model]
                self.metrics.observe_request(card.name, card.tier, key_label, "cancelled")
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()


async def _watched(prepared: PreparedRequest, receive: Receive, call: Coroutine[Any, Any, _T]) -> _T:
    """``call``, stopped when the client goes away meanwhile: ``receive()`` says so (``http.disconnect``) once the
    body has been read. Then the request's cancel event is set, so a local model stops at its next token and the
    ledger records ``cancelled`` with what it produced; a call still running after :data:`DISCONNECT_GRACE_S` (a
    remote one, whose HTTP request cannot see the event) is cancelled, which closes its upstream connection. Either
    way :class:`ClientDisconnect` is raised. The watch starts after :data:`WATCH_AFTER_S`: most calls end sooner,
    and those then cost a timer rather than a task."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task(loop)  # given the loop: each lookup of the running loop is a getpid() system call
    assert task is not None
    gone: list[asyncio.TimerHandle] = []
    watcher: list[asyncio.Task[None]] = []

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        prepared.cancel.set()
        gone.append(loop.call_later(DISCONNECT_GRACE_S, task.cancel))

    start = loop.call_later(WATCH_AFTER_S, lambda: watcher.append(loop.create_task(watch())))
    try:
        return await call
    except (asyncio.CancelledError, RouterError) as exc:
        if not gone or (isinstance(exc, RouterError) and exc.code != "cancelled"):
            raise
        if isinstance(exc, asyncio.CancelledError):
            task.uncancel()
        raise ClientDisconnect() from None
    finally:
        start.cancel()
        for w in watcher:
            w.cancel()
        for timer in gone:
            timer.cancel()


SERVER_STOPPING = "the server was shutting down"
"""Why a request's task was cancelled, or its stream stopped: uvicorn cancels one only when the server stops (a
client that goes away sets the request's cancel flag first, :func:`_watched`, :class:`_SSEResponse`)."""
_STOPPED = RouterClosedError("the server is shutting down and stopped this request before it finished; send it "
                             "again")


def _server_stopped(request_id: str) -> str:
    """Takes back the cancellation of this request's task, and returns ``request_id``. uvicorn cancels a request's
    task only when the server stops (``proxy.shutdown_timeout_s`` has passed, or a second Ctrl+C); a client that
    went away is a :class:`ClientDisconnect` instead. The call is recorded ``cancelled`` by then; the client is
    still owed an answer (uvicorn's would be a plain-text 500, with a traceback in the log)."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
    log.warning("%s: cancelled: the server is shutting down", request_id)
    return request_id


async def _stopped_mid_stream(send: Send, request_id: str) -> None:
    """A stream cut short by the server stopping: its status has gone, so a last error event says why."""
    _server_stopped(request_id)
    event = b"data: " + json.dumps(public_error(_STOPPED, request_id)).encode() + b"\n\n"
    with contextlib.suppress(RuntimeError, OSError):  # the stream had ended already, or its connection closed
        await send({"type": "http.response.body", "body": event, "more_body": False})


def _event(chunk: ChatCompletionChunk) -> bytes:
    return b"data: " + chunk.model_dump_json().encode() + b"\n\n"


def routing_headers(model: str, tier: str, reason: str) -> dict[str, str]:
    """The ``x-router-*`` headers a stream starts with, as a dict (streams go through Starlette's response
    objects). No ``x-router-energy-j`` or ``x-router-energy-source``: a stream's joules, and so where they come
    from, are known only at its end (its last chunk's ``routing`` has both)."""
    return {"x-router-model": model, "x-router-tier": tier, "x-router-reason": ascii_header(reason)}


def routing_header_list(model: str, tier: str, reason: str, energy_j: float,
                        energy_source: str) -> list[tuple[bytes, bytes]]:
    """The ``x-router-*`` headers of a JSON answer as raw ASGI header pairs (all ASCII): those of
    :func:`routing_headers`, its joules and where they come from (``routing.energy_source``: ``measured:nvml``,
    ``estimated:token-profile``, ...; the meters' names, always ASCII)."""
    return [(b"x-router-model", model.encode("latin-1", "replace")), (b"x-router-tier", tier.encode()),
            (b"x-router-reason", ascii_header(reason).encode()), (b"x-router-energy-j", b"%.6g" % energy_j),
            (b"x-router-energy-source", energy_source.encode("ascii", "replace"))]
