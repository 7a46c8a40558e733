"""The Redis ledger's feedback and stored prompts (:mod:`router.ledger.feedback`). A mixin of
:class:`~router.ledger.redis.RedisLedger` (its client, prefix and error translation).

Keys under the ledger's prefix:

* ``reqs``: each request id scored by the time of its newest record (the record script keeps it; schema step 3
  filled it for older records): ``request_record`` reads the score, then the records at that time;
* ``feedback``: feedback ids scored by time; ``feedback:data``: id -> JSON; ``feedback:byreq``: members
  ``<request id>\\0<feedback id>`` all scored 0, so one request's feedback is a lexicographic range;
* ``prompts``: request ids scored by the time the prompt was stored; ``prompts:data``: request id -> JSON.

Each write is one script (the id checked and every key written atomically), so a retried write changes nothing.
"""

from __future__ import annotations

import json
from typing import Any

from .arguments import checked_span
from .base import LedgerRecord
from .errors import guarded
from .feedback import Feedback, StoredPrompt, check_delete_args

ADD_FEEDBACK = """
if redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[3]) == 0 then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], 0, ARGV[4] .. '\\0' .. ARGV[2])
return 1
"""

STORE_PROMPT = """
if redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[3]) == 0 then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

DELETE_PROMPTS_BEFORE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for i = 1, #ids do
  redis.call('HDEL', KEYS[2], ids[i])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
return #ids
"""

DELETE_FEEDBACK_BEFORE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for i = 1, #ids do
  local data = redis.call('HGET', KEYS[2], ids[i])
  if data then
    redis.call('ZREM', KEYS[3], cjson.decode(data)['request_id'] .. '\\0' .. ids[i])
    redis.call('HDEL', KEYS[2], ids[i])
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
return #ids
"""


class RedisFeedback:
    """Feedback and prompts beside the records, shared by every process using the same server and prefix."""

    r: Any
    prefix: str

    def _feedback_keys(self) -> list[str]:
        p = self.prefix
        return [p + "feedback", p + "feedback:data", p + "feedback:byreq"]

    def _prompt_keys(self) -> list[str]:
        return [self.prefix + "prompts", self.prefix + "prompts:data"]

    @guarded("write feedback")
    def add_feedback(self, feedback: Feedback) -> None:
        data = json.dumps(feedback.as_dict(), separators=(",", ":"))
        self.r.eval(ADD_FEEDBACK, 3, *self._feedback_keys(), repr(float(feedback.ts)), feedback.feedback_id, data,
                    feedback.request_id)

    @guarded("read feedback")
    def feedback(self, request_id: str | None = None, since: float = 0.0,
                 until: float | None = None) -> list[Feedback]:
        since, until = checked_span(since, until)
        zset, data, byreq = self._feedback_keys()
        if request_id is not None:
            members = self.r.zrangebylex(byreq, b"[" + request_id.encode() + b"\0", b"(" + request_id.encode() + b"\1")
            ids = [m.rsplit(b"\0", 1)[1] for m in members]
        else:
            ids = self.r.zrangebyscore(zset, *score_window(since, until))
        found = [Feedback(**json.loads(v)) for v in (self.r.hmget(data, ids) if ids else []) if v is not None]
        return sorted(found, key=lambda f: f.ts) if request_id is not None else found

    @guarded("look up a request")
    def request_record(self, request_id: str) -> LedgerRecord | None:
        ts = self.r.zscore(self.prefix + "reqs", request_id)
        if ts is None:
            return None
        at = repr(float(ts))
        found = [r for r in map(parse_member, self.r.zrangebyscore(self.prefix + "records", at, at))
                 if r.request_id == request_id]
        return found[-1] if found else None

    @guarded("store a prompt")
    def store_prompt(self, prompt: StoredPrompt) -> None:
        data = json.dumps(prompt.as_dict(), separators=(",", ":"))
        self.r.eval(STORE_PROMPT, 2, *self._prompt_keys(), repr(float(prompt.ts)), prompt.request_id, data)

    @guarded("read stored prompts")
    def prompts(self, since: float = 0.0, until: float | None = None,
                request_id: str | None = None) -> list[StoredPrompt]:
        since, until = checked_span(since, until)
        zset, data = self._prompt_keys()
        ids = [request_id] if request_id is not None else self.r.zrangebyscore(zset, *score_window(since, until))
        return [StoredPrompt(**json.loads(v)) for v in (self.r.hmget(data, ids) if ids else []) if v is not None]

    @guarded("count stored prompts")
    def prompt_summary(self) -> tuple[int, float | None]:
        zset = self._prompt_keys()[0]
        pipe = self.r.pipeline(transaction=True)
        pipe.zcard(zset)
        pipe.zrange(zset, 0, 0, withscores=True)
        count, first = pipe.execute()
        return int(count), (float(first[0][1]) if first else None)

    @guarded("delete stored prompts")
    def delete_prompts(self, *, before: float | None = None, request_id: str | None = None) -> int:
        before = check_delete_args(before, request_id)
        zset, data = self._prompt_keys()
        if request_id is not None:
            pipe = self.r.pipeline(transaction=True)
            pipe.hdel(data, request_id)
            pipe.zrem(zset, request_id)
            return int(pipe.execute()[0])
        if before is not None:
            return int(self.r.eval(DELETE_PROMPTS_BEFORE, 2, zset, data, f"({before!r}"))
        pipe = self.r.pipeline(transaction=True)
        pipe.zcard(zset)
        pipe.delete(zset, data)
        return int(pipe.execute()[0])

    def _prune_feedback(self, older_than: float) -> None:
        """What the records' retention removes with them: feedback, stored prompts and request ids."""
        self.r.eval(DELETE_FEEDBACK_BEFORE, 3, *self._feedback_keys(), f"({older_than!r}")
        self.r.eval(DELETE_PROMPTS_BEFORE, 2, *self._prompt_keys(), f"({older_than!r}")
        self.r.zremrangebyscore(self.prefix + "reqs", "-inf", f"({older_than!r}")


def score_window(since: float, until: float | None) -> tuple[str, str]:
    """``ZRANGEBYSCORE``'s bounds for the times ``[since, until)``."""
    return repr(float(since)), "+inf" if until is None else f"({until!r}"


def parse_member(member: bytes) -> LedgerRecord:
    """A ``records`` member back into a record; one written before record ids reads back as ``legacy-<seq>``
    (the id the migration put in ``ids`` for it)."""
    seq, body = member.split(b"|", 1)
    data = json.loads(body)
    if "record_id" not in data:
        data["record_id"] = f"legacy-{int(seq)}"
    return LedgerRecord(**data)
