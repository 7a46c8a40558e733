"""Learning from traffic, after each answer is sent: keep its prompt (only when the operator opts in) and let the
judge score a share of answers. One daemon thread does the work, so a request pays one ``deque.append`` (and
nothing at all when both are off: the Router then has no ``Learning``).

* Prompts (``prompts: {store: true, retention_days: 30}``): each answered request's text as the classifier read
  it, its messages (JSON) and the answer are stored beside the ledger records, by request id
  (:class:`~router.ledger.feedback.StoredPrompt`). Retention is enforced when the Router starts and then hourly
  while prompts are stored; ``router ledger prompts delete`` deletes on demand. Never stored by default.
* The judge (``judge: {model: ..., share: 0.05, against: rubric | largest}``): :mod:`router.judge`.

The queue holds at most :data:`MAX_QUEUED` answers: beyond that (a judge slower than the traffic) answers are
skipped and counted (``stats["dropped"]``) rather than holding memory or slowing requests down.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._forks import renew_after_fork
from .backends.base import CancelFlag
from .errors import CancelledError, ConfigError, LedgerError, RouterError
from .ledger.feedback import StoredPrompt
from .types import ChatMessage

if TYPE_CHECKING:
    from ._request import PreparedRequest
    from .backends import Generation
    from .judge import Router

log = logging.getLogger("router.learning")
MAX_QUEUED = 10_000
_HOUR = 3600.0


@dataclass
class _Answered:
    request_id: str
    messages: list[ChatMessage]
    text: str
    model: str
    answer: str
    key_hash: str | None
    ts: float
    store: bool
    judge: bool


class Learning:
    """The after-answer work of one Router (see the module docstring)."""

    def __init__(self, router: Router, *, seed: int | None = None) -> None:
        from .judge import Judge

        config = router.config
        self.router = router
        self.store_prompts = config.prompts.store
        self.retention_days = config.prompts.retention_days
        self.judge: Judge | None = None
        if config.judge is not None:
            try:
                self.judge = Judge(router, config.judge)
            except RouterError as exc:
                problem, _, fix = exc.message.partition("; fix: ")
                raise ConfigError.at(config.file, "judge.model", problem,
                                     fix or "name a model card with a backend") from None
        self.stats = {"stored": 0, "judged": 0, "unscored": 0, "dropped": 0, "failed": 0}
        self._rng = random.Random(seed)
        self._queue: deque[_Answered] = deque()
        self._cond = threading.Condition()
        self._pending = 0  # handed over and not yet done
        self._stop = False
        self._cancel = CancelFlag()  # set by close(): stops a judge call in flight, which may take minutes
        self._next_retention = 0.0
        self._start_learning()
        renew_after_fork(self)

    def _start_learning(self) -> None:
        self._thread = threading.Thread(target=self._run, name="router-learning", daemon=True)
        self._thread.start()

    def _renew_after_fork(self) -> None:
        """The answers queued before the fork are the parent's to store and judge, not the child's (they would be
        stored and judged twice); the condition is new, as a parent's thread may have held its lock at the fork."""
        self._cond = threading.Condition()
        self._queue = deque()
        self._pending = 0

    def _restart_after_fork(self) -> None:
        """A forked child (gunicorn --preload, multiprocessing's fork, Celery's prefork pool) has none of the
        parent's threads: without a learning thread of its own, the child's answers would pile up unstored and
        unjudged, and ``drain()`` would never return."""
        if not self._stop:
            self._start_learning()

    # -- the request path: O(1) -----------------------------------------------------------------------------
    def answered(self, prepared: PreparedRequest, model: str, gen: Generation) -> None:
        """Hand one answer over (called by the attempts once a request has its answer). A refusal (a remote model
        declined) is stored as its answer but never judged: a rubric would score the empty content."""
        judge = (self.judge is not None and gen.refusal is None and self.judge.applies(model)
                 and self._rng.random() < self.judge.share)
        if not (self.store_prompts or judge):
            return
        answer = gen.text if gen.refusal is None else gen.refusal
        item = _Answered(prepared.request_id, prepared.messages, prepared.text, model, answer, prepared.key_hash,
                         time.time(), self.store_prompts, judge)
        with self._cond:
            if self._pending >= MAX_QUEUED:
                self.stats["dropped"] += 1
                return
            self._pending += 1
            self._queue.append(item)
            self._cond.notify()

    # -- the learning thread ----------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stop:
                    self._cond.wait()
                if not self._queue:
                    return
                item = self._queue.popleft()
            try:
                self._learn(item)
            except CancelledError:  # close() stopped its judge call: judging is skipped when closing
                self.stats["dropped"] += 1
            except RouterError as exc:  # the judge's model failed (its ledger record says so) or the ledger did
                self.stats["failed"] += 1
                log.warning("%s: could not store the prompt or judge the answer: %s", item.request_id, exc.message)
            except Exception:  # noqa: BLE001 - the thread must outlive any one failure; logged
                self.stats["failed"] += 1
                log.exception("%s: could not store the prompt or judge the answer", item.request_id)
            with self._cond:
                self._pending -= 1
                self._cond.notify_all()

    def _learn(self, item: _Answered) -> None:
        if item.store:
            messages = json.dumps([m.model_dump(exclude_none=True) for m in item.messages], ensure_ascii=False)
            self.router.ledger.store_prompt(StoredPrompt(item.request_id, item.text, messages, item.answer,
                                                         item.model, item.key_hash, item.ts))
            self.stats["stored"] += 1
            if time.time() >= self._next_retention:
                self.enforce_retention()
        if item.judge and self._stop:  # closing: prompts are still stored, judging waits for no one
            self.stats["dropped"] += 1
        elif item.judge and self.judge is not None:
            scored = self.judge.score(item.request_id, item.messages, item.text, item.answer, item.model,
                                      cancel=self._cancel)
            self.stats["judged" if scored is not None else "unscored"] += 1

    def enforce_retention(self) -> int:
        """Delete stored prompts older than ``prompts.retention_days``; how many went (0 when there is none)."""
        self._next_retention = time.time() + _HOUR
        if self.retention_days is None:
            return 0
        return self.router.ledger.delete_prompts(before=time.time() - self.retention_days * 86_400)

    def drain(self, timeout: float = 60.0) -> bool:
        """Wait until every answer handed over so far is stored and judged (tests, shutdown)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Store the prompts still queued (up to ``timeout``), skip their judging and cancel the judge call in
        flight (a model stops at its next token, an endpoint's answer is no longer awaited; the call's ledger record
        says ``cancelled``), stop the thread."""
        with self._cond:
            self._stop = True
            self._cancel.set()
            self._cond.notify_all()
        self._thread.join(timeout)



def prompt_retention_at_start(router: Router) -> None:
    """Stored prompts past ``prompts.retention_days`` go when a Router starts, whether or not it stores prompts
    itself (an operator who turned storing off still gets the old ones deleted). A ledger that keeps no prompts,
    or one that is down, is left alone (logged)."""
    days = router.config.prompts.retention_days
    if days is None:
        return
    try:
        gone = router.ledger.delete_prompts(before=time.time() - days * 86_400)
    except LedgerError as exc:
        log.debug("stored prompts not checked for retention: %s", exc)
        return
    if gone:
        log.info("deleted %d stored prompts older than %g days (prompts.retention_days)", gone, days)
