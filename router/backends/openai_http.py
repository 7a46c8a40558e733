"""Any OpenAI-compatible chat endpoint over HTTP (httpx), streaming via server-sent events.

Retries with exponential backoff on failures that happen before any output (connection errors, timeouts,
HTTP 429/5xx): the request had no effect yet, so retrying is safe. Energy is estimated from the card's
token profile, since the hardware is not ours to meter.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

from ..cards import ModelCard, OpenAIBackendSpec
from ..errors import BackendError, BackendUnavailableError, ConfigError
from .base import Backend, Generation, GenerationRequest, StreamEvent

log = logging.getLogger(__name__)
_RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


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
        self._url = spec.base_url.rstrip("/") + "/chat/completions"  # issue 8: aiohttp fast path
        self._session: Any = None
        self._session_loop: Any = None

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
        kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "unreachable"
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
        import asyncio

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

    # -- issue 8: non-streaming async call for the proxy's fast path ------------------------------------
    async def agenerate(self, request: GenerationRequest) -> Generation:
        """One non-streaming POST (cheaper than collecting a stream), with the same retries before any output.
        Uses aiohttp when installed (several times less client CPU per call than httpx), else httpx."""
        import asyncio

        body = self._body(request, stream=False)
        for attempt in range(self.spec.max_retries + 1):
            try:
                status, raw = await self._apost(body)
            except (httpx.TransportError, httpx.TimeoutException, asyncio.TimeoutError, OSError) as exc:
                if attempt < self.spec.max_retries:
                    await asyncio.sleep(self._backoff(attempt))
                    continue
                raise self._fail(exc, None) from exc
            except Exception as exc:  # aiohttp.ClientError and friends: transport failures
                if type(exc).__module__.startswith("aiohttp") and attempt < self.spec.max_retries:
                    await asyncio.sleep(self._backoff(attempt))
                    continue
                if type(exc).__module__.startswith("aiohttp"):
                    raise self._fail(exc, None) from exc
                raise
            if status in _RETRY_STATUS and attempt < self.spec.max_retries:
                await asyncio.sleep(self._backoff(attempt))
                continue
            if status >= 400:
                cls = BackendUnavailableError if status in (502, 503, 504) else BackendError
                detail = raw[:300].decode("utf-8", "replace")
                raise cls(f"{self.card.name}: endpoint answered HTTP {status}: {detail}")
            return self._generation(raw, request)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _apost(self, body: dict[str, Any]) -> tuple[int, bytes]:
        import asyncio

        try:
            import aiohttp
        except ImportError:
            response = await self._aclient.post("/chat/completions", json=body)
            return response.status_code, response.content
        loop = asyncio.get_running_loop()
        if self._session is None or self._session_loop is not loop or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=self.spec.timeout_s, connect=min(10.0, self.spec.timeout_s))
            self._session = aiohttp.ClientSession(
                headers=dict(self._client.headers), timeout=timeout,
                connector=aiohttp.TCPConnector(limit=256, ttl_dns_cache=300),
            )
            self._session_loop = loop
        async with self._session.post(self._url, data=json.dumps(body).encode()) as response:
            return response.status, await response.read()

    def _generation(self, raw: bytes, request: GenerationRequest) -> Generation:
        try:
            data = json.loads(raw)
            choice = data["choices"][0]
            text = (choice.get("message") or {}).get("content") or ""
            usage = data.get("usage") or {}
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise BackendError(f"{self.card.name}: endpoint sent a malformed completion: {raw[:200]!r}") from exc
        return Generation(
            text=text,
            finish_reason=choice.get("finish_reason") or "stop",
            prompt_tokens=usage.get("prompt_tokens") if usage.get("prompt_tokens") is not None
            else self.prompt_tokens(request.messages),
            completion_tokens=usage.get("completion_tokens") if usage.get("completion_tokens") is not None
            else self.count_tokens(text),
        )
    # -- end issue 8 --

    def close(self) -> None:
        self._client.close()
        session, loop, self._session = self._session, self._session_loop, None
        if session is not None and not session.closed and loop is not None and not loop.is_closed():
            try:  # issue 8: the aiohttp session belongs to its event loop; close it there
                if loop.is_running():
                    loop.call_soon_threadsafe(lambda: loop.create_task(session.close()))
                else:
                    loop.run_until_complete(session.close())
            except RuntimeError:
                pass


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
