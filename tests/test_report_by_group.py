"""`router ledger report --by key|policy|task` on many hours: the store sums each group over the range, so the
report reads a row per group (and the series a row per hour and model), not the hourly summary's row per hour and
key, which held 564 MB and took 13 s on 1.5M records; its figures stay those of the per-hour sums."""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path

import pytest

from router.cards import load_cards
from router.config import embedded_dir
from router.ledger import LedgerRecord, SQLiteLedger
from router.ledger.base import SummaryRow
from router.ledger.report import build_report

T0 = 1_700_006_400.0  # a UTC midnight
HOURS = 72
KEYS = [f"key-{i:016x}" for i in range(6)]


class RowCountingLedger(SQLiteLedger):
    """A spy: the real SQLite ledger, counting the summary rows each read hands to the report."""

    rows_read = 0

    def summary(self, *args, **kwargs) -> list[SummaryRow]:  # type: ignore[no-untyped-def]
        rows = super().summary(*args, **kwargs)
        self.rows_read += len(rows)
        return rows

    def summary_totals(self, *args, **kwargs) -> list[SummaryRow]:  # type: ignore[no-untyped-def]
        rows = super().summary_totals(*args, **kwargs)
        self.rows_read += len(rows)
        return rows


def _ledger(path: Path) -> RowCountingLedger:
    led = RowCountingLedger(path)
    rng = random.Random(3)
    models = [("smollm2-135m", "small"), ("gemma3-270m", "large"), ("sentiment-onnx", "specialist")]
    recs = []
    for i in range(HOURS * 30):
        model, tier = models[i % 3]
        outcome = rng.choice(("ok", "ok", "ok", "escalated", "error", "rejected"))
        recs.append(LedgerRecord(
            request_id=f"r{i}", model=model, tier=tier, energy_j=0.0 if outcome == "rejected" else rng.uniform(1, 9),
            energy_source=rng.choice(("estimated:cpu-time", "measured:rapl")), outcome=outcome,  # type: ignore[arg-type]
            reason="test", input_tokens=rng.randint(5, 90), output_tokens=rng.randint(0, 60),
            latency_ms=rng.uniform(5, 900), policy=rng.choice(("balanced", "eco")), task=rng.choice(("chat", "qa")),
            key_hash=rng.choice(KEYS), co2e_g=None if i % 7 == 0 else 0.001 * i, ts=T0 + i * 120.0,
        ))  # fmt: skip
    led.record_many(recs)
    return led


@pytest.mark.parametrize("by", ["key", "policy", "task"])
def test_report_by_a_fine_group_reads_a_row_per_group_not_per_hour(tmp_path: Path, by: str) -> None:
    led = _ledger(tmp_path / "ledger.sqlite3")
    cards = load_cards(embedded_dir("models"))
    since, until = T0 + 1800.0, T0 + (HOURS - 1) * 3600 + 900.0  # partial hours at both ends
    hourly = led.summary(since, until, dims=("model", "outcome", "energy_source",
                                               {"key": "key_hash"}.get(by, by)))
    per_hour_model = len(led.summary(since, until, dims=("model", "outcome", "energy_source")))
    led.rows_read = 0
    rep = build_report(led, cards, by=by, since=since, until=until)
    groups = len(rep.rows) * 3 * 4 * 2  # models x outcomes x energy sources, at most, per group
    # the per-hour rows by group were read whole before (len(hourly)); now a row per group and the series' rows
    assert led.rows_read <= groups + per_hour_model < len(hourly), (led.rows_read, groups, per_hour_model, len(hourly))

    # the same report as summing the per-hour rows (figures to 1e-12: the store adds them in another order)
    class PerHour:
        def summary(self, *_a: object, **_k: object) -> list[SummaryRow]:
            return [dataclasses.replace(r) for r in hourly]

        summary_totals = summary  # the report sums the rows of each group itself, as it did from the hourly rows

        def carbon_gap_rows(self, *a: object, **k: object) -> list[SummaryRow]:
            return led.carbon_gap_rows(*a, **k)  # type: ignore[arg-type]

    want = build_report(PerHour(), cards, by=by, since=since, until=until)  # type: ignore[arg-type]
    assert [r.group for r in rep.rows] == [r.group for r in want.rows]
    for got_row, want_row in zip([*rep.rows, rep.total], [*want.rows, want.total], strict=True):
        for field in dataclasses.fields(got_row):
            a, b = getattr(got_row, field.name), getattr(want_row, field.name)
            assert a == b if isinstance(a, int | str) else math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12), field
    assert len(rep.series) == len(want.series)
    for p, q in zip(rep.series, want.series, strict=True):
        assert p["t"] == q["t"] and math.isclose(p["energy_j"], q["energy_j"], rel_tol=1e-12)
        assert math.isclose(p["counterfactual_j"], q["counterfactual_j"], rel_tol=1e-12, abs_tol=1e-12)
    led.close()
