"""The PostgreSQL ledger's schema: its numbered migration steps (:mod:`router.ledger.migrations`), the SQL
that keeps the hourly sums, and the statements that reserve, settle and release budget. Statements name tables as
``{s}.table``; ``{s}`` is the ledger's schema.

Versions (the ``meta`` table's ``schema_version``): 1, records (record ids unique), hourly summary, budgets;
2, the estimated joules, grid intensity and zone of each record; 3, ``feedback`` (append-only, ``feedback_id``
unique), ``prompts`` (kept only when the operator opts in) and an index on ``records.request_id``; 4, a partial
index of the records without a CO2e figure (``Ledger.carbon_gaps``; records with one add nothing to it); 5,
``holds``: the joules each budget reservation holds until it is settled, or ``released`` where its client gave up
on it (the ledger's *Timeouts*); 6, ``rollup_hourly`` (:mod:`router.ledger.rollup`) and the ``xact`` of each
record, the transaction that wrote it; 7, each hold's ``expires_at`` (server time; NULL: until its window ends),
after which it no longer counts (``RECLAIM``, ``USED``), and a partial index of the holds still holding.

``rollup_hourly`` (step 6) says which records it includes by the transaction that wrote them, not by record id: ids
come from a sequence when a row is inserted, so with writers on several hosts a transaction still in progress can
hold an id below one another transaction already committed, and a fold up to the highest visible id would skip it
for good. Each record's ``xact`` is its transaction's id (``pg_current_xact_id()``, 64 bits, never wraps; the
column's default, so writers of any version set it), and ``meta``'s ``rollup_upto`` is X: the rollup includes
every record with ``xact < X`` (or none, those it was filled with on upgrade), and none with ``xact >= X``. A fold
takes X from its own snapshot's xmin (the oldest transaction still in progress; every one below it has ended, so
all their records are visible to the fold and no such record can come later) and adds the records with
``old X <= xact < new X``, moving X in the same transaction; folds, prunes and rebuilds take turns (an advisory
lock). A read adds the records with ``xact >= X`` to the rows in one statement, so from one snapshot, in which a
fold has either committed both its sums and its X or neither: every record is counted exactly once. A transaction
left open that holds a transaction id (one that wrote anything, anywhere on the server: transaction ids are the
cluster's; a read-only one does not) holds X back meanwhile, so reads sum more records; the figures stay exact.
"""

from __future__ import annotations

import math
import re

from .base import LedgerRecord
from .migrations import Migrations, Step
from .rollup import ROLLUP_UPTO, add_rollup_sql, create_rollup_sql, one_record

COLUMNS = [
    "ts", "request_id", "model", "tier", "reason", "input_tokens", "output_tokens", "latency_ms",
    "energy_j", "energy_source", "policy", "task", "outcome", "key_hash", "error", "attempt", "co2e_g", "record_id",
    "estimated_j", "grid_g_per_kwh", "zone",
]  # fmt: skip
LARGEST_INSERT = 256
SUMMARY_COLS = (
    "bucket, model, tier, key_hash, policy, task, outcome, energy_source, requests, energy_j, input_tokens, "
    "output_tokens, latency_ms_sum, co2e_g"
)
_DIMS = "bucket, model, tier, key_hash, policy, task, outcome, energy_source"
_SUMS = """SELECT (floor(ts / 3600) * 3600)::bigint, model, tier, COALESCE(key_hash, ''), COALESCE(policy, ''),
    COALESCE(task, ''), outcome, energy_source, count(*), sum(energy_j), sum(COALESCE(input_tokens, 0)),
    sum(COALESCE(output_tokens, 0)), sum(COALESCE(latency_ms, 0)), sum(COALESCE(co2e_g, 0))
    FROM {source} GROUP BY 1, 2, 3, 4, 5, 6, 7, 8 ORDER BY 1, model COLLATE "C", tier COLLATE "C",
    COALESCE(key_hash, '') COLLATE "C", COALESCE(policy, '') COLLATE "C", COALESCE(task, '') COLLATE "C",
    outcome COLLATE "C", energy_source COLLATE "C" """


def summary_lock_order(rec: LedgerRecord) -> tuple[float, str, str, str, str, str, str, str]:
    """The order in which :data:`ADD_SUMS` locks a record's ``summary_hourly`` row (byte order, as ``COLLATE "C"``
    and Python's ``str`` compare). A batch too big for one statement is written sorted by it, so every writer locks
    the rows it shares with another in the same order across its statements, and none waits on a row the other
    holds while holding one the other waits on (a deadlock, which PostgreSQL breaks by failing one of them)."""
    return (math.floor(rec.ts / 3600) * 3600, rec.model, rec.tier, rec.key_hash or "", rec.policy or "",
            rec.task or "", rec.outcome, rec.energy_source)


ADD_SUMS = f"""INSERT INTO {{s}}.summary_hourly AS h ({SUMMARY_COLS}) {_SUMS}
    ON CONFLICT ({_DIMS}) DO UPDATE SET requests = h.requests + excluded.requests,
    energy_j = h.energy_j + excluded.energy_j, input_tokens = h.input_tokens + excluded.input_tokens,
    output_tokens = h.output_tokens + excluded.output_tokens,
    latency_ms_sum = h.latency_ms_sum + excluded.latency_ms_sum, co2e_g = h.co2e_g + excluded.co2e_g"""

ROLLUP_BUCKET = "(floor(ts / 3600) * 3600)::bigint"
_UPTO = f"(SELECT value::bigint FROM {{s}}.meta WHERE key = '{ROLLUP_UPTO}')"
_XMIN = "pg_snapshot_xmin(pg_current_snapshot())::text::bigint"  # this statement's snapshot: read in the same one

ROLLUP_LOCK = "SELECT pg_advisory_xact_lock(hashtext('router-rollup:{s}'))"
"""Taken by a prune or rebuild of ``rollup_hourly`` for its transaction: folds wait, or skip a turn."""
TRY_ROLLUP_LOCK = "SELECT pg_try_advisory_xact_lock(hashtext('router-rollup:{s}'))"

FOLD = f"""WITH added AS ({add_rollup_sql("{s}.rollup_hourly", "{s}.records", ROLLUP_BUCKET,
        f"WHERE xact >= {_UPTO} AND xact < {_XMIN}", upsert=True)})
    UPDATE {{s}}.meta SET value = GREATEST(value::bigint, {_XMIN})::text WHERE key = '{ROLLUP_UPTO}'"""
"""Adds the records whose transactions ended before this statement's snapshot, and not yet in ``rollup_hourly``,
and moves ``rollup_upto`` past them; run it holding :data:`TRY_ROLLUP_LOCK`."""

UNFOLDED = f"SELECT count(*) FROM (SELECT 1 FROM {{s}}.records WHERE xact >= {_UPTO} LIMIT %s) AS new"

FOLDED_WHERE = f"(xact IS NULL OR xact < {_UPTO})"
"""The records in ``rollup_hourly`` (prunes and rebuilds, holding :data:`ROLLUP_LOCK`, sum only those again)."""


def rollup_source(s: str, lo: int, hi: int | None) -> tuple[str, list[int]]:
    """A table expression of ``rollup_hourly``'s rows for the hours ``lo <= bucket < hi`` (whole hours) and, a row
    each, the records not yet in it in those hours: one statement, one snapshot, every record once."""
    until = "" if hi is None else " AND bucket < %s"
    new = f"xact >= {_UPTO.format(s=s)} AND ts >= %s{until.replace('bucket', 'ts')}"  # the xact index
    source = (f"(SELECT * FROM {s}.rollup_hourly WHERE bucket >= %s{until} UNION ALL "
              f"SELECT {one_record(ROLLUP_BUCKET)} FROM {s}.records WHERE {new}) AS rolled")
    return source, [lo, lo] if hi is None else [lo, hi, lo, hi]


NOW_SQL = "extract(epoch FROM clock_timestamp())::double precision"
"""The server's clock: a hold's expiry is set and read by it, never by the hosts' clocks, which may differ."""

# Args by name: id, budget, start, joules, limit, hold_s (seconds the hold counts unsettled; NULL: until its
# window ends, which a prune ends). True where the reservation holds its joules. A hold of its id
# already there is this reservation's, from a try before a connection broke (True again, nothing added), or the
# tombstone of its release (nothing held). A tombstone that commits while this statement waits on the budget's row
# (locked by another transaction) makes the hold's INSERT fail on the id, unique, and with it the whole statement.
RESERVE = """WITH prior AS (SELECT released FROM {s}.holds WHERE id = %(id)s),
    counter AS (INSERT INTO {s}.budgets AS b (budget, window_start, used_j)
        SELECT %(budget)s, %(start)s, %(joules)s
        WHERE %(joules)s <= %(limit)s AND NOT EXISTS (SELECT 1 FROM prior)
        ON CONFLICT (budget, window_start) DO UPDATE SET used_j = b.used_j + excluded.used_j
        WHERE b.used_j + excluded.used_j <= %(limit)s RETURNING 1),
    hold AS (INSERT INTO {s}.holds (id, budget, window_start, joules, expires_at)
        SELECT %(id)s, %(budget)s, %(start)s, %(joules)s, """ + NOW_SQL + """ + %(hold_s)s FROM counter RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM hold) OR EXISTS (SELECT 1 FROM prior WHERE NOT released)"""

# Args: id, the joules the call used, budget, window start. The hold goes: a settled reservation is never released.
# The counter trades what the hold still holds (0 where it expired: RECLAIM) for what the call used. Only a
# reservation whose hold is there is settled: once it is gone (settled already, or pruned with its window) or
# released, a settlement sent again (a retry, a journal's replay) changes nothing.
SETTLE = """WITH settled AS (DELETE FROM {s}.holds WHERE id = %s AND NOT released RETURNING joules)
    UPDATE {s}.budgets SET used_j = GREATEST(0, used_j + %s - (SELECT joules FROM settled))
    WHERE budget = %s AND window_start = %s AND EXISTS (SELECT 1 FROM settled)"""

# Args by name: budget, start. Gives back what the holds past their expiry still hold (the calls they were made for
# cannot be running: their process was killed) and leaves each at 0 J, so a settlement arriving later counts the
# call in full. Run where a reservation found no room, then the reservation again: the common case adds no work.
# Locks the holds before the counter, as a settlement and a release do.
RECLAIM = """WITH expired AS (SELECT id, joules FROM {s}.holds
        WHERE expires_at < """ + NOW_SQL + """ AND NOT released AND joules <> 0
        AND budget = %(budget)s AND window_start = %(start)s FOR UPDATE),
    zeroed AS (UPDATE {s}.holds AS h SET joules = 0 FROM expired AS e WHERE h.id = e.id RETURNING e.joules)
    UPDATE {s}.budgets SET used_j = GREATEST(0, used_j - (SELECT sum(joules) FROM zeroed))
    WHERE budget = %(budget)s AND window_start = %(start)s AND EXISTS (SELECT 1 FROM zeroed)"""

# Args by name: budget, start. The counter without what expired holds still hold (what RECLAIM gives back).
USED = """SELECT b.used_j - COALESCE((SELECT sum(h.joules) FROM {s}.holds AS h WHERE h.expires_at < """ + NOW_SQL + """
        AND NOT h.released AND h.joules <> 0 AND h.budget = b.budget AND h.window_start = b.window_start), 0)
    FROM {s}.budgets AS b WHERE b.budget = %(budget)s AND b.window_start = %(start)s"""

# Args: id, budget, window start of a reservation its client gave up on (it may run after this). Gives back what its
# hold holds, once, and leaves the hold released, or a released one (0 J) as a tombstone where there is none yet,
# so the result is the same in whichever order the two run. Only a hold gives anything back: a release that leaves
# a tombstone never waits on the budget's row, which the reservation it overtook may hold while it waits on the id.
RELEASE = """WITH released AS (
        INSERT INTO {s}.holds AS h (id, budget, window_start, joules, released) VALUES (%s, %s, %s, 0, TRUE)
        ON CONFLICT (id) DO UPDATE SET released = TRUE WHERE NOT h.released
        RETURNING h.budget, h.window_start, h.joules)
    UPDATE {s}.budgets AS b SET used_j = GREATEST(0, b.used_j - r.joules) FROM released AS r
    WHERE b.budget = r.budget AND b.window_start = r.window_start AND r.joules <> 0"""

MIGRATIONS: Migrations[list[str]] = Migrations(
    "PostgreSQL",
    [
        Step(
            1,
            "records (record ids unique), hourly summary, budgets",
            [
                """CREATE TABLE IF NOT EXISTS {s}.records (
                    id BIGSERIAL PRIMARY KEY, record_id TEXT NOT NULL,
                    ts DOUBLE PRECISION NOT NULL, request_id TEXT NOT NULL, model TEXT NOT NULL, tier TEXT NOT NULL,
                    reason TEXT, input_tokens INTEGER, output_tokens INTEGER, latency_ms DOUBLE PRECISION,
                    energy_j DOUBLE PRECISION NOT NULL, energy_source TEXT NOT NULL, policy TEXT, task TEXT,
                    outcome TEXT NOT NULL, key_hash TEXT, error TEXT, attempt INTEGER, co2e_g DOUBLE PRECISION)""",
                "CREATE UNIQUE INDEX IF NOT EXISTS records_record_id ON {s}.records (record_id)",
                "CREATE INDEX IF NOT EXISTS records_ts ON {s}.records (ts, id)",
                "CREATE INDEX IF NOT EXISTS records_model_ts ON {s}.records (model, ts)",
                """CREATE TABLE IF NOT EXISTS {s}.summary_hourly (
                    bucket BIGINT NOT NULL, model TEXT NOT NULL, tier TEXT NOT NULL, key_hash TEXT NOT NULL,
                    policy TEXT NOT NULL, task TEXT NOT NULL, outcome TEXT NOT NULL, energy_source TEXT NOT NULL,
                    requests BIGINT NOT NULL, energy_j DOUBLE PRECISION NOT NULL, input_tokens BIGINT NOT NULL,
                    output_tokens BIGINT NOT NULL, latency_ms_sum DOUBLE PRECISION NOT NULL,
                    co2e_g DOUBLE PRECISION NOT NULL,
                    PRIMARY KEY (bucket, model, tier, key_hash, policy, task, outcome, energy_source))""",
                """CREATE TABLE IF NOT EXISTS {s}.budgets (
                    budget TEXT NOT NULL, window_start DOUBLE PRECISION NOT NULL,
                    used_j DOUBLE PRECISION NOT NULL DEFAULT 0, PRIMARY KEY (budget, window_start))""",
            ],
        ),
        Step(
            2,
            "estimated joules, grid intensity and zone per record",
            [
                "ALTER TABLE {s}.records ADD COLUMN IF NOT EXISTS estimated_j DOUBLE PRECISION",
                "ALTER TABLE {s}.records ADD COLUMN IF NOT EXISTS grid_g_per_kwh DOUBLE PRECISION",
                "ALTER TABLE {s}.records ADD COLUMN IF NOT EXISTS zone TEXT",
            ],
        ),
        Step(
            3,
            "feedback, stored prompts (opt-in), records by request id",
            [
                """CREATE TABLE IF NOT EXISTS {s}.feedback (
                    id BIGSERIAL PRIMARY KEY, feedback_id TEXT NOT NULL, request_id TEXT NOT NULL,
                    ts DOUBLE PRECISION NOT NULL, score DOUBLE PRECISION NOT NULL, source TEXT NOT NULL,
                    comment TEXT, key_hash TEXT)""",
                "CREATE UNIQUE INDEX IF NOT EXISTS feedback_feedback_id ON {s}.feedback (feedback_id)",
                "CREATE INDEX IF NOT EXISTS feedback_request ON {s}.feedback (request_id)",
                "CREATE INDEX IF NOT EXISTS feedback_ts ON {s}.feedback (ts)",
                """CREATE TABLE IF NOT EXISTS {s}.prompts (
                    request_id TEXT PRIMARY KEY, ts DOUBLE PRECISION NOT NULL, prompt TEXT NOT NULL,
                    messages TEXT NOT NULL, answer TEXT, model TEXT, key_hash TEXT)""",
                "CREATE INDEX IF NOT EXISTS prompts_ts ON {s}.prompts (ts)",
                "CREATE INDEX IF NOT EXISTS records_request_id ON {s}.records (request_id, ts)",
            ],
        ),
        Step(
            4,
            "records without a CO2e figure, by time",
            ["CREATE INDEX IF NOT EXISTS records_no_co2e ON {s}.records (ts) WHERE co2e_g IS NULL"],
        ),
        Step(
            5,
            "holds: each budget reservation until it is settled, and releases of those given up on",
            # no index on (budget, window_start), which a prune deletes by: the table keeps only reservations in
            # flight and the few given up on, and an index would cost every reservation and settlement its upkeep
            ["""CREATE TABLE IF NOT EXISTS {s}.holds (
                id TEXT PRIMARY KEY, budget TEXT NOT NULL, window_start DOUBLE PRECISION NOT NULL,
                joules DOUBLE PRECISION NOT NULL, released BOOLEAN NOT NULL DEFAULT FALSE)"""],
        ),
        Step(
            6,
            "the hourly rollup by model, tier, outcome, energy source and zone; each record's transaction",
            [
                # the ALTERs lock the records until this commits, after the writers in flight: the records without
                # an xact are then all there, summed below; every later one gets its writer's xact by default
                "ALTER TABLE {s}.records ADD COLUMN IF NOT EXISTS xact BIGINT",
                "ALTER TABLE {s}.records ALTER COLUMN xact SET DEFAULT pg_current_xact_id()::text::bigint",
                "CREATE INDEX IF NOT EXISTS records_xact ON {s}.records (xact) WHERE xact IS NOT NULL",
                create_rollup_sql("{s}.rollup_hourly", {"int": "BIGINT", "real": "DOUBLE PRECISION", "text": "TEXT"}),
                add_rollup_sql("{s}.rollup_hourly", "{s}.records", ROLLUP_BUCKET, "WHERE xact IS NULL", upsert=False),
                # 0, not this transaction's xact: one that began before it may still write a record after it
                f"INSERT INTO {{s}}.meta (key, value) VALUES ('{ROLLUP_UPTO}', '0') ON CONFLICT (key) DO NOTHING",
            ],
        ),
        Step(
            7,
            "when each hold stops counting (a call's deadline and a margin: its process may have been killed)",
            [
                "ALTER TABLE {s}.holds ADD COLUMN IF NOT EXISTS expires_at DOUBLE PRECISION",
                # only the holds still holding: budget reads and refused reservations look for expired ones here
                "CREATE INDEX IF NOT EXISTS holds_expiry ON {s}.holds (expires_at) WHERE NOT released AND joules <> 0",
            ],
        ),
    ],
)
SCHEMA_VERSION = MIGRATIONS.latest
SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
