"""The PostgreSQL ledger's feedback and stored prompts (:mod:`router.ledger.feedback`): the ``feedback`` and
``prompts`` tables of schema step 3 (:mod:`router.ledger.postgres_schema`). A mixin of
:class:`~router.ledger.postgres.PostgresLedger` (its pool, schema and error translation)."""

from __future__ import annotations

from typing import Any

from .base import LedgerRecord
from .errors import guarded
from .feedback import FEEDBACK_FIELDS, PROMPT_FIELDS, Feedback, StoredPrompt, check_delete_args, selection
from .postgres_schema import COLUMNS


class PostgresFeedback:
    """Feedback and prompts in the ledger's schema, shared by every process using it."""

    schema: str
    _pool: Any

    @guarded("write feedback")
    def add_feedback(self, feedback: Feedback) -> None:
        sql = (f"INSERT INTO {self.schema}.feedback ({', '.join(FEEDBACK_FIELDS)}) VALUES "
               f"({', '.join(['%s'] * len(FEEDBACK_FIELDS))}) ON CONFLICT (feedback_id) DO NOTHING")
        args = [getattr(feedback, f) for f in FEEDBACK_FIELDS]
        self._pool.run(lambda c: c.execute(sql, args))

    @guarded("read feedback")
    def feedback(self, request_id: str | None = None, since: float = 0.0,
                 until: float | None = None) -> list[Feedback]:
        where, args = selection(request_id, since, until, "%s")
        sql = f"SELECT {', '.join(FEEDBACK_FIELDS)} FROM {self.schema}.feedback WHERE {where} ORDER BY ts, id"
        rows = self._pool.run(lambda c: c.execute(sql, args).fetchall())
        return [Feedback(**dict(zip(FEEDBACK_FIELDS, r, strict=True))) for r in rows]

    @guarded("look up a request")
    def request_record(self, request_id: str) -> LedgerRecord | None:
        sql = (f"SELECT {', '.join(COLUMNS)} FROM {self.schema}.records WHERE request_id = %s "
               "ORDER BY ts DESC, id DESC LIMIT 1")  # the (request_id, ts) index
        row = self._pool.run(lambda c: c.execute(sql, (request_id,)).fetchone())
        return None if row is None else LedgerRecord(**dict(zip(COLUMNS, row, strict=True)))

    @guarded("store a prompt")
    def store_prompt(self, prompt: StoredPrompt) -> None:
        sql = (f"INSERT INTO {self.schema}.prompts ({', '.join(PROMPT_FIELDS)}) VALUES "
               f"({', '.join(['%s'] * len(PROMPT_FIELDS))}) ON CONFLICT (request_id) DO NOTHING")
        args = [getattr(prompt, f) for f in PROMPT_FIELDS]
        self._pool.run(lambda c: c.execute(sql, args))

    @guarded("read stored prompts")
    def prompts(self, since: float = 0.0, until: float | None = None,
                request_id: str | None = None) -> list[StoredPrompt]:
        where, args = selection(request_id, since, until, "%s")
        sql = f"SELECT {', '.join(PROMPT_FIELDS)} FROM {self.schema}.prompts WHERE {where} ORDER BY ts, request_id"
        rows = self._pool.run(lambda c: c.execute(sql, args).fetchall())
        return [StoredPrompt(**dict(zip(PROMPT_FIELDS, r, strict=True))) for r in rows]

    @guarded("count stored prompts")
    def prompt_summary(self) -> tuple[int, float | None]:
        sql = f"SELECT COUNT(*), MIN(ts) FROM {self.schema}.prompts"
        count, oldest = self._pool.run(lambda c: c.execute(sql).fetchone())
        return int(count), oldest

    @guarded("delete stored prompts")
    def delete_prompts(self, *, before: float | None = None, request_id: str | None = None) -> int:
        before = check_delete_args(before, request_id)
        args: list[str | float] = []
        sql = f"DELETE FROM {self.schema}.prompts"
        if request_id is not None:
            sql, args = sql + " WHERE request_id = %s", [request_id]
        elif before is not None:
            sql, args = sql + " WHERE ts < %s", [before]
        return int(self._pool.run(lambda c: c.execute(sql, args).rowcount))


PRUNE_SQL = ("DELETE FROM {s}.feedback WHERE ts < %s", "DELETE FROM {s}.prompts WHERE ts < %s")
"""What the records' retention removes with them (run inside the prune's transaction)."""
