"""Time limits and cancellation inside the backends.

HTTP: against a real server that drips its answer one byte at a time (tests/servers/drip_upstream.py), each of
the four calls (sync / async x stream / generate) ends at the card's ``timeout_s`` or the request's deadline,
whichever is sooner, with the error that says which, not when the upstream finishes (minutes later). No retry
or backoff wait runs past the deadline, and nothing is retried once output was given.
Local: llama.cpp stops between tokens when ``cancel`` is set or the deadline passes; the default thread-offloaded
``astream`` stops its worker when the consumer stops.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers.procs import drip_upstream

from router.backends import Backend, GenerationRequest, StreamEvent
from router.backends.openai_http import OpenAIHTTPBackend
from router.cards import load_card
from router.errors import BackendError, BackendUnavailableError, CancelledError, DeadlineExceededError
from router.types import ChatMessage

DRIP_INTERVAL = 0.5
"""Seconds between two bytes of a dripped answer: the whole answer takes over 20 minutes."""
PATHS = ("sync-stream", "sync-generate", "async-stream", "async-generate")


@pytest.fixture(scope="module")
def drip_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with drip_upstream(tmp_path_factory.mktemp("drip"), DRIP_INTERVAL) as url:
        yield url


def _backend(tmp_path: Path, base_url: str, model: str, *, timeout_s: float = 30, max_retries: int = 2) -> Backend:
    card = tmp_path / f"{model.replace(':', '-')}.yaml"
    card.write_text(f"""name: drip-test
tier: large
backend:
  type: openai
  base_url: {base_url}
  model: "{model}"
  timeout_s: {timeout_s}
  max_retries: {max_retries}
context_length: 8192
energy:
  per_call_j: 1.0
  source: estimate
  citation: test card for the drip test upstream
""", encoding="utf-8")
    return OpenAIHTTPBackend(load_card(card))


def _request(deadline_s: float | None = None, cancel: threading.Event | None = None) -> GenerationRequest:
    return GenerationRequest(messages=[ChatMessage(role="user", content="hello")], max_tokens=64,
                             deadline=None if deadline_s is None else time.monotonic() + deadline_s, cancel=cancel)


async def _events(backend: Backend, request: GenerationRequest) -> list[StreamEvent]:
    return [event async for event in backend.astream(request)]


def _call(backend: Backend, path: str, request: GenerationRequest) -> object:
    if path == "sync-stream":
        return list(backend.stream(request))
    if path == "sync-generate":
        return backend.generate(request)
    if path == "async-stream":
        return asyncio.run(_events(backend, request))
    return asyncio.run(backend.agenerate(request))


def _timed(fn: Callable[[], object], error: type[Exception], match: str | None = None) -> float:
    t0 = time.monotonic()
    with pytest.raises(error, match=match):
        fn()
    return time.monotonic() - t0


def _upstream_calls(base_url: str, kind: str) -> int:
    return int(httpx.get(base_url.removesuffix("/v1") + "/stats").json()["calls"].get(kind, 0))


@pytest.mark.slow
@pytest.mark.timeout(30)
@pytest.mark.parametrize("model", ["drip", "drip-all"])
@pytest.mark.parametrize("path", PATHS)
def test_the_cards_timeout_bounds_the_whole_call(drip_url: str, tmp_path: Path, path: str, model: str) -> None:
    """``timeout_s: 2`` and an upstream that sends a byte every 0.5 s (headers at once, or dripped too): the call
    ends after 2 s with 'timed out' (a BackendUnavailableError, so the Router may fall back), not after the
    answer's 20 minutes, and without a retry (the time is spent)."""
    backend = _backend(tmp_path, drip_url, model, timeout_s=2)
    before = _upstream_calls(drip_url, model)
    elapsed = _timed(lambda: _call(backend, path, _request()), BackendUnavailableError, "timed out")
    print(f"timeout_s 2, {model}, {path}: {elapsed:.2f} s")
    assert 2 - 0.05 <= elapsed < 2 + 1.5
    assert _upstream_calls(drip_url, model) == before + 1
    backend.close()


@pytest.mark.slow
@pytest.mark.timeout(30)
@pytest.mark.parametrize("model", ["drip", "drip-all"])
@pytest.mark.parametrize("path", PATHS)
def test_the_request_deadline_bounds_the_whole_call(drip_url: str, tmp_path: Path, path: str, model: str) -> None:
    """A deadline 1 s away and the card's 30 s: the call ends after 1 s with DeadlineExceededError."""
    backend = _backend(tmp_path, drip_url, model, timeout_s=30)
    elapsed = _timed(lambda: _call(backend, path, _request(deadline_s=1.0)), DeadlineExceededError)
    print(f"deadline 1 s, {model}, {path}: {elapsed:.2f} s")
    assert 1 - 0.05 <= elapsed < 1 + 1.5
    backend.close()


@pytest.mark.slow
@pytest.mark.timeout(30)
@pytest.mark.parametrize("path", ["sync-stream", "sync-generate"])
def test_sync_calls_on_httpx_own_transport_end_within_one_read(drip_url: str, tmp_path: Path, path: str) -> None:
    """Behind an HTTP proxy from the environment httpx's own transport carries sync calls: each read is then
    timed on its own, and the check after every body chunk ends the call within one read (0.5 s) of its bound."""
    card = _backend(tmp_path, drip_url, "drip", timeout_s=2).card
    backend = OpenAIHTTPBackend(card, transport=httpx.HTTPTransport())
    elapsed = _timed(lambda: _call(backend, path, _request()), BackendUnavailableError, "timed out")
    print(f"timeout_s 2, drip, {path}, httpx's own transport: {elapsed:.2f} s")
    assert 2 - 0.05 <= elapsed < 2 + DRIP_INTERVAL + 1.5
    backend.close()


@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS)
def test_no_retry_and_no_backoff_wait_past_the_deadline(drip_url: str, tmp_path: Path, path: str) -> None:
    """HTTP 503 every time, five retries allowed (0.1 + 0.2 + 0.4 + 0.8 + 1.6 s of backoff) and 2 s left: the
    call gives up as soon as the next wait would end past the deadline (after the 0.8 s wait, ~1.5 s in, since
    the 1.6 s one would end at 3.1 s), with the endpoint's own error. The bound leaves a loaded runner 1.3 s (a
    CI run beside three others used 0.4 s past a 1 s deadline) and still fails a call that sleeps the one wait
    past its deadline or every wait (3.1 s either way)."""
    backend = _backend(tmp_path, drip_url, "broken", max_retries=5)
    before = _upstream_calls(drip_url, "broken")
    elapsed = _timed(lambda: _call(backend, path, _request(deadline_s=2.0)), BackendUnavailableError, "HTTP 503")
    assert elapsed < 2.0 + 0.8
    assert 1 <= _upstream_calls(drip_url, "broken") - before <= 5
    backend.close()


@pytest.mark.slow
@pytest.mark.parametrize("path", ["sync-stream", "async-stream"])
def test_a_stream_that_breaks_after_output_is_not_sent_again(drip_url: str, tmp_path: Path, path: str) -> None:
    """The connection drops after two chunks: the caller has the two and an error, not the two again."""
    backend = _backend(tmp_path, drip_url, "cut", max_retries=2)
    before = _upstream_calls(drip_url, "cut")
    texts: list[str] = []

    async def read_async() -> None:
        async for event in backend.astream(_request()):
            texts.append(event.text)

    def read() -> None:
        if path == "sync-stream":
            texts.extend(event.text for event in backend.stream(_request()))
        else:
            asyncio.run(read_async())

    with pytest.raises(BackendError):
        read()
    assert texts == ["w0 ", "w1 "]
    assert _upstream_calls(drip_url, "cut") == before + 1
    backend.close()


@pytest.mark.slow
@pytest.mark.parametrize("path", ["sync-stream", "async-stream"])
def test_a_set_cancel_stops_an_http_stream_at_the_next_chunk(drip_url: str, tmp_path: Path, path: str) -> None:
    backend = _backend(tmp_path, drip_url, "drip:0.002")
    cancel = threading.Event()
    texts: list[str] = []

    async def read_async() -> None:
        async for event in backend.astream(_request(cancel=cancel)):
            texts.append(event.text)
            cancel.set()

    def read() -> None:
        if path == "sync-stream":
            for event in backend.stream(_request(cancel=cancel)):
                texts.append(event.text)
                cancel.set()
        else:
            asyncio.run(read_async())

    elapsed = _timed(read, CancelledError)
    assert texts == ["w0 "] and elapsed < 5  # the whole answer would take minutes
    backend.close()


@pytest.mark.slow
def test_a_passed_deadline_or_a_set_cancel_sends_nothing(drip_url: str, tmp_path: Path) -> None:
    backend = _backend(tmp_path, drip_url, "echo")
    before = _upstream_calls(drip_url, "echo")
    cancel = threading.Event()
    cancel.set()
    for path in PATHS:
        with pytest.raises(DeadlineExceededError):
            _call(backend, path, _request(deadline_s=-1))
        with pytest.raises(CancelledError):
            _call(backend, path, _request(cancel=cancel))
        assert _call(backend, path, _request(deadline_s=30))  # and a deadline with time left is no obstacle
    assert _upstream_calls(drip_url, "echo") == before + len(PATHS)
    backend.close()


# -- local backends --------------------------------------------------------------------------------------------


class _Ticker(Backend):
    """A local backend that computes a 'token' every 10 ms and yields text only every 20th (like a model whose
    pieces are often empty), checking the request between tokens as llama.cpp's backend does."""

    def __init__(self, card: Any) -> None:
        super().__init__(card)
        self.tokens = 0
        self.closed_by: str | None = None

    def stream(self, request: GenerationRequest) -> Iterator[StreamEvent]:
        try:
            for i in range(10_000):
                request.check(self.card.name)
                time.sleep(0.01)
                self.tokens += 1
                if i % 20 == 19:
                    yield StreamEvent(text=f"t{i} ")
            yield StreamEvent(finish_reason="stop")
        finally:
            self.closed_by = threading.current_thread().name


def _settled(backend: _Ticker, wait_s: float = 0.3) -> int:
    time.sleep(wait_s)
    tokens = backend.tokens
    time.sleep(wait_s)
    assert backend.tokens == tokens, "the worker went on generating for nobody"
    return tokens


def test_default_astream_stops_the_worker_when_the_consumer_closes_it(cards) -> None:  # type: ignore[no-untyped-def]
    backend = _Ticker(cards["sentiment-onnx"])
    outer = threading.Event()

    async def read_two() -> None:
        events = backend.astream(_request(cancel=outer))
        await anext(events)
        await anext(events)
        await events.aclose()

    asyncio.run(read_two())
    assert _settled(backend) <= 41
    assert backend.closed_by is not None
    assert not outer.is_set()  # the caller's own event is never set by the backend


def test_default_astream_stops_the_worker_when_the_consumer_is_cancelled_mid_step(cards) -> None:  # type: ignore[no-untyped-def]
    """The consumer's task is cancelled while a worker thread computes the next event: the worker sees the
    stop at its next token (not after the 20 tokens of its step) and the sync stream is closed in a thread."""
    backend = _Ticker(cards["sentiment-onnx"])

    async def run() -> None:
        async def consume() -> None:
            async for _ in backend.astream(_request()):
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.3)  # the first event came at ~0.2 s; the second step is running
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    tokens = _settled(backend)
    assert tokens <= 33  # ~30 tokens by the cancel (0.3 s), then at most one more: the old default ran to 40
    assert backend.closed_by is not None and backend.closed_by != threading.main_thread().name


class _FakeLlama:
    """Stands in for ``llama_cpp.Llama`` in the tests that need no real model: a chat piece every 10 ms, and a
    chat template that joins the turns (the backend counts a prompt's tokens as the template renders it)."""

    metadata = {"tokenizer.chat_template": "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"}

    def __init__(self) -> None:
        self.pieces = 0
        self.closed = False

    def tokenize(self, data: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        return list(range(max(1, len(data) // 4)))

    def token_eos(self) -> int:
        return -1  # no special tokens: the template above uses none

    def token_bos(self) -> int:
        return -1

    def create_chat_completion(self, messages: list[dict], **kw: Any) -> Iterator[dict]:
        def pieces() -> Iterator[dict]:
            try:
                for i in range(kw["max_tokens"]):
                    time.sleep(0.01)
                    self.pieces += 1
                    yield {"choices": [{"delta": {"content": f"t{i} "}, "finish_reason": None}]}
                yield {"choices": [{"delta": {}, "finish_reason": "length"}]}
            finally:
                self.closed = True

        return pieces()


@pytest.fixture
def fake_llama(cards) -> Iterator[tuple[Backend, _FakeLlama]]:  # type: ignore[no-untyped-def]
    from router.backends.llama_cpp import LlamaCppBackend

    backend = LlamaCppBackend(cards["smollm2-135m"])
    backend._llm = fake = _FakeLlama()
    yield backend, fake
    backend._llm = None


def _long(**kw: Any) -> GenerationRequest:
    return GenerationRequest(messages=[ChatMessage(role="user", content="Write a long story.")], max_tokens=1000,
                             **kw)


def test_llama_cpp_backend_checks_cancel_between_tokens(fake_llama) -> None:  # type: ignore[no-untyped-def]
    backend, fake = fake_llama
    cancel = threading.Event()
    texts: list[str] = []
    with pytest.raises(CancelledError):
        for event in backend.stream(_long(cancel=cancel)):
            texts.append(event.text)
            if len(texts) == 3:
                cancel.set()
    assert len(texts) == 3 and fake.pieces == 4  # stopped at the next token, not after 1,000
    assert fake.closed and not backend._lock.locked()  # llama.cpp's generator ended, the context is free


@pytest.mark.parametrize("path", PATHS)
def test_llama_cpp_backend_stops_when_the_deadline_passes(fake_llama, path: str) -> None:  # type: ignore[no-untyped-def]
    backend, fake = fake_llama
    elapsed = _timed(lambda: _call(backend, path, _long(deadline=time.monotonic() + 0.2)), DeadlineExceededError)
    assert 0.2 <= elapsed < 0.2 + 1.0 and fake.pieces < 100  # the whole answer: 10 s
    assert fake.closed and not backend._lock.locked()


def test_llama_cpp_backend_waits_for_a_busy_context_no_longer_than_the_deadline(fake_llama) -> None:  # type: ignore[no-untyped-def]
    backend, fake = fake_llama
    backend._lock.acquire()  # another generation holds the context for 3 s
    threading.Timer(3.0, backend._lock.release).start()
    elapsed = _timed(lambda: backend.generate(_long(deadline=time.monotonic() + 0.2)), DeadlineExceededError)
    assert elapsed < 0.2 + 0.5 and fake.pieces == 0


@pytest.mark.slow
def test_llama_cpp_stops_between_tokens_when_cancel_is_set(small_backend) -> None:  # type: ignore[no-untyped-def]
    cancel = threading.Event()
    request = GenerationRequest(messages=[ChatMessage(role="user", content="Write a long story about a dragon.")],
                                max_tokens=400, temperature=0.0, cancel=cancel)
    texts: list[str] = []
    with pytest.raises(CancelledError):
        for event in small_backend.stream(request):
            texts.append(event.text)
            if len(texts) == 3:
                cancel.set()
    assert len(texts) == 3
    assert not small_backend._lock.locked()  # the context is free for the next request
    assert small_backend.generate(replace(request, max_tokens=4, cancel=None)).text


@pytest.mark.slow
@pytest.mark.parametrize("path", ["sync-stream", "async-stream"])
def test_llama_cpp_stops_when_the_deadline_passes(small_backend, path: str) -> None:  # type: ignore[no-untyped-def]
    small_backend.count_tokens("load the model first")
    request = GenerationRequest(messages=[ChatMessage(role="user", content="Write a long story about a dragon.")],
                                max_tokens=1000, temperature=0.0, deadline=time.monotonic() + 1.0)
    elapsed = _timed(lambda: _call(small_backend, path, request), DeadlineExceededError)
    print(f"llama.cpp, deadline 1 s, {path}: {elapsed:.2f} s")
    # the deadline is checked between llama.cpp's steps, and one step (the prompt's evaluation) cannot be cut short:
    # on a loaded 2-core runner it alone took ~2 s; 1,000 tokens run to the end take far longer than this bound
    assert elapsed < 1 + 3.5
    assert not small_backend._lock.locked()



def test_a_stopped_call_says_why_in_plain_words() -> None:
    """The messages read "the caller went away ; generation stopped" (a space before the semicolon)."""
    import threading

    from router.backends import GenerationRequest
    from router.errors import CancelledError, DeadlineExceededError
    from router.types import ChatMessage

    messages = [ChatMessage(role="user", content="hi")]
    gone = threading.Event()
    gone.set()
    with pytest.raises(CancelledError) as cancelled:
        GenerationRequest(messages=messages, cancel=gone).check("m")
    with pytest.raises(DeadlineExceededError) as late:
        GenerationRequest(messages=messages, deadline=0.0).check("m")
    assert cancelled.value.message == "m: the caller went away; generation stopped"
    assert late.value.message == "m: the request's deadline passed; generation stopped"
