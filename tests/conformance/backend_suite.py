"""The backend conformance suite: every Backend implementation must pass ``check_backend``.

Like scikit-learn's ``check_estimator``: one set of checks, run against every real backend the project
ships (ONNX specialist, llama.cpp, OpenAI-compatible HTTP) and the fault-injecting double in pass-through.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from router.backends import Backend, Generation, GenerationRequest, StreamEvent
from router.cards import ModelCard
from router.errors import CancelledError, DeadlineExceededError
from router.options import ModelOptions
from router.tools import check_tools
from router.types import ChatMessage


def _request(prompt: str, max_tokens: int = 12) -> GenerationRequest:
    return GenerationRequest(messages=[ChatMessage(role="user", content=prompt)], max_tokens=max_tokens,
                             temperature=0.0)


def check_generate(backend: Backend, prompt: str) -> Generation:
    gen = backend.generate(_request(prompt))
    assert isinstance(gen, Generation)
    assert isinstance(gen.text, str) and gen.text.strip(), f"{backend!r} returned no text"
    assert gen.finish_reason in {"stop", "length"}, gen.finish_reason
    assert gen.prompt_tokens > 0
    assert gen.completion_tokens > 0
    if gen.confidence is not None:
        assert 0.0 <= gen.confidence <= 1.0
    return gen


def check_stream(backend: Backend, prompt: str, deterministic: bool) -> None:
    events = list(backend.stream(_request(prompt)))
    assert events and all(isinstance(e, StreamEvent) for e in events)
    assert events[-1].finish_reason is not None, "the last event must carry finish_reason"
    assert all(e.finish_reason is None for e in events[:-1]), "only the last event finishes"
    text = "".join(e.text for e in events)
    assert text.strip()
    if deterministic:
        assert text == backend.generate(_request(prompt)).text, "stream and generate must agree at T=0"


def check_async(backend: Backend, prompt: str, deterministic: bool) -> None:
    async def run() -> tuple[Generation, list[StreamEvent]]:
        gen = await backend.agenerate(_request(prompt))
        events = [e async for e in backend.astream(_request(prompt))]
        return gen, events

    gen, events = asyncio.run(run())
    assert gen.text.strip()
    assert events[-1].finish_reason is not None
    if deterministic:
        assert "".join(e.text for e in events) == gen.text


def check_tokens(backend: Backend) -> None:
    assert backend.count_tokens("") == 0
    short, long = backend.count_tokens("hello"), backend.count_tokens("hello " * 50)
    assert 0 < short < long
    hello = [ChatMessage(role="user", content="hello there")]
    assert backend.prompt_tokens(hello) > 0
    if backend.card.can("tools"):  # the tools offered are read with the messages: they count
        tools = ModelOptions(tools=check_tools([{"type": "function", "function": {
            "name": "get_weather", "description": "Get the current weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}], None, None, None, None))
        assert backend.prompt_tokens(hello, tools) > backend.prompt_tokens(hello) + 10


def check_card(backend: Backend) -> None:
    assert isinstance(backend.card, ModelCard)
    assert isinstance(backend.local, bool)
    assert backend.card.name in repr(backend)


def _calls(backend: Backend, request: GenerationRequest) -> dict[str, Callable[[], object]]:
    async def events() -> list[StreamEvent]:
        return [e async for e in backend.astream(request)]

    return {
        "generate": lambda: backend.generate(request),
        "stream": lambda: list(backend.stream(request)),
        "agenerate": lambda: asyncio.run(backend.agenerate(request)),
        "astream": lambda: asyncio.run(events()),
    }


def check_deadline_and_cancel(backend: Backend, prompt: str) -> None:
    """A request whose deadline has passed ends with DeadlineExceededError, one whose ``cancel`` is set with
    CancelledError, at once and on all four calls; a deadline with time left changes nothing."""
    gone = threading.Event()
    gone.set()
    for request, error in ((replace(_request(prompt), deadline=time.monotonic() - 1.0), DeadlineExceededError),
                           (replace(_request(prompt), cancel=gone), CancelledError)):
        for name, call in _calls(backend, request).items():
            t0 = time.monotonic()
            try:
                call()
            except error:
                pass
            else:
                raise AssertionError(f"{backend!r}.{name}: no {error.__name__} for {request}")
            assert time.monotonic() - t0 < 1.0, f"{backend!r}.{name} took {time.monotonic() - t0:.2f} s to stop"
    roomy = replace(_request(prompt), deadline=time.monotonic() + 300, cancel=threading.Event())
    assert backend.generate(roomy).text.strip()


def check_backend(backend: Backend, prompt: str, *, deterministic: bool = True) -> None:
    """Run every check. ``deterministic``: the backend gives the same text for the same request at T=0."""
    check_card(backend)
    check_tokens(backend)
    check_generate(backend, prompt)
    check_stream(backend, prompt, deterministic)
    check_async(backend, prompt, deterministic)
    check_deadline_and_cancel(backend, prompt)
