"""``Router``: check the request, classify it, decide the smallest adequate model, call it, meter it, record it.

A request runs through short named stages (``docs/architecture.md`` draws them with their files)::

    complete(messages, **params)          = send(prepare(messages, **params))
    prepare:  check (router/_request.py) -> classify -> decide (router/policy/)      -> PreparedRequest
    send:     the attempts (router/_attempts.py): reserve, meter, call, settle, record -> ChatCompletion

Sync and async mirror each other line by line (``complete``/``acomplete``, ``prepare``/``aprepare``,
``send``/``asend``), as httpx's ``Client`` and ``AsyncClient`` do, and ``stream=True`` takes the same attempt
path: only the four short driver loops at the end of this module differ, in how they call a backend.

Length: the public surface, each method twice (sync and async mirror each other line by line); the stages behind it
are modules of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import logging
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Callable, Generator
from typing import Any, Literal, TypeVar, overload

from ._attempts import Attempts
from ._chunks import StreamedAnswer
from ._closing import CLOSE_WAIT_S, InFlight, closed_error
from ._guards import guarded, internal, within_deadline
from ._ids import new_request_id
from ._parts import default_classifier, load_engine
from ._request import (
    CheckedRequest,
    PreparedRequest,
    check_params,
    check_stream_options,
    context_floor,
    has_tool_history,
    sdk_arguments,
    split_model,
    validate_messages,
)
from ._streams import AsyncChunkStream, ChunkStream
from .backends import Backend, create_backend
from .backends.base import estimated_tokens, own_cancel
from .backends.cooldown import CooldownBackend
from .backends.env_proxies import refuse_unusable_proxies
from .carbon.grid import Grid
from .cards import ModelCard, load_cards, warn_of_unset_key_variables
from .classify.base import Classification, RequestClassifier
from .classify.batching import ClassifyBatcher
from .config import RouterConfig
from .energy import Meter, auto_meter
from .energy.estimates import EnergyEstimates
from .errors import (
    BadRequestError,
    BudgetExhaustedError,
    ConfigError,
    LedgerError,
    PermissionDeniedError,
    RouterError,
    UnknownModelError,
)
from .keys import KeySpec, KeyStore
from .learning import Learning, prompt_retention_at_start
from .ledger import Feedback, Ledger, LedgerRecord, open_ledger, redact
from .policy.base import BudgetState, Decision, DecisionRequest
from .tools import check_tool_turns, tools_task
from .types import ChatCompletion, ChatCompletionChunk

log = logging.getLogger("router")
T = TypeVar("T")


_NONE_COOLING: frozenset[str] = frozenset()
"""What :meth:`Router.cooling_down` answers while every model can be called."""
_SPENT_BUDGET_FLAGS = frozenset({"budget_fallback", "over_budget_allowed"})
"""The flags of a decision a spent budget shaped (:meth:`Router._decision`)."""



def _on_running_loop() -> bool:
    """Whether this thread is running an event loop (where a blocking wait stops its tasks)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True

class Router:
    """Routes chat requests to the smallest adequate model and records the energy of each.

    ``Router()`` is the embedded default: the shipped model cards and classifier, the default policy and a
    SQLite ledger in the user's data directory. Every argument replaces one part (tests and embedding apps pass
    their own ledger, backends or classifier).
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
        keys: KeyStore | None = None,
    ) -> None:
        if config is not None and not isinstance(config, RouterConfig):
            raise ConfigError(f"Router(config=...) takes a RouterConfig (RouterConfig.load(path) reads a file), got "
                              f"{type(config).__name__}; a policy is chosen with Router(policy={config!r})"
                              if isinstance(config, str) else
                              f"Router(config=...) takes a RouterConfig, got {type(config).__name__}")
        self.config = config or RouterConfig.load()
        self.cards = cards if cards is not None else load_cards(self.config.models_dir)
        if not any(c.callable for c in self.cards.values()):
            raise ConfigError(f"{self.config.models_dir}: no model card with a backend; add one (see models/)")
        warn_of_unset_key_variables(self.cards, set(backends or ()))
        refuse_unusable_proxies(self.cards, set(backends or ()))
        self.policy_name = policy or self.config.default_policy
        self.classifier = classifier or default_classifier(self.config, self.cards)
        self.meter = meter or auto_meter(self.config.meter, self.config.cpu_power)
        self.keys = keys if keys is not None else KeyStore.from_entries(
            [k.model_dump(exclude_none=True) for k in self.config.keys])
        """API keys: the proxy authenticates with them, and a key's ``policy`` is its requests' default."""
        self._backends: dict[str, Backend] = dict(backends or {})
        self._backend_lock = threading.Lock()
        self._calls = InFlight()
        """The calls running now, which close() lets finish (router/_closing.py)."""
        self._closed = False
        self._start_failures: dict[str, tuple[float, RouterError]] = {}  # model -> (retry after, why)
        self._budget_outage = _OutageLog(
            "until budgets can be read, models under a budget are not tried where another model can answer, and "
            "requests that need one are refused (503)", "budgets can be read again")
        self._reserve_outage = _OutageLog(
            "until a reservation can be made again, requests whose model must be reserved against a budget are "
            "refused (503)", "budgets can be reserved against again")
        """Apart from ``_budget_outage``: a store that serves reads but refuses writes (a SQLite file another
        process holds locked) would otherwise say it is down and back on every request."""
        self._owner_outage = _OutageLog(
            "until it is back, a request that chooses its id is answered under one the router makes (the id's owner "
            "cannot be checked)", "request ids the callers choose are checked and kept again")
        self._aliases = {a.lower(): c.name for c in self.cards.values() for a in [c.name, *c.aliases]}
        self.engine = load_engine(self.config, self.cards, self.policy_name)
        if (policies := getattr(self.engine, "policies", None)) is not None:
            self.keys.check_policies(policies)
        self._policies_follow_grid = any(p.grid is not None for p in getattr(self.engine, "policies", {}).values())
        self._batcher = ClassifyBatcher(self.classifier)
        self._streams: weakref.WeakKeyDictionary[Any, asyncio.AbstractEventLoop | None] = weakref.WeakKeyDictionary()
        """The streams handed out and not yet collected (an async one with its event loop), for close()."""
        self._batches: Any = None
        self.record_observer: Callable[[LedgerRecord], None] | None = None
        """Shown every ledger record this Router writes, after the write (``router serve`` counts the records'
        joules and failed calls in its metrics here, so ``/metrics`` sums to what the ledger holds)."""
        self.learning: Learning | None = None
        """Prompts kept and answers judged after each answer (router/learning.py); None when both are off."""
        # What holds threads, files or connections opens last, and closes again when a later part fails: a caller
        # who catches the ConfigError and tries again must not keep the journal's threads, its locked segment and an
        # open ledger per attempt.
        with contextlib.ExitStack() as undo:
            self.grid = Grid.from_settings(self.config.carbon, self.config.grid_g_per_kwh)
            """Carbon intensity per grid zone (router/carbon/): what each ledger record's CO2e is computed at."""
            undo.callback(self.grid.close)
            self.ledger = ledger or open_ledger(self.config.ledger_url, journal=self.config.journal,
                                                retention_days=self.config.ledger_retention_days)
            if ledger is None:
                undo.callback(self.ledger.close)
            self.estimates = EnergyEstimates(self.ledger, {n: c for n, c in self.cards.items() if c.callable})
            """Energy per call learned from the ledger (router/energy/estimates.py); the cards are the prior."""
            prompt_retention_at_start(self)
            if self.config.prompts.store or self.config.judge is not None:
                self.learning = Learning(self)
            undo.pop_all()  # started: close() releases them from here on

    # -- the public calls ------------------------------------------------------------------------------------
    # The overloads give a type checker the answer's type from ``stream`` (and ``as_dict``): without them every
    # answer would be ``Any`` to the application.
    @overload
    def complete(self, messages: Any, *, stream: Literal[False] = False, **params: Any) -> ChatCompletion: ...
    @overload
    def complete(self, messages: Any, *, stream: Literal[True], **params: Any) -> ChunkStream: ...
    @overload
    def complete(self, messages: Any, *, stream: bool = False, **params: Any) -> ChatCompletion | ChunkStream: ...

    def complete(self, messages: Any, *, stream: bool = False, **params: Any) -> ChatCompletion | ChunkStream:
        """An OpenAI-style chat completion (or, with ``stream=True``, an iterator of chunks)."""
        if "stream_options" in params or "extra_body" in params:
            check_stream_options(stream, params)
        return self.send(self.prepare(messages, **params), stream=stream)

    @overload
    async def acomplete(self, messages: Any, *, stream: Literal[False] = False, **params: Any) -> ChatCompletion: ...
    @overload
    async def acomplete(self, messages: Any, *, stream: Literal[True], **params: Any) -> AsyncChunkStream: ...
    @overload
    async def acomplete(self, messages: Any, *, stream: bool = False,
                        **params: Any) -> ChatCompletion | AsyncChunkStream: ...

    async def acomplete(self, messages: Any, *, stream: bool = False,
                        **params: Any) -> ChatCompletion | AsyncChunkStream:
        """Async twin of :meth:`complete`; with ``stream=True`` returns an async iterator of chunks."""
        if "stream_options" in params or "extra_body" in params:
            check_stream_options(stream, params)
        return await self.asend(await self.aprepare(messages, **params), stream=stream)

    def prepare(self, messages: Any, **params: Any) -> PreparedRequest:
        """Check a request and decide which model answers it (the classifier and the policy engine)."""
        with self._calls.running():
            checked = self._check(messages, params)
            if checked.request_id_given and self.keys:
                checked = guarded(self._check_request_id_owner, checked)
            started = time.perf_counter()
            classification = (tools_task(checked.text) if checked.options.tool_use
                              else guarded(self.classifier.classify, checked.text))
            return guarded(self._decide, checked, classification, started)

    async def aprepare(self, messages: Any, **params: Any) -> PreparedRequest:
        """:meth:`prepare` on an event loop: the texts of concurrent requests are classified together, one
        onnxruntime call per loop turn, and decided right after (:class:`~router.classify.batching.ClassifyBatcher`)."""
        with self._calls.running():
            checked = self._check(messages, params)
            if checked.request_id_given and self.keys:  # a ledger read: off the event loop
                checked = await asyncio.to_thread(guarded, self._check_request_id_owner, checked)
            started = time.perf_counter()
            if checked.options.tool_use:  # a task by rule: the classifier is not asked
                return guarded(self._decide, checked, tools_task(checked.text), started)
            try:
                return await self._batcher.classify(checked.text, lambda c: self._decide(checked, c, started))
            except RouterError:
                raise
            except Exception as exc:
                raise internal("classifying the request", exc) from exc

    @overload
    def send(self, prepared: PreparedRequest, *, stream: Literal[False] = False,
             as_dict: Literal[False] = False) -> ChatCompletion: ...
    @overload
    def send(self, prepared: PreparedRequest, *, stream: Literal[False] = False,
             as_dict: Literal[True]) -> dict[str, Any]: ...
    @overload
    def send(self, prepared: PreparedRequest, *, stream: Literal[True], as_dict: bool = False) -> ChunkStream: ...
    @overload
    def send(self, prepared: PreparedRequest, *, stream: bool = False,
             as_dict: Literal[False] = False) -> ChatCompletion | ChunkStream: ...
    @overload
    def send(self, prepared: PreparedRequest, *, stream: bool = False,
             as_dict: bool = False) -> ChatCompletion | dict[str, Any] | ChunkStream: ...

    def send(self, prepared: PreparedRequest, *, stream: bool = False,
             as_dict: bool = False) -> ChatCompletion | dict[str, Any] | ChunkStream:
        """Call the decided model (with fallbacks and cascade) and return its answer: a :class:`ChatCompletion`,
        the plain dict it dumps to with ``as_dict=True``, or with ``stream=True`` an iterator of chunks."""
        _check_send_args(prepared, stream, "send")
        if stream:
            self._calls.check_open()  # at once, not at the first chunk
            prepared.take_to_send()
            chunks = ChunkStream(self._stream(prepared))
            self._streams[chunks] = None
            return chunks
        with self._calls.running(prepared.cancel):
            prepared.take_to_send()
            completion = guarded(self._send, prepared)
        return completion if as_dict else ChatCompletion.model_validate(completion)

    @overload
    async def asend(self, prepared: PreparedRequest, *, stream: Literal[False] = False,
                    as_dict: Literal[False] = False) -> ChatCompletion: ...
    @overload
    async def asend(self, prepared: PreparedRequest, *, stream: Literal[False] = False,
                    as_dict: Literal[True]) -> dict[str, Any]: ...
    @overload
    async def asend(self, prepared: PreparedRequest, *, stream: Literal[True],
                    as_dict: bool = False) -> AsyncChunkStream: ...
    @overload
    async def asend(self, prepared: PreparedRequest, *, stream: bool = False,
                    as_dict: Literal[False] = False) -> ChatCompletion | AsyncChunkStream: ...
    @overload
    async def asend(self, prepared: PreparedRequest, *, stream: bool = False,
                    as_dict: bool = False) -> ChatCompletion | dict[str, Any] | AsyncChunkStream: ...

    async def asend(self, prepared: PreparedRequest, *, stream: bool = False,
                    as_dict: bool = False) -> ChatCompletion | dict[str, Any] | AsyncChunkStream:
        """Async twin of :meth:`send`: remote models are awaited on the event loop, local ones run in a worker
        thread; cancelling the task stops the model between tokens and the ledger records ``cancelled``."""
        _check_send_args(prepared, stream, "asend")
        if stream:
            self._calls.check_open()
            prepared.take_to_send()
            achunks = AsyncChunkStream(self._astream(prepared))
            self._streams[achunks] = asyncio.get_running_loop()
            return achunks
        try:
            with self._calls.running(prepared.cancel):
                prepared.take_to_send()
                completion = await self._asend(prepared)
        except (RouterError, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise internal(prepared.request_id, exc) from exc
        return completion if as_dict else ChatCompletion.model_validate(completion)

    def batch(self, requests: Any, *, completion_window: str = "24h", metadata: dict[str, str] | None = None,
              api_key: str | None = None) -> Any:
        """Submit deferrable work: run ``requests`` (chat request bodies, or OpenAI batch lines with ``custom_id``)
        in the cleanest hours of the window, by the grid's forecast, within budgets, routed like any request.
        Returns a :class:`~router.batch.BatchHandle` (``wait()``, ``results()``, ``cancel()``); a scheduler in this
        process runs it (docs/batch.md). Nothing here waits for the work."""
        from .batch.library import submit

        self._calls.check_open()
        return submit(self, requests, completion_window=completion_window, metadata=metadata, api_key=api_key)

    def feedback(self, response_id: str, score: float, *, comment: str | None = None,
                 api_key: str | None = None) -> Feedback:
        """Score an answer in [0, 1] by the response's ``id``; stored beside its ledger record (every feedback is
        kept; :func:`router.feedback.combined_score` says how they combine). ``api_key``: the caller's key, which
        must be the one that made the request (or an admin key) when keys are configured; without one the
        application itself is scoring. Raises :class:`NotFoundError` for an id the ledger does not hold,
        :class:`PermissionDeniedError`, :class:`BadRequestError` for a score outside [0, 1]."""
        from .feedback import give_feedback

        with self._calls.running():
            return guarded(give_feedback, self, response_id, score, comment=comment, api_key=api_key)

    async def afeedback(self, response_id: str, score: float, *, comment: str | None = None,
                        api_key: str | None = None) -> Feedback:
        """Async twin of :meth:`feedback` (the ledger is read and written in a worker thread)."""
        return await asyncio.to_thread(self.feedback, response_id, score, comment=comment, api_key=api_key)

    @property
    def batches(self) -> Any:
        """The batch store, API and scheduler of this Router (:class:`~router.batch.Batches`), started on first use."""
        if self._batches is None:
            from .batch import Batches

            with self._backend_lock:
                if self._batches is None:
                    self._calls.check_open()
                    self._batches = Batches(self).start()
        return self._batches

    @property
    def closing(self) -> bool:
        """``close()`` has begun: new calls are refused, and the running ones it cancels say it closed them."""
        return self._calls.closing

    @property
    def closed(self) -> bool:
        """``close()`` has closed (or is closing) the backends, the grid and the ledger: a call still running
        fails, and its record may not be written."""
        return self._closed

    # -- models ----------------------------------------------------------------------------------------------
    def backend(self, model: str) -> Backend:
        """The (lazily created, cached) backend for a model card, inside its cooldown (circuit breaker). A backend
        that cannot start (a model file that does not load) is not tried again for the cooldown's seconds: its
        error comes back at once, so requests fall back without each paying for the failed load. Once the Router is
        closed: :class:`RouterClosedError`."""
        with self._backend_lock:
            if self._closed:
                raise closed_error()
            backend = self._backends.get(model)
            if backend is None:
                cool = self.config.cooldown
                failed = self._start_failures.get(model)
                if failed is not None and time.monotonic() < failed[0]:
                    # a copy: the one object raised again and again would grow its traceback each time
                    raise copy.copy(failed[1]).with_traceback(None)
                try:
                    inner = create_backend(self.cards[model])
                except RouterError as exc:
                    self._start_failures[model] = (time.monotonic() + cool.seconds, exc)
                    raise
                self._start_failures.pop(model, None)
                backend = CooldownBackend(inner, failures=cool.failures, cooldown_s=cool.seconds)
                self._backends[model] = backend
            return backend

    def warm_up(self) -> None:
        """Load every local model now and run it once, outside any request (``router serve`` does this at start),
        so the first requests are neither slow nor charged the loading. Not recorded in the ledger. Once the Router
        is closed: :class:`RouterClosedError`."""
        self._calls.check_open()
        for name, card in self.cards.items():
            if card.runs_here:
                started = time.perf_counter()
                try:
                    self.backend(name).warm_up()
                except Exception as exc:  # the model stays a candidate; its requests say what is wrong with it
                    log.warning("could not warm %s up (%s: %s); its requests will fail over to other models",
                                name, type(exc).__name__, exc)
                    continue
                log.info("warmed up %s in %.0f ms", name, (time.perf_counter() - started) * 1000)

    def loaded_backends(self) -> dict[str, Backend]:
        """The backends created so far, by model (for health and metrics)."""
        with self._backend_lock:
            return dict(self._backends)

    def resolve_model(self, name: str, *, routed: bool = True) -> str:
        """The card name for a model name or alias; :class:`UnknownModelError` when there is none. ``routed``: the
        caller may also name ``router`` / ``router:<policy>`` (a request's model), so the error offers them; a
        caller that needs one card (a judge, a model to measure) passes False."""
        found = self._aliases.get(name.lower())
        if found is None:
            known = ", ".join(sorted(c.name for c in self.cards.values() if c.callable))
            routes = "'router', 'router:<policy>' or " if routed else ""
            raise UnknownModelError(f"unknown model {name!r}; use {routes}one of: {known}", param="model")
        if not self.cards[found].callable:
            raise UnknownModelError(f"model {found!r} has no backend (simulation only)", param="model")
        return found

    def write_record(self, rec: LedgerRecord) -> None:
        """Write one ledger record, then show it to what learns from records: the energy estimates and
        :attr:`record_observer`."""
        self.ledger.record(rec)
        self.estimates.observe(rec)
        if self.record_observer is not None:
            self.record_observer(rec)

    def reservation_outage(self, exc: LedgerError | None) -> None:
        """A budget reservation failed with ``exc``, a retryable error (the store is unavailable), or the store
        answered one (None): the log says once when reservations start failing and once when they work again,
        and ``exc`` is marked :attr:`~router.errors.LedgerError.outage_logged`."""
        if exc is not None:
            exc.outage_logged = True
        self._reserve_outage.update(exc, self.ledger.url)

    def budget_read_outage(self, exc: LedgerError) -> None:
        """A budget read failed with ``exc``, a retryable error (the store is unavailable): logged once per outage
        with the reads that decide a request's model (the next one that works says budgets can be read again),
        and ``exc`` is marked :attr:`~router.errors.LedgerError.outage_logged`."""
        exc.outage_logged = True
        self._budget_outage.update(exc, self.ledger.url)

    def carbon_of(self, card: ModelCard, joules: float) -> tuple[float, float, str]:
        """``(grams CO2e, grid g/kWh, zone)`` of ``joules`` drawn by ``card`` now (what its ledger record carries)."""
        return self.grid.carbon_of(card, joules)

    def close(self) -> None:
        """Stop the learning and batch threads, then refuse new calls (:class:`RouterClosedError`, as httpx's
        ``Client`` refuses once closed) and let the calls running in other threads or tasks write their ledger
        records: they get ``CLOSE_WAIT_S`` (5 s) to end, then are cancelled (a model stops at its next token and
        the record says ``cancelled``) and get as long again. Then every backend, the meter, the grid and the
        ledger are closed, the ones passed in included (as httpx's ``Client.close()`` closes a transport it was
        given): a caller sharing a backend, a meter or a ledger between Routers closes the last Router only, or none
        and those parts itself. On an event loop use ``async with`` or ``await router.aclose()``: waiting there
        would stop the very tasks it waits for (said in a warning when calls are running)."""
        if self._calls.count() and _on_running_loop():
            log.warning("Router.close() was called on a running event loop while %d call(s) run: calls on this loop "
                        "cannot end while close() blocks it, so they are cancelled after %.0f s and their records "
                        "may be lost; use `await router.aclose()` (or `async with Router(...)`) on an event loop",
                        self._calls.count(), CLOSE_WAIT_S)
        if self.learning is not None:  # first: their own calls must still be served
            self.learning.close()
        if self._batches is not None:
            self._batches.close()
        left = self._calls.drain(cancelling=self._end_paused_streams)
        if left:
            log.warning("closing with %d call(s) still running after %.0f s: their ledger records may be lost",
                        left, 2 * CLOSE_WAIT_S)
        with self._backend_lock:
            if self._closed:
                return
            self._closed = True
            backends = list(self._backends.values())
        for backend in backends:
            backend.close()
        self.meter.close()  # NVML's power sampler thread and its driver handle, RAPL's counter files
        self.grid.close()
        self.ledger.close()

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Router:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """:meth:`close` for an event loop (as httpx's ``AsyncClient.aclose``): it waits in a worker thread, so the
        calls running on this loop can end and write their records meanwhile."""
        await asyncio.to_thread(self.close)

    # -- stages: check and decide ----------------------------------------------------------------------------
    def _check(self, messages: Any, params: dict[str, Any]) -> CheckedRequest:
        if "stream" in params:  # complete() takes it apart; only prepare(..., stream=True) brings it here
            raise BadRequestError("`stream` is an argument of send() and asend(), not of prepare(): prepare the "
                                  "request, then call send(prepared, stream=True)", param="stream")
        if "extra_body" in params or "timeout" in params or "extra_headers" in params:
            params = sdk_arguments(dict(params))
        try:
            p = check_params(**params)
            msgs, chars, size, question, turns = validate_messages(messages, self.config.max_prompt_chars,
                                                                  self.config.max_messages)
        except RecursionError:
            raise BadRequestError("the request is nested too deeply", param="messages") from None
        pinned_name, policy_from_model = split_model(p["model"])
        pinned = self.resolve_model(pinned_name) if pinned_name else None
        options = p["options"]
        if len(msgs) > 1 and has_tool_history(msgs):  # a tool call needs an assistant turn after a user's
            check_tool_turns(msgs)
            options = dataclasses.replace(options, tool_history=True)
        return CheckedRequest(
            messages=msgs, text=question, pinned_name=pinned, policy=p["policy"] or policy_from_model,
            policy_param="policy" if p["policy"] else "model",
            accuracy_target=p["accuracy_target"], max_energy_j=p["max_energy_j"], max_tokens=p["max_tokens"],
            temperature=p["temperature"], stop=p["stop"], api_key=p["api_key"], request_id=p["request_id"],
            deadline_s=p["deadline_s"], cancel=p["cancel"], options=options, chars=chars, size=size, turns=turns,
            request_id_given=params.get("request_id") is not None, max_tokens_param=p["max_tokens_param"],
        )

    def _check_request_id_owner(self, req: CheckedRequest) -> CheckedRequest:
        """A request id the caller chose may not be one another API key's response already has: feedback is
        authorised by the key of a response's newest record, so another key reusing the id could score (and
        outvote) the first key's answer. The same key may reuse its own ids (retries). While the ledger's store is
        unavailable the owner cannot be known: the request is answered under an id the router makes (logged once
        per outage), which no other key's response can have."""
        try:
            found = self.ledger.request_record(req.request_id)
        except LedgerError as exc:
            if not exc.retryable:
                raise
            # the store is down: requests go on while it is (docs/ledger.md), under an id nobody else holds
            self._owner_outage.update(exc, self.ledger.url)
            return dataclasses.replace(req, request_id=new_request_id(), request_id_given=False)
        self._owner_outage.update(None, self.ledger.url)
        if found is not None and found.key_hash != self.keys.key_hash(req.api_key):
            raise PermissionDeniedError(
                f"request id {req.request_id!r} is taken by a response made with another API key; send another "
                "x-request-id (or none: the router then makes a unique id)", param="request_id")
        return req

    def _decide(self, req: CheckedRequest, classification: Classification, started: float) -> PreparedRequest:
        api_key = req.api_key
        key_hash = self.keys.key_hash(api_key)
        policy = req.policy
        if api_key is not None:
            spec = api_key if isinstance(api_key, KeySpec) else self.keys.lookup(api_key)
            if spec is not None:
                policy = self._key_policy(spec, req)
        input_tokens = estimated_tokens(req.size)  # the whole conversation is read, not only the question
        learned = self.estimates.for_request(classification.task, input_tokens, req.max_tokens)
        request = DecisionRequest(policy=policy, pinned=req.pinned_name, accuracy_target=req.accuracy_target,
                                  max_energy_j=req.max_energy_j, key_hash=key_hash, input_tokens_hint=input_tokens,
                                  max_tokens=req.max_tokens, max_tokens_param=req.max_tokens_param,
                                  context_tokens_floor=context_floor(req.chars, req.turns, req.max_tokens),
                                  energy_estimates={n: (e.joules, e.source) for n, e in learned.items()}
                                  if learned else None,
                                  grid_g_per_kwh=self._grid_now(),
                                  capabilities=req.options.capabilities, cooling=self.cooling_down())
        try:
            decision = self._decision(classification, request)
        except BudgetExhaustedError as exc:
            self._record_refusal(req, exc, policy, classification.task, key_hash)
            raise
        decision_ms = (time.perf_counter() - started) * 1000
        deadline_s = req.deadline_s or decision.deadline_s or self.config.deadline_s
        prepared = PreparedRequest(
            request_id=req.request_id, messages=req.messages, text=req.text, classification=classification,
            decision=decision, max_tokens=req.max_tokens, temperature=req.temperature, stop=req.stop,
            key_hash=key_hash, decision_ms=decision_ms, deadline=time.monotonic() + deadline_s,
            cancel=own_cancel(req.cancel), estimates=learned,
            options=req.options, max_tokens_param=req.max_tokens_param,
        )
        log.info("%s: %s (%.2f ms)", prepared.request_id, decision.reason, decision_ms)
        return prepared

    def _decision(self, classification: Classification, request: DecisionRequest) -> Decision:
        """The engine's decision on what the budgets have used. One a spent budget shaped (refused, fell back,
        flagged over budget) is taken again once the ledger has applied the settlements it queued: until then
        calls that have ended hold their estimates (the proxy's background writer settles them a group later),
        and a refusal must not rest on those."""
        try:
            decision = self.engine.decide(classification, request, self._budget_state(request))
        except BudgetExhaustedError:
            if not self.ledger.settle_queued():
                raise
        else:
            if _SPENT_BUDGET_FLAGS.isdisjoint(decision.flags) or not self.ledger.settle_queued():
                return decision
        return self.engine.decide(classification, request, self._budget_state(request))

    def _key_policy(self, spec: KeySpec, req: CheckedRequest) -> str | None:
        """The policy a key's request runs under: the one it names, else the key's. A key with ``lock_policy``
        may name no other: its policy's budgets and ``allowed_models`` are what its operator holds it to, and a
        pinned model is decided under that policy too."""
        if not spec.lock_policy:
            return req.policy or spec.policy
        locked = spec.policy or self.policy_name
        if req.policy is not None and req.policy != locked:
            asked = f"model 'router:{req.policy}'" if req.policy_param == "model" else f"policy {req.policy!r}"
            raise PermissionDeniedError(
                f"this API key is held to policy {locked!r} (`lock_policy: true` on its entry in the router's "
                f"`keys:`), so {asked} is refused; send model 'router' (or a model name) without a `policy`, or "
                "ask the router's operator to change the key's policy in its config", param=req.policy_param)
        return locked

    def _record_refusal(self, req: CheckedRequest, exc: BudgetExhaustedError, policy: str | None, task: str,
                        key_hash: str | None) -> None:
        """A request refused for a spent budget before any call still leaves its record: 0 J, ``rejected``, on
        the model whose budget is spent, as a call refused at reservation does (``exc`` gets the request id)."""
        exc.request_id = req.request_id
        card = self.cards.get(exc.model) if exc.model else None
        if card is None:  # an engine of one's own that names no model: nothing to file the record under
            return
        _, grid_g, zone = self.carbon_of(card, 0.0)
        rec = LedgerRecord(
            request_id=req.request_id, model=card.name, tier=card.tier, energy_j=0.0, energy_source="estimated:none",
            outcome="rejected", reason=exc.message, policy=policy or self.policy_name, task=task, key_hash=key_hash,
            error="budget_exhausted", co2e_g=0.0, grid_g_per_kwh=grid_g, zone=zone)
        try:
            self.write_record(rec)
        except Exception:  # the refusal still reaches the caller; the failure is logged loudly
            log.exception("%s: could not write the ledger record", req.request_id)

    def _end_paused_streams(self) -> None:
        """Streams still open that nobody reads now end with the closing error (router/_streams.py says why);
        an async one on its own event loop."""
        for chunks, loop in list(self._streams.items()):
            if loop is None:
                chunks.end_paused()
            elif not loop.is_closed():
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    asyncio.run_coroutine_threadsafe(chunks.end_paused(), loop)

    def cooling_down(self) -> frozenset[str]:
        """The models the engine ranks last while another can answer (and ``router_backend_cooling_down`` shows):
        those whose breaker is open (half-open lets a trial through, so it is not here) and those whose backend
        could not start, until it may be tried again (:meth:`backend` would only raise the remembered error)."""
        # no lock: tuple() copies each dict in one step, and a breaker without failures (nearly always) is closed
        open_breakers = []
        for model, backend in tuple(self._backends.items()):
            if isinstance(backend, CooldownBackend) and backend.consecutive_failures and backend.state == "open":
                open_breakers.append(model)
        if not self._start_failures:  # nearly always: then nothing more to copy or build
            return frozenset(open_breakers) if open_breakers else _NONE_COOLING
        start_failures = tuple(self._start_failures.items())
        now = time.monotonic()
        return frozenset(open_breakers).union(m for m, (retry_at, _) in start_failures if now < retry_at)

    def _grid_now(self) -> float | None:
        """This host's grid intensity, where a policy switches on it (read only then: a source may be remote)."""
        if not self._policies_follow_grid:
            return None
        return self.grid.intensity(self.grid.host_zone).g_per_kwh

    def _budget_state(self, request: DecisionRequest) -> BudgetState:
        """What every budget this request could be reserved against has used in its current window."""
        refs = self.engine.budget_refs(request)
        if not refs:
            return BudgetState.empty()
        g_per_j: dict[str, float] = {}
        if any(r.unit != "J" for r in refs):  # carbon budgets: each model's grams per joule at its zone now
            g_per_j = {n: self.grid.grams_per_joule(c) for n, c in self.cards.items() if c.callable}
        used: dict[str, float] = {}
        try:
            for r in refs:
                used[r.key] = self.ledger.budget_used(r.key, r.window_s)
        except LedgerError as exc:
            if not exc.retryable:
                raise
            # the store is down: the engine leaves the models under these budgets out (docs/ledger.md, the
            # journal), so requests for the others go on
            self._budget_outage.update(exc, self.ledger.url)
            return BudgetState(used, time.time(), g_per_j, frozenset(r.key for r in refs if r.key not in used))
        self._budget_outage.update(None, self.ledger.url)
        return BudgetState(used, time.time(), g_per_j)

    # -- stage: the attempts, one driver per way of calling --------------------------------------------------
    def _send(self, prepared: PreparedRequest) -> dict[str, Any]:
        attempts = Attempts(self, prepared)
        while (call := attempts.next_call()) is not None:
            try:
                gen = call.backend.generate(call.request)
            except Exception as exc:
                attempts.failed(call, exc)
                continue
            if attempts.answered(call, gen):
                return attempts.completion()
        if attempts.keep_escalated():
            return attempts.completion()
        raise attempts.final_error()

    async def _asend(self, prepared: PreparedRequest) -> dict[str, Any]:
        attempts = Attempts(self, prepared)
        while (call := attempts.next_call()) is not None:
            try:
                gen = await within_deadline(call, call.backend.agenerate(call.request))
            except (asyncio.CancelledError, GeneratorExit):  # GeneratorExit: a task destroyed pending (loop closed)
                why = None if prepared.cancel.is_set() else prepared.task_cancelled_means
                prepared.cancel.set()
                attempts.cancelled(call, None, why)
                raise
            except Exception as exc:
                attempts.failed(call, exc)
                continue
            if attempts.answered(call, gen):
                return attempts.completion()
        if attempts.keep_escalated():
            return attempts.completion()
        raise attempts.final_error()

    def _stream(self, prepared: PreparedRequest) -> Generator[ChatCompletionChunk, None, None]:
        with self._calls.running(prepared.cancel):
            attempts = Attempts(self, prepared)
            kept: StreamedAnswer | None = None  # the escalated answer, buffered
            while (call := guarded(attempts.next_call)) is not None:
                answer = StreamedAnswer(prepared, call)
                try:
                    with contextlib.closing(iter(call.backend.stream(call.request))) as events:
                        for event in events:
                            call.request.check(call.model)
                            yield from answer.take(event)
                except GeneratorExit:
                    prepared.cancel.set()
                    attempts.cancelled(call, answer.output)
                    raise
                except Exception as exc:
                    guarded(attempts.failed, call, exc, answer.output, sent=answer.sent)
                    continue
                if guarded(attempts.answered, call, answer.generation(), sent=answer.sent):
                    yield from answer.closing(attempts)
                    return
                if attempts.escalated is not None and attempts.escalated[0] is call:
                    kept = answer
            if kept is not None and attempts.keep_escalated():
                yield from kept.closing(attempts)
                return
            raise attempts.final_error()

    async def _astream(self, prepared: PreparedRequest) -> AsyncGenerator[ChatCompletionChunk, None]:
        with self._calls.running(prepared.cancel):
            attempts = Attempts(self, prepared)
            kept: StreamedAnswer | None = None  # the escalated answer, buffered
            while (call := guarded(attempts.next_call)) is not None:
                answer = StreamedAnswer(prepared, call)
                try:
                    async with contextlib.aclosing(call.backend.astream(call.request)) as events:
                        while (event := await within_deadline(call, anext(events, None))) is not None:
                            for chunk in answer.take(event):
                                yield chunk
                except (GeneratorExit, asyncio.CancelledError):
                    why = None if prepared.cancel.is_set() else prepared.task_cancelled_means
                    prepared.cancel.set()
                    attempts.cancelled(call, answer.output, why)
                    raise
                except Exception as exc:
                    guarded(attempts.failed, call, exc, answer.output, sent=answer.sent)
                    continue
                if guarded(attempts.answered, call, answer.generation(), sent=answer.sent):
                    for chunk in answer.closing(attempts):
                        yield chunk
                    return
                if attempts.escalated is not None and attempts.escalated[0] is call:
                    kept = answer
            if kept is not None and attempts.keep_escalated():
                for chunk in kept.closing(attempts):
                    yield chunk
                return
            raise attempts.final_error()


__all__ = ["Router"]


class _OutageLog:
    """A warning when a ledger read the Router can do without, or a budget reservation, starts failing for an
    outage of the store (``down``: what happens meanwhile), and one when it works again (``back``): once each per
    outage, however many requests meet it."""

    def __init__(self, down: str, back: str) -> None:
        self.down, self.back = down, back
        self.failing = False
        self._lock = threading.Lock()

    def update(self, exc: LedgerError | None, url: str) -> None:
        """The read or reservation failed with ``exc``, or worked (None)."""
        if self.failing == (exc is not None):  # the usual case, without the lock
            return
        with self._lock:
            if self.failing == (exc is not None):
                return
            self.failing = exc is not None
        if exc is not None:
            log.warning("%s; %s", exc, self.down)
        else:
            log.warning("ledger %s: %s", redact(url), self.back)


def _check_send_args(prepared: Any, stream: Any, method: str) -> None:
    if not isinstance(prepared, PreparedRequest):
        raise BadRequestError(f"{method}() takes what prepare() returned (a PreparedRequest), got "
                              f"{type(prepared).__name__}; or call complete(messages, ...)")
    if not isinstance(stream, bool):  # "no" is truthy: it would stream
        raise BadRequestError(f"`stream` must be True or False, got {stream!r}", param="stream")
