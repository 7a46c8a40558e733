"""The OpenAI-compatible proxy: point any OpenAI client at ``http://HOST:PORT/v1`` and change nothing else.

Routes: ``POST /v1/chat/completions`` (JSON or SSE stream; :mod:`router.proxy.fastpath`), ``GET /v1/models``,
``GET /health``, ``GET /metrics``. Routing is shown in the ``routing`` block of the body and in ``x-router-*``
headers. Every failure is an OpenAI-shaped error (``{"error": {"message", "type", "param", "code"}}``) with the
right status; bad input is never a 500.

Length: the app's routes other than chat, its lifespan and its start from the environment, which share the
:class:`Proxy` state; the chat route has its own module (:mod:`router.proxy.fastpath`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from .._request import PreparedRequest
from .._router import Router
from ..chat_body import policy_names
from ..config import ProxySettings, RouterConfig
from ..dashboard import mount_dashboard
from ..errors import AuthenticationError, InternalError, MethodNotAllowedError, NotFoundError, RouterError
from ..keys import KeySpec, KeyStore
from ..ledger import open_ledger
from ..yaml_files import named_yaml_file
from .fastpath import CHAT_PATHS, ChatHandler, error_response, route_request_id
from .ledger_writer import BackgroundLedger, ledger_state
from .metrics import CONTENT_TYPE, ProxyMetrics, decided
from .metrics_shared import ENV_METRICS_DIR
from .origins import BrowserGuard
from .public import BODY_TIMED_OUT

log = logging.getLogger("router.proxy")
_JSON = "application/json"


class Proxy:
    """The routes other than chat, holding the Router, keys and metrics."""

    def __init__(self, router: Router, keys: KeyStore, max_body_bytes: int,
                 settings: ProxySettings | None = None, listen_host: str | None = None) -> None:
        settings = settings or ProxySettings()
        self.router = router
        self.keys = keys
        self.settings = settings
        self.metrics = ProxyMetrics(router)
        self.metrics.seed_budgets_seen(router)
        router.record_observer = self.metrics.observe_record  # joules and failed calls, as the ledger has them
        self.policies = policy_names(router.config)
        self.started = time.time()
        self.created, self.unfiled_created = self._created_times()
        self.guard = BrowserGuard(settings.cors_origins, listen_host, settings.allowed_hosts)
        self.chat = ChatHandler(router, keys, self.metrics, max_body_bytes, self.policies, self.guard)

    def observe_batch_line(self, key: KeySpec | None, prepared: PreparedRequest | None,
                           completion: dict[str, Any] | None, error: RouterError | None) -> None:
        """A batch line this process's scheduler ran, counted in the metrics as the chat route counts a request
        (:func:`router.batch.scheduler.observe_lines`); a key label only for configured keys, as there."""
        metrics = self.metrics
        if prepared is not None:
            metrics.observe_prepared(prepared.decision_ms, prepared.decision.budgets)
        label = key.key_hash if self.keys and key is not None else None
        if completion is not None:
            r = completion["routing"]
            metrics.observe_request(r["model"], r["tier"], label, "ok")
        elif error is not None:
            metrics.observe_failed_request(error, *decided(prepared), label)

    def _guard(self, request: Request, route: str) -> str | None:
        """The caller's key. With keys configured, a route not listed in ``proxy.open_routes`` needs one, checked;
        an open route needs none but still reads a configured key (the model list says what ``router`` means for
        it), and answers one it does not know as if none were sent."""
        try:
            return self.chat.authenticate(request.headers.get("authorization"))
        except AuthenticationError:
            if route in self.settings.open_routes:
                return None
            raise

    def _created_times(self) -> tuple[dict[str, int], int]:
        """The model list's ``created`` times: ``({card name or "router:<policy>": time}, the time of a policy
        with no file)``. Each is the modification time (whole seconds) of the file that defines the entry: a
        card's file, a policy's (``router`` has its policy's); a policy with no file, or a card made in code, has
        the newest card file's (the proxy's start without any). Every worker of ``router serve --workers N``
        reads the same files, so all list the same ``created`` for a model, as they did not when it was each
        worker's start time, which also changed at every restart."""

        def modified(path: Path | None) -> int | None:
            try:
                return int(path.stat().st_mtime) if path is not None else None
            except OSError:  # gone since it was read: a label is no reason to fail the start
                return None

        cards = {name: modified(card.path) for name, card in self.router.cards.items()}
        newest_card = max((t for t in cards.values() if t is not None), default=int(self.started))
        folder = Path(self.router.config.policies_dir)
        created = {name: t or newest_card for name, t in cards.items()}
        created.update({f"router:{p}": modified(named_yaml_file(folder, p)) or newest_card for p in self.policies})
        return created, newest_card

    def _model_objects(self, api_key: str | None) -> list[dict[str, Any]]:
        created = self.created
        spec = self.keys.lookup(api_key)
        # "router" is the caller's key's policy where the key has one, as a chat request with it is routed
        policy = spec.policy if spec is not None and spec.policy else self.router.policy_name
        data = [{"id": "router", "object": "model", "created": created.get(f"router:{policy}", self.unfiled_created),
                 "owned_by": "router", "description": f"routes each request; policy {policy}"}]
        # a key held to its policy may name no other (lock_policy): only its own is listed
        offered = [policy] if spec is not None and spec.lock_policy else sorted(self.policies)
        data += [{"id": f"router:{p}", "object": "model", "created": created.get(f"router:{p}", self.unfiled_created),
                  "owned_by": "router", "description": f"routes each request with policy {p}"} for p in offered]
        for card in sorted(self.router.cards.values(), key=lambda c: (c.tier, c.name)):
            if card.callable:
                data.append({"id": card.name, "object": "model", "created": created[card.name], "owned_by": "router",
                             "tier": card.tier, "aliases": card.aliases, "context_length": card.context_length,
                             "capabilities": list(card.capabilities)})
        return data

    async def models(self, request: Request) -> Response:
        api_key = self._guard(request, "models")
        return Response(json.dumps({"object": "list", "data": self._model_objects(api_key)}).encode(),
                        media_type=_JSON)

    async def model(self, request: Request) -> Response:
        """``GET /v1/models/{id}``: ``router``, ``router:<policy>``, or a model card by name or alias."""
        api_key = self._guard(request, "models")
        wanted = request.path_params["model_id"]
        objects = {m["id"]: m for m in self._model_objects(api_key)}
        found = objects.get(wanted)
        if found is None:
            found = objects[self.router.resolve_model(wanted)]  # an alias; unknown: UnknownModelError, a 404
        return Response(json.dumps(found).encode(), media_type=_JSON)

    async def health(self, request: Request) -> Response:
        """200 while the process serves. ``status`` is ``degraded`` while the ledger's store is unavailable: the
        proxy still answers (records wait in the journal) but refuses what a budget must be checked for."""
        ledger = ledger_state(self.router.ledger)
        status = "degraded" if ledger.get("store") == "unavailable" else "ok"
        return Response(json.dumps({"status": status, "models": sum(c.callable for c in self.router.cards.values()),
                                    "uptime_s": round(time.time() - self.started, 1), "ledger": ledger}).encode(),
                        media_type=_JSON)

    async def metrics_endpoint(self, request: Request) -> Response:
        self._guard(request, "metrics")
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)


class ProxyApp(FastAPI):
    """The FastAPI app, with ``POST /v1/chat/completions`` answered before FastAPI's middleware and routing
    (:mod:`router.proxy.fastpath` says why). Every other route, and anything added with ``add_middleware``, goes
    through FastAPI as usual; middleware added to the app does not see chat requests."""

    chat: Callable[[Scope, Receive, Send], Awaitable[None]] | None = None
    guard: BrowserGuard | None = None
    """Refuses web pages' requests to every route but chat, which checks them itself (router/proxy/origins.py)."""
    metrics: ProxyMetrics | None = None
    cors: Callable[[Scope, Receive, Send], Awaitable[None]] | None = None
    """With ``proxy.cors_origins`` set: Starlette's CORS middleware around every route, chat included (it answers
    preflight ``OPTIONS`` requests and adds the ``Access-Control-*`` headers). Off by default: no cost."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("root_path"):
            _root_path_once(scope)
        if self.cors is not None and scope["type"] == "http":
            # a page of an origin not listed is refused here, its preflight too (Starlette's CORS middleware would
            # answer that with a plain-text 400); a chat request is checked once, by the chat route, as without CORS
            if self._is_chat(scope):
                await self.cors(scope, receive, send)
                return
            send = _ids_on_answers(scope, send)
            if not await self._refused(scope, receive, send):
                await self.cors(scope, receive, send)
            return
        if (self.chat is not None and scope["type"] == "http" and scope["method"] == "POST"
                and (scope["path"] in CHAT_PATHS or _route_path(scope) in CHAT_PATHS)):
            await self.chat(scope, receive, send)
            return
        if scope["type"] == "http":
            send = _ids_on_answers(scope, send)
        if await self._refused(scope, receive, send):
            return
        await super().__call__(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        """What :meth:`__call__` does without CORS (the CORS middleware's inner app), but for the web page check,
        which :meth:`__call__` has made."""
        if self.chat is not None and self._is_chat(scope):
            await self.chat(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    def _is_chat(self, scope: Scope) -> bool:
        """A request for the chat route, which the app answers itself (the check :meth:`__call__` makes inline)."""
        return (self.chat is not None and scope["method"] == "POST"
                and (scope["path"] in CHAT_PATHS or _route_path(scope) in CHAT_PATHS))

    async def _refused(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Whether a web page's request was refused with a 403 (and answered)."""
        if self.guard is None or scope["type"] != "http":
            return False
        try:
            self.guard.check_scope(scope)
        except RouterError as exc:
            await error_response(exc, self.metrics)(scope, receive, send)
            return True
        return False


def _ids_on_answers(scope: Scope, send: Send) -> Send:
    """``send`` for a request to a route other than chat (which sets its own): an answer that carries no
    ``x-request-id`` gets the request's (:func:`route_request_id`), as every chat answer does and as OpenAI's
    answers all do, whatever made it (a route's answer or refusal, the app's exception handlers, Starlette's
    routing); the openai SDK reads it as ``response.request_id`` / ``_request_id``. A 5xx answered by the app's
    handlers already names that id in its message and header."""

    async def send_with_id(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", ()))
            if not any(name.lower() == b"x-request-id" for name, _ in headers):
                headers.append((b"x-request-id", route_request_id(scope).encode("latin-1")))
                message = {**message, "headers": headers}
        await send(message)

    return send_with_id


def _route_path(scope: Scope) -> str:
    """The path the app's routes see: ``scope["path"]`` without ``scope["root_path"]`` (uvicorn's ``--root-path``,
    which ``router serve --root-path`` sets, is put in front of every path), as Starlette's routing takes it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root):len(root) + 1] in ("", "/"):
        return path[len(root):]
    return path


def _root_path_once(scope: Scope) -> None:
    """A reverse proxy that serves the router under a prefix (``/router``) may strip it or pass it on. uvicorn puts
    its ``root_path`` in front of every path either way, so a proxy that passes it on leaves it there twice
    (``/router/router/v1/models``), which no route matches: one is dropped, so both kinds of proxy work."""
    root: str = scope["root_path"]
    twice = root + root
    path: str = scope["path"]
    if path.startswith(twice) and path[len(twice):len(twice) + 1] in ("", "/"):
        scope["path"] = path[len(root):]
        raw: bytes | None = scope.get("raw_path")
        if raw is not None and raw.startswith(twice.encode()):
            scope["raw_path"] = raw[len(root):]


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
    listen_host: str | None = None,
) -> ProxyApp:
    """The proxy app. ``router`` defaults to ``Router(config)`` over the config's ledger (written by a background
    thread unless ``proxy.ledger_writes: inline``). ``keys`` (default: the config's ``keys``; none: no
    authentication) may be a keys YAML file, a list of entries, or a ``{clear_key: policy}`` mapping (hashed at
    once); they are the Router's keys, which also give each key its policy. With a ``router`` of your own, its
    keys are used and ``keys`` must not be given. ``listen_host``: the address the server listens on; a loopback one
    (``router serve``'s default) makes the app refuse ``Host`` names other than loopback ones (DNS rebinding,
    :mod:`router.proxy.origins`); ``None``: ``Host`` is not checked."""
    if not isinstance(config, RouterConfig):
        config = router.config if router is not None and config is None else RouterConfig.load(config)
    settings = config.proxy
    if router is None:
        store = None
        if keys is not None:
            store = KeyStore.from_file(keys) if isinstance(keys, str | Path) else KeyStore.from_entries(keys)
        ledger = open_ledger(config.ledger_url, retention_days=config.ledger_retention_days, journal=config.journal)
        try:
            if settings.ledger_writes == "background":  # see ledger_writer.py: no disk stall on the event loop
                ledger = BackgroundLedger(ledger, interval_s=settings.ledger_group_ms / 1000, journal=config.journal)
            router = Router(config, ledger=ledger, keys=store)
        except BaseException:  # a bad policy or card: the ledger (and its writer thread) must not outlive the error
            ledger.close()
            raise
        if settings.warm_up:
            router.warm_up()
    elif keys is not None:
        raise ValueError("create_app(router=..., keys=...): give the keys to the Router (Router(keys=...))")
    proxy = Proxy(router, router.keys, max_body_bytes or settings.max_body_bytes, settings, listen_host)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # under `router serve` the records of one loop iteration go to the journal in one write, before the
        # server's protocol sends any answer (ledger_writer.py says why); other servers append each at once
        ledger = router.ledger
        grouped = (ledger if getattr(app.state, "journal_before_send", False) and isinstance(ledger, BackgroundLedger)
                   else None)
        if grouped is not None:
            from .server import BEFORE_SEND

            grouped.defer_journal(True)
            BEFORE_SEND.append(grouped.journal_pending)
        shared_metrics = getattr(app.state, "metrics_dir", None)  # a worker of `router serve --workers N`
        if shared_metrics is not None:
            proxy.metrics.share_through(shared_metrics)
        try:
            yield
        finally:
            if grouped is not None:
                BEFORE_SEND.remove(grouped.journal_pending)
                grouped.defer_journal(False)
        try:
            await asyncio.to_thread(router.close)  # it waits for running calls, which need this loop to finish
        finally:
            proxy.metrics.stop_sharing()  # after the last calls' records: their joules count

    app = ProxyApp(title="router", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.proxy = proxy
    app.state.router = router
    app.chat = proxy.chat
    app.guard = proxy.guard
    app.metrics = proxy.metrics
    # The chat routes are also registered (as plain ASGI endpoints) so that a GET on them is a 405 and the app
    # still answers them when mounted under a prefix; ProxyApp normally answers them before routing.
    for path in sorted(CHAT_PATHS):
        # starlette's hint names request-response functions only; its Route takes an ASGI app as well
        app.router.add_route(path, _ASGIEndpoint(proxy.chat), methods=["POST"])  # type: ignore[arg-type]
    if settings.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.cors = CORSMiddleware(
            app._dispatch, allow_origins=settings.cors_origins, allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"], max_age=600,
            expose_headers=["x-request-id", "x-router-model", "x-router-tier", "x-router-reason",
                            "x-router-energy-j", "x-router-energy-source", "retry-after"])
    app.router.add_route("/v1/models", proxy.models, methods=["GET"])
    app.router.add_route("/v1/models/{model_id:path}", proxy.model, methods=["GET"])
    app.router.add_route("/health", proxy.health, methods=["GET"])
    app.router.add_route("/metrics", proxy.metrics_endpoint, methods=["GET"])
    from ..batch.api import add_batch_routes
    from ..batch.scheduler import observe_lines

    observe_lines(router, proxy.observe_batch_line)  # before the routes may start the scheduler: every line counts
    add_batch_routes(app, router)  # /v1/files and /v1/batches (router/batch/api.py)
    mount_dashboard(app, router, router.keys, config.dashboard, proxy.metrics)  # /dashboard, off by config
    from .feedback import add_feedback_route

    add_feedback_route(app, router)  # /v1/feedback (router/proxy/feedback.py)

    @app.exception_handler(RouterError)
    async def _router_error(request: Request, exc: RouterError) -> Response:
        return error_response(exc, proxy.metrics, route_request_id(request.scope))

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, exc: ClientDisconnect) -> Response:
        """A client gone while its body was coming (feedback, a file upload): nobody is left to answer, and it is
        no error of the server's, unless the server ended it with a 408 for a body too slow, which is counted."""
        timed_out = request.scope.get(BODY_TIMED_OUT)
        if timed_out is not None:
            proxy.metrics.observe_error(timed_out.code, timed_out.http_status)
        return Response(status_code=499)  # never sent: the connection is closed

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        request_id = route_request_id(request.scope)  # the handle a client can quote to find this traceback
        log.exception("unhandled error on %s (request %s)", request.url.path, request_id)
        return error_response(InternalError("internal error; the server log has the details"), proxy.metrics,
                              request_id)

    @app.exception_handler(404)
    async def _not_found(request: Request, exc: Exception) -> Response:
        return error_response(NotFoundError(f"{request.method} {request.url.path} is not served here; the routes "
                                            f"are {', '.join(_served_paths(app))}"), proxy.metrics)

    @app.exception_handler(405)
    async def _bad_method(request: Request, exc: Exception) -> Response:
        response = error_response(MethodNotAllowedError(f"{request.method} is not allowed on {request.url.path}"),
                                  proxy.metrics)
        allow = (getattr(exc, "headers", None) or {}).get("Allow")
        if allow:  # a 405 must say which methods the route takes (RFC 9110, 15.5.6); Starlette's routing knows them
            response.headers["allow"] = allow
        return response

    return app


def _served_paths(app: FastAPI) -> list[str]:
    """The app's routes without their parameters' sub-paths and without the unprefixed twins of ``/v1`` routes
    (``/chat/completions``), in the order they were added."""
    paths = [p for route in app.router.routes if (p := getattr(route, "path", "")) and "{" not in p]
    return [p for p in dict.fromkeys(paths) if p.startswith("/v1") or f"/v1{p}" not in paths]


ENV_CONFIG = "ROUTER_PROXY_CONFIG"
ENV_KEYS = "ROUTER_PROXY_KEYS"
ENV_LISTEN_HOST = "ROUTER_PROXY_LISTEN_HOST"
"""The ``--host`` of ``router serve``, for its workers (:func:`create_app`'s ``listen_host``)."""


def _say_ready(router: Router, started: float) -> None:
    """The worker's start-up line: its models, its policies and how many API keys (never which: with none, every
    client is let in, and the operator may have lost --keys)."""
    names = ", ".join(n for n, c in router.cards.items() if c.callable)
    policies = getattr(router.engine, "policies", None)  # the first rule, used without policy files, has none
    routing = f"policies {', '.join(sorted(policies))}" if policies else "no policy files (the first rule)"
    keys = f"{len(router.keys)} API key{'s' if len(router.keys) != 1 else ''}" if router.keys else "no API keys (open)"
    print(f"router serve: worker {os.getpid()} ready in {time.perf_counter() - started:.1f} s: {names}; {routing}; "
          f"{keys}", file=sys.stderr, flush=True)


def app_from_env() -> ProxyApp:
    """The app factory ``router serve`` hands to uvicorn (each worker process builds its own Router):
    config file from ``ROUTER_PROXY_CONFIG``, optional keys file from ``ROUTER_PROXY_KEYS``."""
    import gc
    import multiprocessing

    from uvicorn.config import STARTUP_FAILURE

    from .server import set_timeouts

    try:
        config = RouterConfig.load(os.environ.get(ENV_CONFIG) or None)
        set_timeouts(config.proxy.header_timeout_s, config.proxy.body_timeout_s)  # this worker's connections
        started = time.perf_counter()
        app = create_app(config=config, keys=os.environ.get(ENV_KEYS) or None,
                         listen_host=os.environ.get(ENV_LISTEN_HOST) or None)
        _say_ready(app.state.router, started)
    except Exception as exc:
        if multiprocessing.parent_process() is None:
            raise  # the server's own process: the command prints the error (router.cli.main)
        # a worker process of `router serve --workers N`: uvicorn's supervisor starts a worker that died again,
        # for ever (a traceback each time), but stops the server when one exits with this status
        if isinstance(exc, RouterError):
            print(f"error: {exc}", file=sys.stderr, flush=True)
        else:
            log.exception("worker %d could not start", os.getpid())
        raise SystemExit(STARTUP_FAILURE) from None
    app.state.journal_before_send = True  # served by router.proxy.server's protocol, which calls BEFORE_SEND
    metrics_dir = os.environ.get(ENV_METRICS_DIR)
    if metrics_dir:  # a worker of several: /metrics answers for all of them (router/proxy/metrics.py)
        app.state.metrics_dir = Path(metrics_dir)
    # Long-lived start-up objects (models, classifier, cards) leave the collector's scans: shorter GC pauses.
    gc.collect()
    gc.freeze()
    # The cyclic collector starts a young-generation pass every 700 net new container objects. At concurrency
    # 64 the requests in flight alone hold thousands, so it ran every ~30 requests and scanned them all (~8 µs
    # per request, 2-3 % of the proxy's CPU; benchmarks/README.md, *Proxy*), though nearly everything a request
    # makes is freed by reference counting. 10,000 lets it run when garbage with cycles has really piled up.
    gc.set_threshold(10_000, 10, 10)
    return app
