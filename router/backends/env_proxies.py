"""The proxy the environment (HTTPS_PROXY / HTTP_PROXY / ALL_PROXY, less NO_PROXY) names for a remote model's
endpoint, read as httpx reads it, and whether httpx can call through it: checked when the Router starts
(:func:`refuse_unusable_proxies`) and when a backend starts (:func:`unusable_proxy`), so a proxy no call can go
through is a :class:`~router.errors.ConfigError` naming the variable (never its value: it may hold a password), not
an internal error at every call."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import httpx

from ..cards import ModelCard, OpenAIBackendSpec
from ..errors import ConfigError


def env_proxy_for(url: str) -> str | None:
    """The proxy HTTP_PROXY / HTTPS_PROXY / ALL_PROXY (less NO_PROXY) name for ``url``, as httpx would read them;
    ``None`` where none applies."""
    import urllib.request

    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"  # proxy.corp:3128: httpx and curl take it as http://


def proxy_variable(url: str, proxy: str) -> str:
    """The environment variable that named ``proxy`` for ``url`` (as :func:`env_proxy_for` read it), for a
    message an operator can act on."""
    candidates = (f"{urlsplit(url).scheme}_proxy", "all_proxy")
    for name in (n for candidate in candidates for n in (candidate, candidate.upper())):
        if os.environ.get(name) in (proxy, proxy.removeprefix("http://")):
            return name
    return next((n for n in os.environ if n.lower() in candidates), "ALL_PROXY")


def unusable_proxy(card: ModelCard, url: str, proxy: str) -> ConfigError | None:
    """Why httpx cannot call through ``proxy``, a :class:`ConfigError` naming the variable and the fix, or
    ``None`` where it can. Asked when the backend starts, so a model the proxy cannot carry fails its start (the
    next model answers, the reason is logged) instead of every call failing with httpx's own ImportError or
    ValueError, which the Router can only report as an internal error."""
    variable = proxy_variable(url, proxy)
    scheme = urlsplit(proxy).scheme.lower()
    base_url = card.backend.base_url if isinstance(card.backend, OpenAIBackendSpec) else url
    if scheme in ("socks5", "socks5h"):
        import importlib.util

        if importlib.util.find_spec("socksio") is not None:
            return None
        return ConfigError.at(
            card.path, "backend.base_url",
            f"the environment variable {variable} names a SOCKS proxy ({scheme}://) for {base_url}, and calling "
            "through one needs the 'socksio' package, which is not installed",
            "pip install 'httpx[socks]' (or name the endpoint's host in NO_PROXY to call it directly)")
    if scheme not in ("http", "https"):
        return ConfigError.at(
            card.path, "backend.base_url",
            f"the environment variable {variable} names a proxy for {base_url} whose scheme {scheme or '(none)'}:// "
            "is not one httpx can call through (http://, https://, socks5://, socks5h://)",
            f"give {variable} one of those (or name the endpoint's host in NO_PROXY to call it directly)")
    return None


def refuse_unusable_proxies(cards: dict[str, ModelCard], given: set[str]) -> None:
    """A :class:`ConfigError` naming each remote card (not in ``given``, whose backends the caller built) whose
    endpoint the environment's HTTPS_PROXY / HTTP_PROXY / ALL_PROXY sends through a proxy httpx cannot use: a SOCKS
    proxy without socksio, a scheme httpx has no transport for, or a value that is not a URL. Asked when the Router
    starts: the process's environment is what every call to the model will see, so each call would fail (a URL
    httpx cannot read: a 500 internal error per request), and ``router serve`` would start and serve
    nothing from that model. Unlike an unset key variable (a warning,
    :func:`~router.cards.warn_of_unset_key_variables`) nothing set later in a deploy can mend it. The message names
    the variable, never its value (it may hold a password)."""
    problems: list[str] = []
    for name, card in cards.items():
        spec = card.backend
        if not isinstance(spec, OpenAIBackendSpec) or name in given:
            continue
        url = spec.base_url.rstrip("/") + "/chat/completions"
        proxy = env_proxy_for(url)
        if proxy is None:
            continue
        # unreadable first: the other check splits the value as a URL, which fails on some of these
        unusable = unreadable_proxy(card, spec.base_url, url, proxy) or unusable_proxy(card, url, proxy)
        if unusable is not None:
            problems.append(str(unusable))
    if problems:
        raise ConfigError("\n".join(problems))


def unreadable_proxy(card: ModelCard, base_url: str, url: str, proxy: str) -> ConfigError | None:
    """A :class:`ConfigError` where httpx cannot read ``proxy`` as a URL (``http://proxy:port``, ``http://[::1``):
    the backend's start would fail with httpx's own InvalidURL, an internal error on every call."""
    try:
        httpx.URL(proxy)
    except httpx.InvalidURL:
        variable = proxy_variable(url, proxy)
        return ConfigError.at(
            card.path, "backend.base_url",
            f"the environment variable {variable} names a proxy for {base_url} that is not a URL httpx can read",
            f"give {variable} as http://HOST:PORT (or name the endpoint's host in NO_PROXY to call it directly)")
    return None
