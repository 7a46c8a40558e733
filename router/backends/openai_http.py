"""Any OpenAI-compatible chat endpoint over HTTP, streaming via server-sent events.

Streams and sync calls go through httpx. The non-streaming async call (``agenerate``, what the proxy awaits on
its event loop for every routed request) goes through :class:`~router.backends._http11.HTTPPool`, a small
keep-alive HTTP/1.1 client written for that one job (its module says why and which benchmark measures it).

Retries with exponential backoff on failures that happen before any output (connection errors, timeouts,
HTTP 429/5xx): the request had no effect yet, so retrying is safe. Energy is estimated from the card's
token profile, since the hardware is not ours to meter.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic_core import from_json, to_json

from ..cards import ModelCard, OpenAIBackendSpec
from ..errors import BackendError, BackendUnavailableError, ConfigError
from ._http11 import HTTPPool
from .base import Backend, Generation, GenerationRequest, StreamEvent

log = logging.getLogger(__name__)
_RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


def _env_proxy_for(url: str) -> bool:
    """Whether HTTP_PROXY / HTTPS_PROXY / ALL_PROXY (less NO_PROXY) apply to ``url``, as httpx would read them."""
    import urllib.request

    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(parts.hostname or "")


class OpenAIHTTPBackend(Backend):
    local = False

    def __init__(self, card: ModelCard, *, transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(card)
        spec = card.backend
        if not isinstance(spec, OpenAIBackendSpec):
            raise ConfigError(f"{card.path}: backend.type must be 'openai' for {type(self).__name__}")
        self.spec = spec
        headers = {"Content-Type": "application/json"}
        if spec.api_key_env:
            key = os.environ.get(spec.api_key_env)
            if key:
                headers["Authorization"] = f"Bearer {key}"
        timeout = httpx.Timeout(spec.timeout_s, connect=min(10.0, spec.timeout_s))
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        self._client = httpx.Client(
            base_url=spec.base_url.rstrip("/"), headers=headers, timeout=timeout, transport=transport,
            limits=limits,
        )
        self._aclient = httpx.AsyncClient(
            base_url=spec.base_url.rstrip("/"), headers=headers, timeout=timeout, limits=limits
        )
        self._url = spec.base_url.rstrip("/") + "/chat/completions"
        self._headers = headers
        self._http: HTTPPool | None = None
        # the own pool speaks to the endpoint directly; where the environment names an HTTP(S) proxy for it,
        # httpx (which honours those variables) carries the call instead
        self._use_pool = not _env_proxy_for(self._url)

    def _body(self, request: GenerationRequest, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.spec.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "max_tokens": request.max_tokens or self.spec.default_max_tokens,
            "stream": stream,
        }
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.stop:
            body["stop"] = request.stop
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def _backoff(self, attempt: int) -> float:
        return min(2.0, 0.1 * (2**attempt))

    def _fail(self, exc: Exception | None, response: httpx.Response | None) -> BackendError:
        if response is not None:
            detail = response.text[:300]
            cls = BackendUnavailableError if response.status_code in (502, 503, 504) else BackendError
            return cls(f"{self.card.name}: endpoint answered HTTP {response.status_code}: {detail}")
        kind = "timed out" if isinstance(exc, httpx.TimeoutException | TimeoutError) else "unreachable"
        return BackendUnavailableError(f"{self.card.name}: endpoint {self.spec.base_url} {kind}: {exc}")

    # -- sync -------------------------------------------------------------------------------------------
    def stream(self, request: GenerationRequest) -> Iterator[StreamEvent]:
        body = self._body(request, stream=True)
        for attempt in range(self.spec.max_retries + 1):
            try:
                with self._client.stream("POST", "/chat/completions", json=body) as response:
                    if response.status_code in _RETRY_STATUS and attempt < self.spec.max_retries:
                        response.read()
                        log.warning("%s: HTTP %s, retrying", self.card.name, response.status_code)
                        time.sleep(self._backoff(attempt))
                        continue
                    if response.status_code >= 400:
                        response.read()
                        raise self._fail(None, response)
                    yield from _parse_sse(response.iter_lines(), self.card.name)
                    return
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                if attempt < self.spec.max_retries:
                    log.warning("%s: %s, retrying", self.card.name, exc)
                    time.sleep(self._backoff(attempt))
                    continue
                raise self._fail(exc, None) from exc

    # -- async ------------------------------------------------------------------------------------------
    async def astream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        body = self._body(request, stream=True)
        for attempt in range(self.spec.max_retries + 1):
            try:
                async with self._aclient.stream("POST", "/chat/completions", json=body) as response:
                    if response.status_code in _RETRY_STATUS and attempt < self.spec.max_retries:
                        await response.aread()
                        await asyncio.sleep(self._backoff(attempt))
                        continue
                    if response.status_code >= 400:
                        await response.aread()
                        raise self._fail(None, response)
                    parser = _SSEParser(self.card.name)
                    async for line in response.aiter_lines():
                        for event in parser.feed(line):
                            yield event
                    for event in parser.finish():
                        yield event
                    return
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                if attempt < self.spec.max_retries:
                    await asyncio.sleep(self._backoff(attempt))
                    continue
                raise self._fail(exc, None) from exc

    async def agenerate(self, request: GenerationRequest) -> Generation:
        """One non-streaming POST (cheaper than collecting a stream), with the same retries before any output.
        Sent through :class:`~router.backends._http11.HTTPPool` (the proxy awaits this for every routed request,
        and that client's CPU per call is a fraction of httpx's), or httpx where an environment proxy applies."""
        data = to_json(self._body(request, stream=False))
        for attempt in range(self.spec.max_retries + 1):
            try:
                status, raw = await self._post(data)
            except (OSError, httpx.TransportError) as exc:  # refused, reset, closed early, malformed, timed out
                if attempt < self.spec.max_retries:
                    await asyncio.sleep(self._backoff(attempt))
                    continue
                raise self._fail(exc, None) from exc
            if status in _RETRY_STATUS and attempt < self.spec.max_retries:
                await asyncio.sleep(self._backoff(attempt))
                continue
            if status >= 400:
                cls = BackendUnavailableError if status in (502, 503, 504) else BackendError
                detail = raw[:300].decode("utf-8", "replace")
                raise cls(f"{self.card.name}: endpoint answered HTTP {status}: {detail}")
            return self._generation(raw, request)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _post(self, data: bytes) -> tuple[int, bytes]:
        if self._use_pool:
            return await self._pool().post(data)
        response = await self._aclient.post("/chat/completions", content=data)
        return response.status_code, response.content

    def _pool(self) -> HTTPPool:
        """The connection pool of the running event loop (connections belong to the loop that opened them)."""
        loop = asyncio.get_running_loop()
        pool = self._http
        if pool is None or pool.loop is not loop:
            if pool is not None:
                pool.close_soon()
            pool = self._http = HTTPPool(self._url, self._headers, timeout_s=self.spec.timeout_s,
                                          connect_timeout_s=min(10.0, self.spec.timeout_s), loop=loop)
        return pool

    def _generation(self, raw: bytes, request: GenerationRequest) -> Generation:
        """The completion's text, finish reason and token counts, type-checked (the proxy serialises them as
        they are, without a model validation in between)."""
        try:
            data = from_json(raw)
            choice = data["choices"][0]
            text = (choice.get("message") or {}).get("content") or ""
            finish = choice.get("finish_reason") or "stop"
            usage = data.get("usage") or {}
            if not isinstance(text, str):
                raise TypeError("message.content must be a string")
            prompt, completion = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise BackendError(f"{self.card.name}: endpoint sent a malformed completion: {raw[:200]!r}") from exc
        return Generation(
            text=text,
            finish_reason=finish if isinstance(finish, str) else str(finish),
            prompt_tokens=self.prompt_tokens(request.messages) if prompt is None else prompt,
            completion_tokens=self.count_tokens(text) if completion is None else completion,
        )

    def close(self) -> None:
        self._client.close()
        pool, self._http = self._http, None
        if pool is not None:  # the pool's connections belong to its event loop; close them there
            pool.close_soon()


def _count(value: Any) -> int | None:
    """A token count from the endpoint's JSON, or None (estimate it) when missing or not a count (``10.0`` is
    10; ``"ten"``, ``-1`` and ``1e400`` are not counts)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 2**53:
        return None
    return int(value) if value == int(value) else None


class _SSEParser:
    """Turns ``data: {...}`` lines of an OpenAI chat stream into StreamEvents."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.finish_reason: str | None = None
        self.usage: dict[str, int] | None = None
        self.done = False

    def feed(self, line: str) -> list[StreamEvent]:
        line = line.strip()
        if not line.startswith("data:"):
            return []
        data = line[5:].strip()
        if data == "[DONE]":
            self.done = True
            return []
        try:
            chunk = json.loads(data)
        except ValueError as exc:
            raise BackendError(f"{self.name}: endpoint sent a malformed stream chunk: {data[:200]}") from exc
        if "error" in chunk:
            raise BackendError(f"{self.name}: endpoint reported an error mid-stream: {chunk['error']}")
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        events = []
        for choice in chunk.get("choices") or []:
            text = (choice.get("delta") or {}).get("content") or ""
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
            if text:
                events.append(StreamEvent(text=text))
        return events

    def finish(self) -> list[StreamEvent]:
        if not self.done and self.finish_reason is None:
            raise BackendError(f"{self.name}: the stream ended before the model finished")
        usage = self.usage or {}
        return [
            StreamEvent(
                finish_reason=self.finish_reason or "stop",
                prompt_tokens=usage.get("prompt_tokens"),
                completion_tokens=usage.get("completion_tokens"),
            )
        ]


def _parse_sse(lines: Iterator[str], name: str) -> Iterator[StreamEvent]:
    parser = _SSEParser(name)
    for line in lines:
        yield from parser.feed(line)
    yield from parser.finish()
