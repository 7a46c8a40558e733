"""A fault-injecting test double that wraps a real backend: fail on call, fail mid-stream, or be slow.

It is named as a double on purpose; tests use it to check error records, retries and fallbacks. It serves as many
calls at once as the backend it wraps (:attr:`~router.backends.base.Backend.concurrency`), so async calls queue for
a local model on the event loop as they would without it."""

from __future__ import annotations

import time
from collections.abc import Iterator

from ..errors import BackendError, RouterError
from .base import Backend, GenerationRequest, StreamEvent


class FaultInjectingBackend(Backend):
    def __init__(
        self,
        inner: Backend,
        *,
        fail_on_call: bool = False,
        fail_after_events: int | None = None,
        delay_s: float = 0.0,
        failures_before_success: int = 0,
        error: type[RouterError] = BackendError,
    ) -> None:
        self.concurrency = inner.concurrency  # before Backend.__init__, which sizes the calls' turns by it
        super().__init__(inner.card)
        self.inner = inner
        self.local = inner.local
        self.fail_on_call = fail_on_call
        self.fail_after_events = fail_after_events
        self.delay_s = delay_s
        self.failures_left = failures_before_success
        self.error = error
        self.calls = 0

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def stream(self, request: GenerationRequest) -> Iterator[StreamEvent]:
        self.calls += 1
        request.check(self.card.name)
        if self.delay_s:  # slow, but like a real backend not past the request's deadline
            remaining = request.remaining()
            time.sleep(self.delay_s if remaining is None else min(self.delay_s, remaining))
            request.check(self.card.name)
        if self.fail_on_call:
            raise self.error(f"{self.card.name}: injected failure on call")
        if self.failures_left > 0:
            self.failures_left -= 1
            raise self.error(f"{self.card.name}: injected transient failure")
        for n, event in enumerate(self.inner.stream(request)):
            if self.fail_after_events is not None and n >= self.fail_after_events:
                raise self.error(f"{self.card.name}: injected failure after {n} events")
            yield event
