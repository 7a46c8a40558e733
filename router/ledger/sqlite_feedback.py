"""The SQLite ledger's feedback and stored prompts (:mod:`router.ledger.feedback`): the ``feedback`` and ``prompts``
tables of schema step 5 (:mod:`router.ledger.sqlite_schema`). A mixin of :class:`~router.ledger.sqlite.SQLiteLedger`
(its connection, lock and error translation), kept apart so the records' module stays about records."""

from __future__ import annotations

import sqlite3
import threading

from .base import LedgerRecord
from .errors import guarded
from .feedback import FEEDBACK_FIELDS, PROMPT_FIELDS, Feedback, StoredPrompt, check_delete_args, selection

_ADD_FEEDBACK = (f"INSERT INTO feedback ({', '.join(FEEDBACK_FIELDS)}) VALUES ({', '.join('?' * len(FEEDBACK_FIELDS))})"
                 " ON CONFLICT (feedback_id) DO NOTHING")
_ADD_PROMPT = (f"INSERT INTO prompts ({', '.join(PROMPT_FIELDS)}) VALUES ({', '.join('?' * len(PROMPT_FIELDS))})"
               " ON CONFLICT (request_id) DO NOTHING")


class SQLiteFeedback:
    """Feedback and prompts in the ledger's own file, under the ledger's lock."""

    _conn: sqlite3.Connection
    _lock: threading.Lock
    _read_conn: sqlite3.Connection  # for reads made while answering a request: never behind a waiting write
    _read_lock: threading.Lock
    _columns: list[str]

    @guarded("write feedback")
    def add_feedback(self, feedback: Feedback) -> None:
        with self._lock:
            self._conn.execute(_ADD_FEEDBACK, [getattr(feedback, f) for f in FEEDBACK_FIELDS])

    @guarded("read feedback")
    def feedback(self, request_id: str | None = None, since: float = 0.0,
                 until: float | None = None) -> list[Feedback]:
        where, args = selection(request_id, since, until, "?")
        sql = f"SELECT {', '.join(FEEDBACK_FIELDS)} FROM feedback WHERE {where} ORDER BY ts, id"
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
        return [Feedback(**dict(zip(FEEDBACK_FIELDS, r, strict=True))) for r in rows]

    @guarded("look up a request")
    def request_record(self, request_id: str) -> LedgerRecord | None:
        sql = (f"SELECT {', '.join(self._columns)} FROM records WHERE request_id = ? "
               "ORDER BY ts DESC, id DESC LIMIT 1")  # the (request_id, ts) index
        with self._read_lock:
            row = self._read_conn.execute(sql, (request_id,)).fetchone()
        return None if row is None else LedgerRecord(**dict(zip(self._columns, row, strict=True)))

    @guarded("store a prompt")
    def store_prompt(self, prompt: StoredPrompt) -> None:
        with self._lock:
            self._conn.execute(_ADD_PROMPT, [getattr(prompt, f) for f in PROMPT_FIELDS])

    @guarded("read stored prompts")
    def prompts(self, since: float = 0.0, until: float | None = None,
                request_id: str | None = None) -> list[StoredPrompt]:
        where, args = selection(request_id, since, until, "?")
        sql = f"SELECT {', '.join(PROMPT_FIELDS)} FROM prompts WHERE {where} ORDER BY ts, request_id"
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
        return [StoredPrompt(**dict(zip(PROMPT_FIELDS, r, strict=True))) for r in rows]

    @guarded("count stored prompts")
    def prompt_summary(self) -> tuple[int, float | None]:
        with self._lock:
            count, oldest = self._conn.execute("SELECT COUNT(*), MIN(ts) FROM prompts").fetchone()
        return int(count), oldest

    @guarded("delete stored prompts")
    def delete_prompts(self, *, before: float | None = None, request_id: str | None = None) -> int:
        before = check_delete_args(before, request_id)
        args: list[str | float]
        if request_id is not None:
            sql, args = "DELETE FROM prompts WHERE request_id = ?", [request_id]
        elif before is not None:
            sql, args = "DELETE FROM prompts WHERE ts < ?", [before]
        else:
            sql, args = "DELETE FROM prompts", []
        with self._lock:
            return int(self._conn.execute(sql, args).rowcount)


PRUNE_SQL = ("DELETE FROM feedback WHERE ts < ?", "DELETE FROM prompts WHERE ts < ?")
"""What the records' retention removes with them (run inside the prune's transaction)."""
