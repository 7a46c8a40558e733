"""What the ledger keeps beside its records so that routing can learn from traffic: feedback, and (only when the
operator opts in) the prompts themselves.

* :class:`Feedback`: a score in [0, 1] for one response, by its id (the records' ``request_id``), from a person
  (source ``user``) or a judge model (``judge:<model>``), with an optional comment and the key that gave it.
  Every feedback is kept, append-only: each has its own ``feedback_id``, and writing one again changes nothing
  (as with records), so a client retrying after a timeout never scores twice. How several scores of one request
  become one is a reading rule, not a storage one (:func:`router.feedback.combined_score`).
* :class:`StoredPrompt`: the request's text as the classifier reads it, its messages (JSON) and the answer, by
  request id; the first one stored for an id wins. Deleted by age (the ``prompts.retention_days`` setting, and
  the records' own retention) or on demand (``router ledger prompts delete``).

:class:`FeedbackMethods` is this half of the :class:`~router.ledger.base.Ledger` interface. Every store overrides
it (SQLite, PostgreSQL, Redis: a table or keys of their own, added by a numbered migration step) and the wrappers
(journal, background writer) delegate; a ledger that does not override it refuses with a ``LedgerError``, except
:meth:`FeedbackMethods.request_record`, whose default scans the records.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import BadRequestError
from .arguments import checked_span, checked_time

USER = "user"
"""The source of feedback given through ``Router.feedback`` or ``POST /v1/feedback``."""
JUDGE_PREFIX = "judge:"
"""Sources ``judge:<model>``: scores a judge model gave (router/judge.py)."""


@dataclass
class Feedback:
    request_id: str
    """The response's ``id`` (the ledger records' ``request_id``)."""
    score: float
    """In [0, 1]: how good the answer was, on the scale of the request's task (docs/feedback.md)."""
    source: str = USER
    comment: str | None = None
    key_hash: str | None = None
    """The API key that gave it (its id, never the key)."""
    ts: float = field(default_factory=time.time)
    feedback_id: str = field(default_factory=lambda: os.urandom(16).hex())

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StoredPrompt:
    request_id: str
    prompt: str
    """The request's text as the classifier reads it (what an outcomes file's ``prompt`` is)."""
    messages: str
    """The request's messages, as JSON."""
    answer: str | None = None
    model: str | None = None
    """The model that answered."""
    key_hash: str | None = None
    ts: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


FEEDBACK_FIELDS = ("feedback_id", "request_id", "ts", "score", "source", "comment", "key_hash")
PROMPT_FIELDS = ("request_id", "ts", "prompt", "messages", "answer", "model", "key_hash")


class FeedbackMethods:
    """Feedback and stored prompts (see the module docstring); the stores override every method."""

    url: str = ""

    def add_feedback(self, feedback: Feedback) -> None:
        """Keep ``feedback``; one whose ``feedback_id`` is stored already is ignored."""
        raise _unsupported(self, "keep feedback")

    def feedback(self, request_id: str | None = None, since: float = 0.0,
                 until: float | None = None) -> list[Feedback]:
        """Feedback in time order: of one request, or every one given in ``[since, until)``."""
        raise _unsupported(self, "read feedback")

    def request_record(self, request_id: str) -> Any:
        """The newest :class:`~router.ledger.base.LedgerRecord` of a request (its answer, or how it ended), or None
        when the ledger has none. This default scans every record; the stores look it up by an index."""
        found = None
        for rec in self.iter_records():  # type: ignore[attr-defined]
            if rec.request_id == request_id:
                found = rec
        return found

    def store_prompt(self, prompt: StoredPrompt) -> None:
        """Keep a request's prompt and answer; the first stored for a request id wins."""
        raise _unsupported(self, "store prompts")

    def prompts(self, since: float = 0.0, until: float | None = None,
                request_id: str | None = None) -> list[StoredPrompt]:
        """Stored prompts in time order: of one request, or every one stored in ``[since, until)``."""
        raise _unsupported(self, "read stored prompts")

    def prompt_summary(self) -> tuple[int, float | None]:
        """``(how many prompts are stored, the oldest one's time)``, counted by the store without reading them."""
        raise _unsupported(self, "count stored prompts")

    def delete_prompts(self, *, before: float | None = None, request_id: str | None = None) -> int:
        """Delete the stored prompts of one request, or those stored before ``before``, or (neither given) all of
        them; returns how many went."""
        raise _unsupported(self, "delete stored prompts")


def _unsupported(ledger: Any, action: str) -> Exception:
    from .errors import ledger_error

    return ledger_error(getattr(ledger, "url", "") or type(ledger).__name__,
                        f"this ledger ({type(ledger).__name__}) cannot {action}",
                        "use a SQLite, PostgreSQL or Redis ledger", retryable=False)


def selection(request_id: str | None, since: float, until: float | None, mark: str) -> tuple[str, list[Any]]:
    """The ``WHERE`` condition of a feedback or prompt read, and its arguments: one request's rows, else the rows of
    ``[since, until)``; ``mark`` is the SQL store's placeholder (``?`` for SQLite, ``%s`` for PostgreSQL)."""
    since, until = checked_span(since, until)
    if request_id is not None:
        return f"request_id = {mark}", [request_id]
    where, args = f"ts >= {mark}", [since]
    if until is not None:
        where += f" AND ts < {mark}"
        args.append(until)
    return where, args


def check_delete_args(before: float | None, request_id: str | None) -> float | None:
    """``delete_prompts``' arguments checked; returns ``before`` as epoch seconds (None: not given)."""
    if before is not None and request_id is not None:
        raise BadRequestError("delete_prompts: give `before` or `request_id`, not both (neither deletes every "
                              "stored prompt)", param="before")
    return None if before is None else checked_time("before", before, none="every stored prompt")
