"""The judge: a carded model that scores answers after they have been sent, so the router learns from traffic no
person scored. Configured with ``judge:`` in the config (:class:`~router.config.JudgeSettings`): which model, the
share of answered requests it scores, and how:

* ``against: rubric`` (default): the request and the answer, scored 0-10 against a rubric (by default: correct,
  helpful and to the point);
* ``against: largest``: the largest model (a general model of the highest tier, then the most parameters on
  its card, the reference a relative policy target uses) answers the same request, and the judge says how the answer
  compares with that reference, 0 (much worse) to 10 (much better), 5 as good: the shape of AlpacaEval's scores,
  the scale chat is routed on. Requests the largest model answered itself are not judged this way (they would
  score 5 by construction).

The score / 10 is stored as feedback with source ``judge:<model>`` (:mod:`router.feedback` says how it combines
with people's). The score is the last one the judge's answer marks as one ("Score: 8", "8/10") or a number alone at
its start (the prompt's closing "Score:" continued), never a number it quotes from the request (:func:`parse_score`).
An answer the judge gives no score in stores nothing (counted in ``Learning.stats``); one cut at its length limit
(``judge.score_max_tokens``, 8 by default) before a score is logged as a warning naming that setting, the first time
and then at every tenfold count (10, 100, ...), since a judge that reasons first loses every score so. Every call
the judge makes, the reference answer's included, is a ledger record with its own measured joules, a reason that
says it is a judge call, task ``judge`` and request id ``<judged id>:judge`` (``:reference``); budgets are not
reserved for them. Runs on the learning thread (:mod:`router.learning`), never on a request's path.

The judge's quality is the operator's choice of model: the shipped local models (SmolLM2-135M, Gemma 3 270M)
give numbers, not judgements; tests use them to prove the mechanics only.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Protocol

from .backends import Backend, Generation, GenerationRequest
from .backends.base import Cancel
from .cards import ModelCard
from .config import JudgeSettings, RouterConfig
from .energy import EnergyReading, Meter, MeterSpan, estimate_from_profile
from .energy.estimates import EnergyEstimates
from .errors import BackendError, CancelledError, ConfigError, RouterError, UnknownModelError
from .keys import KeyStore
from .ledger import Ledger, LedgerRecord
from .ledger.base import Outcome
from .ledger.feedback import JUDGE_PREFIX, Feedback
from .policy.steps import largest
from .types import ChatMessage

log = logging.getLogger(__name__)


class Router(Protocol):
    """What the judge, anchor measurements and the learning thread use of :class:`router.Router`."""

    config: RouterConfig
    cards: dict[str, ModelCard]
    ledger: Ledger
    meter: Meter
    estimates: EnergyEstimates
    keys: KeyStore

    def backend(self, model: str) -> Backend: ...

    def resolve_model(self, name: str, *, routed: bool = True) -> str: ...

    def write_record(self, rec: LedgerRecord) -> None: ...

    def carbon_of(self, card: ModelCard, joules: float) -> tuple[float, float, str]: ...

_SHOWN_CHARS = 1500  # of the request and of each answer in the judge's prompt: the small judges hold ~2k tokens
_NUMBER = r"((?:10|[0-9])(?:\.\d+)?)(?![\d.]?\d)"  # 0 to 10; "42" or "100" is not a score
# a score the judge marked as one: "Score: 8", "**Rating:** 8", "Score (0-10): 8", "score of 8", "8/10", "8 out of 10"
_MARKED = re.compile(rf"\b(?:score|rating)\b(?:[ \t]*\([^)\n]*\))?[\s*_]*(?:is\b|of\b|[:=])?[\s*_]*"
                     rf"(?<![\d.]){_NUMBER}"
                     rf"|(?<![\d.]){_NUMBER}\s*(?:/|out of)\s*10\b", re.IGNORECASE)
# the prompts end with "Score:", so a number alone at the start of the answer ("8", "8.", "8\n...", "10 (better)") is
# that marker's score; one that opens a sentence or a list ("3 examples were asked for", "2, 3, 5") is not
_OPENING = re.compile(rf"\s*[*_]*{_NUMBER}[*_]*(?=\.?[ \t]*(?:$|\n)|[ \t]*\()")
_FORMAT = "Write the score last, on its own line: Score: N (N from 0 to 10)."
_RUBRIC = "Score the reply from 0 (wrong or useless) to 10 (correct, helpful and to the point)."


def parse_score(text: str) -> float | None:
    """The judge's score / 10: the last score it marked as one ("Score: 8", "Rating: 8", "8/10"), a number that
    opens its answer (the prompt's own "Score:" continued); None when there is neither, so a judge that quotes the
    request ("The user asked for 3 examples ...") is not scored by the request's numbers."""
    marked = [m.group(1) or m.group(2) for m in _MARKED.finditer(text)]
    if marked:
        return min(10.0, float(marked[-1])) / 10.0
    opening = _OPENING.match(text)
    return None if opening is None else min(10.0, float(opening.group(1))) / 10.0


def rubric_prompt(request: str, answer: str, rubric: str | None = None) -> str:
    what = f"Score the reply from 0 to 10 by this rubric: {rubric.strip()}" if rubric else _RUBRIC
    return f"Request: {_cut(request)}\nReply: {_cut(answer)}\n\n{what} {_FORMAT} Score:"


def reference_prompt(request: str, answer: str, reference: str) -> str:
    return (f"Request: {_cut(request)}\nReference reply: {_cut(reference)}\nReply to grade: {_cut(answer)}\n\n"
            "Is the reply to grade better than the reference reply? Score it from 0 (much worse) to 10 (much "
            f"better); 5 means as good. {_FORMAT} Score:")


def _cut(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + " ..."


def largest_model(router: Router) -> str:
    """The largest callable model, as a relative policy target picks it (:func:`router.policy.steps.largest`)."""
    return largest(c for c in router.cards.values() if c.callable).name


def metered_call(router: Router, model: str, prompt: str | list[ChatMessage], *, request_id: str, reason: str,
                 max_tokens: int | None, task: str | None = None, cancel: Cancel | None = None) -> Generation:
    """Call ``model`` outside any routed request (the judge, anchor measurements), metered like a request's call
    and recorded in the ledger with ``reason`` (its joules also in ``extra["energy_j"]``); a failure is recorded too
    and raised as a typed error. ``cancel`` set stops the call (recorded ``cancelled``, raised as
    :class:`CancelledError`)."""
    card = router.cards[model]
    backend = router.backend(model)
    messages = [ChatMessage(role="user", content=prompt)] if isinstance(prompt, str) else prompt
    span: MeterSpan | None = None

    def start_meter() -> None:
        nonlocal span
        if span is None:
            span = router.meter.start()

    # a model that serves one call at a time is metered from this call's turn on, as a request's call: metered
    # while it waits, the call would take a share of the running call's CPU time and be charged its wait
    queued = backend.local and backend.concurrency is not None
    request = GenerationRequest(messages=messages, max_tokens=max_tokens, temperature=0.0,
                                deadline=time.monotonic() + router.config.deadline_s, cancel=cancel,
                                turn_started=start_meter if queued else None, request_id=request_id)
    if backend.local and not queued:
        start_meter()
    started = time.perf_counter()
    try:
        gen = backend.generate(request)
    except Exception as exc:
        energy = span.stop() if span is not None else EnergyReading(0.0, "estimated", "none", "failed")
        error = exc if isinstance(exc, RouterError) else BackendError(f"{model}: the backend failed "
                                                                      f"({type(exc).__name__})")
        _record(router, model, energy, started, request_id, reason, task, None, f"{error.code}: {error.message}",
                "cancelled" if isinstance(error, CancelledError) else "error")
        raise error from (None if error is exc else exc)
    if span is not None:
        energy = span.stop()
    else:
        energy = estimate_from_profile(card.energy, gen.prompt_tokens, gen.completion_tokens)
    _record(router, model, energy, started, request_id, reason, task, gen, None, "ok")
    gen.extra["energy_j"] = energy.joules
    return gen


def _record(router: Router, model: str, energy: EnergyReading, started: float, request_id: str, reason: str,
            task: str | None, gen: Generation | None, error: str | None, outcome: Outcome) -> None:
    card = router.cards[model]
    co2e_g, grid_g, zone = router.carbon_of(card, energy.joules)
    rec = LedgerRecord(
        request_id=request_id, model=model, tier=card.tier, energy_j=energy.joules, energy_source=energy.source,
        outcome=outcome, reason=reason, input_tokens=gen.prompt_tokens if gen else 0,
        output_tokens=gen.completion_tokens if gen else 0, latency_ms=(time.perf_counter() - started) * 1000,
        task=task, error=error, co2e_g=co2e_g, grid_g_per_kwh=grid_g, zone=zone,
    )
    router.write_record(rec)


class Judge:
    """Scores one answered request (called on the learning thread)."""

    def __init__(self, router: Router, settings: JudgeSettings) -> None:
        self.router = router
        self.settings = settings
        general = ", ".join(sorted(c.name for c in router.cards.values() if c.callable and c.tier != "specialist"))
        try:
            self.model = router.resolve_model(settings.model, routed=False)
        except UnknownModelError as exc:
            raise ConfigError(f"{exc.message}; fix: name a general model card with a backend: {general}") from None
        if router.cards[self.model].tier == "specialist":
            # a specialist answers with one of its labels, never a score: every judge call would cost and store nothing
            raise ConfigError(f"{self.model!r} is a specialist (it answers only with a label, never a score); the "
                              f"judge must be a general model (tier small or large); fix: name one of: {general}")
        self.share = settings.share
        self.source = JUDGE_PREFIX + self.model
        self.reference = largest_model(router) if settings.against == "largest" else None
        self.cut_unscored = 0
        """Answers cut at ``score_max_tokens`` before the judge gave a score (each stored nothing)."""

    def applies(self, answered_by: str) -> bool:
        """Whether this judge scores an answer of ``answered_by`` at all (see the module docstring)."""
        return self.reference is None or answered_by != self.reference

    def score(self, request_id: str, messages: list[ChatMessage], text: str, answer: str,
              answered_by: str, cancel: Cancel | None = None) -> Feedback | None:
        """Judge one answer: the feedback stored, or None when the judge gave no score. ``cancel`` set (the
        Router closing) stops the judge's call: :class:`CancelledError`."""
        if self.reference is None:
            how = "by rubric"
            prompt = rubric_prompt(text, answer, self.settings.rubric)
        else:
            reason = (f"judge call: the reference answer ({self.reference}, the largest model) for {request_id}, "
                      f"answered by {answered_by}")
            ref = metered_call(self.router, self.reference, messages, request_id=f"{request_id}:reference",
                               reason=reason, max_tokens=self.settings.max_tokens, task="judge", cancel=cancel)
            how = f"against {self.reference}'s answer"
            prompt = reference_prompt(text, answer, ref.text)
        gen = metered_call(self.router, self.model, prompt, request_id=f"{request_id}:judge",
                           reason=f"judge call: scoring {request_id} ({answered_by}'s answer) {how}",
                           max_tokens=self.settings.score_max_tokens, task="judge", cancel=cancel)
        value = parse_score(gen.text)
        if value is None:
            if gen.finish_reason == "length" and not gen.context_full:
                self._cut_before_the_score(request_id)
            return None
        # the judge's own words may quote the request: feedback keeps its score, never prompt text
        feedback = Feedback(request_id=request_id, score=value, source=self.source,
                            comment=f"{how}: the judge ({self.model}) answered {value * 10:g}/10")
        self.router.ledger.add_feedback(feedback)
        return feedback

    def _cut_before_the_score(self, request_id: str) -> None:
        """Warn that answers are cut before their score: the first time, then at 10, 100, ... of them (a judge that
        reasons first is cut on every judged request, and a line each would bury the log)."""
        self.cut_unscored += 1
        if str(self.cut_unscored).rstrip("0") == "1":
            log.warning("the judge (%s) gave no score for %s: its answer was cut at judge.score_max_tokens = %d "
                        "tokens before its score (%d answer(s) cut so far, none stored); fix: raise "
                        "`score_max_tokens` under `judge:` in the config (256 or more for a judge that reasons "
                        "before its `Score: N` line)", self.model, request_id, self.settings.score_max_tokens,
                        self.cut_unscored)
