"""``Router``: classify the request, decide the smallest adequate model, call it, meter it, record it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pydantic import ValidationError

from .backends import Backend, Generation, GenerationRequest, StreamEvent, create_backend
from .cards import ModelCard, load_cards
from .classify.base import Classification, RequestClassifier
from .classify.batching import ClassifyBatcher
from .config import RouterConfig
from .energy import EnergyReading, Meter, auto_meter, estimate_from_profile
from .errors import (
    BackendError,
    BadRequestError,
    BudgetExhaustedError,
    ContextLengthError,
    RouterError,
    UnknownModelError,
)
from .ledger import Ledger, LedgerRecord, Reservation, hash_key, open_ledger
from .policy.base import BudgetState, DecisionRequest, Engine
from .policy.decision import Decision
from .types import (
    Attempt,
    ChatCompletion,
    ChatCompletionChunk,
    ChatMessage,
    ChunkChoice,
    Delta,
    Routing,
    Usage,
    new_request_id,
)

log = logging.getLogger("router")

# OpenAI parameters we accept and do not act on (they do not change which model answers).
_IGNORED_PARAMS = {
    "top_p", "user", "seed", "presence_penalty", "frequency_penalty", "logit_bias", "metadata",
    "stream_options", "store", "parallel_tool_calls", "service_tier", "response_format", "logprobs",
    "top_logprobs", "extra_body", "extra_headers", "timeout",
}  # fmt: skip
ROUTER_ALIASES = ("router",)


class _CheckedRequest(NamedTuple):
    """A request whose parameters and messages passed the checks, before classification."""

    messages: list[ChatMessage]
    text: str
    pinned: str | None
    policy: str
    accuracy_target: float | None
    max_energy_j: float | None
    max_tokens: int | None
    temperature: float | None
    stop: list[str] | None
    key_hash: str | None
    request_id: str


@dataclass
class RequestContext:
    """Everything known about one request before a model is called."""

    request_id: str
    messages: list[ChatMessage]
    text: str
    classification: Classification
    decision: Decision
    max_tokens: int | None
    temperature: float | None
    stop: list[str] | None
    key_hash: str | None
    decision_ms: float
    created: int = field(default_factory=lambda: int(time.time()))
    budget_notes: list[str] = field(default_factory=list)  # issue 6: e.g. "over budget ..., allowed and flagged"


def validate_messages(messages: Any, max_chars: int) -> list[ChatMessage]:
    """Check the OpenAI ``messages`` list and say exactly what to fix."""
    if messages is None or (isinstance(messages, Sequence) and not isinstance(messages, str | bytes) and
                            len(messages) == 0):
        raise BadRequestError("`messages` is empty: send at least one {'role': 'user', 'content': '...'}",
                              param="messages")
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise BadRequestError("`messages` must be a list of {'role', 'content'} objects", param="messages")
    out: list[ChatMessage] = []
    total = 0
    for i, raw in enumerate(messages):
        if isinstance(raw, ChatMessage):
            msg = raw
        else:
            if not isinstance(raw, dict):
                raise BadRequestError(f"messages[{i}] must be an object with `role` and `content`",
                                      param=f"messages[{i}]")
            content = raw.get("content")
            if isinstance(content, list):  # OpenAI content parts: keep the text parts
                if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                    raise BadRequestError(f"messages[{i}].content: only text parts are supported",
                                          param=f"messages[{i}].content")
                content = "".join(str(p.get("text", "")) for p in content)
                raw = {**raw, "content": content}
            if not isinstance(content, str):
                raise BadRequestError(
                    f"messages[{i}].content must be a string, got {type(content).__name__}",
                    param=f"messages[{i}].content",
                )
            try:
                msg = ChatMessage.model_validate(raw)
            except ValidationError as exc:
                err = exc.errors()[0]
                where = ".".join(str(p) for p in err["loc"])
                raise BadRequestError(
                    f"messages[{i}].{where}: {err['msg']} (roles: system, developer, user, assistant, tool)",
                    param=f"messages[{i}].{where}",
                ) from exc
        total += len(msg.content)
        out.append(msg)
    if not any(m.role == "user" and m.content.strip() for m in out):
        raise BadRequestError("`messages` has no user message with text: add {'role': 'user', 'content': ...}",
                              param="messages")
    if total > max_chars:
        raise BadRequestError(
            f"the prompt is {total:,} characters; this router accepts at most {max_chars:,}",
            param="messages", code="prompt_too_large",
        )
    return out


def request_text(messages: list[ChatMessage]) -> str:
    """What the classifier reads: the last user message (the question being asked now)."""
    return next(m.content for m in reversed(messages) if m.role == "user")


class Router:
    """Routes chat requests to the smallest adequate model and records the energy of each.

    ``Router()`` is the embedded default: the shipped model cards and classifier, the default policy and a
    SQLite ledger in the user's data directory.
    """

    def __init__(
        self,
        config: RouterConfig | None = None,
        policy: str | None = None,
        *,
        cards: dict[str, ModelCard] | None = None,
        classifier: RequestClassifier | None = None,
        ledger: Ledger | None = None,
        meter: Meter | None = None,
        backends: dict[str, Backend] | None = None,
    ) -> None:
        self.config = config or RouterConfig.load()
        self.cards = cards if cards is not None else load_cards(self.config.models_dir)
        if not any(c.callable for c in self.cards.values()):
            raise RouterError(f"no callable model card in {self.config.models_dir}")
        self.policy_name = policy or self.config.default_policy
        self.classifier = classifier or _default_classifier(self.config)
        self.ledger = ledger or open_ledger(self.config.ledger_url, retention_days=self.config.ledger_retention_days)
        self.meter = meter or auto_meter(self.config.meter, self.config.cpu_power)
        self._backends: dict[str, Backend] = dict(backends or {})
        self._backend_lock = threading.Lock()
        self._aliases = {a.lower(): c.name for c in self.cards.values() for a in [c.name, *c.aliases]}
        self.engine = _load_engine(self)
        self._batcher = ClassifyBatcher(self.classifier)

    # -- public API -----------------------------------------------------------------------------------
    def complete(self, messages: Any, *, stream: bool = False, **params: Any) -> Any:
        """An OpenAI-style chat completion (or, with ``stream=True``, an iterator of chunks)."""
        ctx = self.prepare(messages, **params)
        if stream:
            return self._stream(ctx)
        return self._complete(ctx)

    async def acomplete(self, messages: Any, *, stream: bool = False, **params: Any) -> Any:
        """Async twin of :meth:`complete`; with ``stream=True`` returns an async iterator of chunks."""
        ctx = await self.aprepare(messages, **params)
        if stream:
            return self._astream(ctx)
        return await self._acomplete(ctx)

    def backend(self, model: str) -> Backend:
        """The (lazily created, cached) backend for a model card."""
        with self._backend_lock:
            backend = self._backends.get(model)
            if backend is None:
                backend = create_backend(self.cards[model])
                # -- issue 8: a cooldown (circuit breaker) around every backend the Router creates itself --
                from .backends.cooldown import CooldownBackend

                cool = self.config.extra.get("cooldown") or {}
                backend = CooldownBackend(backend, failures=int(cool.get("failures", 3)),
                                          cooldown_s=float(cool.get("seconds", 30.0)))
                # -- end issue 8 --
                self._backends[model] = backend
            return backend

    def resolve_model(self, name: str) -> str:
        found = self._aliases.get(name.lower())
        if found is None:
            known = ", ".join(sorted(c.name for c in self.cards.values() if c.callable))
            raise UnknownModelError(
                f"unknown model {name!r}; use 'router', 'router:<policy>' or one of: {known}", param="model"
            )
        if not self.cards[found].callable:
            raise UnknownModelError(f"model {found!r} has no backend (simulation only)", param="model")
        return found

    def close(self) -> None:
        for backend in self._backends.values():
            backend.close()
        self.ledger.close()

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- preparing a request --------------------------------------------------------------------------
    def prepare(self, messages: Any, **params: Any) -> RequestContext:
        """Check a request and decide which model answers it (the classifier and the policy engine)."""
        req = self._check_request(messages, **params)
        t0 = time.perf_counter()
        return self._decide(req, self.classifier.classify(req.text), t0)

    async def aprepare(self, messages: Any, **params: Any) -> RequestContext:
        """:meth:`prepare` on an event loop: the texts of concurrent requests are classified together, one
        onnxruntime call per loop turn, and decided right after, one after the other
        (:class:`~router.classify.batching.ClassifyBatcher`; ~7 % less CPU per request in the proxy than deciding
        in each request's own task, where the policy engine's code ran between network calls)."""
        req = self._check_request(messages, **params)
        t0 = time.perf_counter()
        return await self._batcher.classify(req.text, lambda c: self._decide(req, c, t0))

    def _check_request(
        self,
        messages: Any,
        *,
        model: str | None = None,
        policy: str | None = None,
        accuracy_target: float | None = None,
        max_energy_j: float | None = None,
        max_tokens: int | None = None,
        max_completion_tokens: int | None = None,
        temperature: float | None = None,
        stop: str | list[str] | None = None,
        n: int | None = None,
        api_key: str | None = None,
        request_id: str | None = None,
        **params: Any,
    ) -> _CheckedRequest:
        unknown = set(params) - _IGNORED_PARAMS
        if unknown:
            raise BadRequestError(f"unknown parameter(s): {', '.join(sorted(unknown))}", param=sorted(unknown)[0])
        if n not in (None, 1):
            raise BadRequestError("only n=1 is supported", param="n")
        max_tokens = max_completion_tokens if max_completion_tokens is not None else max_tokens
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise BadRequestError("`max_tokens` must be a positive integer", param="max_tokens")
        if temperature is not None and (not isinstance(temperature, int | float) or not 0 <= temperature <= 2):
            raise BadRequestError("`temperature` must be a number between 0 and 2", param="temperature")
        if accuracy_target is not None and not 0 <= accuracy_target <= 1:
            raise BadRequestError("`accuracy_target` must be in [0, 1]", param="accuracy_target")
        if isinstance(stop, str):
            stop = [stop]
        msgs = validate_messages(messages, self.config.max_prompt_chars)
        pinned = None
        if model and model.split(":", 1)[0] not in ROUTER_ALIASES:
            pinned = self.resolve_model(model)
        elif model and ":" in model:
            policy = model.split(":", 1)[1]
        return _CheckedRequest(msgs, request_text(msgs), pinned, policy or self.policy_name, accuracy_target,
                               max_energy_j, max_tokens, temperature, stop, hash_key(api_key),
                               request_id or new_request_id())

    def _decide(self, req: _CheckedRequest, classification: Classification, t0: float) -> RequestContext:
        request = DecisionRequest(policy=req.policy, pinned=req.pinned, accuracy_target=req.accuracy_target,
                                  max_energy_j=req.max_energy_j, key_hash=req.key_hash,
                                  input_tokens_hint=max(1, len(req.text) // 4))
        now = time.time()
        used = {r.key: self.ledger.budget_used(r.key, r.window_s) for r in self.engine.budget_refs(request)}
        decision = self.engine.decide(classification, request, BudgetState(used, now))
        decision_ms = (time.perf_counter() - t0) * 1000
        ctx = RequestContext(
            request_id=req.request_id,
            messages=req.messages,
            text=req.text,
            classification=classification,
            decision=decision,
            max_tokens=req.max_tokens,
            temperature=req.temperature,
            stop=req.stop,
            key_hash=req.key_hash,
            decision_ms=decision_ms,
        )
        log.info("%s: %s (%.2f ms)", ctx.request_id, decision.reason, decision_ms)
        return ctx

    def _check_context(self, ctx: RequestContext, backend: Backend) -> int:
        card = backend.card
        prompt_tokens = backend.prompt_tokens(ctx.messages)
        wanted = ctx.max_tokens or 0
        if prompt_tokens + wanted > card.context_length:
            raise ContextLengthError(
                f"the prompt is {prompt_tokens} tokens (+{wanted} to generate) but {card.name} holds "
                f"{card.context_length}; shorten the messages or pin a model with a longer context",
                param="messages",
            )
        return prompt_tokens

    def _request(self, ctx: RequestContext) -> GenerationRequest:
        return GenerationRequest(
            messages=ctx.messages,
            max_tokens=ctx.max_tokens,
            temperature=ctx.temperature,
            stop=ctx.stop,
            want_confidence=ctx.decision.escalate_below is not None,
        )

    # -- energy and records ---------------------------------------------------------------------------
    def _energy(self, backend: Backend, reading: EnergyReading | None, gen: Generation) -> EnergyReading:
        if backend.local and reading is not None:
            return reading
        return estimate_from_profile(backend.card.energy, gen.prompt_tokens, gen.completion_tokens)

    def _co2(self, joules: float) -> float:
        return joules / 3.6e6 * self.config.grid_g_per_kwh

    def _record(
        self,
        ctx: RequestContext,
        card: ModelCard,
        energy: EnergyReading,
        latency_ms: float,
        outcome: str,
        gen: Generation | None = None,
        error: str | None = None,
        attempt: int = 0,
        reason: str | None = None,
    ) -> None:
        rec = LedgerRecord(
            request_id=ctx.request_id,
            model=card.name,
            tier=card.tier,
            reason="; ".join([reason or ctx.decision.reason, *ctx.budget_notes]),
            input_tokens=gen.prompt_tokens if gen else 0,
            output_tokens=gen.completion_tokens if gen else 0,
            latency_ms=latency_ms,
            energy_j=energy.joules,
            energy_source=energy.source,
            policy=ctx.decision.policy,
            task=ctx.decision.task,
            outcome=outcome,  # type: ignore[arg-type]
            key_hash=ctx.key_hash,
            error=error,
            attempt=attempt,
            co2e_g=self._co2(energy.joules),
        )
        try:
            self.ledger.record(rec)
        except Exception:  # the answer still goes out; the failure is logged loudly
            log.exception("%s: could not write the ledger record", ctx.request_id)

    # -- calling models -------------------------------------------------------------------------------
    def _plan(self, ctx: RequestContext) -> list[str]:
        """The models to try in order: the choice, then its fallbacks."""
        seen: list[str] = []
        for name in (ctx.decision.model, *ctx.decision.fallbacks):
            if name not in seen:
                seen.append(name)
        return seen

    def _run_one(
        self, ctx: RequestContext, model: str, attempt: int
    ) -> tuple[Generation, dict[str, Any], EnergyReading]:
        backend = self.backend(model)
        self._check_context(ctx, backend)
        held = self._reserve(ctx, model, attempt)  # issue 6: budgets
        span = self.meter.start() if backend.local else None
        t0 = time.perf_counter()
        try:
            gen = backend.generate(self._request(ctx))
        except Exception as exc:
            latency = (time.perf_counter() - t0) * 1000
            reading = span.stop() if span else estimate_from_profile(backend.card.energy, 0, 0)
            self._settle(held, reading.joules)
            self._record(ctx, backend.card, reading, latency, "error", error=str(exc)[:500], attempt=attempt)
            raise
        latency = (time.perf_counter() - t0) * 1000
        energy = self._energy(backend, span.stop() if span else None, gen)
        self._settle(held, energy.joules)
        info = _attempt(model, backend.card.tier, energy.joules, energy.source, latency, "ok", gen.confidence)
        return gen, info, energy

    def _complete(self, ctx: RequestContext) -> ChatCompletion:
        attempts: list[dict[str, Any]] = []  # Attempt-shaped dicts, as on the remote path
        energies: list[EnergyReading] = []
        plan = self._plan(ctx)
        last_error: Exception | None = None
        i = 0
        while i < len(plan):
            model = plan[i]
            try:
                gen, info, energy = self._run_one(ctx, model, len(attempts))
            except _BudgetSkip:  # issue 6: this model's budget is spent; the policy says fall back
                i += 1
                continue
            except (BackendError, ContextLengthError) as exc:
                last_error = exc
                attempts.append(_attempt(model, self.cards[model].tier, 0.0, "-", 0.0, "error"))
                if isinstance(exc, ContextLengthError) and len(plan) == 1:
                    raise
                i += 1
                continue
            escalate = self._should_escalate(ctx, model, gen)
            info["outcome"] = "escalated" if escalate else "ok"
            attempts.append(info)
            energies.append(energy)
            card = self.cards[model]
            reason = self._answer_reason(ctx, model, attempts)
            self._record(ctx, card, energy, info["latency_ms"], info["outcome"], gen=gen, attempt=len(attempts) - 1,
                         reason=reason if not escalate else f"{ctx.decision.reason}; low confidence, escalating")
            if escalate:
                plan = plan[: i + 1] + [m for m in ctx.decision.escalate_to if m not in plan[: i + 1]]
                i += 1
                continue
            return self._response(ctx, card, gen, attempts, energies, reason)
        if last_error is None:  # issue 6: every model in the plan was skipped for budget
            raise self._all_budgets_spent(ctx)
        raise last_error

    @staticmethod
    def _answer_reason(ctx: RequestContext, model: str, attempts: list[dict[str, Any]]) -> str:
        """The decision's reason, plus which earlier attempts failed or escalated before ``model`` answered."""
        if len(attempts) <= 1:
            return ctx.decision.reason
        earlier = ", ".join(f"{a['model']} {a['outcome']}" for a in attempts[:-1])
        return f"{ctx.decision.reason}; answered by {model} after {earlier}"

    def _all_budgets_spent(self, ctx: RequestContext) -> BudgetExhaustedError:
        return BudgetExhaustedError(
            f"budget_exhausted: every candidate's energy budget is spent; {'; '.join(ctx.budget_notes)}",
            retry_after_s=self._retry_after(ctx),
        )

    def _should_escalate(self, ctx: RequestContext, model: str, gen: Generation) -> bool:
        d = ctx.decision
        if d.escalate_below is None or not d.escalate_to or model in d.escalate_to:
            return False
        return gen.confidence is not None and gen.confidence < d.escalate_below

    async def _acomplete(self, ctx: RequestContext, *, raw: bool = False) -> ChatCompletion | dict[str, Any]:
        """The async completion. ``raw=True`` (the proxy) lets the remote path return the plain dict that
        ``ChatCompletion.model_dump()`` would give, for callers that only serialise it."""
        import asyncio

        if all(self._is_remote(m) for m in self._plan(ctx)):
            return await self._acomplete_remote(ctx, raw=raw)
        # Local backends run in a worker thread; the meter spans the thread's work through process CPU time.
        return await asyncio.to_thread(self._complete, ctx)

    # -- issue 8: async fast path for remote (HTTP) backends ------------------------------------------
    # When every model in the plan is remote there is nothing to meter and nothing CPU-bound to offload:
    # await the backend's own async client on the event loop. Same attempts, fallbacks and ledger records
    # as ``_complete`` (remote backends report no confidence, so there is no cascade to escalate).
    def _is_remote(self, model: str) -> bool:
        backend = self._backends.get(model)
        if backend is not None:
            return not backend.local
        spec = self.cards[model].backend
        return spec is not None and spec.type == "openai"

    async def _acomplete_remote(self, ctx: RequestContext, *, raw: bool = False) -> ChatCompletion | dict[str, Any]:
        attempts: list[dict[str, Any]] = []  # Attempt-shaped dicts: validated once, at the end, unless raw
        last_error: Exception | None = None
        plan = self._plan(ctx)
        for model in plan:
            backend = self.backend(model)
            card = backend.card
            t0 = time.perf_counter()
            held: list[Reservation] = []
            try:
                self._check_context(ctx, backend)
                held = self._reserve(ctx, model, len(attempts), last=model == plan[-1])  # issue 6: budgets
                gen = await backend.agenerate(self._request(ctx))
            except _BudgetSkip:
                continue
            except (BackendError, ContextLengthError) as exc:
                self._settle(held, 0.0)
                latency = (time.perf_counter() - t0) * 1000
                if isinstance(exc, BackendError):
                    self._record(ctx, card, estimate_from_profile(card.energy, 0, 0), latency,
                                 "error", error=str(exc)[:500], attempt=len(attempts))
                last_error = exc
                attempts.append(_attempt(model, card.tier, 0.0, "-", 0.0, "error"))
                if isinstance(exc, ContextLengthError) and len(plan) == 1:
                    raise
                continue
            latency = (time.perf_counter() - t0) * 1000
            energy = self._energy(backend, None, gen)
            self._settle(held, energy.joules)
            attempts.append(_attempt(model, card.tier, energy.joules, energy.source, latency, "ok", gen.confidence))
            reason = self._answer_reason(ctx, model, attempts)
            self._record(ctx, card, energy, latency, "ok", gen=gen, attempt=len(attempts) - 1, reason=reason)
            payload = self._payload(ctx, card, gen, attempts, energy, reason)
            return payload if raw else ChatCompletion.model_validate(payload)
        if last_error is None:  # issue 6: every model in the plan was skipped for budget
            raise self._all_budgets_spent(ctx)
        raise last_error

    def _payload(self, ctx: RequestContext, card: ModelCard, gen: Generation, attempts: list[dict[str, Any]],
                 total: EnergyReading, reason: str) -> dict[str, Any]:
        """The completion as the plain dict ``ChatCompletion.model_dump()`` gives (same keys, same order):
        the one place the response's shape is written; ``_response`` validates it into the public type.
        Building the dict and serialising it costs a few µs, a fifth of constructing and dumping the models."""
        if ctx.budget_notes:
            reason = "; ".join([reason, *ctx.budget_notes])  # issue 6: budget flags show in routing.reason
        d = ctx.decision
        return {
            "id": ctx.request_id,
            "object": "chat.completion",
            "created": ctx.created,
            "model": card.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": gen.text},
                         "finish_reason": gen.finish_reason, "logprobs": None}],
            "usage": {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens,
                      "total_tokens": gen.prompt_tokens + gen.completion_tokens},
            "routing": {
                "model": card.name, "tier": card.tier, "reason": reason, "energy_j": total.joules,
                "energy_source": total.source, "predicted_accuracy": d.predicted_accuracy, "task": d.task,
                "policy": d.policy, "latency_ms": sum(a["latency_ms"] for a in attempts),
                "decision_ms": ctx.decision_ms, "co2e_g": self._co2(total.joules), "attempts": attempts,
            },
            "system_fingerprint": None,
        }
    # -- end issue 8 ------------------------------------------------------------------------------------

    def _response(
        self,
        ctx: RequestContext,
        card: ModelCard,
        gen: Generation,
        attempts: list[dict[str, Any]],
        energies: list[EnergyReading],
        reason: str,
    ) -> ChatCompletion:
        total = energies[0]
        for extra in energies[1:]:
            total = total + extra
        payload = self._payload(ctx, card, gen, attempts, total, reason)
        return ChatCompletion.model_validate(payload)

    # -- streaming ------------------------------------------------------------------------------------
    def _stream(self, ctx: RequestContext) -> Iterator[ChatCompletionChunk]:
        """Stream from the chosen model. Fallback happens only before the first token is sent."""
        plan = self._plan(ctx)
        errors: list[Exception] = []
        for attempt, model in enumerate(plan):
            backend = self.backend(model)
            self._check_context(ctx, backend)
            try:
                held = self._reserve(ctx, model, attempt, last=attempt + 1 == len(plan))  # issue 6: budgets
            except _BudgetSkip as exc:
                errors.append(BudgetExhaustedError(str(exc), retry_after_s=self._retry_after(ctx)))
                continue
            span = self.meter.start() if backend.local else None
            t0 = time.perf_counter()
            sent: list[str] = []
            final = StreamEvent()
            outcome, error = "ok", None
            try:
                for event in backend.stream(self._request(ctx)):
                    if event.text:
                        if not sent:
                            yield self._chunk(ctx, card=backend.card, delta=Delta(role="assistant", content=""))
                        sent.append(event.text)
                        yield self._chunk(ctx, card=backend.card, delta=Delta(content=event.text))
                    if event.finish_reason:
                        final = event
            except GeneratorExit:
                outcome, error = "cancelled", "client stopped reading the stream"
                raise
            except BackendError as exc:
                outcome, error = "error", str(exc)[:500]
                if not sent and attempt + 1 < len(plan):
                    errors.append(exc)
                    continue
                raise
            finally:
                latency = (time.perf_counter() - t0) * 1000
                text = "".join(sent)
                gen = Generation(
                    text=text,
                    finish_reason=final.finish_reason or ("stop" if outcome == "ok" else "error"),
                    prompt_tokens=final.prompt_tokens if final.prompt_tokens is not None
                    else backend.prompt_tokens(ctx.messages),
                    completion_tokens=final.completion_tokens if final.completion_tokens is not None
                    else backend.count_tokens(text),
                )
                energy = self._energy(backend, span.stop() if span else None, gen)
                self._settle(held, energy.joules)
                self._record(ctx, backend.card, energy, latency, outcome, gen=gen, error=error, attempt=attempt)
            if not sent:
                yield self._chunk(ctx, card=backend.card, delta=Delta(role="assistant", content=""))
            info = Attempt(model=model, tier=backend.card.tier, energy_j=energy.joules,
                           energy_source=energy.source, latency_ms=latency)
            routing = Routing(
                model=model, tier=backend.card.tier, reason=ctx.decision.reason, energy_j=energy.joules,
                energy_source=energy.source, predicted_accuracy=ctx.decision.predicted_accuracy,
                task=ctx.decision.task, policy=ctx.decision.policy, latency_ms=latency,
                decision_ms=ctx.decision_ms, co2e_g=self._co2(energy.joules), attempts=[info],
            )
            usage = Usage(prompt_tokens=gen.prompt_tokens, completion_tokens=gen.completion_tokens,
                          total_tokens=gen.prompt_tokens + gen.completion_tokens)
            yield self._chunk(ctx, card=backend.card, delta=Delta(), finish_reason=gen.finish_reason,
                              usage=usage, routing=routing)
            return
        raise errors[-1]

    async def _astream(self, ctx: RequestContext) -> AsyncIterator[ChatCompletionChunk]:
        # -- issue 8: the sync stream runs in its own thread and hands chunks over through a queue. Closing
        # this iterator (client gone, task cancelled) only sets ``stop``, with no await in ``finally`` (a
        # cancelled task could not await); the thread then closes the sync generator itself between two
        # chunks, so ``_stream`` records outcome ``cancelled`` with what was produced so far.
        import asyncio

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        stop = threading.Event()

        def put(kind: int, item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (kind, item))
            except RuntimeError:  # the event loop is gone; nobody is listening
                stop.set()

        def pump() -> None:
            iterator = self._stream(ctx)
            try:
                for chunk in iterator:
                    if stop.is_set():
                        break
                    put(0, chunk)
                    if stop.is_set():
                        break
            except BaseException as exc:  # handed to the consumer, re-raised there
                put(1, exc)
                return
            finally:
                iterator.close()  # GeneratorExit in _stream -> 'cancelled' record when it had not finished
            put(2, None)

        threading.Thread(target=pump, name=f"stream-{ctx.request_id}", daemon=True).start()
        try:
            while True:
                kind, item = await queue.get()
                if kind == 0:
                    yield item
                elif kind == 1:
                    raise item
                else:
                    return
        finally:
            stop.set()
    # -- end issue 8 --

    def _chunk(
        self,
        ctx: RequestContext,
        *,
        card: ModelCard,
        delta: Delta,
        finish_reason: str | None = None,
        usage: Usage | None = None,
        routing: Routing | None = None,
    ) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=ctx.request_id,
            created=ctx.created,
            model=card.name,
            choices=[ChunkChoice(delta=delta, finish_reason=finish_reason)],
            usage=usage,
            routing=routing,
        )


def _attempt(model: str, tier: str, energy_j: float, energy_source: str, latency_ms: float, outcome: str,
             confidence: float | None = None) -> dict[str, Any]:
    """An :class:`Attempt` as the dict its ``model_dump()`` gives: the Router's one representation of an
    attempt until the response is validated (the proxy serialises the remote path's dicts without that step)."""
    return {"model": model, "tier": tier, "energy_j": energy_j, "energy_source": energy_source,
            "latency_ms": latency_ms, "outcome": outcome, "confidence": confidence}


def _default_classifier(config: RouterConfig) -> RequestClassifier:
    try:
        from .classify.onnx_classifier import load_default_classifier
    except ImportError:
        from .classify.rules import RuleClassifier

        return RuleClassifier(config.classifier_max_chars)
    return load_default_classifier(config.models_dir)


# -- issue 6: policy engine and energy budgets ----------------------------------------------------------
class _BudgetSkip(Exception):
    """Internal: this model's budget is spent and the policy says fall back to the next model in the plan."""


def _reserve(self: Router, ctx: RequestContext, model: str, attempt: int, *, last: bool = False) -> list[Reservation]:
    """Hold the estimated joules against every budget of ``model`` (atomic per budget in the ledger).

    When a budget has no room: ``allow_and_flag`` holds anyway and notes it; ``fallback`` skips to the next
    model of the plan (a ``rejected`` ledger record says why); ``reject`` (or nothing left to fall back to)
    raises :class:`BudgetExhaustedError` with the seconds until the window rolls."""
    d = ctx.decision
    refs = d.model_budgets.get(model, ())
    if not refs:
        return []
    card = self.cards[model]
    est = d.estimates.get(model) or card.energy.joules(max(1, len(ctx.text) // 4), ctx.max_tokens or 128)
    held: list[Reservation] = []
    for ref in refs:
        r = self.ledger.try_reserve(ref.key, est, ref.limit_j, ref.window_s)
        if r is None:
            break
        held.append(r)
    else:
        return held
    self._settle(held, 0.0)  # release what was held before the full budget
    used = self.ledger.budget_used(ref.key, ref.window_s)
    retry = ref.window_s - time.time() % ref.window_s
    what = (f"{model}'s energy budget {ref.key} is spent ({used:,.0f} of {ref.limit_j:,.0f} J this window, "
            f"the call needs ~{est:.3g} J)")
    if d.on_budget_exhausted == "allow_and_flag":
        ctx.budget_notes.append(f"{what}; allowed and flagged (over_budget_allowed)")
        return [r for ref2 in refs if (r := self.ledger.try_reserve(ref2.key, est, float("inf"), ref2.window_s))]
    ctx.budget_notes.append(what)
    rec_reason = f"{d.reason}; {what}"
    # a ``rejected`` record (0 J: the model was not called) so the ledger shows why this model was skipped
    self._record(ctx, card, EnergyReading(0.0, "estimated", "none", "not called"), 0.0, "rejected",
                 attempt=attempt, reason=rec_reason, error="budget_exhausted")
    if d.on_budget_exhausted == "fallback" and not last:
        raise _BudgetSkip(what)
    raise BudgetExhaustedError(f"budget_exhausted: {what}; retry in {retry:.0f} s or raise the budget in policy "
                               f"`{d.policy}`", retry_after_s=retry)


def _settle(self: Router, held: list[Reservation], joules: float) -> None:
    """Replace each held estimate with what the call actually used (a failure still spends what it measured)."""
    for r in held:
        try:
            self.ledger.settle(r, joules)
        except Exception:  # the answer is not lost for a bookkeeping failure; it is logged loudly
            log.exception("%s: could not settle budget %s", r.id, r.budget)


def _retry_after(self: Router, ctx: RequestContext) -> float | None:
    refs = [r for rs in ctx.decision.model_budgets.values() for r in rs]
    return min((r.window_s - time.time() % r.window_s for r in refs), default=None)


Router._reserve = _reserve  # type: ignore[attr-defined]
Router._settle = _settle  # type: ignore[attr-defined]
Router._retry_after = _retry_after  # type: ignore[attr-defined]


def _load_engine(router: Router) -> Engine:
    """The policy engine over ``config.policies_dir``; the interim first rule only when no policy file exists."""
    from .policy.loader import check_models, load_policies

    folder = router.config.policies_dir
    if not folder.is_dir() or not any(folder.glob("*.yaml")):
        from .policy.first_rule import FirstRuleEngine

        log.warning("no policies in %s: using the interim first rule", folder)
        return FirstRuleEngine(router.cards)
    from .policy.engine import PolicyEngine

    policies = load_policies(folder)
    for p in policies.values():
        check_models(p, set(router.cards), folder / f"{p.name}.yaml")
    if router.policy_name not in policies:
        raise RouterError(f"unknown policy {router.policy_name!r}; {folder} has: {', '.join(sorted(policies))}")
    callable_cards = {n: c for n, c in router.cards.items() if c.callable}
    return PolicyEngine(callable_cards, policies, default_policy=router.policy_name)
# -- end issue 6 -----------------------------------------------------------------------------------------


__all__ = ["Router", "RouterError", "BudgetExhaustedError"]
