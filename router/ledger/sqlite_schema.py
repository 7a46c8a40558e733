"""The SQLite ledger's schema: its numbered migration steps and the SQL that keeps the hourly summary.

Versions (``PRAGMA user_version``; see :mod:`router.ledger.migrations` for how they are applied):

1. ``records`` and ``budgets``.
2. ``meta`` (the retention setting) and ``summary_hourly``, an hourly aggregate kept by an ``AFTER INSERT``
   trigger and back-filled from the records already there, so a report over a million records reads a few
   thousand summary rows.
3. ``records.record_id`` with a unique index: a record written twice is stored once (``INSERT ... ON CONFLICT
   DO NOTHING``, which fires no trigger, so the summary counts it once too). Records from before get the id
   ``legacy-<row id>``.
4. ``records.estimated_j`` (the joules expected before the call), ``grid_g_per_kwh`` and ``zone`` (the carbon
   intensity ``co2e_g`` was computed at, and where it applies).
5. ``feedback`` (scores of responses, append-only, ``feedback_id`` unique), ``prompts`` (the prompts an operator
   chose to keep, by request id) and an index on ``records.request_id`` (feedback finds its request's record).
6. A partial index of the records without a CO2e figure (``Ledger.carbon_gaps``: the summary counts them as 0 g,
   and every view of the total says what it leaves out); records with a figure, all the router writes, add
   nothing to it.
7. ``rollup_hourly``: the hourly sums again, by model, tier, outcome, energy source and zone only (no key, policy
   or task), plus the carbon report's sums (joules x g/kWh of the records with a CO2e figure; the records without
   one and their joules), and in ``meta`` ``rollup_upto``, the newest record id they include. ``summary_hourly``
   holds about a row per record on a ledger with many keys, policies and tasks; this one a few dozen rows an hour,
   so the dashboard's totals and series and the report's default view and carbon section over months read it
   instead. No trigger keeps it (a second per-record upsert cost every write ~15 %): record ids only grow
   (``AUTOINCREMENT``), so a read adds the records after ``rollup_upto`` (late ones in old hours too) to the rows,
   in the same statement, and the writer folds them in a few thousand at a time (:func:`fold_sql`).
8. ``holds``: the joules each budget reservation holds until it is settled (PostgreSQL's step 5), so a settlement
   sent again (a retry, a journal's replay) changes nothing. A reservation is one ``INSERT`` of its hold, made only
   where the budget's window has room, and the ``holds_reserve`` trigger adds its joules to the window's counter in
   the same statement (:data:`RESERVE`); a settlement deletes the hold and moves the counter only where it did
   (:data:`SETTLE_HOLD`, :data:`SETTLE_COUNTER`). No ``released`` column as PostgreSQL's: a SQLite reservation
   runs in the calling process, so one that failed (the write lock not had in ``request_timeout_s``) wrote nothing
   and there is nothing to give back later. A prune drops the holds of ended windows with their counters.
   Reservations made before the upgrade have no hold, so their settlements change nothing: each such call's
   estimate stays charged to the window it was made in.
9. ``holds.expires_at`` (PostgreSQL's step 7; Unix time, this host's clock, which every process using the file
   shares): a hold nobody settled by then (its process was killed during the call) no longer counts.
   ``budget_used`` leaves it out (:data:`USED`), and a reservation that finds no room gives such holds back first
   (:data:`RECLAIM`: the ``holds_reclaim`` trigger takes their joules off the counter, the holds stay at 0 J) and
   tries again; a settlement trades what its hold still holds for what the call used, so one that comes after the
   expiry counts the call in full, once. The holds there before the upgrade (and those reserved without
   ``hold_s``) have none: counted until their window ends.
"""

from __future__ import annotations

from .migrations import Migrations, Step
from .rollup import ROLLUP_UPTO, add_rollup_sql, create_rollup_sql, one_record

# the start of the hour holding ts, as an integer (SQLite's % works on integers)
BUCKET_SQL = "(CAST({t}ts AS INTEGER) - (CAST({t}ts AS INTEGER) % 3600))"

SUMMARY_COLS = (
    "bucket, model, tier, key_hash, policy, task, outcome, energy_source, requests, energy_j, input_tokens, "
    "output_tokens, latency_ms_sum, co2e_g"
)


_BUCKET = BUCKET_SQL.format(t="")
_TYPES = {"int": "INTEGER", "real": "REAL", "text": "TEXT"}
_UPTO = f"(SELECT CAST(value AS INTEGER) FROM meta WHERE key = '{ROLLUP_UPTO}')"


def rollup_sql(where: str) -> str:
    """Adds the records matching ``where`` (bound parameters allowed) to ``rollup_hourly`` as new rows."""
    return add_rollup_sql("rollup_hourly", "records", _BUCKET, where, upsert=False)


def fold_sql() -> list[str]:
    """Adds the records after ``rollup_upto`` to ``rollup_hourly`` and moves ``rollup_upto`` to the newest; run in
    one write transaction (no record can come in between)."""
    return [
        add_rollup_sql("rollup_hourly", "records", _BUCKET, f"WHERE id > {_UPTO}", upsert=True),
        f"UPDATE meta SET value = COALESCE((SELECT MAX(id) FROM records), 0) WHERE key = '{ROLLUP_UPTO}'",
    ]


UNFOLDED_SQL = f"SELECT COALESCE((SELECT MAX(id) FROM records), 0) - {_UPTO}"
"""How many record ids came after ``rollup_upto`` (an upper bound of the records not yet in ``rollup_hourly``)."""


def rollup_source(lo: float, hi: float | None) -> tuple[str, list[float]]:
    """A table expression of ``rollup_hourly``'s rows for the hours ``lo <= bucket < hi`` (whole hours) and, a row
    each, the records after ``rollup_upto`` in them: read in one statement, so from one snapshot, they sum every
    record exactly once."""
    until = "" if hi is None else " AND bucket < ?"
    # +ts: no time index for the records after rollup_upto, a few thousand found by their ids
    source = (f"(SELECT * FROM rollup_hourly WHERE bucket >= ?{until} UNION ALL SELECT {one_record(_BUCKET)} "
              f"FROM records WHERE id > {_UPTO} AND +ts >= ?{until.replace('bucket', '+ts')})")
    return source, [lo, lo] if hi is None else [lo, hi, lo, hi]


def summarise_sql(where: str) -> str:
    """Adds the records matching ``where`` (bound parameters allowed) to ``summary_hourly`` as new rows."""
    return f"""INSERT INTO summary_hourly SELECT {BUCKET_SQL.format(t="")} AS b, model, tier,
        COALESCE(key_hash, ''), COALESCE(policy, ''), COALESCE(task, ''), outcome, energy_source,
        COUNT(*), SUM(energy_j), SUM(COALESCE(input_tokens, 0)), SUM(COALESCE(output_tokens, 0)),
        SUM(COALESCE(latency_ms, 0)), SUM(COALESCE(co2e_g, 0))
        FROM records {where} GROUP BY 1, 2, 3, 4, 5, 6, 7, 8"""


# Args: id, budget, window start, joules, limit, expires_at (Unix time; NULL: until the window ends). One statement,
# which SQLite applies under the write lock from its first read: the hold goes in only where the window's counter
# (none yet: 0) leaves room, and the trigger adds its joules to the counter (or creates it). One row changed: the
# reservation holds. The counter still includes expired holds: where it finds no room, :data:`RECLAIM` gives them
# back and the reservation runs again, so the common case (room) is this one statement.
RESERVE = """INSERT INTO holds (id, budget, window_start, joules, expires_at) SELECT ?1, ?2, ?3, ?4, ?6
    WHERE COALESCE((SELECT used_j FROM budgets WHERE budget = ?2 AND window_start = ?3), 0) + ?4 <= ?5"""

RECLAIM = """UPDATE holds SET joules = 0
    WHERE budget = ? AND window_start = ? AND expires_at < ? AND joules <> 0"""
"""Args: budget, window start, now. Gives back what the holds past their expiry still hold (the calls they were made
for cannot be running: their process was killed): the ``holds_reclaim`` trigger takes each one's joules off the
window's counter in the same statement, and the hold stays at 0 J, so a settlement arriving later counts the call
in full. Rows changed: how many were given back."""

USED = """SELECT b.used_j - COALESCE((SELECT SUM(h.joules) FROM holds AS h WHERE h.budget = b.budget
        AND h.window_start = b.window_start AND h.expires_at < ?3 AND h.joules <> 0), 0)
    FROM budgets AS b WHERE b.budget = ?1 AND b.window_start = ?2"""
"""Args: budget, window start, now. The counter without what expired holds still hold (what :data:`RECLAIM` gives
back)."""

SETTLE_HOLD = "DELETE FROM holds WHERE id = ? RETURNING joules"
"""Arg: the reservation's id. A settled reservation's hold goes, returning what it still held (0 J where it expired
and was given back: :data:`RECLAIM`); no row (settled already, pruned with its window, or made before holds
existed): :data:`SETTLE_COUNTER` is not run, so the settlement changes nothing."""

SETTLE_COUNTER = "UPDATE budgets SET used_j = MAX(0, used_j + ?) WHERE budget = ? AND window_start = ?"
"""Args: the change (actual - what the hold still held), budget, window start; run after :data:`SETTLE_HOLD` deleted
the hold, in the same transaction."""

MIGRATIONS: Migrations[list[str]] = Migrations(
    "SQLite",
    [
        Step(
            1,
            "records and budgets",
            [
                """CREATE TABLE IF NOT EXISTS records (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    ts REAL NOT NULL, request_id TEXT NOT NULL, model TEXT NOT NULL, tier TEXT NOT NULL,
                    reason TEXT, input_tokens INTEGER, output_tokens INTEGER, latency_ms REAL,
                    energy_j REAL NOT NULL, energy_source TEXT NOT NULL, policy TEXT, task TEXT,
                    outcome TEXT NOT NULL, key_hash TEXT, error TEXT, attempt INTEGER, co2e_g REAL)""",
                "CREATE INDEX IF NOT EXISTS records_ts ON records(ts)",
                "CREATE INDEX IF NOT EXISTS records_model_ts ON records(model, ts)",
                """CREATE TABLE IF NOT EXISTS budgets (
                    budget TEXT NOT NULL, window_start REAL NOT NULL, used_j REAL NOT NULL DEFAULT 0,
                    PRIMARY KEY (budget, window_start))""",
            ],
        ),
        Step(
            2,
            "meta (retention) and the trigger-kept hourly summary",
            [
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
                """CREATE TABLE IF NOT EXISTS summary_hourly (
                    bucket INTEGER NOT NULL, model TEXT NOT NULL, tier TEXT NOT NULL, key_hash TEXT NOT NULL,
                    policy TEXT NOT NULL, task TEXT NOT NULL, outcome TEXT NOT NULL, energy_source TEXT NOT NULL,
                    requests INTEGER NOT NULL, energy_j REAL NOT NULL, input_tokens INTEGER NOT NULL,
                    output_tokens INTEGER NOT NULL, latency_ms_sum REAL NOT NULL, co2e_g REAL NOT NULL,
                    PRIMARY KEY (bucket, model, tier, key_hash, policy, task, outcome, energy_source)) WITHOUT ROWID""",
                f"""INSERT INTO summary_hourly SELECT {BUCKET_SQL.format(t="")} AS b, model, tier,
                    COALESCE(key_hash, ''), COALESCE(policy, ''), COALESCE(task, ''), outcome, energy_source,
                    COUNT(*), SUM(energy_j), SUM(COALESCE(input_tokens, 0)), SUM(COALESCE(output_tokens, 0)),
                    SUM(COALESCE(latency_ms, 0)), SUM(COALESCE(co2e_g, 0))
                    FROM records GROUP BY 1, 2, 3, 4, 5, 6, 7, 8""",
                f"""CREATE TRIGGER IF NOT EXISTS records_summary AFTER INSERT ON records BEGIN
                    INSERT INTO summary_hourly VALUES ({BUCKET_SQL.format(t="NEW.")}, NEW.model, NEW.tier,
                        COALESCE(NEW.key_hash, ''), COALESCE(NEW.policy, ''), COALESCE(NEW.task, ''), NEW.outcome,
                        NEW.energy_source, 1, NEW.energy_j, COALESCE(NEW.input_tokens, 0),
                        COALESCE(NEW.output_tokens, 0), COALESCE(NEW.latency_ms, 0), COALESCE(NEW.co2e_g, 0))
                    ON CONFLICT DO UPDATE SET requests = requests + 1, energy_j = energy_j + excluded.energy_j,
                        input_tokens = input_tokens + excluded.input_tokens,
                        output_tokens = output_tokens + excluded.output_tokens,
                        latency_ms_sum = latency_ms_sum + excluded.latency_ms_sum, co2e_g = co2e_g + excluded.co2e_g;
                END""",
            ],
        ),
        Step(
            3,
            "record ids, unique (a record written twice is stored once)",
            [
                "ALTER TABLE records ADD COLUMN record_id TEXT",
                "UPDATE records SET record_id = 'legacy-' || id WHERE record_id IS NULL",
                "CREATE UNIQUE INDEX IF NOT EXISTS records_record_id ON records(record_id)",
            ],
        ),
        Step(
            4,
            "estimated joules, grid intensity and zone per record",
            [
                "ALTER TABLE records ADD COLUMN estimated_j REAL",
                "ALTER TABLE records ADD COLUMN grid_g_per_kwh REAL",
                "ALTER TABLE records ADD COLUMN zone TEXT",
            ],
        ),
        Step(
            5,
            "feedback, stored prompts (opt-in), records by request id",
            [
                """CREATE TABLE IF NOT EXISTS feedback (
                    id INTEGER PRIMARY KEY AUTOINCREMENT, feedback_id TEXT NOT NULL, request_id TEXT NOT NULL,
                    ts REAL NOT NULL, score REAL NOT NULL, source TEXT NOT NULL, comment TEXT, key_hash TEXT)""",
                "CREATE UNIQUE INDEX IF NOT EXISTS feedback_feedback_id ON feedback(feedback_id)",
                "CREATE INDEX IF NOT EXISTS feedback_request ON feedback(request_id)",
                "CREATE INDEX IF NOT EXISTS feedback_ts ON feedback(ts)",
                """CREATE TABLE IF NOT EXISTS prompts (
                    request_id TEXT PRIMARY KEY, ts REAL NOT NULL, prompt TEXT NOT NULL, messages TEXT NOT NULL,
                    answer TEXT, model TEXT, key_hash TEXT)""",
                "CREATE INDEX IF NOT EXISTS prompts_ts ON prompts(ts)",
                "CREATE INDEX IF NOT EXISTS records_request_id ON records(request_id, ts)",
            ],
        ),
        Step(
            6,
            "records without a CO2e figure, by time",
            ["CREATE INDEX IF NOT EXISTS records_no_co2e ON records(ts) WHERE co2e_g IS NULL"],
        ),
        Step(
            7,
            "the hourly rollup by model, tier, outcome, energy source and zone",
            [
                create_rollup_sql("rollup_hourly", _TYPES, " WITHOUT ROWID"),
                rollup_sql(""),
                f"INSERT INTO meta (key, value) SELECT '{ROLLUP_UPTO}', COALESCE(MAX(id), 0) FROM records",
            ],
        ),
        Step(
            8,
            "holds: each budget reservation until it is settled (a settlement sent again changes nothing)",
            [
                # no index on (budget, window_start), which a prune deletes by: the table keeps only reservations
                # in flight and those of processes that died, and an index would cost every reservation its upkeep
                """CREATE TABLE IF NOT EXISTS holds (
                    id TEXT PRIMARY KEY, budget TEXT NOT NULL, window_start REAL NOT NULL, joules REAL NOT NULL)
                    WITHOUT ROWID""",
                """CREATE TRIGGER IF NOT EXISTS holds_reserve AFTER INSERT ON holds BEGIN
                    INSERT INTO budgets (budget, window_start, used_j) VALUES (NEW.budget, NEW.window_start, NEW.joules)
                    ON CONFLICT (budget, window_start) DO UPDATE SET used_j = used_j + excluded.used_j;
                END""",
            ],
        ),
        Step(
            9,
            "when each hold stops counting (a call's deadline and a margin: its process may have been killed)",
            [
                # NULL for the holds already there (and a reservation given no hold_s): counted until their window
                # ends, as before. No index: the table keeps only the reservations in flight and those of processes
                # that died, which budget reads and refused reservations look through, where an index would cost
                # every reservation its upkeep
                "ALTER TABLE holds ADD COLUMN expires_at REAL",
                """CREATE TRIGGER IF NOT EXISTS holds_reclaim AFTER UPDATE OF joules ON holds BEGIN
                    UPDATE budgets SET used_j = MAX(0, used_j - (OLD.joules - NEW.joules))
                    WHERE budget = NEW.budget AND window_start = NEW.window_start;
                END""",
            ],
        ),
    ],
)

SCHEMA_VERSION = MIGRATIONS.latest
