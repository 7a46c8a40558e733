"""The backend interface: one abstract method, ``stream``, and an async twin with a thread-offloaded default.

``generate``/``agenerate`` collect the stream, so a backend author writes one method (httpx's
``handle_request`` idea). Every backend passes the shared conformance suite in ``tests/conformance``.

Length: what every backend inherits stays here with the interface: the thread hand-over of the async twins and
the turn queue (:class:`_Turns`) that a model serving one call at a time relies on.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from ..cards import ModelCard
from ..errors import CancelledError, DeadlineExceededError
from ..options import NO_OPTIONS, ModelOptions
from ..tools import merge_tool_deltas
from ..types import ChatMessage


class Cancel(Protocol):
    """What a backend reads to know the caller has gone: a ``threading.Event``, or a :class:`CancelFlag`."""

    def is_set(self) -> bool: ...

    def set(self) -> None: ...


class CancelFlag:
    """A cancel signal that costs almost nothing to make, for every request (a ``threading.Event`` makes a lock
    and a condition). Set from any thread; read between tokens. Nothing waits on it."""

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


class CallerCancel(CancelFlag):
    """A call's own cancel flag when its caller passed one: set when the caller's event is set, and set by itself
    when the call ends early (a cancelled task, a closed stream, ``Router.close()``), which never sets the caller's
    event: one event may serve many calls (a shutdown signal), and one call timing out must not cancel the
    others."""

    __slots__ = ("_caller",)

    def __init__(self, caller: Cancel) -> None:
        super().__init__()
        self._caller = caller

    def is_set(self) -> bool:
        return self._set or self._caller.is_set()


def own_cancel(caller: Cancel | None) -> CancelFlag:
    """A call's own cancel flag, reading the caller's event too where there is one (see :class:`CallerCancel`)."""
    return CancelFlag() if caller is None else CallerCancel(caller)


@dataclass(slots=True)
class GenerationRequest:
    """What a backend is asked for. Read-only by convention, not frozen: one request is shared by every model a
    request tries, so a backend that needs it changed makes its own with ``dataclasses.replace``. Not frozen
    because one is made per request, and a frozen dataclass's ``__init__`` sets every field through
    ``object.__setattr__``, several times the cost of a slotted one (nothing hashes it: its lists are
    unhashable)."""

    messages: list[ChatMessage]
    max_tokens: int | None = None
    temperature: float | None = None
    stop: list[str] | None = None
    want_confidence: bool = False
    """Ask the backend for its own confidence (token probabilities, class probability) for cascades."""
    deadline: float | None = None
    """``time.monotonic()`` by which the call must have ended: a backend stops (between tokens, between reads,
    before a retry) and raises :class:`~router.errors.DeadlineExceededError` once it has passed."""
    cancel: Cancel | None = None
    """Set when the caller has gone away: a backend stops between tokens and raises
    :class:`~router.errors.CancelledError`, so nothing is generated for nobody."""
    options: ModelOptions = NO_OPTIONS
    """Tools, response format, log probabilities and pass-through parameters (only models whose card lists the
    capabilities a request needs are sent one that needs them)."""
    turn_started: Callable[[], None] | None = None
    """Called by a backend that serves :attr:`Backend.concurrency` calls at a time once this call has its turn,
    before any work (maybe more than once: the async queue, then the model's own lock). The Router starts the
    call's meter here, so a call waiting behind another neither takes a share of that call's CPU time nor is
    charged for its wait."""
    request_id: str | None = None
    """The request's id, for the backend's own log lines (a retry): the Router's lines about the call carry it."""

    def has_turn(self) -> None:
        if self.turn_started is not None:
            self.turn_started()

    def remaining(self) -> float | None:
        """Seconds left before the deadline (``None``: no deadline; never below 0)."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    def check(self, who: str, *, waiting: bool = False) -> None:
        """Raise when the caller has gone or the deadline has passed (backends call this between steps, and with
        ``waiting`` while the call waits for its turn at the model: then the error says so and is marked
        :func:`never_started`, so the call is recorded as not called, 0 J)."""
        exc: CancelledError | DeadlineExceededError
        if self.cancel is not None and self.cancel.is_set():
            exc = CancelledError(f"{who}: the caller went away"
                                 + (" while waiting for the model" if waiting else "; generation stopped"))
        elif self.deadline is not None and time.monotonic() >= self.deadline:
            exc = DeadlineExceededError(
                f"{who}: the request's deadline passed" + (" while waiting for the model (other calls were using "
                "it); raise `deadline_s` or send fewer calls at once" if waiting else "; generation stopped"))
        else:
            return
        if waiting:
            exc.never_started = True  # type: ignore[union-attr]  # an attribute of the raise, not of the class
        raise exc


@dataclass
class StreamEvent:
    """A piece of output. The last event has ``finish_reason`` and the token counts."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    confidence: float | None = None
    tool_calls: list[dict[str, Any]] | None = None
    """Tool-call deltas in OpenAI's stream shape (``index``; ``id``, ``type`` and ``function.name`` first, then
    ``function.arguments`` pieces)."""
    logprobs: list[dict[str, Any]] | None = None
    """OpenAI logprob entries (``token``, ``logprob``, ``bytes``, ``top_logprobs``) of this piece's tokens."""
    context_full: bool = False
    """With ``finish_reason`` ``length``: the model's context is full, not ``max_tokens`` spent (where the backend
    knows which; OpenAI's answers say ``length`` for both)."""
    refusal: str | None = None
    """A piece of the model's refusal (OpenAI's ``delta.refusal``): it declined to answer, and says why here
    instead of in ``text``."""
    reasoning: dict[str, str] | None = None
    """A piece of a reasoning model's reasoning, by the delta field the endpoint sent it in (``reasoning_content``
    or ``reasoning``, :data:`~router.backends.openai_shapes.REASONING_FIELDS`)."""


@dataclass
class Generation:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    confidence: float | None = None
    extra: dict[str, object] = field(default_factory=dict)
    tool_calls: list[dict[str, Any]] | None = None
    """The calls the model made, whole (``id``, ``type``, ``function.name``, ``function.arguments``)."""
    logprobs: list[dict[str, Any]] | None = None
    """One OpenAI logprob entry per output token, when the request asked for them."""
    context_full: bool = False
    """Cut (``length``) by the model's full context, not at ``max_tokens`` (:attr:`StreamEvent.context_full`)."""
    refusal: str | None = None
    """The model declined to answer and said why (OpenAI's ``message.refusal``, with ``content`` null): an answer
    to pass on as it is, not one to check against the request's format or to escalate past."""
    reasoning: dict[str, str] | None = None
    """A reasoning model's reasoning, beside ``text``, by the message field the endpoint sent it in
    (``reasoning_content`` or ``reasoning``): passed on under that name."""


BYTES_PER_TOKEN = 4
"""Byte-level tokenizers merge about four UTF-8 bytes into a token: for English a character is a byte, but a
Chinese, Hindi or Thai character takes three bytes and about a token of its own, so four *characters* a token
counted such prompts 3-7 times too short (one too long for a model's context was sent to it, and its energy was
estimated a fraction of what it took)."""


def utf8_size(text: str) -> int:
    """``text``'s size in UTF-8 bytes (its length where it is ASCII, without encoding it)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def estimated_tokens(size: int) -> int:
    """The tokens a text of ``size`` UTF-8 bytes comes to where no tokenizer counts them (at least one)."""
    return max(1, size // BYTES_PER_TOKEN)


def reasoning_text(reasoning: dict[str, str] | None) -> str:
    """The reasoning's text once, for a token count: the model generated it (it costs energy like the answer), and
    an endpoint that sends it under both names sends the same text twice."""
    return max(reasoning.values(), key=len) if reasoning else ""


class Backend(ABC):
    """A model that answers chat requests. ``local`` backends are metered here; remote ones estimated."""

    local: bool = True
    bounds_itself: bool = False
    """True where every wait of the async calls is already bounded by ``request.deadline`` (an asyncio timeout
    inside the backend), so the Router need not wrap each await in a timeout of its own."""
    concurrency: int | None = None
    """How many calls the model serves at once (a local model behind a lock: 1), or ``None`` for no limit. The
    default async calls wait for their turn on the event loop (:class:`_Turns`) before they take a worker thread."""

    def __init__(self, card: ModelCard) -> None:
        self.card = card
        self._turns = _Turns(self.concurrency)

    @abstractmethod
    def stream(self, request: GenerationRequest) -> Iterator[StreamEvent]:
        """Yield the answer in pieces; the last event carries finish_reason and token counts."""

    async def astream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        """Async twin of :meth:`stream`. The default runs the sync stream in a worker thread, one event at a
        time. When the consumer stops (closes this iterator, or its task is cancelled) the worker stops too:
        the backend sees ``request.cancel`` set at its next check (between tokens), and the sync stream is
        closed, in a thread, once its current step has returned: nothing goes on generating for nobody, and
        the event loop never waits for it. The turn (:attr:`concurrency`) is given back once the sync stream
        has ended or been closed, so the next call finds the model free."""
        done = await self._turns.wait(request, self.card.name)
        stop = own_cancel(request.cancel)  # set when the consumer stops
        worker: _Stepper | None = None
        try:
            worker = _Stepper(iter(self.stream(replace(request, cancel=stop))))
            while True:
                event = await asyncio.to_thread(worker.step)
                if event is _END:
                    return
                yield event  # type: ignore[misc]
        finally:
            stop.set()
            if worker is not None and worker.open:
                # the worker's step may still be running (a cancelled await does not stop a thread): close
                # the sync stream after it, in a thread, without waiting here
                threading.Thread(target=worker.close, args=(done,), name=f"close-{self.card.name}",
                                 daemon=True).start()
            else:
                done()

    def generate(self, request: GenerationRequest) -> Generation:
        return _collect(self.stream(request), self, request)

    async def agenerate(self, request: GenerationRequest) -> Generation:
        """Async twin of :meth:`generate`. The default runs ``generate`` in a worker thread (one hand-over, not
        one per event); when the awaiting task is cancelled the backend sees ``request.cancel`` set at its next
        check and stops; its turn (:attr:`concurrency`) is given back once the worker has returned."""
        done = await self._turns.wait(request, self.card.name)
        stop = own_cancel(request.cancel)  # set when the consumer stops
        # shielded: a cancelled await leaves the worker running until its next check, and the turn with it
        work = asyncio.ensure_future(asyncio.to_thread(self.generate, replace(request, cancel=stop)))
        try:
            return await asyncio.shield(work)
        finally:
            stop.set()
            work.add_done_callback(lambda w: _ended(w, done))

    def count_tokens(self, text: str) -> int:
        """Token count for context checks and for usage an endpoint does not report; backends with a tokenizer
        override this. :func:`estimated_tokens` of the text's UTF-8 size."""
        return estimated_tokens(utf8_size(text)) if text else 0

    def prompt_tokens(self, messages: list[ChatMessage], options: ModelOptions = NO_OPTIONS) -> int:
        """The tokens the model reads: the messages and the tools offered (their descriptions and schemas can be
        longer than the messages), for context checks and for usage a backend does not report."""
        tokens = self.count_tokens(options.tools.described()) if options.tools is not None else 0
        for m in messages:  # a loop, not sum() over a generator: this runs before every call
            tokens += self.turn_tokens(m.text, m.tool_calls) + 4
        return tokens

    def turn_tokens(self, text: str, tool_calls: list[dict[str, Any]] | None) -> int:
        """Token count of one turn's text and tool calls (each call's arguments, and 8 for its name and framing):
        an answer's count when the endpoint reports none, and each earlier turn's in :meth:`prompt_tokens`."""
        tokens = self.count_tokens(text)
        if tool_calls:  # most turns call no tools
            tokens += sum(self.count_tokens(c["function"]["arguments"]) + 8 for c in tool_calls)
        return tokens

    def warm_up(self) -> None:
        """Load what the first call would load and run it once (one token), so that neither the first request's
        latency nor its metered joules include the start-up. Remote backends have nothing to load."""
        if self.local:
            self.generate(GenerationRequest([ChatMessage(role="user", content="Hello")], max_tokens=1))

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release model memory or connections."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.card.name!r})"


_END = object()
_POLL_S = 0.05
"""How often a call waiting for its turn checks its ``cancel`` event and deadline (nothing wakes a waiter when the
event is set)."""


_WAITING: ContextVar[GenerationRequest | None] = ContextVar("router_waiting_for_turn", default=None)
"""The request whose call this task is waiting to give its turn at the model (set for the wait only, and left
set when the wait ends in an exception)."""


def waiting_for_turn(request: GenerationRequest) -> bool:
    """Whether this task's call with ``request`` ended (or is) waiting for its turn: it never started."""
    return _WAITING.get() is request


def never_started(exc: BaseException) -> bool:
    """Whether ``exc`` ended a call before the model began on it (raised by ``check(..., waiting=True)``)."""
    return getattr(exc, "never_started", False)


def _nothing() -> None:
    pass


def _ended(work: asyncio.Future[Any], then: Callable[[], None]) -> None:
    if not work.cancelled():
        work.exception()  # retrieved here: the task that awaited it may have been cancelled
    then()


class _Turns:
    """A backend's turns for async calls: at most ``slots`` at once per event loop, the others waiting on the
    loop in order of arrival. A call waiting in a worker thread instead would hold one of asyncio's few default
    threads (``min(32, CPUs + 4)``) for as long as the model is busy, and a stream needs a thread for each of its
    steps: enough waiting callers once left the stream that held the model without a thread to go on.

    One ``asyncio.Semaphore`` per event loop (a semaphore belongs to the loop it first waits on). Sync callers
    (their own threads) and other loops share the model through the backend's own lock."""

    def __init__(self, slots: int | None) -> None:
        self._slots = slots
        self._lock = threading.Lock()
        self._gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = \
            weakref.WeakKeyDictionary()

    def _gate(self, loop: asyncio.AbstractEventLoop, slots: int) -> asyncio.Semaphore:
        with self._lock:
            gate = self._gates.get(loop)
            if gate is None:
                gate = self._gates[loop] = asyncio.Semaphore(slots)
            return gate

    async def wait(self, request: GenerationRequest, who: str) -> Callable[[], None]:
        """Wait for a turn, no longer than the request may (checked every 50 ms and at its deadline); returns the
        function that gives the turn back, to be called once, from any thread. While it waits, the task reads
        :func:`waiting_for_turn` true for ``request`` (the Router's own deadline scope or a cancelled task may
        end the wait, not only this loop's checks)."""
        request.check(who, waiting=True)
        if self._slots is None:
            request.has_turn()
            return _nothing
        loop = asyncio.get_running_loop()
        gate = self._gate(loop, self._slots)
        if not gate.locked():
            await gate.acquire()  # returns at once
        else:
            # one acquire for the whole wait, so the call keeps its place in the queue between checks
            turn = loop.create_task(gate.acquire())
            _WAITING.set(request)
            try:
                while not turn.done():
                    remaining = request.remaining()
                    await asyncio.wait((turn,), timeout=_POLL_S if remaining is None else min(_POLL_S, remaining))
                    if not turn.done():
                        request.check(who, waiting=True)
            except BaseException:
                if turn.done() and not turn.cancelled():
                    gate.release()
                else:
                    turn.cancel()  # an acquire cancelled after it was given the turn passes it on
                raise
            _WAITING.set(None)
        request.has_turn()

        def done() -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed, and its queue with it
                loop.call_soon_threadsafe(gate.release)

        return done


class _Stepper:
    """A sync stream advanced one event per call from worker threads, and closed once, after any step still
    running: a generator cannot be closed while it runs in another thread."""

    def __init__(self, iterator: Iterator[StreamEvent]) -> None:
        self._iterator = iterator
        self._lock = threading.Lock()
        self.open = True

    def step(self) -> object:
        with self._lock:
            if not self.open:
                return _END
            try:
                event = next(self._iterator, _END)
            except BaseException:
                self.open = False  # a generator that raised is finished
                raise
            if event is _END:
                self.open = False
            return event

    def close(self, then: Callable[[], None] = _nothing) -> None:
        """Close the sync stream once no step runs; then call ``then``, whatever closing raised."""
        try:
            with self._lock:
                if self.open:
                    self.open = False
                    close = getattr(self._iterator, "close", None)
                    if close is not None:
                        close()
        finally:
            then()


def _collect(events: Iterator[StreamEvent], backend: Backend, request: GenerationRequest) -> Generation:
    parts: list[str] = []
    calls: list[dict[str, Any]] = []
    logprobs: list[dict[str, Any]] | None = None
    refusal: list[str] = []
    reasoning: dict[str, list[str]] = {}
    last = StreamEvent()
    try:
        for event in events:
            parts.append(event.text)
            if event.refusal:
                refusal.append(event.refusal)
            if event.reasoning:
                for name, piece in event.reasoning.items():
                    reasoning.setdefault(name, []).append(piece)
            if event.tool_calls:
                merge_tool_deltas(calls, event.tool_calls)
            if event.logprobs is not None:
                logprobs = (logprobs or []) + event.logprobs
            last = event
    except (CancelledError, DeadlineExceededError) as exc:
        # stopped between tokens: what was produced goes with the error, for the ledger's record
        exc.partial = Generation(text="".join(parts), finish_reason="error",  # type: ignore[union-attr]
                                 prompt_tokens=backend.prompt_tokens(request.messages, request.options),
                                 completion_tokens=backend.count_tokens("".join(parts) + reasoning_text(
                                     {name: "".join(pieces) for name, pieces in reasoning.items()})))
        raise
    text = "".join(parts)
    refused = "".join(refusal) if refusal else None
    reasoned = {name: "".join(pieces) for name, pieces in reasoning.items()} or None
    return Generation(
        text=text,
        finish_reason=last.finish_reason or "stop",
        prompt_tokens=last.prompt_tokens
        if last.prompt_tokens is not None
        else backend.prompt_tokens(request.messages, request.options),
        completion_tokens=last.completion_tokens
        if last.completion_tokens is not None
        else backend.count_tokens(text + (refused or "") + reasoning_text(reasoned)),
        confidence=last.confidence,
        tool_calls=calls or None,
        logprobs=logprobs,
        context_full=last.context_full,
        refusal=refused,
        reasoning=reasoned,
    )
