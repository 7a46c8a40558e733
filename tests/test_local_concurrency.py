"""Many concurrent calls to one local llama.cpp model (the shipped SmolLM2-135M).

A llama.cpp context serves one generation at a time, and a stream holds it from its first token to its last.
The async calls wait for their turn on the event loop, not in asyncio's worker threads: the default pool is small
(``min(32, CPUs + 4)`` threads, 6 on a 2-core machine), and a stream needs a thread for each of its steps, so
threads parked on the model's lock would leave the stream that holds it without a thread to go on (every local
call, and everything else that uses the pool, stalled until deadlines fire). The pool is set to 4 threads here so
that the tests mean the same on any machine. Sync callers (threads of their own) share the model with them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import pytest

from router import Router, RouterConfig
from router.backends import FaultInjectingBackend, GenerationRequest
from router.errors import RouterError
from router.types import ChatMessage

pytestmark = pytest.mark.slow

POOL = 4
STREAMS = 10
MODEL = "smollm2-135m"
ASK = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Router]:
    ledger = tmp_path_factory.mktemp("local_concurrency") / "ledger.sqlite3"
    with Router(RouterConfig.load(ledger_url=f"sqlite:///{ledger}")) as r:
        r.complete(ASK, model=MODEL, max_tokens=1)  # the model loaded before the tests start
        yield r


async def _stream(router: Router, started: asyncio.Event | None = None) -> list[Any]:
    chunks = []
    async for chunk in await router.acomplete(ASK, model=MODEL, max_tokens=2, stream=True, deadline_s=60):
        chunks.append(chunk)
        if started is not None:
            started.set()
    return chunks


@pytest.mark.timeout(180)
def test_concurrent_streams_queue_for_a_local_model_without_holding_worker_threads(router: Router) -> None:
    """10 streams and 3 plain calls to SmolLM2 at once, on a pool of 4 threads, then a cheap request (the ONNX
    specialist, which runs in that pool too) once the first stream has begun: every call is answered, and the
    cheap one before the local model's queue has drained (with callers waiting in the pool: at the deadlines)."""
    finished: list[str] = []

    async def main() -> tuple[list[Any], Any]:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(POOL))
        started = asyncio.Event()

        async def stream(i: int) -> list[Any]:
            chunks = await _stream(router, started)
            finished.append(f"stream {i}")
            return chunks

        async def plain(i: int) -> Any:
            answer = await router.acomplete(ASK, model=MODEL, max_tokens=2, deadline_s=60)
            finished.append(f"plain {i}")
            return answer

        local = [asyncio.create_task(stream(i)) for i in range(STREAMS)]
        local += [asyncio.create_task(plain(i)) for i in range(3)]
        await started.wait()
        cheap = await router.acomplete([{"role": "user", "content": "I love this phone!"}], model="sentiment-onnx",
                                       deadline_s=60)
        finished.append("cheap")
        return await asyncio.gather(*local), cheap

    answers, cheap = asyncio.run(main())
    for answer in answers[:STREAMS]:
        assert answer[-1].choices[0].finish_reason in ("stop", "length") and answer[-1].routing.model == MODEL
    for answer in answers[STREAMS:]:
        assert answer.choices[0].finish_reason in ("stop", "length") and answer.routing.model == MODEL
    assert cheap.choices[0].message.content in ("positive", "negative")
    assert finished.index("cheap") < len(finished) - 1, finished  # some local call was still queued


@pytest.mark.timeout(180)
def test_sync_and_async_streams_share_a_local_model(router: Router) -> None:
    """Threads streaming with ``Router.complete`` while an event loop streams with ``acomplete``: all answered."""
    sync_answers: list[Any] = []

    def sync_stream() -> None:
        chunks = list(router.complete(ASK, model=MODEL, max_tokens=2, stream=True, deadline_s=60))
        sync_answers.append(chunks[-1])

    async def main() -> list[list[Any]]:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(POOL))
        return await asyncio.gather(*(_stream(router) for _ in range(STREAMS)))

    threads = [threading.Thread(target=sync_stream) for _ in range(6)]
    for t in threads:
        t.start()
    async_answers = asyncio.run(main())
    for t in threads:
        t.join()
    assert len(sync_answers) == 6 and len(async_answers) == STREAMS
    for last in sync_answers + [chunks[-1] for chunks in async_answers]:
        assert last.choices[0].finish_reason in ("stop", "length") and last.routing.model == MODEL


def _long(**kw: Any) -> GenerationRequest:
    return GenerationRequest(messages=[ChatMessage(role="user", content="Write a long story about a dragon.")],
                             max_tokens=400, temperature=0.0, **kw)


@pytest.mark.timeout(60)
def test_a_call_queued_for_a_local_model_ends_at_its_deadline_or_when_cancelled(small_backend: Any) -> None:
    """A stream holds SmolLM2 for up to 400 tokens; a call queued behind it with a deadline ends with
    DeadlineExceededError, and one whose ``cancel`` event is set with CancelledError, both while the stream still
    runs; the stream goes on undisturbed."""
    short = GenerationRequest(messages=_long().messages, max_tokens=2)

    async def main() -> tuple[list[BaseException], bool, int]:
        events: list[Any] = []
        more = asyncio.Event()

        async def long_stream() -> None:
            async for event in small_backend.astream(_long()):
                events.append(event)
                more.set()

        holder = asyncio.create_task(long_stream())
        await more.wait()
        cancel = threading.Event()
        queued = [asyncio.create_task(small_backend.agenerate(replace(short, deadline=time.monotonic() + 0.5))),
                  asyncio.create_task(_collect(small_backend.astream(replace(short, cancel=cancel))))]
        await asyncio.sleep(0)
        cancel.set()
        errors = [e for e in await asyncio.gather(*queued, return_exceptions=True) if isinstance(e, BaseException)]
        still_running = not holder.done()
        seen = len(events)
        more.clear()
        await more.wait()  # and the stream goes on
        holder.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holder
        return errors, still_running, len(events) - seen

    errors, still_running, later = asyncio.run(main())
    assert sorted(type(e).__name__ for e in errors) == ["CancelledError", "DeadlineExceededError"]
    assert all(isinstance(e, RouterError) for e in errors)
    assert still_running and later >= 1
    assert small_backend.generate(short).text  # the cancelled stream gave the model back


@pytest.mark.timeout(60)
def test_a_cancelled_stream_gives_the_local_model_to_the_next_calls(small_backend: Any) -> None:
    """The first stream's task is cancelled mid-answer while two calls wait for the model: the model's lock is
    released (the worker stops at its next token) and both waiting calls are answered."""
    short = GenerationRequest(messages=_long().messages, max_tokens=2)

    async def main() -> list[Any]:
        events: list[Any] = []
        tokens = [asyncio.Event() for _ in range(6)]

        async def first() -> None:
            async for event in small_backend.astream(_long()):
                events.append(event)
                tokens[min(len(events), 6) - 1].set()

        holder = asyncio.create_task(first())
        await tokens[0].wait()
        waiting = [asyncio.create_task(small_backend.agenerate(short)),
                   asyncio.create_task(_collect(small_backend.astream(short)))]
        await tokens[5].wait()  # the waiting calls had five tokens' time to queue
        holder.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holder
        return await asyncio.gather(*waiting)

    generation, events = asyncio.run(main())
    assert generation.text and events[-1].finish_reason in ("stop", "length")
    assert not small_backend._lock.locked()


async def _collect(events: Any) -> list[Any]:
    return [event async for event in events]


@pytest.mark.timeout(60)
def test_a_fault_double_queues_for_the_model_it_wraps(small_backend: Any) -> None:
    """FaultInjectingBackend (slow here: each call holds the model for 0.3 s) serves as many calls at once as the
    model it wraps: calls queue for it on the event loop, not in worker threads, so with a pool of 2 threads a cheap
    job submitted while three calls wait runs at once instead of after two of them."""
    slow = FaultInjectingBackend(small_backend, delay_s=0.3)
    short = GenerationRequest(messages=[ChatMessage(role="user", content="Say hello.")], max_tokens=1)
    finished: list[str] = []

    async def main() -> None:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(2))

        async def call(i: int) -> None:
            await slow.agenerate(short)
            finished.append(f"call {i}")

        calls = [asyncio.create_task(call(i)) for i in range(4)]
        while slow.calls == 0:  # the first call holds the model; the others have queued
            await asyncio.sleep(0.01)
        await asyncio.to_thread(finished.append, "cheap")
        await asyncio.gather(*calls)

    asyncio.run(main())
    assert finished[0] == "cheap" and len(finished) == 5, finished
    assert slow.concurrency == small_backend.concurrency == 1


LONG_ASK = [{"role": "user", "content": "Write a long story about a dragon."}]


async def _holding(router: Router) -> Any:
    """A stream that has begun and is not read on: it holds the local model's turn until it is read to its end."""
    stream = await router.acomplete(LONG_ASK, model=MODEL, max_tokens=400, stream=True, deadline_s=60)
    await anext(stream)
    return stream


@pytest.mark.timeout(120)
def test_calls_whose_deadline_passes_in_the_queue_are_not_charged(router: Router) -> None:
    """Calls queued behind a stream that holds SmolLM2 end at their deadline with an error that says they were
    waiting, and their records say 0 J, ``estimated:none``, as a call whose deadline passed before its turn (the
    meter ran from the queue on: they were charged the running call's CPU time)."""
    since = time.time()

    async def main() -> list[Any]:
        stream = await _holding(router)
        queued = await asyncio.gather(*(router.acomplete(ASK, model=MODEL, max_tokens=40, deadline_s=0.5)
                                        for _ in range(3)), return_exceptions=True)
        async for _ in stream:
            pass
        return queued

    errors = asyncio.run(main())
    assert all(type(e).__name__ == "DeadlineExceededError" and "while waiting for the model" in e.message
               for e in errors), errors
    queued = [r for r in router.ledger.records(since=since) if r.outcome == "error"]
    assert len(queued) == 3 and all("while waiting for the model" in (r.error or "") for r in queued), queued
    assert all(r.energy_j == 0 and r.energy_source == "estimated:none" and r.output_tokens == 0
               for r in queued), queued


@pytest.mark.timeout(120)
def test_router_close_says_it_cancelled_a_queued_call_and_does_not_charge_it(tmp_path: Any) -> None:
    """``close()`` cancels a call still waiting for the local model: its error says the Router was closed (not
    that the caller went away) and its record is 0 J, ``estimated:none``; the stream that held the model stops
    at its next token and says so too."""
    r = Router(RouterConfig.load(ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}"))
    r.complete(ASK, model=MODEL, max_tokens=1)

    async def main() -> tuple[BaseException | None, BaseException | None]:
        stream = await _holding(r)
        queued = asyncio.create_task(r.acomplete(ASK, model=MODEL, max_tokens=2, deadline_s=60))
        while len(r._calls._calls) < 2:  # the queued call has begun (close() then waits 5 s before cancelling)
            await asyncio.sleep(0.01)
        closing = asyncio.create_task(asyncio.to_thread(r.close))
        queued_error = (await asyncio.gather(queued, return_exceptions=True))[0]
        stream_error = None
        try:
            async for _ in stream:
                pass
        except RouterError as exc:
            stream_error = exc
        await closing
        return queued_error, stream_error

    queued_error, stream_error = asyncio.run(main())
    assert type(queued_error).__name__ == "CancelledError", queued_error
    assert "the Router was closed while this call waited for the model" in queued_error.message  # type: ignore[union-attr]
    assert stream_error is not None and "the Router was closed while the model was answering" in stream_error.message
    ledger = Router(RouterConfig.load(ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}")).ledger
    records = [x for x in ledger.records() if x.outcome == "cancelled"]
    ledger.close()
    waited = [x for x in records if "waited" in (x.error or "")]
    assert len(records) == 2 and len(waited) == 1, records
    assert waited[0].energy_j == 0 and waited[0].energy_source == "estimated:none"


@pytest.mark.timeout(120)
def test_a_queued_call_is_metered_from_its_turn_not_from_its_wait(router: Router) -> None:
    """While a stream holds SmolLM2, calls queued behind it open no meter span: the CPU-time meter splits the
    process's CPU time among the open spans, so a waiting call's span would take a share of the running call's
    work (charged to nobody once the wait ends at a deadline). Each call is metered once it has its turn, and every
    answered call records the joules its own turn measured."""
    share = router.meter._share  # type: ignore[attr-defined]
    since = time.time()

    async def main() -> tuple[int, list[Any]]:
        stream = await _holding(router)
        queued = [asyncio.create_task(router.acomplete(ASK, model=MODEL, max_tokens=2, deadline_s=60))
                  for _ in range(2)]
        while len(router._calls._calls) < 3:  # both queued calls have begun waiting
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        open_while_queued = share._active
        async for _ in stream:
            pass
        return open_while_queued, await asyncio.gather(*queued)

    open_while_queued, answers = asyncio.run(main())
    assert open_while_queued == 1, "only the stream that holds the model is metered"
    assert all(a.routing.energy_j > 0 and a.routing.energy_source == "estimated:cpu-time" for a in answers)
    records = [r for r in router.ledger.records(since=since) if r.outcome == "ok"]
    assert len(records) == 3 and all(r.energy_j > 0 for r in records), records


@pytest.mark.timeout(120)
def test_a_judge_call_waiting_for_the_model_is_neither_metered_nor_charged(tmp_path: Any) -> None:
    """A call outside any request (the judge, anchor measurements: ``metered_call``, on the learning thread) to
    SmolLM2 while a stream holds it waits for the model's lock as a request's call does: no meter span is open for
    it while it waits (it took half the running stream's CPU time), and when its deadline passes in the wait its
    record says 0 J, ``estimated:none`` (it was charged its wait as ``estimated:cpu-time``)."""
    from router.judge import metered_call

    ledger = tmp_path / "ledger.sqlite3"
    with Router(RouterConfig.load(ledger_url=f"sqlite:///{ledger}", deadline_s=1.0)) as r:
        r.complete(ASK, model=MODEL, max_tokens=1, deadline_s=60)  # the model loaded first
        share = r.meter._share  # type: ignore[attr-defined]

        def judge() -> Any:
            return metered_call(r, MODEL, "Score this reply.", request_id="judged:judge", reason="judge call",
                                max_tokens=4, task="judge")

        async def main() -> tuple[int, BaseException | None]:
            stream = await _holding(r)
            waiting = asyncio.create_task(asyncio.to_thread(judge))
            await asyncio.sleep(0.3)  # the judge call is waiting for the model's lock (its deadline is 1 s)
            open_while_waiting = share._active
            error = (await asyncio.gather(waiting, return_exceptions=True))[0]
            async for _ in stream:
                pass
            return open_while_waiting, error

        open_while_waiting, error = asyncio.run(main())
        assert type(error).__name__ == "DeadlineExceededError", error
        assert "while waiting for the model" in error.message  # type: ignore[union-attr]
        assert open_while_waiting == 1, "only the stream that holds the model is metered"
        judged = [x for x in r.ledger.records() if x.request_id == "judged:judge"]
        assert len(judged) == 1 and judged[0].outcome == "error", judged
        assert judged[0].energy_j == 0 and judged[0].energy_source == "estimated:none", judged
