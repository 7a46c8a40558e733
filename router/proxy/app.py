"""The OpenAI-compatible proxy: point any OpenAI client at ``http://HOST:PORT/v1`` and change nothing else.

Routes: ``POST /v1/chat/completions`` (JSON or SSE stream), ``GET /v1/models``, ``GET /health``,
``GET /metrics``. Routing is shown in the ``routing`` block of the body and in ``x-router-*`` headers.
Every failure is an OpenAI-shaped error (``{"error": {"message", "type", "param", "code"}}``) with the right
status; bad input is never a 500.

The hot path is one plain ASGI handler (:meth:`Proxy.chat_completions`, dispatched by :class:`ProxyApp` before
FastAPI's middleware and routing): the body is size-checked, parsed once (pydantic-core's JSON parser),
type-checked against a small table, then handed to the Router. Remote models are awaited on the event loop;
local models run in worker threads (see ``Router._acomplete``/``_astream``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from pydantic_core import from_json, to_json
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from .._router import ROUTER_ALIASES, Router
from ..config import RouterConfig
from ..errors import (
    AuthenticationError,
    BadRequestError,
    BudgetExhaustedError,
    ConfigError,
    RouterError,
    UnknownModelError,
)
from ..ledger import hash_key
from ..types import ChatCompletionChunk
from .keys import KeySpec, KeyStore
from .ledger_writer import BackgroundLedger
from .metrics import CONTENT_TYPE, ProxyMetrics

log = logging.getLogger("router.proxy")

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
_JSON = "application/json"

# Body fields and the JSON types they may have (None is always allowed). Everything else the Router judges:
# unknown fields are a 400 naming them, and message contents are validated there.
_NUM = (int, float)
_TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,), "messages": (list,), "stream": (bool,), "stream_options": (dict,),
    "max_tokens": (int,), "max_completion_tokens": (int,), "n": (int,), "seed": (int,),
    "temperature": _NUM, "top_p": _NUM, "presence_penalty": _NUM, "frequency_penalty": _NUM,
    "stop": (str, list), "user": (str,), "logit_bias": (dict,), "metadata": (dict,), "store": (bool,),
    "parallel_tool_calls": (bool,), "service_tier": (str,), "response_format": (dict,), "logprobs": (bool,),
    "top_logprobs": (int,), "policy": (str,), "accuracy_target": _NUM, "max_energy_j": _NUM,
}  # fmt: skip
_FROM_HEADERS_ONLY = {"api_key", "request_id"}  # Router parameters a body may not set


def _check_types(body: dict[str, Any]) -> None:
    for name, value in body.items():
        if value is None:
            continue
        if name in _FROM_HEADERS_ONLY:
            raise BadRequestError(f"unknown parameter: {name}", param=name)
        want = _TYPES.get(name)
        if want is None:
            continue
        if isinstance(value, bool) and bool not in want or not isinstance(value, want):
            names = "number" if want == _NUM else " or ".join(_json_name(t) for t in want)
            raise BadRequestError(f"`{name}` must be a {names}, got {_json_name(type(value))}", param=name)
        if isinstance(value, float) and not math.isfinite(value):
            raise BadRequestError(f"`{name}` must be a finite number", param=name)
    stop = body.get("stop")
    if isinstance(stop, list) and not all(isinstance(s, str) for s in stop):
        raise BadRequestError("`stop` must be a string or a list of strings", param="stop")


def _json_name(t: type) -> str:
    return {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object",
            type(None): "null"}.get(t, t.__name__)


def _ascii_header(text: str, limit: int = 400) -> str:
    """Header values must be latin-1 and one line; keep them plain ASCII and short."""
    text = text.replace("\u2192", "->").replace("\u2265", ">=").replace("\u2264", "<=").replace("\u2248", "~")
    text = " ".join(text.split())
    text = text.encode("ascii", "replace").decode("ascii")
    return text[:limit]


def _error(exc: RouterError, metrics: ProxyMetrics | None = None) -> Response:
    headers: dict[str, str] = {}
    if isinstance(exc, BudgetExhaustedError) and exc.retry_after_s is not None:
        headers["retry-after"] = str(max(1, math.ceil(exc.retry_after_s)))
    if isinstance(exc, AuthenticationError):
        headers["www-authenticate"] = "Bearer"
    if metrics is not None:
        metrics.observe_error(exc.error_type if not exc.code else exc.code, exc.http_status)
    return Response(json.dumps(exc.to_openai()).encode(), status_code=exc.http_status, headers=headers,
                    media_type=_JSON)


class _RequestIds:
    """Response ids shaped like the Router's own (``chatcmpl-`` + 24 random hex digits), cut from a block of
    ``os.urandom`` bytes fetched 256 ids at a time instead of one system call (and a UUID object) per id."""

    def __init__(self) -> None:
        self._block = b""
        self._at = 0

    def next(self) -> str:
        at = self._at
        if at >= len(self._block):
            self._block, at = os.urandom(12 * 256), 0
        self._at = at + 12
        return "chatcmpl-" + self._block[at:at + 12].hex()


class _InternalError(RouterError):
    http_status = 500
    error_type = "server_error"
    code = "internal_error"


class _PayloadTooLarge(BadRequestError):
    http_status = 413
    code = "request_too_large"


class _NotFoundError(BadRequestError):  # client errors all: OpenAI's invalid_request_error type
    http_status = 404
    code = "not_found"


class _MethodNotAllowed(BadRequestError):
    http_status = 405
    code = "method_not_allowed"


class _SSEResponse(StreamingResponse):
    """A stream whose body iterator is always closed when the response ends, also when the client went away
    mid-stream (Starlette then cancels the sending task; after that no cancellation is pending, so ``aclose``
    can run and stop generation)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except BaseException:  # noqa: S110 - closing is best effort; the stream records its end
                    log.debug("closing a stream failed", exc_info=True)


class Proxy:
    """The request handlers, holding the Router, keys and metrics."""

    def __init__(self, router: Router, keys: KeyStore, max_body_bytes: int) -> None:
        self.router = router
        self.keys = keys
        self.max_body_bytes = max_body_bytes
        self.metrics = ProxyMetrics(router)
        self.policies = _policy_names(router.config)
        self.started = time.time()
        self._ids = _RequestIds()

    # -- helpers --------------------------------------------------------------------------------------
    def _auth(self, header: str | None) -> tuple[str | None, KeySpec | None]:
        key = None
        if header:
            scheme, _, value = header.partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                key = value.strip()
        if not self.keys:
            return key, None
        if key is None:
            raise AuthenticationError("missing API key: send `Authorization: Bearer <key>`")
        spec = self.keys.lookup(key)
        if spec is None:
            raise AuthenticationError("invalid API key")
        return key, spec

    async def _read_body(self, receive: Receive, length: bytes | None) -> bytes:
        """The body, refused early when ``Content-Length`` is over the limit and counted while reading."""
        limit = self.max_body_bytes
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                raise BadRequestError("Content-Length is not a number") from None
            if declared > limit:
                raise _PayloadTooLarge(f"request body is {declared:,} bytes; this proxy accepts at most {limit:,}")
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            part = message.get("body", b"")
            if part:
                size += len(part)
                if size > limit:
                    raise _PayloadTooLarge(f"request body exceeds {limit:,} bytes")
                parts.append(part)
            if not message.get("more_body", False):
                break
        return parts[0] if len(parts) == 1 else b"".join(parts)

    @staticmethod
    def _parse(raw: bytes) -> dict[str, Any]:
        if not raw.strip():
            raise BadRequestError("the request body is empty; send a JSON object with `model` and `messages`")
        try:
            body = from_json(raw)  # pydantic-core's parser: ~3x faster than json.loads, same values
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequestError(f"the request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise BadRequestError("the request body must be a JSON object with `model` and `messages`")
        return body

    # -- routes ---------------------------------------------------------------------------------------
    async def chat_completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /v1/chat/completions`` as a plain ASGI handler: no Starlette request, routing or middleware
        on the hot path (under uvicorn that stack cost ~0.1 ms of CPU per request, as much as the model call's
        own HTTP round trip). Headers are read once from the scope; the JSON answer is sent as two ASGI
        messages; streams and errors go through Starlette response objects, which are ASGI apps themselves."""
        t0 = time.perf_counter()
        auth = length = rid = None
        for name, value in scope["headers"]:  # the first of repeated headers counts, as in Starlette
            if name == b"authorization" and auth is None:
                auth = value.decode("latin-1")
            elif name == b"content-length" and length is None:
                length = value
            elif name == b"x-request-id" and rid is None:
                rid = value.decode("latin-1")
        try:
            api_key, spec = self._auth(auth)
            body = self._parse(await self._read_body(receive, length))
            _check_types(body)
            if "messages" not in body:
                raise BadRequestError("`messages` is required", param="messages")
            stream = bool(body.pop("stream", False))
            include_usage = bool((body.get("stream_options") or {}).get("include_usage")) if stream else False
            model = body.pop("model", None) or "router"
            self._check_policy_alias(model)
            if spec is not None and spec.policy and "policy" not in body:
                body["policy"] = spec.policy
            messages = body.pop("messages")
            ctx = await self.router.aprepare(messages, model=model, api_key=api_key,
                                      request_id=rid if rid and len(rid) <= 128 else self._ids.next(), **body)
            self.metrics.observe_decision(ctx.decision_ms / 1000)
            if ctx.decision.budgets:
                self.metrics.budgets_seen.update(ctx.decision.budgets)
            key_label = hash_key(api_key)
            if stream:
                response = await self._stream(ctx, key_label, include_usage, t0)
                await response(scope, receive, send)
                return
            completion = await self.router._acomplete(ctx, raw=True)
        except RouterError as exc:
            await _error(exc, self.metrics)(scope, receive, send)
            return
        except ClientDisconnect:
            return
        except Exception as exc:
            log.exception("unhandled error on %s", scope.get("path"))
            await _error(_InternalError(f"internal error: {type(exc).__name__}"), self.metrics)(scope, receive, send)
            return
        if isinstance(completion, dict):  # remote models: the plain dict, serialised as it is
            data = to_json(completion)
            r = completion["routing"]
            model, tier, reason, energy_j, attempts = r["model"], r["tier"], r["reason"], r["energy_j"], r["attempts"]
        else:  # local models: the pydantic object from the worker thread
            data = completion.model_dump_json().encode()
            r = completion.routing
            model, tier, reason, energy_j, attempts = r.model, r.tier, r.reason, r.energy_j, r.attempts
        self.metrics.observe_answer(model, tier, key_label, energy_j, "ok", attempts)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data)),
                   *_routing_header_list(model, tier, reason, energy_j)]
        self.metrics.observe_latency(time.perf_counter() - t0)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    async def _stream(self, ctx: Any, key_label: str | None, include_usage: bool, t0: float) -> Response:
        chunks = self.router._astream(ctx)
        try:
            first: ChatCompletionChunk = await chunks.__anext__()
        except StopAsyncIteration:  # pragma: no cover - the Router always sends a final chunk
            raise _InternalError("the model produced no stream") from None
        except BaseException:
            await chunks.aclose()
            raise
        card = self.router.cards[first.model]
        headers = _routing_headers(card.name, card.tier, ctx.decision.reason, None)
        headers["cache-control"] = "no-cache"
        headers["x-accel-buffering"] = "no"
        return _SSEResponse(self._sse(first, chunks, key_label, include_usage, t0), media_type="text/event-stream",
                            headers=headers)

    async def _sse(self, first: ChatCompletionChunk, chunks: AsyncIterator[ChatCompletionChunk],
                   key_label: str | None, include_usage: bool, t0: float) -> AsyncIterator[bytes]:
        finished = False
        try:
            yield _event(first)
            async for chunk in chunks:
                if chunk.routing is not None:  # the final chunk: usage and routing
                    finished = True
                    r = chunk.routing
                    self.metrics.observe_answer(r.model, r.tier, key_label, r.energy_j, "ok", r.attempts)
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
            self.metrics.observe_error(exc.code or exc.error_type, exc.http_status)
            yield b"data: " + json.dumps(exc.to_openai()).encode() + b"\n\n"
        except Exception as exc:
            finished = True
            log.exception("stream failed")
            self.metrics.observe_error("internal_error", 500)
            yield b"data: " + json.dumps(_InternalError(f"stream failed: {type(exc).__name__}").to_openai()).encode() \
                + b"\n\n"
        finally:
            if not finished:  # the client went away mid-stream; the ledger has the 'cancelled' record
                card = self.router.cards[first.model]
                self.metrics.requests.labels(card.name, card.tier, key_label or "-", "cancelled").inc()
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    def _check_policy_alias(self, model: str) -> None:
        head, _, policy = model.partition(":")
        if head.lower() in ROUTER_ALIASES and policy and self.policies and policy not in self.policies:
            raise UnknownModelError(
                f"unknown policy {policy!r} in model {model!r}; use one of: "
                + ", ".join(f"router:{p}" for p in sorted(self.policies)), param="model")

    async def models(self, request: Request) -> Response:
        created = int(self.started)
        data = [{"id": "router", "object": "model", "created": created, "owned_by": "router",
                 "description": f"routes each request; policy {self.router.policy_name}"}]
        data += [{"id": f"router:{p}", "object": "model", "created": created, "owned_by": "router",
                  "description": f"routes each request with policy {p}"} for p in sorted(self.policies)]
        for card in sorted(self.router.cards.values(), key=lambda c: (c.tier, c.name)):
            if card.callable:
                data.append({"id": card.name, "object": "model", "created": created, "owned_by": "router",
                             "tier": card.tier, "aliases": card.aliases, "context_length": card.context_length})
        return Response(json.dumps({"object": "list", "data": data}).encode(), media_type=_JSON)

    async def health(self, request: Request) -> Response:
        return Response(json.dumps({"status": "ok", "models": sum(c.callable for c in self.router.cards.values()),
                                    "uptime_s": round(time.time() - self.started, 1)}).encode(), media_type=_JSON)

    async def metrics_endpoint(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)


def _event(chunk: ChatCompletionChunk) -> bytes:
    return b"data: " + chunk.model_dump_json().encode() + b"\n\n"


def _routing_headers(model: str, tier: str, reason: str, energy_j: float | None) -> dict[str, str]:
    headers = {"x-router-model": model, "x-router-tier": tier, "x-router-reason": _ascii_header(reason)}
    if energy_j is not None:
        headers["x-router-energy-j"] = f"{energy_j:.6g}"
    return headers


def _routing_header_list(model: str, tier: str, reason: str, energy_j: float) -> list[tuple[bytes, bytes]]:
    """:func:`_routing_headers` as raw ASGI header pairs (all ASCII)."""
    return [(b"x-router-model", model.encode("latin-1", "replace")), (b"x-router-tier", tier.encode()),
            (b"x-router-reason", _ascii_header(reason).encode()), (b"x-router-energy-j", b"%.6g" % energy_j)]


def _policy_names(config: RouterConfig) -> set[str]:
    folder = Path(config.policies_dir)
    if not folder.is_dir():
        return set()
    return {p.stem for p in folder.glob("*.yaml")} | {p.stem for p in folder.glob("*.yml")}


CHAT_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})


class ProxyApp(FastAPI):
    """The FastAPI app, with ``POST /v1/chat/completions`` answered before FastAPI's middleware and routing:
    those add ~0.1 ms of CPU to every request and do nothing the handler needs (it parses, limits and answers
    errors itself). Every other route, and anything added with ``add_middleware``, goes through FastAPI as
    usual; middleware added to the app does not see chat requests."""

    chat: Callable[[Scope, Receive, Send], Awaitable[None]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (self.chat is not None and scope["type"] == "http" and scope["method"] == "POST"
                and scope["path"] in CHAT_PATHS):
            await self.chat(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


class _ASGIEndpoint:
    """Wraps a handler so Starlette routes to it as an ASGI app (not as a ``Request -> Response`` function)."""

    def __init__(self, handler: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.handler(scope, receive, send)


def create_app(
    router: Router | None = None,
    config: RouterConfig | str | Path | None = None,
    keys: KeyStore | Mapping[str, str | None] | list[Any] | str | Path | None = None,
    *,
    max_body_bytes: int | None = None,
) -> ProxyApp:
    """The proxy app. ``router`` defaults to ``Router(config)``; ``keys`` defaults to the config's
    ``extra.keys`` (none: no authentication). ``keys`` may also be a keys YAML file, a list of entries, or a
    ``{clear_key: policy}`` mapping (hashed at once)."""
    if not isinstance(config, RouterConfig):
        config = router.config if router is not None and config is None else RouterConfig.load(config)
    proxy_cfg = config.extra.get("proxy") or {}
    if router is None:
        router = Router(config)
        writes = proxy_cfg.get("ledger_writes", "background")
        if writes not in ("background", "inline"):
            raise ConfigError(f"extra.proxy.ledger_writes must be 'background' or 'inline', not {writes!r}")
        group_ms = proxy_cfg.get("ledger_group_ms", 20)
        if isinstance(group_ms, bool) or not isinstance(group_ms, int | float) or not 0 <= group_ms <= 1000:
            raise ConfigError(f"extra.proxy.ledger_group_ms must be a number of milliseconds in [0, 1000], "
                              f"not {group_ms!r}")
        if writes == "background":  # see ledger_writer.py: no disk stall on the event loop
            router.ledger = BackgroundLedger(router.ledger, interval_s=group_ms / 1000)
    if keys is None:
        keys = config.extra.get("keys")
    if isinstance(keys, str | Path):
        store = KeyStore.from_file(keys)
    else:
        store = KeyStore.from_entries(keys, where="config extra.keys")
    limit = max_body_bytes or int(proxy_cfg.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES))
    proxy = Proxy(router, store, limit)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        router.close()

    app = ProxyApp(title="router", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.proxy = proxy
    app.state.router = router
    app.chat = proxy.chat_completions
    # The chat routes are also registered (as plain ASGI endpoints) so that a GET on them is a 405 and the app
    # still answers them when mounted under a prefix; ProxyApp normally answers them before routing.
    app.router.add_route("/v1/chat/completions", _ASGIEndpoint(proxy.chat_completions), methods=["POST"])
    app.router.add_route("/chat/completions", _ASGIEndpoint(proxy.chat_completions), methods=["POST"])
    app.router.add_route("/v1/models", proxy.models, methods=["GET"])
    app.router.add_route("/health", proxy.health, methods=["GET"])
    app.router.add_route("/metrics", proxy.metrics_endpoint, methods=["GET"])

    @app.exception_handler(RouterError)
    async def _router_error(request: Request, exc: RouterError) -> Response:
        return _error(exc, proxy.metrics)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        return _error(_InternalError(f"internal error: {type(exc).__name__}"), proxy.metrics)

    @app.exception_handler(404)
    async def _not_found(request: Request, exc: Exception) -> Response:
        return _error(_NotFoundError(f"no route {request.method} {request.url.path}; the API is under /v1"))

    @app.exception_handler(405)
    async def _bad_method(request: Request, exc: Exception) -> Response:
        return _error(_MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}"))

    return app


ENV_CONFIG = "ROUTER_PROXY_CONFIG"
ENV_KEYS = "ROUTER_PROXY_KEYS"


def app_from_env() -> ProxyApp:
    """The app factory ``router serve`` hands to uvicorn (each worker process builds its own Router):
    config file from ``ROUTER_PROXY_CONFIG``, optional keys file from ``ROUTER_PROXY_KEYS``."""
    import gc

    config = RouterConfig.load(os.environ.get(ENV_CONFIG) or None)
    app = create_app(config=config, keys=os.environ.get(ENV_KEYS) or None)
    # Long-lived start-up objects (models, classifier, cards) leave the collector's scans: shorter GC pauses.
    gc.collect()
    gc.freeze()
    return app
