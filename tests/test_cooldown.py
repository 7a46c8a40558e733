"""The cooldown (circuit breaker) records one verdict per call on every call path: failures open it, a success
closes it, and a call that ends without a verdict (reader stopped early, cancelled) only frees the trial."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace

import pytest

from router.backends import FaultInjectingBackend, GenerationRequest
from router.backends.cooldown import CooldownBackend
from router.errors import (
    BackendError,
    BackendUnavailableError,
    BadRequestError,
    CancelledError,
    CapabilityError,
    ContextLengthError,
    DeadlineExceededError,
)
from router.types import ChatMessage

REQUEST = GenerationRequest(messages=[ChatMessage(role="user", content="Sentiment: a gorgeous, witty film")])


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_failures_open_then_a_trial_success_closes(specialist_backend) -> None:  # type: ignore[no-untyped-def]
    flaky = FaultInjectingBackend(specialist_backend, failures_before_success=2)
    clock = _Clock()
    breaker = CooldownBackend(flaky, failures=2, cooldown_s=10, clock=clock)
    for _ in range(2):
        with pytest.raises(BackendError):
            breaker.generate(REQUEST)
    assert breaker.state == "open" and breaker.opened_total == 1
    with pytest.raises(BackendUnavailableError, match="cooling down"):
        list(breaker.stream(REQUEST))
    assert breaker.rejected_total == 1
    clock.now = 10.0
    assert breaker.state == "half-open"
    assert asyncio.run(breaker.agenerate(REQUEST)).text in ("positive", "negative")
    assert breaker.state == "closed" and breaker.consecutive_failures == 0


def test_a_stream_closed_early_frees_the_trial_without_a_verdict(specialist_backend) -> None:  # type: ignore[no-untyped-def]
    broken = FaultInjectingBackend(specialist_backend, failures_before_success=1)
    clock = _Clock()
    breaker = CooldownBackend(broken, failures=1, cooldown_s=5, clock=clock)
    with pytest.raises(BackendError):
        breaker.generate(REQUEST)
    clock.now = 5.0
    stream = breaker.stream(REQUEST)
    next(stream)  # the trial call is running
    with pytest.raises(BackendUnavailableError):  # only one trial at a time
        breaker.generate(REQUEST)
    stream.close()  # reader went away: no verdict, the breaker stays half-open
    assert breaker.state == "half-open" and breaker.consecutive_failures == 1

    async def read_one() -> None:
        events = breaker.astream(REQUEST)
        await events.__anext__()
        await events.aclose()

    asyncio.run(read_one())
    assert breaker.state == "half-open"
    breaker.generate(REQUEST)  # the next trial may run, and succeeds
    assert breaker.state == "closed"


def test_a_passed_deadline_or_a_cancellation_is_no_verdict(specialist_backend) -> None:  # type: ignore[no-untyped-def]
    """The request ran out of time or its caller left: that says nothing about the backend, so it neither
    counts as a failure nor keeps the half-open trial taken."""
    gone = threading.Event()
    gone.set()
    late = replace(REQUEST, deadline=time.monotonic() - 1.0)
    cancelled = replace(REQUEST, cancel=gone)
    broken = FaultInjectingBackend(specialist_backend, failures_before_success=1)
    clock = _Clock()
    breaker = CooldownBackend(broken, failures=2, cooldown_s=5, clock=clock)

    async def astream(request: GenerationRequest) -> None:
        async for _ in breaker.astream(request):
            pass

    calls = [breaker.generate, lambda r: list(breaker.stream(r)), lambda r: asyncio.run(breaker.agenerate(r)),
             lambda r: asyncio.run(astream(r))]
    for call in calls:
        for request, error in ((late, DeadlineExceededError), (cancelled, CancelledError)):
            with pytest.raises(error):
                call(request)
            assert breaker.state == "closed" and breaker.consecutive_failures == 0
    with pytest.raises(BackendError):
        breaker.generate(REQUEST)
    assert breaker.consecutive_failures == 1  # a real failure still counts
    breaker.consecutive_failures = 2
    assert breaker.state == "half-open"
    with pytest.raises(DeadlineExceededError):
        breaker.generate(late)  # the trial ran out of time: no verdict, the trial is free again
    assert breaker.state == "half-open" and breaker.consecutive_failures == 2
    breaker.generate(REQUEST)
    assert breaker.state == "closed"


@pytest.mark.parametrize("error", [BadRequestError, ContextLengthError, CapabilityError])
def test_a_bad_request_raised_by_the_backend_is_no_verdict(specialist_backend, error) -> None:  # type: ignore[no-untyped-def]
    """A request the model cannot take (a parameter it refuses, a prompt too long for it) says nothing about the
    model: however many such requests come, the model keeps serving everyone else."""
    refusing = FaultInjectingBackend(specialist_backend, failures_before_success=5, error=error)
    breaker = CooldownBackend(refusing, failures=2, cooldown_s=5, clock=_Clock())
    for _ in range(5):
        with pytest.raises(error):
            breaker.generate(REQUEST)
        assert breaker.state == "closed" and breaker.consecutive_failures == 0
    assert breaker.generate(REQUEST).text in ("positive", "negative")
    assert breaker.opened_total == 0 and refusing.calls == 6
