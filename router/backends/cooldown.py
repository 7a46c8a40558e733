"""A cooldown (circuit breaker) around a backend that keeps failing.

After ``failures`` consecutive failed calls (failures of the backend, not of the request: a bad request, a passed
deadline or a caller gone are not counted) the backend is *open* for ``cooldown_s`` seconds: every call fails at
once with :class:`BackendUnavailableError` (HTTP 503 at the proxy) instead of waiting on a dead endpoint, so the
Router moves straight on to the next adequate model. After the cooldown one trial call is let through
(*half-open*); a success closes the breaker, a failure opens it again for another ``cooldown_s``. A failure that
says when the backend will take calls again (``retry_after_s``: an endpoint's 429 or 503 with ``Retry-After``)
opens it for at least that long, at most :data:`RETRY_AFTER_MAX_S`: a trial call sooner would meet the same refusal.

The Router asks the breaker before deciding: a model whose breaker is open (not half-open) is ranked after every
other candidate (``DecisionRequest.cooling``; the decision's flags say ``cooling_down`` and its reason names the
model), so during an outage requests go straight to the next model and leave no record of the model cooling down.
It is still called when no other model can answer (none allowed, or all failed): that short-circuited call is an
attempt the Router writes to the ledger (outcome ``error``, the message says "cooling down"). ``opened_total`` /
``state`` feed the proxy's metrics.
The log says when the breaker opens and when a trial call closes it again, once each per outage (a trial that
fails, reopening it, only at info: the failed call has its own line).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Literal

from ..errors import (
    BackendRefusedError,
    BackendUnavailableError,
    BadRequestError,
    CancelledError,
    DeadlineExceededError,
    RouterError,
)
from ..options import NO_OPTIONS, ModelOptions
from ..types import ChatMessage
from .base import Backend, Generation, GenerationRequest, StreamEvent

log = logging.getLogger(__name__)

DEFAULT_FAILURES = 3
DEFAULT_COOLDOWN_S = 30.0
RETRY_AFTER_MAX_S = 600.0
"""The longest a failure's ``retry_after_s`` keeps the breaker open (longer than ``cooldown_s``): a mistaken or
hour-long ``Retry-After`` would leave the model unused all that time, when one trial call every ten minutes
costs little (the endpoint's ``Retry-After`` still reaches the caller, up to an hour)."""


class CooldownBackend(Backend):
    """Wraps ``inner``; counts consecutive failures and short-circuits calls while cooling down."""

    def __init__(
        self,
        inner: Backend,
        *,
        failures: int = DEFAULT_FAILURES,
        cooldown_s: float = DEFAULT_COOLDOWN_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.concurrency = inner.concurrency  # what the model serves at once (its calls queue in ``inner``)
        super().__init__(inner.card)
        if failures < 1 or cooldown_s < 0:
            raise ValueError("failures must be >= 1 and cooldown_s >= 0")
        self.inner = inner
        self.local = inner.local
        self.bounds_itself = inner.bounds_itself
        self.failures = failures
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self.consecutive_failures = 0
        self.opened_total = 0
        self.rejected_total = 0
        self._open_until = 0.0
        self._trial_running = False

    # -- state ----------------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """``closed`` (calls pass), ``open`` (cooling down) or ``half-open`` (one trial call allowed)."""
        with self._lock:
            if self.consecutive_failures < self.failures:
                return "closed"
            return "open" if self._clock() < self._open_until else "half-open"

    def _admit(self) -> bool:
        """Let a call through (True when it is the half-open trial) or raise :class:`BackendUnavailableError`."""
        if self.consecutive_failures < self.failures:  # closed (most calls): read without the lock, as it would
            return False  # be read under it; a failure counted meanwhile only opens the breaker for later calls
        with self._lock:
            if self.consecutive_failures < self.failures:
                return False
            now = self._clock()
            if now >= self._open_until and not self._trial_running:
                self._trial_running = True  # half-open: this call is the trial
                return True
            self.rejected_total += 1
            left = max(0.0, self._open_until - now)
        raise BackendUnavailableError(
            f"{self.card.name}: cooling down for {left:.1f} s more after {self.consecutive_failures} consecutive "
            "failures", retry_after_s=left,  # 0 while the trial call runs: its verdict is due any moment
        )

    def _succeeded(self) -> None:
        if self.consecutive_failures == 0:  # nothing to reset (most calls): a trial call runs only after failures
            return
        with self._lock:
            failed = self.consecutive_failures
            self.consecutive_failures = 0
            self._trial_running = False
        if failed >= self.failures:
            log.warning("%s: answered after cooling down (%d consecutive failures): back in use", self.card.name,
                        failed)

    def _failed(self, retry_after_s: float | None = None) -> float | None:
        """Count a failure that asked for ``retry_after_s`` (or nothing); the seconds no call gets through when it
        opened the breaker (``cooldown_s``, or longer as the failure asked), else ``None``."""
        with self._lock:
            self.consecutive_failures += 1
            self._trial_running = False
            failed = self.consecutive_failures
            if failed < self.failures:
                return None
            seconds = max(self.cooldown_s, min(retry_after_s or 0.0, RETRY_AFTER_MAX_S))
            self._open_until = self._clock() + seconds
            self.opened_total += 1
        asked = f" (the endpoint asked to wait {seconds:.0f} s)" if seconds > self.cooldown_s else ""
        if failed == self.failures:  # it was closed: an outage begins
            log.warning("%s: cooling down for %.0f s%s after %d consecutive failures: requests go to other models "
                        "meanwhile, then one trial call is let through", self.card.name, seconds, asked, failed)
        else:  # its trial call failed too
            log.info("%s: still failing (%d consecutive failures): cooling down for another %.0f s%s",
                     self.card.name, failed, seconds, asked)
        return seconds

    def _released(self) -> None:
        """The trial call ended without a verdict (the caller stopped reading): let the next call be the trial."""
        with self._lock:
            self._trial_running = False

    def _call(self) -> _Verdict:
        """Admit one call and record its verdict: an exception is a failure; a passed deadline, a cancellation, a
        bad request (:data:`_NO_VERDICT`) or a reader that stops early (GeneratorExit) is no verdict, so the next
        call may be the trial."""
        return _Verdict(self, self._admit())

    # -- calls ----------------------------------------------------------------------------------------
    def stream(self, request: GenerationRequest) -> Iterator[StreamEvent]:
        with self._call():
            yield from self.inner.stream(request)

    async def astream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        with self._call():
            async for event in self.inner.astream(request):
                yield event

    def generate(self, request: GenerationRequest) -> Generation:
        with self._call():
            return self.inner.generate(request)

    async def agenerate(self, request: GenerationRequest) -> Generation:
        with self._call():
            return await self.inner.agenerate(request)

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def prompt_tokens(self, messages: list[ChatMessage], options: ModelOptions = NO_OPTIONS) -> int:
        return self.inner.prompt_tokens(messages, options)

    def warm_up(self) -> None:
        self.inner.warm_up()

    def close(self) -> None:
        self.inner.close()

    def __repr__(self) -> str:
        return f"CooldownBackend({self.inner!r}, state={self.state})"


class _Verdict:
    """The context of one admitted call (a class, not ``contextlib.contextmanager``: this is on every model
    call, and a generator-based manager costs several times as much)."""

    __slots__ = ("backend", "trial")

    def __init__(self, backend: CooldownBackend, trial: bool) -> None:
        self.backend = backend
        self.trial = trial
        """This call is the half-open trial: only its own end without a verdict frees the trial for another call
        (a call admitted before the breaker opened may end that way while the trial runs)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> Literal[False]:
        if kind is None:
            self.backend._succeeded()
        elif issubclass(kind, Exception) and not issubclass(kind, _NO_VERDICT):
            asked = exc.retry_after_s if isinstance(exc, RouterError) else None
            opened_for = self.backend._failed(asked)
            if opened_for is not None and isinstance(exc, RouterError):
                # the breaker opened: no call gets through before its cooldown ends, whatever the endpoint asked
                exc.retry_after_s = max(exc.retry_after_s or 0.0, opened_for)
        elif self.trial:
            self.backend._released()
        return False


_NO_VERDICT = (DeadlineExceededError, CancelledError, BadRequestError, BackendRefusedError)
"""Ends of a call that say nothing about the backend: the request ran out of time (its deadline may have been
nearly spent before this call began), the caller went away, or the request itself is wrong (a parameter the
model cannot take, a prompt too long for it, a request its endpoint refused with a 400): counted, such requests
would cool a healthy model down for everyone."""
