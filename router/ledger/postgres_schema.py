"""The PostgreSQL ledger's schema: its numbered migration steps (:mod:`router.ledger.migrations`) and the SQL
that keeps the hourly sums. Statements name tables as ``{s}.table``; ``{s}`` is the ledger's schema.

Versions (the ``meta`` table's ``schema_version``): 1, records (record ids unique), hourly summary, budgets;
2, the estimated joules, grid intensity and zone of each record; 3, ``feedback`` (append-only, ``feedback_id``
unique), ``prompts`` (kept only when the operator opts in) and an index on ``records.request_id``; 4, a partial
index of the records without a CO2e figure (``Ledger.carbon_gaps``; records with one add nothing to it).
"""

from __future__ import annotations

import re

from .migrations import Migrations, Step

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
    FROM {source} GROUP BY 1, 2, 3, 4, 5, 6, 7, 8 ORDER BY 1, 2, 3, 4, 5, 6, 7, 8"""
ADD_SUMS = f"""INSERT INTO {{s}}.summary_hourly AS h ({SUMMARY_COLS}) {_SUMS}
    ON CONFLICT ({_DIMS}) DO UPDATE SET requests = h.requests + excluded.requests,
    energy_j = h.energy_j + excluded.energy_j, input_tokens = h.input_tokens + excluded.input_tokens,
    output_tokens = h.output_tokens + excluded.output_tokens,
    latency_ms_sum = h.latency_ms_sum + excluded.latency_ms_sum, co2e_g = h.co2e_g + excluded.co2e_g"""

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
    ],
)
SCHEMA_VERSION = MIGRATIONS.latest
SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
