"""Ledger reports: totals by a dimension, carbon, the energy saved against an always-large counterfactual,
and a plot over time. Everything is computed from the ledger's hourly summaries, so a report over a million
records reads a few thousand rows.

The counterfactual is an **estimate**: for every answered request (outcome ``ok`` or ``cancelled``) it takes
the joules the largest callable model's card profile gives for the same input and output tokens (the large
model might have written more or fewer tokens; we cannot know). Records answered by that model count at what
they actually used. Escalated attempts, errors and rejections add their real joules to the actual side and
nothing to the counterfactual, because the always-large world would not have made them. ``requests`` and the
mean latency are over model calls; a ``rejected`` record (a model skipped or a request refused for its budget,
0 J) is counted in ``rejected`` instead, as every view of the ledger counts it.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .._dates import utc_minute
from ..cards import ModelCard
from ..energy.carbon import (
    DEFAULT_GRID_G_PER_KWH,
    KETTLE_BOIL_SOURCE,
    PHONE_CHARGE_SOURCE,
    Equivalents,
    equivalents,
    format_joules,
    missing_co2e_note,
    recorded_equivalents,
)
from ..types import TIER_ORDER
from .arguments import GROUPS, checked_group
from .base import REFUSED, SUMMARY_DIMS, Ledger, SummaryRow, group_dims, group_gaps, group_value
from .rollup import ROLLUP_DIMS

ANSWERED = ("ok", "cancelled")
REPORT_GROUPS = GROUPS


def counterfactual_card(cards: dict[str, ModelCard], name: str | None = None) -> ModelCard | None:
    """The model an always-large router would call: ``name`` if given, else the callable card of the highest
    tier with the costliest profile for a typical request (200 tokens in, 200 out)."""
    if name is not None:
        return cards[name]
    callable_cards = [c for c in cards.values() if c.callable] or list(cards.values())
    if not callable_cards:
        return None
    return max(callable_cards, key=lambda c: (TIER_ORDER.get(c.tier, 0), c.energy.joules(200, 200)))


def counterfactual_j(row: SummaryRow, large: ModelCard | None) -> float:
    """Joules the always-large router would have used for the requests of one summary row."""
    if large is None or row.outcome not in ANSWERED:
        return 0.0
    if row.model == large.name:
        return row.energy_j
    p = large.energy
    return (
        row.requests * p.per_call_j + row.input_tokens * p.per_input_token_j + row.output_tokens * p.per_output_token_j
    )


@dataclass
class GroupTotals:
    group: str
    requests: int = 0
    """Model calls (every outcome but ``rejected``)."""
    errors: int = 0
    rejected: int = 0
    """Records of a model not called: skipped or refused for its budget."""
    input_tokens: int = 0
    output_tokens: int = 0
    energy_j: float = 0.0
    co2e_g: float = 0.0
    counterfactual_j: float = 0.0
    saved_j: float = 0.0
    mean_latency_ms: float = 0.0
    measured_share: float = 0.0
    """Fraction of the joules that were measured (RAPL, NVML) rather than estimated."""
    records_without_co2e: int = 0
    """Of the group's records (``requests`` + ``rejected``), those without a CO2e figure: ``co2e_g`` counts them
    as 0 g."""
    joules_without_co2e: float = 0.0

    def co2e_note(self) -> str:
        """What the group's ``co2e_g`` leaves out, in the total's words (empty when nothing)."""
        return missing_co2e_note(self.requests + self.rejected, self.records_without_co2e, self.joules_without_co2e)


@dataclass
class Report:
    by: str
    since: float
    until: float | None
    grid_g_per_kwh: float
    counterfactual_model: str | None
    rows: list[GroupTotals]
    total: GroupTotals
    series: list[dict[str, float]] = field(default_factory=list)
    """Per time bucket (hour or day): ``{t, energy_j, counterfactual_j}``."""
    notes: list[str] = field(default_factory=list)
    records_without_co2e: int = 0
    """Records in the range that carry no CO2e figure (counted as 0 g in every ``co2e_g``)."""
    joules_without_co2e: float = 0.0

    def everyday(self) -> Equivalents:
        """The total in everyday terms with its recorded CO2e, at the records' own intensity over the joules that
        have a figure, saying what it leaves out (:func:`~router.energy.carbon.recorded_equivalents`;
        ``grid_g_per_kwh`` only when none is recorded)."""
        return recorded_equivalents(self.total.energy_j, self.total.co2e_g, self.grid_g_per_kwh,
                                    records=self.total.requests + self.total.rejected,
                                    gaps=(self.records_without_co2e, self.joules_without_co2e))

    def saved_everyday(self) -> Equivalents:
        """The joules saved (none when routing cost more) in everyday terms, at the records' intensity."""
        return equivalents(max(0.0, self.total.saved_j), self.everyday().grid_g_per_kwh)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["equivalents"] = asdict(self.everyday())
        d["saved_equivalents"] = asdict(self.saved_everyday())
        return d


def report_dims(by: str) -> tuple[str, ...]:
    """The summary dimensions a report grouped ``by`` reads: the model (the saving estimate), the outcome (errors,
    rejections), the energy source (the measured share) and ``by``'s own. The store sums the others away, so a
    ledger whose hourly summary keeps a row per key, policy and task (about as many rows as records, for many keys)
    is read as a few rows per hour rather than as one object per stored row."""
    return tuple(d for d in SUMMARY_DIMS if d in ("model", "outcome", "energy_source", *group_dims(by)))


def build_report(
    ledger: Ledger,
    cards: dict[str, ModelCard],
    *,
    by: str = "model",
    since: float = 0.0,
    until: float | None = None,
    grid_g_per_kwh: float = DEFAULT_GRID_G_PER_KWH,
    counterfactual: str | None = None,
) -> Report:
    by = checked_group(by)
    large = counterfactual_card(cards, counterfactual)
    if set(group_dims(by)) <= set(ROLLUP_DIMS) or by == "day":
        summary = ledger.summary(since, until, dims=report_dims(by))  # groups and series from one read
        per_hour = summary
    else:
        # a key, policy or task keeps the hourly summary near a row per record: the store sums each group over the
        # range, and the series comes from the sums per hour and model, which the rollup holds
        summary = ledger.summary_totals(since, until, dims=report_dims(by))
        per_hour = ledger.summary(since, until, dims=report_dims("model"))
    # one read gives every group's records without a CO2e figure, and so the total's
    gaps = group_gaps(ledger.carbon_gap_rows(since, until, group_dims(by)), by)
    groups: dict[str, GroupTotals] = {}
    total = GroupTotals("total")
    latency: dict[str, float] = {}
    measured: dict[str, float] = {}
    buckets: dict[float, list[float]] = {}
    for row in summary:
        g = group_value(row, by)
        cf = counterfactual_j(row, large)
        for t in (groups.setdefault(g, GroupTotals(g)), total):
            if row.outcome == REFUSED:
                t.rejected += row.requests
            else:
                t.requests += row.requests
                latency[t.group] = latency.get(t.group, 0.0) + row.latency_ms_sum
            t.errors += row.requests if row.outcome == "error" else 0
            t.input_tokens += row.input_tokens
            t.output_tokens += row.output_tokens
            t.energy_j += row.energy_j
            t.co2e_g += row.co2e_g  # as recorded: each request's zone and hour
            t.counterfactual_j += cf
            if row.energy_source.startswith("measured"):
                measured[t.group] = measured.get(t.group, 0.0) + row.energy_j
    for row in per_hour:
        b = buckets.setdefault(row.bucket, [0.0, 0.0])
        b[0] += row.energy_j
        b[1] += counterfactual_j(row, large)
    for g, (count, joules) in gaps.items():
        for t in (groups.setdefault(g, GroupTotals(g)), total):
            t.records_without_co2e += count
            t.joules_without_co2e += joules
    for t in [*groups.values(), total]:
        t.saved_j = t.counterfactual_j - t.energy_j
        t.mean_latency_ms = latency.get(t.group, 0.0) / t.requests if t.requests else 0.0
        t.measured_share = measured.get(t.group, 0.0) / t.energy_j if t.energy_j else 0.0
    notes = [
        "CO2e as recorded with each request (its joules x the PUE, for a model on this host, x its zone's grid "
        "intensity at the hour it ran); intensities are grams per kWh drawn, PUE included "
        f"(the config's {grid_g_per_kwh:g} g/kWh only where nothing is recorded).",
        f"Equivalents: {PHONE_CHARGE_SOURCE}; {KETTLE_BOIL_SOURCE}.",
    ]
    if total.records_without_co2e:
        notes.append("without CO2e: a group's records that have no CO2e figure (written before the ledger had "
                     "carbon columns, or by an application's own Ledger.record); its CO2e leaves them out.")
    if large is not None:
        p = large.energy
        notes.insert(
            0,
            f"Saved = estimate against always calling {large.name} ({large.tier}): its card profile "
            f"({p.per_call_j:g} J/call + {p.per_input_token_j:g} J/in-token + {p.per_output_token_j:g} J/out-token, "
            f"{p.source}) applied to the same tokens of every answered request.",
        )
    else:
        notes.insert(0, "No model cards: no counterfactual.")
    return Report(
        by=by,
        since=since,
        until=until,
        grid_g_per_kwh=grid_g_per_kwh,
        counterfactual_model=large.name if large else None,
        rows=[groups[g] for g in sorted(groups)],
        total=total,
        series=_series(buckets),
        notes=notes,
        records_without_co2e=total.records_without_co2e,
        joules_without_co2e=total.joules_without_co2e,
    )


def _series(buckets: dict[float, list[float]]) -> list[dict[str, float]]:
    """Hourly points when the report spans under 3 days, else daily."""
    if not buckets:
        return []
    span = max(buckets) - min(buckets)
    step = 3600.0 if span < 3 * 86400 else 86400.0
    out: dict[float, list[float]] = {}
    for b, (e, cf) in buckets.items():
        k = b - b % step
        acc = out.setdefault(k, [0.0, 0.0])
        acc[0] += e
        acc[1] += cf
    return [{"t": k, "energy_j": v[0], "counterfactual_j": v[1]} for k, v in sorted(out.items())]


# -- rendering -------------------------------------------------------------------------------------------

_COLUMNS = [
    ("group", "group"), ("requests", "requests"), ("errors", "errors"), ("rejected", "rejected"),
    ("input_tokens", "in tokens"),
    ("output_tokens", "out tokens"), ("energy_j", "energy J"), ("co2e_g", "CO2e g"),
    ("counterfactual_j", "always-large J (est.)"), ("saved_j", "saved J (est.)"),
    ("mean_latency_ms", "mean latency ms"), ("measured_share", "measured share"),
]  # fmt: skip


def to_csv(report: Report) -> str:
    """One row per group and the total; ``records_without_co2e``: the row's records whose CO2e is not in
    ``co2e_g``. Figures are plain numbers without units, each float to :data:`CSV_DIGITS` significant digits."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([f"{report.by}" if k == "group" else k for k, _ in _COLUMNS] + ["records_without_co2e"])
    for t in [*report.rows, report.total]:
        w.writerow([_csv_cell(getattr(t, k)) for k, _ in _COLUMNS] + [t.records_without_co2e])
    return buf.getvalue()


CSV_DIGITS = 6
"""Significant digits of a float in the report's CSV: sums of floats carry binary noise (0.1 J + 0.2 J written as
0.30000000000000004), and no meter or estimate is good to more than a few digits."""


def _csv_cell(value: object) -> object:
    """``value`` as a CSV cell: a float rounded to :data:`CSV_DIGITS` significant digits, in its shortest form
    (0.3, 1234570, 1e-07; a spreadsheet reads each as the number); anything else as it is."""
    if isinstance(value, float):
        return f"{float(f'{value:.{CSV_DIGITS}g}'):.15g}"
    return value


def to_json(report: Report) -> str:
    return json.dumps(report.as_dict(), indent=2)


def rich_table(report: Report) -> Any:
    """The default view: fits 100 columns; csv/json carry every column (tokens, latency)."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(
        title=f"Energy by {report.by}{_when(report)}", caption="\n".join(report.notes), caption_justify="left"
    )
    gaps = report.records_without_co2e > 0  # a column only for the ledgers that have such records
    for title in (report.by, "requests", "errors", "rejected", "energy", "CO2e g", "always large (est.)",
                  "saved (est.)", "measured", *(["without CO2e"] if gaps else [])):  # fmt: skip
        if title == report.by:  # a name is never cut: the figures' headers wrap instead
            table.add_column(title, no_wrap=True, min_width=max((len(t.group) for t in report.rows), default=5))
        else:
            table.add_column(title, justify="right")
    for t in [*report.rows, report.total]:
        table.add_row(
            # a group is text from the records (an application's own Ledger.record may write any): `[beta]` in a
            # model's name is shown, not read as Rich markup
            escape(t.group) if t is not report.total else "[bold]total[/bold]",
            f"{t.requests:,}",
            f"{t.errors:,}",
            f"{t.rejected:,}",
            format_joules(t.energy_j),
            f"{t.co2e_g:.3g}",
            format_joules(t.counterfactual_j),
            format_joules(t.saved_j),
            f"{t.measured_share:.0%}",
            *([f"{t.records_without_co2e:,}"] if gaps else []),
        )
    return table


def _when(report: Report) -> str:
    """The range a title names: a report of the records before a date alone says so, not "Energy by model" as
    if it were all of them."""
    if report.since > 0 and report.until is not None:
        return f", {utc_minute(report.since)} to {utc_minute(report.until)}"
    if report.since > 0:
        return f", since {utc_minute(report.since)}"
    if report.until is not None:
        return f", until {utc_minute(report.until)}"
    return ""


def plot_png(report: Report, file: str | Path | None = None) -> bytes:
    """Energy over time, actual against the always-large estimate; PNG bytes (also written to ``file``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=100)
    if report.series:
        xs = [datetime.fromtimestamp(p["t"], tz=timezone.utc) for p in report.series]
        # matplotlib's stubs leave out the datetimes its date converter plots
        ax.plot(xs, [p["energy_j"] for p in report.series], marker="o", label="actual (routed)")  # type: ignore[arg-type]
        if report.counterfactual_model:
            ax.plot(
                xs, [p["counterfactual_j"] for p in report.series], linestyle="--",  # type: ignore[arg-type]
                label=f"always {report.counterfactual_model} (estimate)",
            )  # fmt: skip
        ax.legend()
        fig.autofmt_xdate()
    else:
        ax.text(0.5, 0.5, "no records in this range", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("joules per bucket")
    ax.set_title("Energy over time")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    data = buf.getvalue()
    if file is not None:
        Path(file).write_bytes(data)
    return data


def to_html(report: Report) -> str:
    """A self-contained page: the table, the notes and the plot (inline PNG)."""
    from html import escape

    png = base64.b64encode(plot_png(report)).decode()
    gaps = report.records_without_co2e > 0  # a column only for the ledgers that have such records
    # the first column is headed by what it groups by, as in the table and the CSV
    head = "".join(f"<th>{escape(report.by if key == 'group' else title)}</th>" for key, title in _COLUMNS) + (
        "<th>without CO2e</th>" if gaps else "")
    body = []
    for t in [*report.rows, report.total]:
        cells = [
            escape(t.group), f"{t.requests:,}", f"{t.errors:,}", f"{t.rejected:,}", f"{t.input_tokens:,}",
            f"{t.output_tokens:,}",
            f"{t.energy_j:.6g}", f"{t.co2e_g:.4g}", f"{t.counterfactual_j:.6g}", f"{t.saved_j:.6g}",
            f"{t.mean_latency_ms:.0f}", f"{t.measured_share:.0%}",
            *([f"{t.records_without_co2e:,}"] if gaps else []),
        ]  # fmt: skip
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    eq = report.everyday().sentence()
    notes = "".join(f"<li>{escape(n)}</li>" for n in report.notes)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>router energy report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}</style></head>
<body><h1>Energy by {escape(report.by)}{escape(_when(report))}</h1>
<table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>
<p>{escape(eq)}</p><ul>{notes}</ul>
<img alt="energy over time" src="data:image/png;base64,{png}">
</body></html>
"""
