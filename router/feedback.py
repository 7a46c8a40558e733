"""Feedback on answers: ``Router.feedback(response_id, score)`` and ``POST /v1/feedback``, and how the scores one
request received become one.

A score is in [0, 1] and belongs to one response, by the ``id`` the response carried (the ledger records'
``request_id``). It is stored beside the records (:mod:`router.ledger.feedback`), never in place of another:

* **Every feedback is kept** (append-only, with the key that gave it and the time), so nothing a person said is
  lost and an audit can see who scored what.
* **Reading rule** (:func:`combined_score`, what ``router data from-ledger`` exports): a person's score wins over
  a judge's (people know what they asked for); among people the newest score wins (someone correcting their own
  score, or an admin overriding it); without one, the mean of each judge's newest score.
* **Who may score**: with API keys configured, only the key that made the request, or a key marked ``admin: true``;
  anyone else gets :class:`PermissionDeniedError` (403). Without keys, anyone who knows the id (the millisecond it
  was made, then 48 random bits: :mod:`router._ids`). A library caller that passes no key is the application
  itself and may score any response.
* **What may be scored**: an answer. A request whose newest record says it got none (``rejected``, or
  ``error``) is :class:`NotFoundError` (404), as an unknown id is: the export could never use its score.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Protocol

from ._request import check_encodable, checked_number
from .errors import AuthenticationError, BadRequestError, NotFoundError, PermissionDeniedError
from .keys import KeyStore, hash_key
from .ledger import Ledger
from .ledger.base import REFUSED
from .ledger.feedback import JUDGE_PREFIX, USER, Feedback


class Router(Protocol):
    """What feedback uses of :class:`router.Router`: its keys and its ledger."""

    keys: KeyStore
    ledger: Ledger

MAX_COMMENT_CHARS = 2000
MAX_ID_CHARS = 128
_NO_ANSWER = (REFUSED, "error")
"""Outcomes of a request's newest record that mean the caller got no answer: refused (a 429, its model never
called) or failed (the model's error, or every fallback's)."""
_SOURCE = re.compile(r"^[a-z][a-z0-9_.-]{0,31}(:[A-Za-z0-9_./:-]{1,100})?$")


def check_score(score: Any, param: str = "score") -> float:
    value = None if score is None else checked_number(param, score, 0.0, 1.0)
    if value is None:
        raise BadRequestError(f"`{param}` must be a number in [0, 1]", param=param)
    return value


def check_feedback(response_id: Any, score: Any, comment: Any = None, source: Any = USER) -> tuple[str, float,
                                                                                                    str | None, str]:
    """The feedback's fields, checked: :class:`BadRequestError` names the one that is wrong."""
    if not isinstance(response_id, str) or not response_id.strip():
        raise BadRequestError("`id` must be the response's id (a non-empty string, e.g. chatcmpl-...)", param="id")
    if len(response_id) > MAX_ID_CHARS:
        raise BadRequestError(f"`id` is longer than {MAX_ID_CHARS} characters", param="id")
    check_encodable(response_id, "id")  # the ledger stores UTF-8: a lone surrogate would fail there as a 500
    value = check_score(score)
    if comment is not None:
        if not isinstance(comment, str):
            raise BadRequestError("`comment` must be a string", param="comment")
        if len(comment) > MAX_COMMENT_CHARS:
            raise BadRequestError(f"`comment` is longer than {MAX_COMMENT_CHARS} characters", param="comment")
        check_encodable(comment, "comment")
    if not isinstance(source, str) or not _SOURCE.match(source):
        raise BadRequestError("`source` must be a short lower-case name such as `user` or `judge:<model>`",
                              param="source")
    return response_id, value, comment, source


def give_feedback(router: Router, response_id: Any, score: Any, *, comment: Any = None, api_key: str | None = None,
                  source: Any = USER) -> Feedback:
    """Check, authorise and store one feedback (what ``Router.feedback`` and the proxy's route call)."""
    rid, value, text, src = check_feedback(response_id, score, comment, source)
    spec = None
    if api_key is not None and router.keys:
        spec = router.keys.lookup(api_key)
        if spec is None:
            raise AuthenticationError("invalid API key")
    record = router.ledger.request_record(rid)
    if record is None:
        raise NotFoundError(f"no response with id {rid!r} in the ledger (an id from a response of this router, "
                            "within the ledger's retention; a streamed answer is recorded when its stream ends, so "
                            "score it after that)", param="id")
    caller = spec.key_hash if spec is not None else hash_key(api_key)
    if spec is not None and record.key_hash != caller and not getattr(spec, "admin", False):
        raise PermissionDeniedError(f"response {rid!r} was made with another API key; only that key (or a key "
                                    "marked `admin: true`) may score it")
    # checked after the key: how another key's request ended (its error) is not this caller's to read
    if record.outcome in _NO_ANSWER:  # a score kept here would be dropped by the export, unseen
        how = "was refused" if record.outcome == REFUSED else "failed"
        raise NotFoundError(f"no response with id {rid!r}: that request {how} ({record.error or record.outcome}) "
                            "and got no answer to score", param="id")
    feedback = Feedback(request_id=rid, score=value, source=src, comment=text, key_hash=caller)
    router.ledger.add_feedback(feedback)
    return feedback


def combined_score(feedback: Iterable[Feedback]) -> float | None:
    """One score for a request from all its feedback (the module docstring's rule); None without any."""
    person: Feedback | None = None
    judges: dict[str, Feedback] = {}
    for fb in feedback:  # in time order; of equal times the later written counts as newer
        if not fb.source.startswith(JUDGE_PREFIX):
            if person is None or fb.ts >= person.ts:
                person = fb
        elif fb.source not in judges or fb.ts >= judges[fb.source].ts:
            judges[fb.source] = fb
    if person is not None:
        return person.score
    if judges:
        return sum(f.score for f in judges.values()) / len(judges)
    return None


__all__ = ["Feedback", "check_feedback", "combined_score", "give_feedback"]
