"""The attempts of one request, written once for every way of calling a model.

:class:`Attempts` holds the rules and does no model I/O itself: which model to call next (the decision's choice,
then its fallbacks, then cascade escalations), the checks before a call (deadline, cancellation, context length,
budget reservation, meter start) and what each call's end means (settle the reservation, write the ledger
record, fall back, escalate, or end the request with a typed error). The four drivers in
:mod:`router._router` (sync and async, plain and streamed) are short loops around it::

    attempts = Attempts(router, prepared)
    while (call := attempts.next_call()) is not None:
        try:
            gen = call.backend.generate(call.request)     # the driver's own I/O
        except Exception as exc:
            attempts.failed(call, exc)                     # raises when the request must end here
            continue
        if attempts.answered(call, gen):                   # False: escalating to a larger model
            return attempts.completion()
    if attempts.keep_escalated():                          # no escalation model could be reserved
        return attempts.completion()
    raise attempts.final_error()

so fallback, cascade, budgets, deadlines and records behave the same on every path.

The rules: a backend failure (:class:`BackendError`) or a model whose context is too short moves on to the next
model; after streamed output has reached the caller nothing moves on (the answer has begun). A spent budget
falls back, rejects or is allowed and flagged as the policy says; an escalation model whose budget cannot be
reserved because the ledger's store is down is not tried. A cascade whose escalation is not made (no escalation
model had room or answered) keeps the answer it escalated from, flagged ``escalation_skipped``. A remote model's
refusal is its answer (``ok``, flagged ``refusal``): not checked against the request's format and never escalated
past. An expired deadline or a cancelled request ends the request at once. Every model called leaves one ledger
record (``ok``, ``escalated``, ``error``, ``cancelled``), and a model skipped for its budget a ``rejected`` one.

Length: one class holds a call's whole life (reserve, meter, judge, settle, record) so that the four drivers in
:mod:`router._router` share it; split, each step would need the same state passed around.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from typing import Any, cast

from ._books import Books, Models
from ._guards import internal
from ._output import Call, Output, answer_choice
from ._request import PreparedRequest
from .backends import Backend, Generation, GenerationRequest
from .backends.base import never_started, waiting_for_turn
from .cards import ModelCard
from .energy import EnergyReading, Meter
from .errors import (
    BackendError,
    BudgetExhaustedError,
    CancelledError,
    ConfigError,
    ContextLengthError,
    DeadlineExceededError,
    LedgerError,
    RouterClosedError,
    RouterError,
    StructuredOutputError,
)
from .ledger import Reservation
from .ledger.base import HOLD_MARGIN_S
from .options import output_problem
from .policy.decision import BudgetRef
from .policy.engine import fmt_j

log = logging.getLogger("router")


_NOT_CALLED = EnergyReading(0.0, "estimated", "none", "not called")


class Attempts:
    """The rules of one request's attempts (see the module docstring)."""

    def __init__(self, router: Models, prepared: PreparedRequest) -> None:
        self.router = router
        self.prepared = prepared
        decision = prepared.decision
        self.plan: list[str] = list(dict.fromkeys((decision.model, *decision.fallbacks)))
        self.position = 0
        self.attempts: list[dict[str, Any]] = []
        """Attempt-shaped dicts (as :class:`~router.types.Attempt` dumps them), in call order."""
        self.energy: EnergyReading | None = None
        self.errors: list[RouterError] = []
        self.notes: list[str] = []
        """Budget notes (a fallback, an allowed overrun) and a refusal's: they join the reason of every record
        after them."""
        self.books = Books(router, prepared, self.notes)
        self._request: GenerationRequest | None = None
        self.co2e_g = 0.0
        """Grams CO2e of the request's calls (escalated and failed ones too), as their records say."""
        self.answer: tuple[Call, Generation, float] | None = None
        self.escalated: tuple[Call, Generation, float] | None = None
        """The answer whose low confidence sent the request on to the escalation models."""
        self.flags: list[str] = []
        """What the attempts had to work around, after the decision's own flags."""

    # -- before a call --------------------------------------------------------------------------------------
    def next_call(self) -> Call | None:
        """The next model to call, its budget held and its meter started; ``None`` when no model is left (then
        :meth:`final_error` says why). Raises when the request must end before any call."""
        prepared = self.prepared
        while self.position < len(self.plan):
            model = self.plan[self.position]
            self.position += 1
            card = self.router.cards[model]
            self._check_alive(card)
            try:
                backend = self.router.backend(model)
                self._check_context(backend)
            except ContextLengthError as exc:
                self.errors.append(exc)
                self.attempts.append(_attempt(model, card.tier, 0.0, _NOT_CALLED.source, 0.0, "rejected"))
                continue
            except (BackendError, ConfigError) as exc:  # the backend could not start or load its model: a failed
                # attempt, so the next model answers; a model file that does not load shows at its first call
                error = exc if isinstance(exc, BackendError) else BackendError(
                    f"{model}: its backend could not start; the log says why", detail=exc.message)
                self._log_detail(error)
                self.errors.append(error)
                self.books.record(card, _NOT_CALLED, 0.0, "error", attempt=len(self.attempts),
                                  error=f"{error.code}: {error.message}")
                self.attempts.append(_attempt(model, card.tier, 0.0, _NOT_CALLED.source, 0.0, "error"))
                continue
            held = self._reserve(card)
            if held is None:
                continue
            if self._request is None:  # the same for every model the request tries
                self._request = GenerationRequest(
                    messages=prepared.messages,
                    max_tokens=prepared.max_tokens,
                    temperature=prepared.temperature,
                    stop=prepared.stop,
                    want_confidence=prepared.decision.escalate_below is not None,
                    deadline=prepared.deadline,
                    cancel=prepared.cancel,
                    options=prepared.options,
                    request_id=prepared.request_id,
                )
            queued = backend.local and backend.concurrency is not None
            call = Call(
                index=len(self.attempts), model=model, card=card, backend=backend, request=self._request, held=held,
                span=self.router.meter.start() if backend.local and not queued else None,
                buffered=self._may_escalate(model) or self._may_fall_back_on_format(),
            )
            if queued:  # metered from its turn at the model on (GenerationRequest.turn_started), not its wait
                call.request = dataclasses.replace(self._request, turn_started=functools.partial(
                    _start_meter, call, self.router.meter))
            return call
        return None

    def _check_alive(self, card: ModelCard) -> None:
        """End the request before calling ``card`` when the caller has gone or the deadline has passed."""
        if self.prepared.cancel.is_set():
            exc: RouterError = CancelledError("the request was cancelled before a model answered")
            outcome = "cancelled"
        elif time.monotonic() >= self.prepared.deadline:
            exc = DeadlineExceededError(
                f"the request's deadline passed before {card.name} could be called; "
                "raise `deadline_s` (per request, in the policy, or in the config) or use a faster model")
            outcome = "error"
        else:
            return
        self.books.record(card, _NOT_CALLED, 0.0, outcome, attempt=len(self.attempts),
                          error=f"{exc.code}: {exc.message}")
        raise exc

    def _check_context(self, backend: Backend) -> None:
        card = backend.card
        prompt_tokens = backend.prompt_tokens(self.prepared.messages, self.prepared.options)
        wanted = self.prepared.max_tokens or 0
        if prompt_tokens + wanted <= card.context_length:  # ``wanted`` is never negative: the prompt fits too
            return  # fits (most requests): no message to build
        tools = self.prepared.options.tools is not None
        prompt = "the prompt with the tools offered is" if tools else "the prompt is"
        if prompt_tokens > card.context_length:
            raise ContextLengthError(
                f"{prompt} {prompt_tokens} tokens but {card.name} holds {card.context_length}; shorten the "
                f"messages{', offer fewer tools' if tools else ''} or pin a model with a longer context",
                param="messages")
        limit = self.prepared.max_tokens_param
        raise ContextLengthError(
            f"{prompt} {prompt_tokens} tokens and {limit} asks for {wanted} more, but {card.name} holds "
            f"{card.context_length}; lower {limit} to at most {card.context_length - prompt_tokens} or pin a "
            "model with a longer context", param=limit)

    def _may_escalate(self, model: str) -> bool:
        d = self.prepared.decision
        return d.escalate_below is not None and bool(d.escalate_to) and model not in d.escalate_to

    def _may_fall_back_on_format(self) -> bool:
        """Whether the call about to be made has its answer checked against the request's ``response_format``, or
        must be a tool call (``tool_choice`` ``required`` or a function's name), with another model left to try: a
        stream collects such an answer before sending any of it, so that one that fails is followed by the next
        model's, as a whole answer is (streamed as it came, it could only end in an error). The last model's answer
        streams as it comes."""
        options = self.prepared.options
        must_call = options.tools is not None and options.tools.choice not in (None, "auto", "none")
        return (options.response_format is not None or must_call) and self.position < len(self.plan)

    def _reserve(self, card: ModelCard) -> list[Reservation] | None:
        """Hold the estimated joules against every budget of ``card`` (atomic per budget in the ledger).

        When a budget has no room: ``allow_and_flag`` holds anyway and notes it; ``fallback`` skips to the next
        model (``None``, with a ``rejected`` record saying why); ``reject`` raises
        :class:`BudgetExhaustedError` with the seconds until the window rolls."""
        d = self.prepared.decision
        refs = d.model_budgets.get(card.name, ())
        if not refs:
            return []
        ledger = self.router.ledger
        estimate = self.books.hold(card)
        held: list[Reservation] = []
        for ref in refs:
            amount = self.books.in_unit(ref.unit, card, estimate)
            # never more than the whole budget: a hold above it would refuse even a fresh window's first call
            try:
                reservation = self._try_hold(held, ref, min(amount, ref.limit_j), ref.limit_j)
                # no room: the holds of calls that have ended may still wait to be settled (Ledger.settle_queued)
                if reservation is None and ledger.settle_queued():
                    reservation = self._try_hold(held, ref, min(amount, ref.limit_j), ref.limit_j)
            except LedgerError as exc:
                if self.escalated is None or not exc.retryable:
                    raise
                self._unreadable_escalation(card, ref.key)
                return None
            if reservation is None:
                break
            held.append(reservation)
        else:
            return held
        self.books.settle(held, 0.0)  # release what was held before the full budget
        used: float | None
        try:
            used = ledger.budget_used(ref.key, ref.window_s)
        except LedgerError as exc:  # the store failed since it answered the reservation: the budget is still
            # spent (the store said so); only the figure for the message is missing
            if exc.retryable:
                self.router.budget_read_outage(exc)
            else:
                log.warning("%s: %s", self.prepared.request_id, exc)
            used = None
        if ref.unit == "J":
            limit, need, unit = fmt_j(ref.limit_j), fmt_j(estimate), "energy"
            spent = None if used is None else fmt_j(used)
        else:
            limit, unit = f"{ref.limit_j:.3g} g CO2e", "carbon"
            need = f"{self.books.in_unit(ref.unit, card, estimate):.3g} g"
            spent = None if used is None else f"{used:.3g}"
        # the figure is spent plus held, and a call still running holds its estimate
        what = (f"{card.name}'s {unit} budget {ref.key} is spent or held by calls in flight ({spent} of {limit} "
                f"this window, the call needs ~{need})" if spent is not None else
                f"{card.name}'s {unit} budget {ref.key} is spent ({limit} a window, the call needs ~{need}; what it "
                "has spent this window could not be read, the ledger's store failed)")
        if d.on_budget_exhausted == "allow_and_flag":
            # the decision's reason says so already when it found this budget spent, unless this read failed
            said = card.name == d.model and "over_budget_allowed" in d.flags and ref.key in d.reason
            if spent is None or not said:
                self.notes.append(f"{what}; allowed and flagged (over_budget_allowed)")
            over: list[Reservation] = []
            for over_ref in refs:
                amount = self.books.in_unit(over_ref.unit, card, estimate)
                if (reservation := self._try_hold(over, over_ref, amount, float("inf"))) is not None:
                    over.append(reservation)
            return over
        self.notes.append(what)
        self.books.record(card, _NOT_CALLED, 0.0, "rejected", attempt=len(self.attempts), error="budget_exhausted")
        self.attempts.append(_attempt(card.name, card.tier, 0.0, _NOT_CALLED.source, 0.0, "rejected"))
        if d.on_budget_exhausted == "fallback":
            return None
        retry = ref.window_s - time.time() % ref.window_s
        raise BudgetExhaustedError(f"budget_exhausted: {what}; retry in {math.ceil(retry)} s or raise the budget in "
                                   f"policy `{d.policy}`", retry_after_s=retry, model=card.name,
                                   request_id=self.prepared.request_id)

    def _try_hold(self, held: list[Reservation], ref: BudgetRef, joules: float, limit_j: float) -> Reservation | None:
        """Reserve ``joules`` of ``ref`` within ``limit_j`` (``None``: no room). When the store fails, the holds
        ``held`` already made for this call are released before the error goes on: nothing would settle them,
        and they would keep the budget's room from other requests until the window ends."""
        try:
            # the call cannot outlive its deadline: a hold still unsettled past it (and the margin) is one whose
            # process was killed, and stops counting against the budget
            hold_s = max(0.0, self.prepared.deadline - time.monotonic()) + HOLD_MARGIN_S
            reservation = self.router.ledger.try_reserve(ref.key, joules, limit_j, ref.window_s, hold_s)
        except LedgerError as exc:
            self.books.settle(held, 0.0)
            if exc.retryable:
                self.router.reservation_outage(exc)
            raise
        self.router.reservation_outage(None)  # the store answered: a reservation, or no room
        return reservation

    def _unreadable_escalation(self, card: ModelCard, budget: str) -> None:
        """An escalation model whose budget cannot be reserved while the ledger's store is down is not tried (as
        the engine leaves such a model out of a decision's escalations); the escalated answer is kept should no
        other escalation model answer (:meth:`keep_escalated`)."""
        assert self.escalated is not None
        self.flags.append("budget_unreadable")
        self.notes.append(f"budget {budget} could not be read (the ledger's store is unavailable): {card.name} not "
                          f"tried, escalation skipped (budget_unreadable)")
        self.books.record(card, _NOT_CALLED, 0.0, "rejected", attempt=len(self.attempts), error="budget_unreadable")
        self.attempts.append(_attempt(card.name, card.tier, 0.0, _NOT_CALLED.source, 0.0, "rejected"))

    # -- after a call ---------------------------------------------------------------------------------------
    def answered(self, call: Call, gen: Generation, *, sent: bool = False) -> bool:
        """The call answered: settle and record it. ``True`` when this is the answer; ``False`` when its own
        confidence is below the cascade's threshold and the plan now continues with the escalation models, or
        when the answer is not what the request asked for (JSON, a schema, valid tool calls) and the plan
        continues with the next capable model. Such an answer that has already been streamed (``sent``) ends
        the request with :class:`StructuredOutputError`."""
        latency = (time.perf_counter() - call.started) * 1000
        energy = self.books.energy_of(call, gen)
        self.books.settle(call.held, energy.joules, call.card)
        if gen.refusal is not None:  # an answer (the model declined), not a malformed one: passed on as it is
            self.flags.append("refusal")
            self.notes.append(f"{call.model} declined to answer (refusal)")
        try:
            problem = None if gen.refusal is not None else output_problem(
                self.prepared.options, gen.text, gen.tool_calls, gen.finish_reason, gen.context_full)
        except Exception as exc:  # the model ran: its record is written whatever the check raised
            error = exc if isinstance(exc, RouterError) else internal(f"checking {call.model}'s answer", exc)
            self._unchecked(call, gen, energy, latency, error)
            raise error from (exc if error is not exc else None)
        if problem is not None:
            return self._invalid(call, gen, energy, latency, problem, sent)
        d = self.prepared.decision
        escalate = (self._may_escalate(call.model) and d.escalate_below is not None and gen.confidence is not None
                    and gen.confidence < d.escalate_below and gen.refusal is None)
        outcome = "escalated" if escalate else "ok"
        self.attempts.append(_attempt(call.model, call.card.tier, energy.joules, energy.source, latency, outcome,
                                      gen.confidence))
        self.energy = energy if self.energy is None else self.energy + energy
        # escalating: both are numbers (checked above)
        reason = (f"{d.reason}; low confidence, escalating "
                  f"({_below(cast(float, gen.confidence), cast(float, d.escalate_below))})"
                  if escalate else self.reason())
        self.co2e_g += self.books.record(call.card, energy, latency, outcome, gen=gen, attempt=call.index,
                                         reason=reason)
        if escalate:
            done = self.plan[: self.position]
            self.plan = done + [m for m in d.escalate_to if m not in done]
            self.escalated = (call, gen, latency)
            return False
        self._answer(call, gen, latency)
        return True

    def _answer(self, call: Call, gen: Generation, latency: float) -> None:
        self.answer = (call, gen, latency)
        if self.router.learning is not None:  # prompt kept / answer judged later, on the learning thread
            self.router.learning.answered(self.prepared, call.model, gen)

    def keep_escalated(self) -> bool:
        """Once :meth:`next_call` has run out of models: ``True`` when the escalated answer is the answer, because no
        escalation was made (each escalation model's budget spent or unreadable, or the model failed or could not
        hold the prompt): an answer in hand, already paid for, rather than an error; the reason says so. A spent
        budget may leave no room at call time although the engine saw some: it checks the estimate, the hold is an
        upper quantile, and other requests spend meanwhile."""
        if self.answer is not None or self.escalated is None:
            return False
        self.flags.append("escalation_skipped")
        self._answer(*self.escalated)
        return True

    def _invalid(self, call: Call, gen: Generation, energy: EnergyReading, latency: float, problem: str,
                 sent: bool) -> bool:
        """An answer that fails the request's format: recorded (``escalated``; ``error`` once streamed or when no
        model is left), and the next capable model is tried; no model left ends the request with this error."""
        error = StructuredOutputError(f"{call.model}: {problem}" + (
            "; it had been streamed as it came (the caller holds it): discard it" if sent else ""))
        outcome = "escalated" if not sent and self.position < len(self.plan) else "error"
        self.attempts.append(_attempt(call.model, call.card.tier, energy.joules, energy.source, latency, outcome,
                                      gen.confidence))
        self.energy = energy if self.energy is None else self.energy + energy
        reason = f"{self.prepared.decision.reason}; {problem}" + (
            ", trying the next capable model" if outcome == "escalated" else "")
        self.co2e_g += self.books.record(call.card, energy, latency, outcome, gen=gen, attempt=call.index,
                                         reason=reason, error=f"{error.code}: {error.message}"[:500])
        self.errors.append(error)
        if sent:
            raise self.final_error()
        return False

    def _unchecked(self, call: Call, gen: Generation, energy: EnergyReading, latency: float,
                   error: RouterError) -> None:
        """An answer whose check could not be made (the request's schema cannot be applied): recorded as ``error``;
        no other model is tried, as the same check would fail on its answer too."""
        self.attempts.append(_attempt(call.model, call.card.tier, energy.joules, energy.source, latency, "error",
                                      gen.confidence))
        self.energy = energy if self.energy is None else self.energy + energy
        self.co2e_g += self.books.record(call.card, energy, latency, "error", gen=gen, attempt=call.index,
                                         reason=self.reason(), error=f"{error.code}: {error.message}"[:500])
        self.errors.append(error)

    def failed(self, call: Call, exc: BaseException, output: Output | None = None, *, sent: bool = False) -> None:
        """The call raised. Settle and record it, then return when the next model may be tried, or raise the
        typed error that ends the request: a deadline, a cancellation, a failure after output was sent, or an
        error that is not the backend's (a bad request stays a bad request on every model). Once ``close()`` has
        closed the backends, whatever the call raised (a closed client's error) is the Router being closed."""
        if self.router.closed:
            error: RouterError = RouterClosedError(
                f"{call.model}: the Router was closed while this call was still running (it outlived close()'s "
                "wait for running calls), and the model's backend with it; its ledger record may be lost: let "
                "calls end before close()")
        else:
            error = self._closing(call, _typed(call.model, exc), never_started(exc))
        self._log_detail(error)
        self._end_call(call, error, output)
        self.errors.append(error)
        if sent or not isinstance(error, BackendError | ContextLengthError):
            raise error from (exc if error is not exc else None)

    def _log_detail(self, error: RouterError) -> None:
        if error.detail:  # what the client is not shown, with the id the client is shown
            log.warning("%s: %s (%s)", self.prepared.request_id, error.message, error.detail)

    def cancelled(self, call: Call, output: Output | None, why: str | None = None) -> None:
        """The caller stopped reading (a closed stream, a cancelled task), or ``why`` says who else stopped the call
        (:attr:`PreparedRequest.task_cancelled_means`, which stands when ``close()`` has begun meanwhile): record
        what was produced."""
        queued = waiting_for_turn(call.request)
        error = CancelledError(f"{call.model}: {why or 'the caller went away'}"
                               + (" while waiting for the model" if queued else "; generation stopped"))
        error.never_started = queued  # type: ignore[attr-defined]
        self._end_call(call, error if why else self._closing(call, error, queued), output)

    def _closing(self, call: Call, error: RouterError, queued: bool) -> RouterError:
        """A cancellation that ``Router.close()`` made says so (the caller did not go away), keeping whether the
        call had started."""
        if not isinstance(error, CancelledError) or not self.router.closing:
            return error
        closed = CancelledError(f"{call.model}: the Router was closed " + (
            "while this call waited for the model" if queued else "while the model was answering; generation "
            "stopped"))
        closed.never_started = queued  # type: ignore[attr-defined]
        closed.partial = getattr(error, "partial", None)  # type: ignore[attr-defined]
        return closed

    def _end_call(self, call: Call, error: RouterError, output: Output | None) -> None:
        """Settle and record a call that ended without an answer (``error`` or ``cancelled``); one that never had
        its turn at the model is recorded as not called (0 J), as a call whose deadline passed before it."""
        latency = (time.perf_counter() - call.started) * 1000
        # a whole-answer call stopped between tokens carries what it had produced (backends.base._collect)
        gen = output.generation(call, finished=False) if output else getattr(error, "partial", None)
        if never_started(error):
            if call.span is not None:
                call.span.stop()  # leaves the meter's share of concurrent calls; the model did no work for it
            energy = _NOT_CALLED
            gen = None
        else:
            energy = self.books.energy_of(call, gen)
        self.books.settle(call.held, energy.joules, call.card)
        outcome = "cancelled" if isinstance(error, CancelledError) else "error"
        self.attempts.append(_attempt(call.model, call.card.tier, energy.joules, energy.source, latency, outcome))
        co2e_g = self.books.record(call.card, energy, latency, outcome, gen=gen,
                                   error=f"{error.code}: {error.message}"[:500], attempt=call.index)
        if energy is not _NOT_CALLED:  # a fallback's answer costs what the failed call drew too, as its budget was
            self.energy = energy if self.energy is None else self.energy + energy
            self.co2e_g += co2e_g

    def final_error(self) -> RouterError:
        """Why no model answered, once :meth:`next_call` has run out of models."""
        if self.errors and all(isinstance(e, ContextLengthError) for e in self.errors):
            if len(self.errors) == 1:
                return self.errors[0]
            limit = self.prepared.max_tokens_param
            max_tokens_to_blame = all(e.param == limit for e in self.errors)
            return ContextLengthError(
                "the prompt does not fit any candidate model's context: "
                + "; ".join(e.message.split(";")[0] for e in self.errors)
                + (f"; lower {limit}" if max_tokens_to_blame else "; shorten the messages"),
                param=limit if max_tokens_to_blame else "messages")
        if self.errors:
            last = self.errors[-1]
            if last.retry_after_s is not None:  # the soonest any model tried may answer again, not the last one's
                last.retry_after_s = min(e.retry_after_s for e in self.errors if e.retry_after_s is not None)
            if len(self.errors) > 1:  # the last model's error type and status, and what each one before it said
                last.message = f"{last.message} (tried before: {'; '.join(e.message for e in self.errors[:-1])})"
                last.args = (last.message,)
            return last
        refs = [r for rs in self.prepared.decision.model_budgets.values() for r in rs]
        retry = min((r.window_s - time.time() % r.window_s for r in refs), default=None)
        return BudgetExhaustedError(
            f"budget_exhausted: every candidate's energy budget is spent; {'; '.join(self.notes)}",
            retry_after_s=retry, request_id=self.prepared.request_id)

    # -- the answer -----------------------------------------------------------------------------------------
    def reason(self) -> str:
        """The decision's reason, plus the earlier attempts' fate and any budget notes."""
        d = self.prepared.decision
        if len(self.attempts) <= 1 and not self.notes:  # most requests: one model called, no budget notes
            return d.reason
        parts = [d.reason]
        if len(self.attempts) > 1:
            # the answer is the newest attempt, except a cascade's answer kept when its escalation was not made
            own = self.answer[0].index if self.answer is not None else len(self.attempts) - 1
            earlier = ", ".join(f"{a['model']} {a['outcome']}" for a in self.attempts[:own])
            later = ", ".join(f"{a['model']} {a['outcome']}" for a in self.attempts[own + 1:])
            parts.append(f"answered by {self.attempts[own]['model']}" + (f" after {earlier}" if earlier else "")
                         + (f", kept after {later}" if later else ""))
        return "; ".join(parts + self.notes)

    def routing(self) -> dict[str, Any]:
        """The ``routing`` block of the answer (call after :meth:`answered` returned ``True``)."""
        assert self.answer is not None, "routing() before an answer"
        call, _gen, _latency = self.answer
        d = self.prepared.decision
        energy = self.energy or _NOT_CALLED
        expected, source = self.books.expected(call.card)
        return {
            "model": call.model, "tier": call.card.tier, "reason": self.reason(), "energy_j": energy.joules,
            "energy_source": energy.source, "predicted_accuracy": d.predicted_accuracy, "task": d.task,
            "policy": d.policy, "latency_ms": sum(a["latency_ms"] for a in self.attempts),
            "decision_ms": self.prepared.decision_ms, "co2e_g": self.co2e_g,
            "attempts": self.attempts, "estimated_j": expected, "estimate_source": source,
            "flags": [*d.flags, *(f for f in self.flags if f not in d.flags)] if self.flags else [*d.flags],
        }

    def completion(self) -> dict[str, Any]:
        """The answer as the plain dict ``ChatCompletion.model_dump()`` gives (same keys, same order)."""
        assert self.answer is not None, "completion() before an answer"
        call, gen, _ = self.answer
        p = self.prepared
        return {
            "id": p.request_id,
            "object": "chat.completion",
            "created": p.created,
            "model": call.model,
            "choices": [answer_choice(gen, p.options)],
            "usage": {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens,
                      "total_tokens": gen.prompt_tokens + gen.completion_tokens},
            "routing": self.routing(),
            "system_fingerprint": None,
        }

def _below(value: float, threshold: float) -> str:
    """``value < threshold`` with two decimals, or as many more as it takes for the two to read apart (0.9987 against
    0.999 would read "1.00 < 1.00")."""
    for decimals in range(2, 7):
        left, right = f"{value:.{decimals}f}", f"{threshold:.{decimals}f}"
        if left != right:
            break
    return f"{left} < {right}"


def _attempt(model: str, tier: str, energy_j: float, energy_source: str, latency_ms: float, outcome: str,
             confidence: float | None = None) -> dict[str, Any]:
    """An :class:`~router.types.Attempt` as the dict its ``model_dump()`` gives."""
    return {"model": model, "tier": tier, "energy_j": energy_j, "energy_source": energy_source,
            "latency_ms": latency_ms, "outcome": outcome, "confidence": confidence}


def _typed(model: str, exc: BaseException) -> RouterError:
    """A backend's exception as a typed error: router errors as they are, anything else is the backend failing."""
    if isinstance(exc, RouterError):
        return exc
    if isinstance(exc, TimeoutError):  # asyncio's deadline scope
        return DeadlineExceededError(f"{model}: the request's deadline passed while the model was answering")
    log.error("%s: backend raised %s", model, type(exc).__name__, exc_info=exc)
    return BackendError(f"{model}: the backend failed ({type(exc).__name__})")


def _start_meter(call: Call, meter: Meter) -> None:
    if call.span is None:
        call.span = meter.start()
