"""Which browser requests the proxy answers: a web page open in the user's browser must not be able to use a proxy
that listens on this machine.

Two attacks, both needing no key when none is configured (the default for a local run):

- A cross-site request. A page on any site may send a "simple" POST (``Content-Type: text/plain``, no CORS
  preflight) to ``http://127.0.0.1:PORT``; the proxy parses the body whatever its content type, so the request would
  run and spend energy and budgets, though the page cannot read the answer. Browsers name the page's site in the
  ``Origin`` header of every such request; non-browser clients (the ``openai`` SDK, LangChain, curl) send none. So a
  request with an ``Origin`` is answered only when that origin is the proxy's own (same-origin: ``Origin``'s host
  and port are the ``Host`` header's, as in the dashboard's own requests) or listed in ``proxy.cors_origins``.
- DNS rebinding. A hostile name made to resolve to 127.0.0.1 makes the page and the proxy the same origin to the
  browser, which then lets the page read any answer (``/dashboard``, ``/v1/models``). The request's ``Host`` is
  the hostile name, though, so while the proxy listens on a loopback address only loopback names are answered
  (``localhost``, ``127.x.x.x``, ``[::1]``, any port), and those in ``proxy.allowed_hosts`` (a reverse proxy in
  front that passes its own ``Host`` on). Listening on another address, the operator has exposed the proxy, and
  ``Host`` is not checked.

What Jupyter, Ollama and vite do for their local servers. The check costs the chat route a set look-up per request
(``Host`` values already accepted are remembered); the other routes go through FastAPI, whose cost hides it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.types import Scope

from ..errors import PermissionDeniedError

_REMEMBERED_HOSTS = 64
"""At most this many accepted ``Host`` values are remembered: a client sending ever new ones costs only time."""
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


def is_loopback(name: str) -> bool:
    """``localhost`` (or a name under it, RFC 6761) or a loopback address, IPv6 ones with or without brackets."""
    name = name.strip().lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name.removeprefix("[").removesuffix("]")).is_loopback
    except ValueError:
        return False


def _host_name(host: str) -> str | None:
    """The name or address of a ``Host`` value without its port (``None``: not a host and port)."""
    if host.startswith("["):  # an IPv6 address
        address, closed, rest = host[1:].partition("]")
        return address if closed and (not rest or (rest[0] == ":" and rest[1:].isdigit())) else None
    name, colon, port = host.rpartition(":")
    if not colon:
        return host
    return name if port.isdigit() else None


class BrowserGuard:
    """Decides whether a request's ``Origin`` and ``Host`` may be answered (see the module's docstring)."""

    def __init__(self, cors_origins: Iterable[str], listen_host: str | None, allowed_hosts: Iterable[str] = ()) -> None:
        origins = [o.strip().rstrip("/").lower() for o in cors_origins]
        self.any_origin = "*" in origins
        self.origins = frozenset(origins)
        self.allowed_hosts = frozenset(h.strip().lower().rstrip(".") for h in allowed_hosts)
        # every page may already call and read the proxy with "*" (CORS): rebinding would give it nothing more
        checks_host = (listen_host is not None and is_loopback(listen_host) and not self.any_origin
                       and "*" not in self.allowed_hosts)
        self.accepted_hosts: set[bytes] | None = set() if checks_host else None
        """``Host`` values found loopback (or allowed); ``None`` when ``Host`` is not checked."""
        self.listen_host = listen_host

    def check_scope(self, scope: Scope) -> None:
        """:meth:`check` for an ASGI HTTP scope (the first of repeated headers counts, as in Starlette)."""
        origin = host = None
        for name, value in scope["headers"]:
            if name == b"origin" and origin is None:
                origin = value
            elif name == b"host" and host is None:
                host = value
        hosts = self.accepted_hosts
        if origin is not None or (hosts is not None and host not in hosts):
            self.check(origin, host)

    def check(self, origin: bytes | None, host: bytes | None) -> None:
        """Raises :class:`PermissionDeniedError` when the request may not be answered."""
        hosts = self.accepted_hosts
        if hosts is not None and host is not None and host not in hosts:
            text = host.decode("latin-1").strip().lower()
            name = _host_name(text)
            if name is None or not (is_loopback(name) or name.rstrip(".") in self.allowed_hosts):
                raise PermissionDeniedError(
                    f"Host {text!r} is not a loopback name: the proxy listens on {self.listen_host} and answers "
                    "requests to localhost, 127.0.0.1 or [::1] only (another name pointed at this machine is how a "
                    "web page would reach it, DNS rebinding). Call it by one of those; behind a reverse proxy, have "
                    f"it send `Host: 127.0.0.1`, or add {name or text!r} to proxy.allowed_hosts in the config",
                    code="host_not_allowed")
            if len(hosts) < _REMEMBERED_HOSTS:
                hosts.add(host)
        if origin is None or self.any_origin:
            return
        text = origin.decode("latin-1").strip().lower()
        if text in self.origins or _same_origin(text, host):
            return
        raise PermissionDeniedError(
            f"requests from web pages of origin {text!r} are refused: a page on another site must not use a proxy "
            "it can reach (clients other than browsers send no Origin header and are not affected). To let a "
            f"browser app of that origin call the proxy, add it to proxy.cors_origins in the config "
            f"(e.g. cors_origins: [{text}], or [\"*\"] for any)", code="origin_not_allowed")


def _same_origin(origin: str, host: bytes | None) -> bool:
    """Whether ``origin`` (``scheme://host[:port]``, lower case) names the server the request's ``Host`` names."""
    if host is None:
        return False
    scheme, sep, netloc = origin.partition("://")
    if not sep:  # "null" (a sandboxed frame, a file: page) and anything else that is no origin
        return False
    ours = host.decode("latin-1").strip().lower()
    default = _DEFAULT_PORTS.get(scheme)
    if default is not None:
        netloc, ours = netloc.removesuffix(default), ours.removesuffix(default)
    return netloc == ours
