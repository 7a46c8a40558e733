"""``GET /dashboard`` and ``/dashboard/api/...``: the page, its two assets and the JSON API, behind admin keys.

With keys configured every route here needs a key marked ``admin: true``: ``Authorization: Bearer <key>`` (tools)
or HTTP Basic with the key as the password and any user name (a browser asks for it, since a page cannot send a
bearer header on its own navigation). No key or an unknown one is a 401, a key without ``admin`` a 403
(``PermissionDeniedError``). ``dashboard.enabled: false`` registers nothing, so every path here is a 404.

Ledger reads run in a worker thread, never on the event loop that answers chat requests; for a SQLite ledger on
a connection of their own (WAL readers do not wait for the writer, and the request path's budget reservations do
not wait for a long read).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from ..config import DashboardSettings
from ..errors import (
    AuthenticationError,
    BadRequestError,
    LedgerError,
    NotFoundError,
    PermissionDeniedError,
    RouterError,
)
from ..keys import KeyStore
from ..ledger import Ledger
from ..ledger.stores import open_store, sqlite_file
from .data import DashboardData, parse_window
from .simulation import SimulationView

if TYPE_CHECKING:
    from fastapi import FastAPI

    from .._router import Router
    from ..proxy.metrics import ProxyMetrics

_STATIC = Path(__file__).resolve().parent / "static"
_ASSETS = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
_JSON = "application/json"
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_REALM = 'Basic realm="router dashboard", charset="UTF-8"'


class Dashboard:
    """The routes' handlers. ``metrics`` (optional) counts refused requests as the proxy's other errors."""

    def __init__(self, router: Router, keys: KeyStore, settings: DashboardSettings,
                 metrics: ProxyMetrics | None = None) -> None:
        self.router = router
        self.keys = keys
        self.settings = settings
        self.metrics = metrics
        self._reader: Ledger | None = None
        self._own_reader = False
        self._reader_lock = threading.Lock()
        flush = getattr(router.ledger, "flush", None)
        seen = (lambda: metrics.budgets_seen.current()) if metrics is not None else tuple
        # the page shows what was handed to the background writer before it asked, waiting at most a few seconds
        self.data = DashboardData(router, self._ledger, flush=partial(flush, 5.0) if callable(flush) else None,
                                  budgets_seen=seen)
        self.simulation = SimulationView(settings.simulation)
        page = (_STATIC / "index.html").read_text(encoding="utf-8")
        self._page = (page.replace("{{refresh_s}}", f"{settings.refresh_s:g}")
                      .replace("{{recent}}", str(settings.recent)).encode())
        self._assets = {name: (_STATIC / name).read_bytes() for name in _ASSETS}

    def _ledger(self) -> Ledger:
        """Where the dashboard reads: a SQLite file through a connection of its own, opened on first use; any
        other store (or a ledger given in code, with no file to open) through the router's own ledger."""
        if self._reader is not None:
            return self._reader
        with self._reader_lock:
            if self._reader is None:
                url = self.router.ledger.url
                own = _sqlite_file(url) is not None
                self._reader = open_store(url) if own else self.router.ledger
                self._own_reader = own
        return self._reader

    def close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None and self._own_reader:
            reader.close()

    # -- auth ------------------------------------------------------------------------------------------------
    def authorize(self, header: str | None) -> None:
        """Nothing when no keys are configured; else an admin key, as a bearer token or a Basic password."""
        if not self.keys:
            return
        key = _credential(header)
        if key is None:
            raise AuthenticationError("the dashboard needs an admin API key: send `Authorization: Bearer <key>` "
                                      "(a browser asks for it: any user name, the key as the password)")
        spec = self.keys.lookup(key)
        if spec is None:
            raise AuthenticationError("invalid API key")
        if not spec.admin:
            raise PermissionDeniedError("this API key may not open the dashboard; mark a key `admin: true` in the "
                                        "keys configuration to give it access")

    def _error(self, exc: RouterError, request: Request) -> Response:
        from ..proxy.fastpath import error_response, route_request_id

        response = error_response(exc, self.metrics, route_request_id(request.scope))
        if isinstance(exc, AuthenticationError):
            response.headers.append("www-authenticate", _REALM)
        response.headers["cache-control"] = "no-store"
        return response

    def _guarded(self, handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                self.authorize(request.headers.get("authorization"))
                return await handler(request)
            except RouterError as exc:
                return self._error(exc, request)

        return endpoint

    # -- the page --------------------------------------------------------------------------------------------
    async def page(self, request: Request) -> Response:
        return Response(self._page, media_type="text/html; charset=utf-8", headers={
            "content-security-policy": _CSP, "cache-control": "no-store", "x-content-type-options": "nosniff",
            "referrer-policy": "no-referrer"})

    async def asset(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in self._assets:
            raise NotFoundError(f"no dashboard asset {name!r}")
        return Response(self._assets[name], media_type=_ASSETS[name], headers={
            "cache-control": "no-cache", "x-content-type-options": "nosniff"})

    # -- the API ---------------------------------------------------------------------------------------------
    async def api(self, request: Request) -> Response:
        name = request.path_params["name"]
        q = request.query_params
        if name == "totals":
            call: Callable[[], Any] = partial(self.data.totals, parse_window(q.get("window")))
        elif name == "series":
            call = partial(self.data.series, parse_window(q.get("window")), q.get("by") or "model")
        elif name == "budgets":
            call = self.data.budgets
        elif name == "recent":
            call = partial(self.data.recent, _int(q.get("limit"), self.settings.recent, 1, 1000, "limit"))
        elif name == "simulation":
            call = self.simulation.latest
        else:
            raise NotFoundError(f"no dashboard API {name!r}; there are totals, series, budgets, recent and "
                                "simulation (docs/dashboard.md)")
        data = await asyncio.to_thread(call)
        return Response(json.dumps(data, allow_nan=False).encode(), media_type=_JSON,
                        headers={"cache-control": "no-store"})


def _sqlite_file(url: str) -> Path | None:
    """The SQLite file the router's ledger is in, for a reader of the dashboard's own; None for another store, an
    in-memory database (a second connection would open a second, empty one), or a ledger given in code whose URL
    names no file that is there (opening it would make one)."""
    try:
        path = sqlite_file(url) if url else None
    except LedgerError:
        return None
    return path if path is not None and path.is_file() else None


def _credential(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return value or None
    if scheme.lower() == "basic":
        try:
            _, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return password or None
    return None


def _int(text: str | None, default: int, lo: int, hi: int, param: str) -> int:
    if text is None or text == "":
        return default
    # int() takes "１０" and "1_0", and refuses more than 4,300 digits with a ValueError
    value = int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else lo - 1
    if not lo <= value <= hi:
        raise BadRequestError(f"{param} {text!r}: a whole number from {lo} to {hi}", param=param)
    return value


async def _to_the_page(request: Request) -> Response:
    """``/dashboard/`` to ``/dashboard``, where the page's relative links resolve. The Location is relative: behind
    a reverse proxy that serves the proxy under a prefix, ``/prefix/dashboard/`` must lead to
    ``/prefix/dashboard``, and an absolute URL built from the request would drop the prefix (and name the proxy's
    inner host)."""
    query = request.url.query
    return Response(status_code=307, headers={"location": "../dashboard" + (f"?{query}" if query else ""),
                                              "cache-control": "no-store"})


def mount_dashboard(app: FastAPI, router: Router, keys: KeyStore, settings: DashboardSettings,
                    metrics: ProxyMetrics | None = None) -> Dashboard | None:
    """Add ``/dashboard`` (``/dashboard/`` leads there), ``/dashboard/static/{name}`` and ``/dashboard/api/{name}``
    to ``app`` (nothing when ``settings.enabled`` is false); the dashboard's own ledger connection closes with the
    app."""
    if not settings.enabled:
        return None
    dashboard = Dashboard(router, keys, settings, metrics)
    app.router.add_route("/dashboard", dashboard._guarded(dashboard.page), methods=["GET"])
    app.router.add_route("/dashboard/", _to_the_page, methods=["GET"])
    app.router.add_route("/dashboard/static/{name}", dashboard._guarded(dashboard.asset), methods=["GET"])
    app.router.add_route("/dashboard/api/{name}", dashboard._guarded(dashboard.api), methods=["GET"])
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        try:
            async with inner(a) as state:
                yield state
        finally:
            dashboard.close()

    app.router.lifespan_context = lifespan
    return dashboard
