"""The cooldown (circuit breaker) records one verdict per call on every call path: failures open it, a success
closes it, and a call that ends without a verdict (reader stopped early, cancelled) only frees the trial."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace

import httpx
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
    clock.now = 2.5
    with pytest.raises(BackendUnavailableError, match="cooling down") as info:
        list(breaker.stream(REQUEST))
    assert info.value.retry_after_s == 7.5  # when the trial call is let through: the proxy's Retry-After
    assert breaker.rejected_total == 1
    clock.now = 10.0
    assert breaker.state == "half-open"
    assert asyncio.run(breaker.agenerate(REQUEST)).text in ("positive", "negative")
    assert breaker.state == "closed" and breaker.consecutive_failures == 0


def test_a_success_between_failures_resets_the_count(specialist_backend) -> None:  # type: ignore[no-untyped-def]
    """Only consecutive failures open the breaker: a success after some (fewer than ``failures``) starts the count
    again, and a success with no failure before it leaves it at 0."""
    flaky = FaultInjectingBackend(specialist_backend, failures_before_success=2)
    breaker = CooldownBackend(flaky, failures=3, cooldown_s=10, clock=_Clock())
    for _ in range(3):
        for _ in range(2):
            with pytest.raises(BackendError):
                asyncio.run(breaker.agenerate(REQUEST))
        assert breaker.consecutive_failures == 2
        asyncio.run(breaker.agenerate(REQUEST))
        assert breaker.state == "closed" and breaker.consecutive_failures == 0
        asyncio.run(breaker.agenerate(REQUEST))
        assert breaker.consecutive_failures == 0
        flaky.failures_left = 2
    assert breaker.opened_total == 0


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


def test_a_model_cooling_down_is_passed_over_without_a_record_per_request(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A real upstream that answers 503 every time: once its breaker opens, requests go straight to the next model
    (no attempt, no ledger record, no upstream call for the broken one), the decision saying why; it is still
    called, and its fast failure recorded, when no other model may answer."""

    from servers.procs import models_dir, only_policy, policies_dir, remote_card, upstream

    from router import Router
    from router.config import RouterConfig
    from router.ledger import open_ledger

    with upstream(tmp_path) as up:
        models = models_dir(tmp_path / "models", {
            "remote-echo": remote_card("remote-echo", up, "echo", tier="small"),
            "remote-broken": remote_card("remote-broken", up, "broken", tier="large", max_retries=0),
        })
        policies = policies_dir(tmp_path / "policies", {"onlybroken": only_policy("remote-broken")})
        ledger_url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
        config = tmp_path / "config.yaml"
        config.write_text(f"models_dir: {models}\npolicies_dir: {policies}\nledger_url: {ledger_url}\n"
                          "cooldown: {failures: 2, seconds: 300}\n")
        question = [{"role": "user", "content": "What is the capital of France?"}]
        ask = {"model": "remote-broken", "max_tokens": 8}  # pinned: ranked first while it is not cooling down
        with Router(RouterConfig.load(config)) as router:
            for _ in range(2):
                answer = router.complete(question, **ask)
                assert [a.outcome for a in answer.routing.attempts] == ["error", "ok"]
            assert router.backend("remote-broken").state == "open"  # type: ignore[attr-defined]
            calls = httpx.get(up.removesuffix("/v1") + "/stats").json()["calls"]["broken"]

            prepared = router.prepare(question, **ask)
            assert prepared.decision.model == "remote-echo" and "cooling_down" in prepared.decision.flags
            assert prepared.decision.fallbacks == ("remote-broken",)  # still the last resort
            answer = router.send(prepared)
            assert [(a.model, a.outcome) for a in answer.routing.attempts] == [("remote-echo", "ok")]
            assert "remote-broken cooling down" in answer.routing.reason
            streamed = list(router.complete(question, stream=True, **ask))
            assert streamed[-1].routing is not None and streamed[-1].routing.model == "remote-echo"
            assert httpx.get(up.removesuffix("/v1") + "/stats").json()["calls"]["broken"] == calls

            with pytest.raises(BackendUnavailableError, match="cooling down"):  # nothing else may answer
                router.complete(question, policy="onlybroken", max_tokens=8)
        ledger = open_ledger(ledger_url)
        try:
            records = ledger.records()
        finally:
            ledger.close()
    broken = [r for r in records if r.model == "remote-broken"]
    assert [r.outcome for r in broken] == ["error"] * 3 and "cooling down" in (broken[-1].error or "")
    assert sum(r.model == "remote-echo" and r.outcome == "ok" for r in records) == 4


def test_the_failure_that_opens_the_breaker_says_no_call_gets_through_before_its_cooldown_ends(
        specialist_backend) -> None:  # type: ignore[no-untyped-def]
    """The call whose failure opens the breaker (a failed trial call too) tells its caller to come back when the
    cooldown ends, not sooner: it used to carry the endpoint's own Retry-After (or none), and a client retrying then
    met "cooling down" again."""
    broken = FaultInjectingBackend(specialist_backend, failures_before_success=10)
    clock = _Clock()
    breaker = CooldownBackend(broken, failures=2, cooldown_s=15, clock=clock)
    with pytest.raises(BackendError) as first:
        breaker.generate(REQUEST)
    assert first.value.retry_after_s is None  # one failure: the breaker is still closed
    with pytest.raises(BackendError) as opening:
        breaker.generate(REQUEST)
    assert opening.value.retry_after_s == 15
    clock.now = 15.0  # the trial call fails: open again for the whole cooldown
    with pytest.raises(BackendError) as trial:
        asyncio.run(breaker.agenerate(REQUEST))
    assert trial.value.retry_after_s == 15 and breaker.state == "open"


def test_only_the_trial_calls_own_end_frees_the_trial(specialist_backend) -> None:  # type: ignore[no-untyped-def]
    """A call admitted while the breaker was closed may end without a verdict after the breaker opened and its
    trial began: that must not free the trial, or a second trial call would run beside the first."""
    broken = FaultInjectingBackend(specialist_backend, failures_before_success=1)
    clock = _Clock()
    breaker = CooldownBackend(broken, failures=1, cooldown_s=5, clock=clock)
    broken.failures_left = 0
    early = breaker.stream(REQUEST)
    next(early)  # admitted while closed, still running
    broken.failures_left = 1
    with pytest.raises(BackendError):
        breaker.generate(REQUEST)  # the breaker opens
    clock.now = 5.0
    trial = breaker.stream(REQUEST)
    next(trial)  # the half-open trial is running
    early.close()  # the early call's reader goes away: no verdict, and not the trial's
    with pytest.raises(BackendUnavailableError):  # still only one trial at a time
        breaker.generate(REQUEST)
    trial.close()  # the trial's own end without a verdict frees it
    breaker.generate(REQUEST)
    assert breaker.state == "closed"


def test_when_every_model_fails_the_error_names_what_each_one_said(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The error used to be the last model's alone: an operator saw "unreachable" for the fallback and nothing of
    the first model's 401 (a wrong key) that made the request fall back; the status stays the last one's."""
    from servers.procs import models_dir, policies_dir, remote_card, upstream

    from router import Router
    from router.config import RouterConfig

    with upstream(tmp_path) as up:
        models = models_dir(tmp_path / "models", {
            "remote-keyless": remote_card("remote-keyless", up, "status:401", tier="small", max_retries=0),
            "remote-broken": remote_card("remote-broken", up, "broken", tier="large", max_retries=0),
        }, specialist=False)
        config = RouterConfig.load(models_dir=models, policies_dir=policies_dir(tmp_path / "policies"),
                                   ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
        with Router(config) as router:
            for stream in (False, True):
                with pytest.raises(BackendError) as info:
                    answer = router.complete([{"role": "user", "content": "What is the capital of France?"}],
                                             model="remote-keyless", max_tokens=8, stream=stream)
                    list(answer) if stream else None
                error = info.value
                assert isinstance(error, BackendUnavailableError)  # remote-broken's 503, tried last
                assert error.message == ("remote-broken: the model's endpoint answered HTTP 503 (tried before: "
                                         "remote-keyless: the model's endpoint answered HTTP 401)")
                assert str(error) == error.message == error.to_openai()["error"]["message"]  # type: ignore[index]


def test_the_log_says_once_when_a_model_starts_cooling_down_and_once_when_it_is_back(  # type: ignore[no-untyped-def]
    specialist_backend, caplog
) -> None:
    """The breaker opened and closed without a word: at the default level an operator saw a model's failures stop
    (its requests went to other models, or got a 503 'cooling down') and start again with nothing in the log
    saying why. Opening says so once (a warning naming the model, the seconds and the failures), a failed trial
    only at info, and the trial that succeeds says the model is back."""
    import logging

    flaky = FaultInjectingBackend(specialist_backend, failures_before_success=3)  # TEST DOUBLE: fails 3 times
    clock = _Clock()
    breaker = CooldownBackend(flaky, failures=2, cooldown_s=30, clock=clock)
    caplog.set_level(logging.INFO, logger="router")
    for _ in range(2):
        with pytest.raises(BackendError):
            breaker.generate(REQUEST)
    for _ in range(5):  # the calls it refuses while open say nothing more
        with pytest.raises(BackendUnavailableError):
            breaker.generate(REQUEST)
    opened = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "router.backends.cooldown"]
    assert opened == [(logging.WARNING, f"{flaky.card.name}: cooling down for 30 s after 2 consecutive failures: "
                       "requests go to other models meanwhile, then one trial call is let through")]
    caplog.clear()
    clock.now = 30.0
    with pytest.raises(BackendError):  # the trial fails: it cools down again
        breaker.generate(REQUEST)
    clock.now = 60.0
    breaker.generate(REQUEST)  # the next trial answers
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "router.backends.cooldown"]
    assert lines == [
        (logging.INFO, f"{flaky.card.name}: still failing (3 consecutive failures): cooling down for another 30 s"),
        (logging.WARNING, f"{flaky.card.name}: answered after cooling down (3 consecutive failures): back in use"),
    ]
