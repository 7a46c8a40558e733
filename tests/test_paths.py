"""One attempt path: each behaviour gives the same outcome on all four ways of calling (sync / async x plain /
stream): the same answering model, status, error type and ledger records (ids, times and joules aside).

The models are two real ONNX specialists on the shipped sentiment model (``spec-a`` cheaper, ``spec-b`` dearer,
from test_budgets.setup); faults come from named test doubles."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_budgets import REVIEW, make_router, setup

from router import Router
from router.backends import Backend, FaultInjectingBackend, GenerationRequest, StreamEvent, create_backend
from router.cards import ModelCard, load_cards
from router.errors import RouterError
from router.ledger import Ledger, open_ledger

PATHS = ("sync", "sync-stream", "async", "async-stream")


class DrippingBackendDouble(Backend):
    """Test double: a slow local model that emits a word every ``interval_s`` and, like the real backends, stops
    between words when the request's deadline passes or the caller cancels."""

    def __init__(self, inner: Backend, words: int = 40, interval_s: float = 0.05) -> None:
        super().__init__(inner.card)
        self.words = words
        self.interval_s = interval_s

    def stream(self, request: GenerationRequest) -> Iterator[StreamEvent]:
        for i in range(self.words):
            request.check(self.card.name)
            time.sleep(self.interval_s)
            yield StreamEvent(text=f"w{i} ")
        yield StreamEvent(finish_reason="stop", prompt_tokens=5, completion_tokens=self.words)


class StaleBudgetReadsDouble(Ledger):
    """Fault injection: a ledger whose budget reads trail the truth (as when another process spent the budget
    between the decision's snapshot and the reservation), so budgets run out at call time, not decision time."""

    def __init__(self, inner: Ledger) -> None:
        self.inner = inner

    def budget_used(self, budget: str, window_s: float) -> float:
        return 0.0

    def record(self, rec: Any) -> None:
        self.inner.record(rec)

    def records(self, *a: Any, **k: Any) -> Any:
        return self.inner.records(*a, **k)

    def spent(self, **k: Any) -> float:
        return self.inner.spent(**k)

    def totals(self, *a: Any, **k: Any) -> Any:
        return self.inner.totals(*a, **k)

    def try_reserve(self, *a: Any, **kw: Any) -> Any:
        return self.inner.try_reserve(*a, **kw)

    def settle(self, *a: Any) -> None:
        self.inner.settle(*a)

    def prune(self, older_than: float) -> int:
        return self.inner.prune(older_than)

    def close(self) -> None:
        self.inner.close()


@dataclass
class Outcome:
    model: str | None
    status: str
    records: list[tuple[str, str, int, str]]

    @staticmethod
    def of(router: Router, model: str | None, status: str) -> Outcome:
        recs = [(r.model, r.outcome, r.attempt, (r.error or "").split(":")[0]) for r in router.ledger.records()]
        return Outcome(model, status, recs)


def run(router: Router, path: str, messages: list[dict[str, str]] = REVIEW, *, cancel_after_s: float | None = None,
        **params: Any) -> Outcome:
    """One request on one path; the outcome whatever happens (an error is a status, not a test failure)."""
    if path.startswith("sync"):
        return _run_sync(router, messages, path == "sync-stream", cancel_after_s, params)
    return asyncio.run(_run_async(router, messages, path == "async-stream", cancel_after_s, params))


def _run_sync(router: Router, messages: list[dict[str, str]], stream: bool, cancel_after_s: float | None,
              params: dict[str, Any]) -> Outcome:
    model = None
    try:
        if stream:
            chunks = router.complete(messages, stream=True, **params)
            started = time.monotonic()
            for chunk in chunks:
                if cancel_after_s is not None and time.monotonic() - started > cancel_after_s:
                    chunks.close()  # the caller stops reading
                    return Outcome.of(router, None, "cancelled")
                if chunk.routing is not None:
                    model = chunk.routing.model
        else:
            if cancel_after_s is not None:
                event = threading.Event()
                threading.Timer(cancel_after_s, event.set).start()
                params = {**params, "cancel": event}
            model = router.complete(messages, **params).routing.model
    except RouterError as exc:
        return Outcome.of(router, None, "cancelled" if exc.code == "cancelled" else type(exc).__name__)
    return Outcome.of(router, model, "ok")


async def _run_async(router: Router, messages: list[dict[str, str]], stream: bool, cancel_after_s: float | None,
                     params: dict[str, Any]) -> Outcome:
    async def go() -> str | None:
        if not stream:
            return (await router.acomplete(messages, **params)).routing.model
        found = None
        async for chunk in await router.acomplete(messages, stream=True, **params):
            if chunk.routing is not None:
                found = chunk.routing.model
        return found

    task = asyncio.ensure_future(go())
    try:
        if cancel_after_s is not None:
            await asyncio.sleep(cancel_after_s)
            task.cancel()
        model = await task
    except asyncio.CancelledError:
        await asyncio.sleep(0.3)  # the worker thread stops between words and the record is written
        return Outcome.of(router, None, "cancelled")
    except RouterError as exc:
        return Outcome.of(router, None, type(exc).__name__)
    return Outcome.of(router, model, "ok")


# -- the behaviours ---------------------------------------------------------------------------------------------
Build = Callable[[Path], Router]


_BACKENDS: dict[str, Backend] = {}


def _backend(card: ModelCard) -> Backend:
    """One real ONNX backend per distinct card (loading a session takes most of a second on a busy machine)."""
    key = card.model_dump_json()
    if key not in _BACKENDS:
        _BACKENDS[key] = create_backend(card)
    return _BACKENDS[key]


def _with(policy_text: str, *, a_context: int | None = None, b_prior: float = 0.77,
          backends: Callable[[dict[str, Backend]], dict[str, Backend]] | None = None,
          stale_budgets: bool = False) -> Build:
    def build(tmp: Path) -> Router:
        tmp.mkdir(parents=True)
        root = setup(tmp, policy_text, b_prior=b_prior)
        if a_context is not None:
            card = root / "models" / "spec-a.yaml"
            card.write_text(card.read_text().replace("context_length: 100000", f"context_length: {a_context}"))
        real = {n: _backend(c) for n, c in load_cards(root / "models").items()}
        router = make_router(root, **(backends(real) if backends else real))
        if stale_budgets:  # other traffic spent 1 of spec-a's 1.5 J, after the decision's snapshot was read
            left = _WINDOW_S - time.time() % _WINDOW_S
            if left < 10:  # the call must fall in the window of this spending, not in the next (empty) one
                time.sleep(left + 0.05)
            router.ledger.try_reserve(f"model:spec-a:{_WINDOW_S}s", 1.0, 1.5, _WINDOW_S)
            router.ledger = StaleBudgetReadsDouble(router.ledger)
        return router
    return build


_WINDOW_S = 3600
"""The budget's window. A request that crossed into the next window found it empty and was answered by spec-a
(seen once in CI with a 60 s window); the spending is also made at least 10 s before the window rolls."""


def _budget(on: str) -> str:
    return f"""\
        name: t
        accuracy: {{min_accuracy: 0.7}}
        budgets: [{{model: spec-a, joules: 1.5, per: {_WINDOW_S}}}]
        on_budget_exhausted: {on}
        """


PLAIN = "name: t\naccuracy: {min_accuracy: 0.7}\n"
CASCADE = "name: t\naccuracy: {min_accuracy: 0.7}\ncascade: {enabled: true, escalate_below: 0.999, escalate_to: next}\n"

BEHAVIOURS: dict[str, tuple[Build, dict[str, Any], Outcome]] = {
    "answer": (_with(PLAIN), {}, Outcome("spec-a", "ok", [("spec-a", "ok", 0, "")])),
    # the engine expects a specialist to answer in one token; the Router's own context check also counts the
    # caller's max_tokens and moves on to spec-b, whose context holds it
    "fallback_on_short_context": (_with(PLAIN, a_context=45), {"max_tokens": 40},
                                  Outcome("spec-b", "ok", [("spec-b", "ok", 1, "")])),
    "backend_failure": (
        _with(PLAIN, backends=lambda b: {**b, "spec-a": FaultInjectingBackend(b["spec-a"], fail_on_call=True)}),
        {}, Outcome("spec-b", "ok", [("spec-a", "error", 0, "backend_failed"), ("spec-b", "ok", 1, "")])),
    "cascade": (_with(CASCADE, b_prior=0.9), {},
                Outcome("spec-b", "ok", [("spec-a", "escalated", 0, ""), ("spec-b", "ok", 1, "")])),
    "budget_fallback": (_with(_budget("fallback"), stale_budgets=True), {},
                        Outcome("spec-b", "ok", [("spec-a", "rejected", 0, "budget_exhausted"),
                                                 ("spec-b", "ok", 1, "")])),
    "budget_reject": (_with(_budget("reject"), stale_budgets=True), {},
                      Outcome(None, "BudgetExhaustedError", [("spec-a", "rejected", 0, "budget_exhausted")])),
    "budget_allow_and_flag": (_with(_budget("allow_and_flag"), stale_budgets=True), {},
                              Outcome("spec-a", "ok", [("spec-a", "ok", 0, "")])),
    "deadline": (_with(PLAIN, backends=lambda b: {**b, "spec-a": DrippingBackendDouble(b["spec-a"])}),
                 {"deadline_s": 0.4},
                 Outcome(None, "DeadlineExceededError", [("spec-a", "error", 0, "deadline_exceeded")])),
    "cancellation": (_with(PLAIN, backends=lambda b: {**b, "spec-a": DrippingBackendDouble(b["spec-a"])}),
                     {"cancel_after_s": 0.4},
                     Outcome(None, "cancelled", [("spec-a", "cancelled", 0, "cancelled")])),
}


@pytest.mark.parametrize("behaviour", list(BEHAVIOURS))
def test_every_path_gives_the_same_outcome(behaviour: str, tmp_path: Path) -> None:
    build, params, expected = BEHAVIOURS[behaviour]
    outcomes = {}
    for path in PATHS:
        router = build(tmp_path / path)
        try:
            outcomes[path] = run(router, path, **params)
        finally:
            router.close()
    for path, got in outcomes.items():
        assert got == expected, f"{behaviour} on {path}: {got} != {expected}"


def test_deadline_ends_the_call_at_the_deadline_not_when_the_model_finishes(tmp_path: Path) -> None:
    """The dripping model would take 2 s; a 0.3 s deadline ends each path within a word of it."""
    build = _with(PLAIN, backends=lambda b: {**b, "spec-a": DrippingBackendDouble(b["spec-a"], words=40)})
    for path in PATHS:
        router = build(tmp_path / path)
        started = time.monotonic()
        got = run(router, path, deadline_s=0.3)
        elapsed = time.monotonic() - started
        router.close()
        assert got.status == "DeadlineExceededError", path
        assert elapsed < 1.0, f"{path}: {elapsed:.2f} s"


def test_a_policys_deadline_applies_and_a_requests_own_overrides_it(tmp_path: Path) -> None:
    build = _with(PLAIN + "deadline_s: 0.3\n",
                  backends=lambda b: {**b, "spec-a": DrippingBackendDouble(b["spec-a"], words=20)})
    router = build(tmp_path / "policy")
    assert run(router, "sync").status == "DeadlineExceededError"
    assert run(router, "async", deadline_s=5).status == "ok"  # 20 words x 50 ms fit in the request's own 5 s
    router.close()


def test_a_whole_answer_stopped_by_its_cancel_event_records_what_was_produced(tmp_path: Path) -> None:
    """What the proxy does when a client leaves a non-streamed request: it sets the request's cancel event; the
    model stops at its next word and the `cancelled` record counts the words it had produced."""
    from router.errors import CancelledError

    build = _with(PLAIN, backends=lambda b: {**b, "spec-a": DrippingBackendDouble(b["spec-a"], words=40)})
    for path in ("sync", "async"):
        router = build(tmp_path / path)
        event = threading.Event()
        threading.Timer(0.4, event.set).start()
        with pytest.raises(CancelledError):
            if path == "sync":
                router.complete(REVIEW, cancel=event)
            else:
                asyncio.run(router.acomplete(REVIEW, cancel=event))
        rec = router.ledger.records()[-1]
        router.close()
        assert rec.outcome == "cancelled" and 0 < rec.output_tokens < 40, (path, rec)


def test_a_stream_closed_by_its_reader_is_recorded_as_the_caller_going_away(tmp_path: Path) -> None:
    build = _with(PLAIN, backends=lambda b: {**b, "spec-a": DrippingBackendDouble(b["spec-a"], words=40)})
    router = build(tmp_path / "r")
    chunks = router.complete(REVIEW, stream=True)
    next(chunks)
    chunks.close()  # the reader stops
    rec = router.ledger.records()[-1]
    router.close()
    assert rec.outcome == "cancelled" and rec.error == "cancelled: spec-a: the caller went away; generation stopped"


def test_a_stream_left_by_its_with_block_stops_and_is_recorded_as_with_the_openai_sdk(tmp_path: Path) -> None:
    """``with client.chat.completions.create(..., stream=True) as stream:`` (``async with`` on an event loop) is
    how openai SDK code reads a stream it may leave early: the same code on the Router's streams stops the model
    when the block is left and the record says the caller went away (was a TypeError: no context manager)."""
    build = _with(PLAIN, backends=lambda b: {**b, "spec-a": DrippingBackendDouble(b["spec-a"], words=40)})
    router = build(tmp_path / "r")
    with router.complete(REVIEW, stream=True, request_id="left-sync") as chunks:
        for _ in chunks:
            break

    async def leave_async_stream() -> None:
        async with await router.acomplete(REVIEW, stream=True, request_id="left-async") as achunks:
            async for _ in achunks:
                break

    asyncio.run(leave_async_stream())
    records = {r.request_id: r for r in router.ledger.records()}
    router.close()
    for request_id in ("left-sync", "left-async"):
        assert records[request_id].outcome == "cancelled", records[request_id]
        assert records[request_id].error == "cancelled: spec-a: the caller went away; generation stopped"
    with pytest.raises(StopIteration):
        next(chunks)  # closed: as a closed generator, it has nothing more


@pytest.mark.parametrize("path", ["sync", "async"])
def test_close_ends_a_stream_its_caller_keeps_but_stopped_reading_and_records_it(tmp_path: Path, path: str) -> None:
    """A stream nobody reads any more runs no code, so its cancel flag alone would not end it before the ledger
    closes (its `cancelled` record was lost): close() ends it, its record is written, and its reader gets the
    closing error at its next read."""
    build = _with(PLAIN, backends=lambda b: {**b, "spec-a": DrippingBackendDouble(b["spec-a"], words=400)})
    router = build(tmp_path / "r")
    if path == "sync":
        kept = router.complete(REVIEW, stream=True, request_id="kept-sync")
        next(kept)
        next(kept)  # and then the caller stops reading, keeping `kept`
        router.close()
        with pytest.raises(RouterError, match="the Router was closed while the model was answering"):
            next(kept)
    else:
        async def main() -> None:
            chunks = await router.acomplete(REVIEW, stream=True, request_id="kept-async")
            await chunks.__anext__()
            await chunks.__anext__()
            await asyncio.to_thread(router.close)  # as the docs say to close on an event loop
            with pytest.raises(RouterError, match="the Router was closed while the model was answering"):
                await chunks.__anext__()

        asyncio.run(main())
    ledger = open_ledger(f"sqlite:///{tmp_path / 'r' / 'ledger.sqlite3'}")
    recs = [r for r in ledger.records() if r.request_id == f"kept-{path}"]
    ledger.close()
    assert [(r.model, r.outcome) for r in recs] == [("spec-a", "cancelled")], recs
    assert "the Router was closed while the model was answering" in (recs[0].error or "")


class StartSignallingDouble(DrippingBackendDouble):
    """Test double: :class:`DrippingBackendDouble` that sets ``started`` once its first word is out, so a test
    stops the request while the model is answering, without timing it."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner, words=400)
        self.started = threading.Event()

    def stream(self, request: GenerationRequest) -> Iterator[StreamEvent]:
        for event in super().stream(request):
            self.started.set()
            yield event


@pytest.mark.parametrize("path", ["sync-stream", "async", "async-stream"])
def test_a_request_its_caller_stops_leaves_the_callers_cancel_event_alone(tmp_path: Path, path: str) -> None:
    """One ``threading.Event`` passed as ``cancel=`` to many requests (an app's shutdown signal): a request that
    ends early (a closed stream, a task cancelled by a timeout) stops its own model only. The Router set the
    caller's event, which cancelled every other request holding it, and every later one at once."""
    dripping: dict[str, StartSignallingDouble] = {}

    def slow_spec_a(real: dict[str, Backend]) -> dict[str, Backend]:
        dripping["spec-a"] = StartSignallingDouble(real["spec-a"])
        return {**real, "spec-a": dripping["spec-a"]}

    router = _with(PLAIN, backends=slow_spec_a)(tmp_path / "r")
    shutdown = threading.Event()
    if path == "sync-stream":
        chunks = router.complete(REVIEW, stream=True, cancel=shutdown, request_id="stopped")
        next(chunks)
        chunks.close()
    else:
        async def stop_one() -> None:
            if path == "async-stream":
                stream = await router.acomplete(REVIEW, stream=True, cancel=shutdown, request_id="stopped")
                await stream.__anext__()
                await stream.aclose()
                return
            task = asyncio.ensure_future(router.acomplete(REVIEW, cancel=shutdown, request_id="stopped"))
            await asyncio.to_thread(dripping["spec-a"].started.wait)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(stop_one())
    stopped = [r.outcome for r in router.ledger.records() if r.request_id == "stopped"]
    dripping["spec-a"].words = 2  # the next request is answered at once
    after = run(router, path, cancel=shutdown)
    router.close()
    assert stopped == ["cancelled"]
    assert not shutdown.is_set()
    assert after.status == "ok", after


def test_a_call_whose_task_is_destroyed_pending_is_recorded(tmp_path: Path) -> None:
    """An app that closes its event loop while a call runs: the task is destroyed pending and its coroutine closed
    (GeneratorExit where it waits, not CancelledError). The call is recorded `cancelled` and its budget settled,
    as a stream closed the same way is."""
    build = _with(PLAIN, backends=lambda b: {**b, "spec-a": DrippingBackendDouble(b["spec-a"], words=40)})
    router = build(tmp_path / "r")
    loop = asyncio.new_event_loop()
    task = loop.create_task(router.acomplete(REVIEW))
    loop.run_until_complete(asyncio.sleep(0.3))
    assert not task.done()
    loop.close()
    task.get_coro().close()
    records = router.ledger.records()
    router.close()
    assert [r.outcome for r in records] == ["cancelled"], records
