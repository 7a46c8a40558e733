"""Any OpenAI-compatible chat endpoint over HTTP, streaming via server-sent events.

Streams and sync calls go through httpx. The non-streaming async call (``agenerate``, what the proxy awaits on
its event loop for every routed request) goes through :class:`~router.backends._http11.HTTPPool`, a small
keep-alive HTTP/1.1 client written for that one job (its module says why and which benchmark measures it).

Time limits. A call ends by the sooner of two bounds: the card's ``timeout_s`` after it started (all attempts
and backoff waits together, not each read) and the request's ``deadline``. Past the deadline it raises
:class:`~router.errors.DeadlineExceededError`; past only ``timeout_s``, :class:`~router.errors.BackendUnavailableError`
("timed out"), so the Router may try another model. Every wait of an async call is an asyncio timeout (or the
pool's timer) set to the time left; every connect, read and write of a sync call is given at most the time left;
so both end at the bound however slowly the endpoint sends (:mod:`router.backends._time_limits` says how, and
what changes behind an HTTP proxy named in the environment). ``request.cancel`` is checked after every chunk,
by a sync call while it waits for the response's head too, and during every backoff wait and before every retry:
a cancelled call sends nothing more.

Retries, with exponential backoff, only for failures before any output (connection errors, timeouts that leave
time, HTTP 408/409/429/5xx): the request had no effect yet, so sending it again is safe. None starts (and no
backoff wait begins) when it could not start before the bound. A busy or down endpoint's ``Retry-After`` is
honoured: up to the backoff's cap (2 s) the retry waits that long; a longer one ends the retries at once (a request
waiting here holds its caller, who may have other models to try). The last one is kept on the error as
``retry_after_s``, the proxy's ``Retry-After`` when no other model answers.
Energy is estimated from the card's token profile, since the hardware is not ours to meter.

A stream request the endpoint answers with one JSON completion (it ignored ``"stream": true``, as some servers and
gateways do) is read as a whole answer is and passed on as a stream of one piece.

Length: one backend's sync, async and streaming calls with their shared time limits; the hand-written HTTP/1.1
client is its own module.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import email.utils
import functools
import json
import logging
import math
import os
import socket
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from typing import Any

import httpx
from pydantic_core import from_json, to_json

from .._forks import renew_after_fork
from ..cards import ModelCard, OpenAIBackendSpec
from ..errors import (
    BackendError,
    BackendRefusedError,
    BackendUnavailableError,
    ConfigError,
    DeadlineExceededError,
    RouterError,
)
from ._http11 import HTTPPool, NotSentTimeout
from ._time_limits import CANCEL_POLL_S, Bound, BoundedTransport, CheckedStream, bounded, cancellable, within
from .base import Backend, Generation, GenerationRequest, StreamEvent, reasoning_text
from .env_proxies import env_proxy_for, unusable_proxy
from .openai_shapes import CallsBegun, logprobs_of, option_fields, reasoning_of, tool_call_deltas, tool_calls

log = logging.getLogger(__name__)
_RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
_REFUSED_STATUS = {400, 413, 422}
_ROOT_EXAMPLE = "http://localhost:11434/v1 for Ollama, http://localhost:8000/v1 for vLLM"
"""The endpoint refusing this request (a parameter it does not support, a body too large for it), not failing: the
next model may take it. 401/403 (a bad key) and 404 (a wrong URL or model name in the card) fail every request
there, so they are the model's failures."""
_RETRY_AFTER_STATUS = {429, 503}
"""The statuses whose ``Retry-After`` says when the endpoint will take calls again (RFC 6585, RFC 9110)."""
_NOTHING_SENT = (ConnectionRefusedError, socket.gaierror, httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout,
                 NotSentTimeout)
"""Transport failures that leave no doubt the request never reached the endpoint: refused, a name that does not
resolve, or no connection made (a host that does not answer) or free in time. (A reset, or a timeout once the
request was sent, may come after the endpoint began generating.)"""
_RETRY_AFTER_MAX_S = 3600.0
"""The longest ``Retry-After`` passed on from an endpoint: a larger one (or a mistaken one) would keep clients
away for hours from a router that may have other models to offer by then."""
_CONNECT_S = 10.0
"""Longest wait for a TCP (and TLS) connection, within the call's bound: a dead host fails fast and leaves
time for a retry."""


def retry_after_s(value: str | None) -> float | None:
    """The seconds an endpoint's ``Retry-After`` asks for, at most :data:`_RETRY_AFTER_MAX_S`; ``None`` where it
    is absent or unreadable. Both of RFC 9110's forms are read: delay-seconds (a fraction too, which some
    endpoints send) and an HTTP-date, counted from now by this machine's clock (one in the past: 0)."""
    if not value or not value.strip():
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000": no zone given; HTTP-dates are in GMT
            when = when.replace(tzinfo=datetime.timezone.utc)
        seconds = when.timestamp() - time.time()
    if math.isnan(seconds):
        return None
    return min(max(0.0, seconds), _RETRY_AFTER_MAX_S)


_MAX_BACKOFF_S = 2.0
"""The longest wait before sending a call again: the backoff's cap, and the most of an endpoint's ``Retry-After``
that is waited out (a longer one is the caller's to honour, and another model may answer meanwhile)."""


class _StreamOptionsRefused(Exception):
    """The endpoint refused a stream request (``error``, a 400 or 422) naming its ``stream_options``."""

    def __init__(self, error: BackendError) -> None:
        super().__init__(error.message)
        self.error = error


def _refusal(failure: Exception) -> Exception:
    """An HTTP error answer to a stream request (what :meth:`OpenAIHTTPBackend._status_failure` made of it), as
    :class:`_StreamOptionsRefused` where the endpoint refused the request naming ``stream_options``."""
    if isinstance(failure, BackendRefusedError) and "stream_options" in (failure.detail or ""):
        return _StreamOptionsRefused(failure)
    return failure


class _Retryable(Exception):
    """A failure before the endpoint produced anything (``error`` says what): the call may be sent again."""

    def __init__(self, error: BackendError) -> None:
        super().__init__(error.message)
        self.error = error


class OpenAIHTTPBackend(Backend):
    local = False
    bounds_itself = True

    def __init__(self, card: ModelCard, *, transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(card)
        spec = card.backend
        if not isinstance(spec, OpenAIBackendSpec):
            raise ConfigError(f"{card.path}: backend.type must be 'openai' for {type(self).__name__}")
        self.spec = spec
        self._reasoning = card.can("reasoning")
        # reasoning models take the newer name for the answer's token limit (their limit counts the reasoning
        # tokens too)
        self._limit_field = "max_completion_tokens" if self._reasoning else "max_tokens"
        headers = {"Content-Type": "application/json"}
        if spec.api_key_env:
            key = os.environ.get(spec.api_key_env)
            if not key:  # calling without it would only earn the endpoint's 401, which says less
                raise ConfigError.at(
                    card.path, "backend.api_key_env", f"the environment variable {spec.api_key_env} is not set",
                    f"export {spec.api_key_env} with the key for {spec.base_url} (or drop `api_key_env` for an "
                    "endpoint that needs no key)")
            headers["Authorization"] = f"Bearer {key}"
        timeout = httpx.Timeout(spec.timeout_s, connect=min(_CONNECT_S, spec.timeout_s))
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        self._headers = headers
        self._timeout, self._limits = timeout, limits
        self._given_transport = transport
        self._url = spec.base_url.rstrip("/") + "/chat/completions"
        self._proxy = env_proxy_for(self._url)
        if self._proxy is not None and (unusable := unusable_proxy(card, self._url, self._proxy)) is not None:
            raise unusable
        self._client = self._sync_client()
        self._loops: dict[asyncio.AbstractEventLoop, _LoopConnections] = {}
        renew_after_fork(self)
        # the own pool speaks to the endpoint directly; where the environment names an HTTP(S) proxy for it,
        # httpx (which honours those variables) carries the call instead
        self._use_pool = self._proxy is None
        self._stream_options = True
        """Whether streams ask for the usage at their end (``stream_options``): until the endpoint refuses them."""

    def _sync_client(self) -> httpx.Client:
        # httpx reads the proxy variables only for a client it makes the transport of: the sync client's own
        # transport is given the proxy they name, as the async client's gets it from httpx
        return httpx.Client(base_url=self.spec.base_url.rstrip("/"), headers=self._headers, timeout=self._timeout,
                            transport=self._given_transport or BoundedTransport(self._limits, self._proxy))

    def _renew_after_fork(self) -> None:
        """A forked child (gunicorn --preload, multiprocessing's fork, Celery's prefork pool) holds copies of the
        parent's keep-alive sockets: used by both, a request of one process gets the answer to another's. The child
        starts pools of its own; the inherited sockets are dropped, not closed through their pools, whose locks a
        parent's thread may have held at the fork (dropping a copy closes only the child's descriptor)."""
        if self._given_transport is None:
            self._client = self._sync_client()
        self._loops = {}

    def _body(self, request: GenerationRequest, stream: bool, stream_options: bool = True) -> bytes:
        body: dict[str, Any] = {
            "model": self.spec.model,
            "messages": [m.openai() for m in request.messages],
            "stream": stream,
        }
        body[self._limit_field] = request.max_tokens or self.spec.default_max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.stop:
            body["stop"] = request.stop
        if stream and stream_options:
            body["stream_options"] = {"include_usage": True}
        options = request.options
        if not options.plain or options.passthrough or options.reasoning_effort:
            body.update(option_fields(options, self._reasoning))
        return to_json(body)

    def _without_stream_options(self, refused: _StreamOptionsRefused, with_options: bool) -> bool:
        """A stream request refused for its ``stream_options`` (OpenAI's, for the usage at the stream's end, which
        Azure OpenAI's older API versions and some gateways refuse as an unknown parameter, where the same request
        without streaming is answered): ``False``, the stream is sent again at once without them, as every stream to
        this endpoint from now on (the usage is estimated where it reports none). Raises the refusal when the
        request had none to drop."""
        if not with_options:
            raise refused.error
        if self._stream_options:
            self._stream_options = False
            log.warning("%s: the model's endpoint refuses stream_options (its usage at a stream's end); streams are "
                        "sent without them, their token counts estimated where the endpoint reports none (%s)",
                        self.card.name, refused.error.detail)
        return False

    # -- failures and time limits -----------------------------------------------------------------------
    def _start(self, request: GenerationRequest) -> Bound:
        request.check(self.card.name)
        return Bound(self.spec.timeout_s, request)

    # Messages name the model and what happened, never the endpoint's URL or what it answered (an upstream's
    # error body can hold keys, internal hosts and paths): those go to ``detail``, which is logged, not sent.
    def _expired(self, bound: Bound, nothing_sent: bool = False) -> RouterError:
        """The bound has passed. After the endpoint refused every attempt it answered (a rate limit's 429 on each
        retry) and none reached the model, the error says so and is marked
        :func:`~router.backends.base.never_started` (0 J) as the refusal itself would have been: the attempt the
        bound cut off was sent to an endpoint turning the request away, and charging the card's per_call_j for
        it would spend a rate-limited model's budget on energy its endpoint did not draw. So is a call whose
        every attempt ended before its request was sent (``nothing_sent``: no connection made in time)."""
        refused = None if bound.reached else bound.refused
        if nothing_sent and refused is None and not bound.reached:
            what = "no connection to the model's endpoint was made before"
        elif refused is not None:
            what = f"the model's endpoint answered HTTP {refused} to every attempt until"
        else:
            what = ""
        if what:
            error: RouterError = (
                DeadlineExceededError(f"{self.card.name}: {what} the request's deadline passed",
                                      detail=self.spec.base_url) if bound.by_deadline else
                BackendUnavailableError(f"{self.card.name}: {what} the card's timeout_s ({self.spec.timeout_s:g} s) "
                                        "passed", detail=self.spec.base_url))
            error.never_started = True  # type: ignore[attr-defined]
            return error
        if bound.by_deadline:
            return DeadlineExceededError(
                f"{self.card.name}: the request's deadline passed while waiting for the model's endpoint",
                detail=self.spec.base_url)
        return BackendUnavailableError(
            f"{self.card.name}: the model's endpoint timed out: no complete answer within the card's timeout_s "
            f"({self.spec.timeout_s:g} s)", detail=self.spec.base_url)

    def _status_failure(self, status: int, raw: bytes, retry_after: str | None, bound: Bound) -> Exception:
        """An HTTP error answer: retryable (408/409/429/5xx) or final; the endpoint refusing this request
        (:data:`_REFUSED_STATUS`) is a :class:`BackendRefusedError`, which does not count towards a cooldown.
        A busy or down endpoint's ``Retry-After`` (the header's value) becomes the error's ``retry_after_s``, so
        a caller left with no other model is told when to try again. A 4xx is the endpoint turning the request
        away before its model ran: unless an earlier attempt may have reached the model, the error is marked
        :func:`~router.backends.base.never_started`, so the call is recorded and charged 0 J."""
        # 429: the endpoint is busy (its rate limit, not the caller's), so the caller is told the service is
        # unavailable for now (503 from the proxy), as for a 503 of its own
        cls = (BackendUnavailableError if status in (429, 502, 503, 504)
               else BackendRefusedError if status in _REFUSED_STATUS else BackendError)
        # the operator's usual slip behind a 404 or 405 is a base_url that is not the API's root (Ollama's without
        # /v1): the log says so beside the URL
        hint = (f" (is base_url the API's root, where /chat/completions follows? e.g. {_ROOT_EXAMPLE})"
                if status in (404, 405) else "")
        error = cls(f"{self.card.name}: the model's endpoint answered HTTP {status}",
                    detail=f"{self.spec.base_url}{hint}: {raw[:300].decode('utf-8', 'replace')}",
                    retry_after_s=retry_after_s(retry_after) if status in _RETRY_AFTER_STATUS else None)
        if status >= 500:  # the model may have begun on it before the endpoint failed
            bound.reached = True
        elif not bound.reached:
            error.never_started = True  # type: ignore[attr-defined]
            bound.refused = status
        return _Retryable(error) if status in _RETRY_STATUS else error

    def _transport_failure(self, exc: Exception, bound: Bound, sent: bool = True) -> Exception:
        """A connection that failed or timed out: the bound's own error once it has passed, else retryable.
        ``sent=False``: the attempt is known to have sent nothing, whatever ``exc`` is."""
        nothing_sent = not sent or isinstance(exc, _NOTHING_SENT)
        if bound.passed():
            return self._expired(bound, nothing_sent)
        timed_out = isinstance(exc, httpx.TimeoutException | TimeoutError) and not nothing_sent
        kind = "timed out" if timed_out else "is unreachable"
        error = BackendUnavailableError(f"{self.card.name}: the model's endpoint {kind}",
                                        detail=f"{self.spec.base_url}: {exc!r}")
        if nothing_sent and not bound.reached:
            # no connection, in this attempt or before: the model did no work, so the call is charged 0 J
            error.never_started = True  # type: ignore[attr-defined]
        else:
            bound.reached = True
        return _Retryable(error)

    def _retry_wait(self, failure: _Retryable, attempt: int, bound: Bound, request: GenerationRequest,
                    produced: bool = False) -> float:
        """Seconds to wait before sending again; raises ``failure``'s error when there is no next attempt (all
        used, output already given, or the wait would not end before the bound)."""
        wait = min(_MAX_BACKOFF_S, 0.1 * (2**attempt))
        asked = failure.error.retry_after_s  # the endpoint's Retry-After (429, 503)
        if asked is not None:
            if asked > _MAX_BACKOFF_S:  # not worth holding the request: the next model answers, or the caller
                raise failure.error from failure.__cause__  # gets the endpoint's Retry-After
            wait = max(wait, asked)
        if produced or attempt >= self.spec.max_retries or wait >= bound.left():
            raise failure.error from failure.__cause__
        log.warning("%s%s (%s); retrying in %.1f s", f"{request.request_id}: " if request.request_id else "",
                    failure.error.message, failure.error.detail, wait)
        return wait

    # ``request.cancel`` is a plain flag nobody can wait on (a CancelFlag, set from any thread), so a backoff wait
    # reads it every CANCEL_POLL_S: a cancelled call ends that soon after and sends nothing more. (A cancelled
    # task wakes an async sleep, but Router.close() and a caller's cancel= event only set the flag.)
    def _back_off(self, wait: float, request: GenerationRequest, bound: Bound) -> None:
        """Wait ``wait`` seconds before the next attempt; raises CancelledError once the call is cancelled."""
        cancel = request.cancel
        if cancel is None:
            time.sleep(wait)
        else:
            end = time.monotonic() + wait
            while not cancel.is_set() and (left := end - time.monotonic()) > 0:
                time.sleep(min(CANCEL_POLL_S, left))
        self._check_between_attempts(request, bound)

    async def _aback_off(self, wait: float, request: GenerationRequest, bound: Bound) -> None:
        """The async twin of :meth:`_back_off`."""
        cancel = request.cancel
        if cancel is None:
            await asyncio.sleep(wait)
        else:
            end = time.monotonic() + wait
            while not cancel.is_set() and (left := end - time.monotonic()) > 0:
                await asyncio.sleep(min(CANCEL_POLL_S, left))
        self._check_between_attempts(request, bound)

    def _check_between_attempts(self, request: GenerationRequest, bound: Bound) -> None:
        """``request.check``; a call cancelled (or out of time) between attempts none of which reached the model
        (refused, or never connected) did no work there: its error is marked
        :func:`~router.backends.base.never_started`, so it is charged 0 J as its failed attempts were."""
        try:
            request.check(self.card.name)
        except RouterError as exc:
            if not bound.reached:
                exc.never_started = True  # type: ignore[attr-defined]
            raise

    def _check(self, request: GenerationRequest, bound: Bound) -> None:
        request.check(self.card.name)
        if time.monotonic() >= bound.end:
            raise self._expired(bound)

    # -- sync -------------------------------------------------------------------------------------------
    def stream(self, request: GenerationRequest) -> Iterator[StreamEvent]:
        bound = self._start(request)
        with_options = self._stream_options
        body = self._body(request, stream=True, stream_options=with_options)
        produced = False
        attempt = 0
        while True:
            try:
                for event in self._stream_once(body, request, bound):
                    produced = True
                    yield event
                return
            except _StreamOptionsRefused as refused:
                with_options = self._without_stream_options(refused, with_options)
                body = self._body(request, stream=True, stream_options=False)
            except _Retryable as failure:
                self._back_off(self._retry_wait(failure, attempt, bound, request, produced), request, bound)
                attempt += 1

    def _stream_once(self, body: bytes, request: GenerationRequest, bound: Bound) -> Iterator[StreamEvent]:
        watch = _SyncSendWatch()
        try:
            with self._send(body, request, bound, watch) as response:
                if response.status_code >= 400:
                    raise _refusal(self._status_failure(response.status_code, response.read(),
                                                        response.headers.get("retry-after"), bound))
                if _is_json(response):
                    yield from self._whole_answer_events(response.read(), request)
                    return
                yield from _parse_sse(response.iter_lines(), self._parser(request))
        except httpx.TransportError as exc:  # timeouts included
            raise self._transport_failure(exc, bound, watch.sent) from exc

    def generate(self, request: GenerationRequest) -> Generation:
        """One non-streaming POST, the sync twin of :meth:`agenerate`."""
        bound = self._start(request)
        body = self._body(request, stream=False)
        for attempt in range(self.spec.max_retries + 1):
            try:
                return self._generation(self._post_once(body, request, bound), request)
            except _Retryable as failure:
                self._back_off(self._retry_wait(failure, attempt, bound, request), request, bound)
        raise AssertionError("unreachable")  # pragma: no cover

    def _post_once(self, body: bytes, request: GenerationRequest, bound: Bound) -> bytes:
        watch = _SyncSendWatch()
        try:
            with self._send(body, request, bound, watch) as response:
                raw = response.read()
        except httpx.TransportError as exc:
            raise self._transport_failure(exc, bound, watch.sent) from exc
        if response.status_code >= 400:
            raise self._status_failure(response.status_code, raw, response.headers.get("retry-after"), bound)
        return raw

    @contextlib.contextmanager
    def _send(self, body: bytes, request: GenerationRequest, bound: Bound,
              watch: _SyncSendWatch) -> Iterator[httpx.Response]:
        """POST ``body``; ``request.cancel`` is checked while the response's head is awaited (``Router.close()``
        cancels a call the endpoint is slow to answer) and, with the bound, after every chunk of its body.
        ``watch`` learns whether the request went out."""
        left = bound.left()
        if left <= 0:
            raise self._expired(bound, nothing_sent=True)  # this attempt sent nothing
        timeout = httpx.Timeout(left, connect=min(_CONNECT_S, left))
        post = self._client.build_request("POST", "/chat/completions", content=body, timeout=timeout,
                                          extensions={"trace": watch})
        check = functools.partial(self._check, request, bound)
        with bounded(bound.end), cancellable(check):
            response = self._client.send(post, stream=True)
        if response.status_code < 400:  # the endpoint took the request: a bound passing now cut off its work
            bound.reached = True
        try:
            assert isinstance(response.stream, httpx.SyncByteStream)
            response.stream = CheckedStream(response.stream, bound.end, check)
            yield response
        finally:
            response.close()

    # -- async ------------------------------------------------------------------------------------------
    async def astream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        bound = self._start(request)
        with_options = self._stream_options
        body = self._body(request, stream=True, stream_options=with_options)
        produced = False
        attempt = 0
        while True:
            try:
                async for event in self._astream_once(body, request, bound):
                    produced = True
                    yield event
                return
            except _StreamOptionsRefused as refused:
                with_options = self._without_stream_options(refused, with_options)
                body = self._body(request, stream=True, stream_options=False)
            except _Retryable as failure:
                await self._aback_off(self._retry_wait(failure, attempt, bound, request, produced), request, bound)
                attempt += 1

    async def _astream_once(self, body: bytes, request: GenerationRequest,
                            bound: Bound) -> AsyncIterator[StreamEvent]:
        response: httpx.Response | None = None
        watch = _SendWatch()
        try:
            client = self._async_client(await self._connections())
            post = client.build_request("POST", "/chat/completions", content=body, extensions={"trace": watch})
            response = await within(client.send(post, stream=True), bound.end)
            if response.status_code < 400:  # the endpoint took the request: a bound passing now cut off its work
                bound.reached = True
            else:
                raise _refusal(self._status_failure(response.status_code, await within(response.aread(), bound.end),
                                                    response.headers.get("retry-after"), bound))
            if _is_json(response):
                for event in self._whole_answer_events(await within(response.aread(), bound.end), request):
                    yield event
                return
            parser = self._parser(request)
            lines = response.aiter_lines()
            while True:
                try:
                    line = await within(anext(lines), bound.end)
                except StopAsyncIteration:
                    break
                request.check(self.card.name)
                for event in parser.feed(line):
                    yield event
            for event in parser.finish():
                yield event
        except (httpx.TransportError, TimeoutError) as exc:
            raise self._transport_failure(exc, bound, watch.sent) from exc
        finally:
            if response is not None:
                await response.aclose()

    async def agenerate(self, request: GenerationRequest) -> Generation:
        """One non-streaming POST (cheaper than collecting a stream), with the same retries before any output.
        Sent through :class:`~router.backends._http11.HTTPPool` (the proxy awaits this for every routed request,
        and that client's CPU per call is a fraction of httpx's), or httpx where an environment proxy applies."""
        bound = self._start(request)
        body = self._body(request, stream=False)
        for attempt in range(self.spec.max_retries + 1):
            try:
                return self._generation(await self._apost_once(body, bound), request)
            except _Retryable as failure:
                await self._aback_off(self._retry_wait(failure, attempt, bound, request), request, bound)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _apost_once(self, body: bytes, bound: Bound) -> bytes:
        left = bound.left()
        if left <= 0:
            raise self._expired(bound, nothing_sent=True)  # this attempt sent nothing
        # the own pool raises NotSentTimeout where its time ran out before sending; httpx's (behind an environment
        # proxy) ends by the bound's asyncio timeout, which says only that the time ran out: the watch says whether
        # the request had gone out by then (connecting to the proxy, or waiting for its tunnel, it had not)
        watch: _SendWatch | None = None
        try:
            # the running loop's connections; made (a coroutine) on its first call only
            connections = self._loops.get(asyncio.get_running_loop()) or await self._connections()
            if self._use_pool:
                status, raw, retry_after = await self._pool(connections).post(body, timeout_s=left)
            else:
                watch = _SendWatch()
                response = await within(self._async_client(connections).post(
                    "/chat/completions", content=body, extensions={"trace": watch}), bound.end)
                status, raw, retry_after = response.status_code, response.content, response.headers.get("retry-after")
        except (OSError, httpx.TransportError) as exc:  # refused, reset, closed early, malformed, timed out
            raise self._transport_failure(exc, bound, watch is None or watch.sent) from exc
        if status >= 400:
            raise self._status_failure(status, raw, retry_after, bound)
        return raw

    async def _connections(self) -> _LoopConnections:
        """The running event loop's connections (a client kept from an earlier ``asyncio.run`` would fail on the
        next: connections belong to the loop that opened them). Those of loops that have closed are let go."""
        loop = asyncio.get_running_loop()
        connections = self._loops.get(loop)
        if connections is None:
            for other in list(self._loops):
                if other.is_closed():
                    self._loops.pop(other, None)
            connections = self._loops[loop] = _LoopConnections()
            await connections.close_at_shutdown()
        return connections

    def _async_client(self, connections: _LoopConnections) -> httpx.AsyncClient:
        if connections.client is None:
            connections.client = httpx.AsyncClient(base_url=self.spec.base_url.rstrip("/"), headers=self._headers,
                                                   timeout=self._timeout, limits=self._limits)
        return connections.client

    def _pool(self, connections: _LoopConnections) -> HTTPPool:
        if connections.pool is None:
            connections.pool = HTTPPool(self._url, self._headers, timeout_s=self.spec.timeout_s,
                                        connect_timeout_s=min(_CONNECT_S, self.spec.timeout_s),
                                        loop=asyncio.get_running_loop())
        return connections.pool

    def _parser(self, request: GenerationRequest) -> _SSEParser:
        return _SSEParser(self.card.name, self.card.context_length,
                          functools.partial(self._whole_answer_events, request=request))

    def _whole_answer_events(self, raw: bytes, request: GenerationRequest) -> list[StreamEvent]:
        """A stream's events from an endpoint that ignored ``"stream": true`` and answered one JSON completion (some
        OpenAI-compatible servers and gateways do): the whole answer as one piece, then its finish reason and token
        counts, read and checked as :meth:`generate` reads an answer (an error body is the endpoint failing, as
        there)."""
        gen = self._generation(raw, request)
        events = []
        if gen.text or gen.tool_calls or gen.logprobs or gen.refusal or gen.reasoning:
            calls = [{"index": i, **call} for i, call in enumerate(gen.tool_calls)] if gen.tool_calls else None
            events.append(StreamEvent(text=gen.text, tool_calls=calls, logprobs=gen.logprobs, refusal=gen.refusal,
                                      reasoning=gen.reasoning))
        events.append(StreamEvent(finish_reason=gen.finish_reason, prompt_tokens=gen.prompt_tokens,
                                  completion_tokens=gen.completion_tokens))
        return events

    def _generation(self, raw: bytes, request: GenerationRequest) -> Generation:
        """The completion's text (or tool calls), finish reason, token counts and log probabilities, type-checked
        (the proxy serialises them as they are, without a model validation in between)."""
        try:
            data = from_json(raw)
            if isinstance(data, dict) and "choices" not in data and data.get("error"):
                raise _error_answer(self.card.name, data["error"], self.spec.base_url)
            choice = data["choices"][0]
            message = choice.get("message") or {}
            text = message.get("content") or ""
            refusal = message.get("refusal")  # a model that declined (OpenAI's structured outputs): content null
            finish = choice.get("finish_reason") or "stop"
            usage = data.get("usage") or {}
            if not isinstance(text, str):
                raise TypeError("message.content must be a string")
            if refusal is not None and not isinstance(refusal, str):
                raise TypeError("message.refusal must be a string")
            most = self.card.context_length
            prompt, completion = _count(usage.get("prompt_tokens"), most), _count(usage.get("completion_tokens"), most)
            calls = tool_calls(message)
            logprobs = logprobs_of(choice) if request.options.top_logprobs is not None else None
            reasoning = reasoning_of(message)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise BackendError(f"{self.card.name}: the model's endpoint sent a malformed completion",
                               detail=repr(raw[:200])) from exc
        return Generation(
            text=text,
            finish_reason=finish if isinstance(finish, str) else str(finish),
            prompt_tokens=self.prompt_tokens(request.messages, request.options) if prompt is None else prompt,
            completion_tokens=self.turn_tokens(text + (refusal or "") + reasoning_text(reasoning), calls)
            if completion is None else completion,
            tool_calls=calls,
            logprobs=logprobs,
            refusal=refusal or None,  # some servers send "" with every answer
            reasoning=reasoning,
        )

    def close(self) -> None:
        """Close the sync client and the async connections that can be closed without failing a call: those of the
        running loop (a call on it closes the backend) at once; on a loop running elsewhere, the pool's idle ones
        (the others after their call) and the httpx client when that loop shuts down. A closed loop's were closed
        when it shut down."""
        self._client.close()
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for loop, connections in list(self._loops.items()):
            if loop is running:
                task = loop.create_task(connections.aclose())
                _closing.add(task)  # held until done: the loop keeps only a weak reference to a task
                task.add_done_callback(_closing.discard)
            elif connections.pool is not None:
                connections.pool.close_soon()
            if loop is running or loop.is_closed():
                self._loops.pop(loop, None)


_closing: set[asyncio.Task[None]] = set()


class _SendWatchBase:
    """Whether one request's head began to go out, as httpx's ``trace`` hook sees it. A timeout says only that
    time ran out; before the head was sent (connecting, or waiting for a free connection) the endpoint never saw
    the request. Behind an HTTP proxy named in the environment, an ``https://`` endpoint is reached through a
    tunnel the proxy opens on a ``CONNECT``, which carries the hook too: that request only asks for the tunnel, so
    a proxy that never answers it (or never reaches the endpoint) has sent nothing on."""

    __slots__ = ("sent",)

    def __init__(self) -> None:
        self.sent = False

    def note(self, event: str, info: dict[str, Any]) -> None:
        if event.endswith(".send_request_headers.started"):
            request = info.get("request")
            if getattr(request, "method", None) != b"CONNECT":
                self.sent = True


class _SyncSendWatch(_SendWatchBase):
    """The hook for a sync client's request."""

    __slots__ = ()

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        self.note(event, info)


class _SendWatch(_SendWatchBase):
    """The hook for an async client's request (httpx awaits it)."""

    __slots__ = ()

    async def __call__(self, event: str, info: dict[str, Any]) -> None:
        self.note(event, info)


class _LoopConnections:
    """A backend's connections on one event loop (an httpx client for streams, a pool for plain calls, each made
    on first use), closed on that loop. A connection can be closed only while its loop runs: once the loop has
    closed, its sockets can only be dropped, each with a ResourceWarning. So they close when the loop shuts down:
    ``asyncio.run`` and ``asyncio.Runner`` (and the servers built on them) close the loop's async generators before
    they close it, and :meth:`close_at_shutdown` leaves one open that closes the connections."""

    def __init__(self) -> None:
        self.client: httpx.AsyncClient | None = None
        self.pool: HTTPPool | None = None
        self._open = self._until_closed()

    async def close_at_shutdown(self) -> None:
        """Start the generator that closes the connections, on the running loop, which now closes it at shutdown."""
        await anext(self._open)

    async def _until_closed(self) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            if self.pool is not None:
                self.pool.close()
            if self.client is not None:
                await self.client.aclose()

    async def aclose(self) -> None:
        await self._open.aclose()


def _count(value: Any, most: int = 2**53 - 1) -> int | None:
    """A token count from the endpoint's JSON, or None (estimate it) when missing or not a count (``10.0`` is
    10; ``"ten"``, ``-1`` and ``1e400`` are not counts). ``most`` is the model's context length: a call cannot
    read or write more tokens than its context holds, so a larger count is the endpoint's mistake, and taken as it
    is it would put a card's joules per token times that count on the ledger and the budgets."""
    if type(value) is int:  # what endpoints send: a plain int needs only its range checked
        return value if 0 <= value <= most else None
    # a bool is an int too (true is not a count); a tuple, not ``int | float``, which builds a union on every call
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= most:
        return None
    return int(value) if value == int(value) else None


def _error_answer(name: str, error: Any, url: str | None = None) -> _Retryable:
    """An HTTP 200 whose body, or whose stream's first event, is an error, not a completion (gateways such as
    OpenRouter, vLLM and LiteLLM answer so when the provider behind them fails): the endpoint failing, as a 500 from
    it is, so it is retried and then the next model is tried. Its message, code and type go to ``detail`` with the
    rest of what an endpoint answers."""
    said = error if isinstance(error, dict) else {"message": error}
    quoted = f"{str(said.get('message') or 'no message')[:300]!r}" + "".join(
        f", {key} {str(said[key])[:60]!r}" for key in ("code", "type") if said.get(key) is not None)
    return _Retryable(BackendError(
        f"{name}: the model's endpoint answered with an error instead of a completion (HTTP 200)",
        detail=f"{url + ': ' if url else ''}the endpoint's error: {quoted}"))


_PLAIN_BODY_MAX = 65536
"""The most of a stream's lines outside its ``data:`` events kept to be read as a plain JSON answer."""


def _is_json(response: httpx.Response) -> bool:
    """Whether a stream request was answered with a JSON body, not server-sent events."""
    return response.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"


class _SSEParser:
    """Turns ``data: {...}`` lines of an OpenAI chat stream into StreamEvents."""

    def __init__(self, name: str, context_length: int,
                 whole: Callable[[bytes], list[StreamEvent]] | None = None) -> None:
        self.name = name
        self.whole = whole
        """Reads a whole JSON completion into events: the answer of an endpoint that ignored ``"stream": true``
        and labelled its JSON body an event stream."""
        self.context_length = context_length
        """The most tokens a usage count may say (see :func:`_count`)."""
        self.plain: list[str] = []
        """Lines outside the events: an endpoint that answered the stream with a plain JSON body (an error, or a
        whole completion from one that ignored ``"stream": true``) sent only these."""
        self.plain_size = 0
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.done = False
        self.produced = False
        """Whether any event was passed on: an error event before one is the endpoint failing, retried and then
        the next model tried; after one, the caller may hold part of the answer."""
        self.calls_begun = CallsBegun()

    def feed(self, line: str) -> list[StreamEvent]:
        line = line.strip()
        if not line.startswith("data:"):
            if line and self.plain_size < _PLAIN_BODY_MAX:
                self.plain.append(line)
                self.plain_size += len(line)
            return []
        data = line[5:].strip()
        if data == "[DONE]":
            self.done = True
            return []
        try:
            chunk = json.loads(data)
            if chunk.get("error"):  # as for a whole answer: some gateways send "error": null in every chunk
                if not self.produced:  # nothing of an answer yet: the endpoint failing, as a 5xx before the stream
                    raise _error_answer(self.name, chunk["error"])
                raise BackendError(f"{self.name}: the model's endpoint reported an error mid-stream",
                                   detail=str(chunk["error"])[:300])
            if chunk.get("usage"):
                if not isinstance(chunk["usage"], dict):
                    raise TypeError("usage must be an object")
                self.usage = chunk["usage"]
            events = []
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                text = delta.get("content") or ""
                refusal = delta.get("refusal")
                if refusal is not None and not isinstance(refusal, str):
                    raise TypeError("delta.refusal must be a string")
                reasoning = reasoning_of(delta)
                if choice.get("finish_reason"):
                    self.finish_reason = choice["finish_reason"]
                calls = tool_call_deltas(delta, self.calls_begun)
                logprobs = logprobs_of(choice)
                if text or calls or logprobs or refusal or reasoning:
                    events.append(StreamEvent(text=text, tool_calls=calls, logprobs=logprobs, refusal=refusal or None,
                                              reasoning=reasoning))
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise BackendError(f"{self.name}: the model's endpoint sent a malformed stream chunk",
                               detail=data[:200]) from exc
        self.produced = self.produced or bool(events)
        return events

    def finish(self) -> list[StreamEvent]:
        if not self.done and self.finish_reason is None:
            try:
                body = from_json("".join(self.plain)) if self.plain else None
            except ValueError:  # SSE comments or fields, or a body cut at _PLAIN_BODY_MAX: no JSON answer
                body = None
            if isinstance(body, dict) and body.get("error"):
                raise _error_answer(self.name, body["error"])
            if isinstance(body, dict) and "choices" in body and not self.produced and self.whole is not None:
                return self.whole("".join(self.plain).encode())
            if not self.produced:  # nothing of an answer was passed on: the endpoint failing, as a 5xx before the
                # stream, so sending it again (or the next model) is safe
                what = ("answered without streaming, with a body that is not a chat completion"
                        if self.plain and self.plain[0].startswith(("{", "[")) else
                        "ended the stream before sending any of an answer")
                raise _Retryable(BackendError(
                    f"{self.name}: the model's endpoint {what}",
                    detail=f"what it sent outside events: {''.join(self.plain)[:200]!r}" if self.plain else None))
            raise BackendError(f"{self.name}: the stream ended before the model finished")
        usage = self.usage or {}
        return [
            StreamEvent(
                finish_reason=self.finish_reason or "stop",
                # checked as a whole answer's are: the ledger, budgets and energy estimates are computed from them
                prompt_tokens=_count(usage.get("prompt_tokens"), self.context_length),
                completion_tokens=_count(usage.get("completion_tokens"), self.context_length),
            )
        ]


def _parse_sse(lines: Iterator[str], parser: _SSEParser) -> Iterator[StreamEvent]:
    for line in lines:
        yield from parser.feed(line)
    yield from parser.finish()

