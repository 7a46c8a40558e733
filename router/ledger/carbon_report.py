"""The carbon part of ``router ledger report``: CO2e by hour and by zone as recorded with each request, and the
counterfactual "had each request run at the cleanest hour of its window".

Each record carries the intensity its CO2e was computed at (``grid_g_per_kwh``) and its ``zone``. The report sums
them per (hour, zone) (:func:`carbon_rows`: one ``GROUP BY`` in SQLite and PostgreSQL, a pass over the records
elsewhere) and, for the counterfactual, takes for each (hour, zone) the lowest intensity of that zone over the
window starting at that hour: from the zone's configured series where the zone has one (a file: the recorded
year), else from the intensities the ledger itself recorded for that zone in those hours. The window is the one
given (``--window``, default 24 h: "had every request been deferrable by a day"); a request that already ran at
its window's cleanest hour counts at what it emitted. ``requests`` counts model calls; a ``rejected`` record (a model
skipped or a request refused for its budget, 0 J) is counted in ``rejected`` instead, as every view of the ledger
counts it.

A record without a CO2e figure (written before the ledger had carbon columns, or by an application's own
``Ledger.record`` without one) is left out of the grams and of the intensities, and counted per row in
``records_without_co2e`` / ``joules_without_co2e``: g/kWh is over the joules that have a figure, and the summary
line says what the grams leave out in the words of every view of the ledger
(:func:`~router.energy.carbon.missing_co2e_note`).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from ..carbon.sources import HOUR_S, SeriesIntensity
from ..energy.carbon import missing_co2e_note, recorded_intensity
from .base import REFUSED, Ledger, bucket_of


@dataclass
class CarbonRow:
    bucket: float
    zone: str
    requests: int = 0
    """Model calls (every outcome but ``rejected``)."""
    rejected: int = 0
    """Records of a model not called: skipped or refused for its budget."""
    energy_j: float = 0.0
    co2e_g: float = 0.0
    g_energy: float = 0.0
    """Sum of joules x g/kWh over the records with a CO2e figure, so the energy-weighted intensity of the row is
    ``g_energy / energy_with_co2e_j``."""
    records_without_co2e: int = 0
    """Records (of ``requests`` and ``rejected``) with no CO2e figure: not in ``co2e_g`` nor ``g_energy``."""
    joules_without_co2e: float = 0.0
    """Their joules (in ``energy_j``)."""

    @property
    def energy_with_co2e_j(self) -> float:
        return self.energy_j - self.joules_without_co2e

    @property
    def mean_g(self) -> float:
        return self.g_energy / self.energy_with_co2e_j if self.energy_with_co2e_j > 0 else 0.0


def carbon_rows(ledger: Ledger, since: float, until: float | None) -> list[CarbonRow]:
    """Per (hour, zone): model calls, rejections, joules, grams CO2e, the joule-weighted intensity, and the records
    without a CO2e figure with their joules."""
    fast = getattr(ledger, "carbon_rows", None)
    if fast is not None:
        return [CarbonRow(float(b), z or "-", int(n), int(rej), float(e), float(c), float(ge), int(miss),
                          float(miss_j))
                for b, z, n, rej, e, c, ge, miss, miss_j in fast(since, until)]
    out: dict[tuple[float, str], CarbonRow] = {}
    for r in ledger.iter_records(since, until):
        key = (bucket_of(r.ts), r.zone or "-")
        row = out.setdefault(key, CarbonRow(*key))
        if r.outcome == REFUSED:
            row.rejected += 1
        else:
            row.requests += 1
        row.energy_j += r.energy_j
        if r.co2e_g is None:
            row.records_without_co2e += 1
            row.joules_without_co2e += r.energy_j
        else:
            row.co2e_g += r.co2e_g
            row.g_energy += r.energy_j * (r.grid_g_per_kwh or 0.0)
    return sorted(out.values(), key=lambda x: (x.bucket, x.zone))


@dataclass
class CarbonReport:
    window_s: float
    total_co2e_g: float
    cleanest_co2e_g: float
    records: int = 0
    records_without_co2e: int = 0
    """Records with no CO2e figure: left out of every ``co2e_g`` and ``g_per_kwh``, counted per row too."""
    joules_without_co2e: float = 0.0
    by_hour: list[dict[str, Any]] = field(default_factory=list)
    by_hour_of_day: list[dict[str, Any]] = field(default_factory=list)
    by_zone: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def co2e_note(self) -> str:
        """What the grams leave out, as every view of the ledger says it (empty when nothing is)."""
        return missing_co2e_note(self.records, self.records_without_co2e, self.joules_without_co2e)


def build_carbon(ledger: Ledger, since: float, until: float | None, *, grid: Any = None,
                 window_s: float = 86_400.0) -> CarbonReport:
    rows = carbon_rows(ledger, since, until)
    recorded: dict[str, dict[float, float]] = {}
    for r in rows:
        # an hour whose joules all lack a figure has no intensity, not 0 g/kWh (which would be every hour's cleanest)
        if r.energy_with_co2e_j > 0:
            recorded.setdefault(r.zone, {})[r.bucket] = r.mean_g
    # Per zone, the hours that hold energy and their intensities, in time order: a window is searched among
    # these, so its cost follows the records, not the window's length.
    recorded_hours = {zone: sorted(by_hour) for zone, by_hour in recorded.items()}
    recorded_g = {zone: [recorded[zone][h] for h in stamps] for zone, stamps in recorded_hours.items()}
    span_h = max(1, math.ceil(window_s / HOUR_S))
    cleanest_cache: dict[tuple[str, float], float | None] = {}

    def cleanest(zone: str, bucket: float) -> float | None:
        key = (zone, bucket)
        if key not in cleanest_cache:
            source = grid.sources.get(zone) if grid is not None else None
            if isinstance(source, SeriesIntensity):
                cleanest_cache[key] = source.lowest(bucket, span_h)
            else:
                seen = recorded_hours.get(zone, [])
                first = bisect.bisect_left(seen, bucket)
                end = bisect.bisect_left(seen, bucket + span_h * HOUR_S)
                cleanest_cache[key] = min(recorded_g[zone][first:end]) if end > first else None
        return cleanest_cache[key]

    hours: dict[float, list[float]] = {}
    zones: dict[str, list[float]] = {}
    hod: dict[int, list[float]] = {}
    total = best = 0.0
    records = missing = 0
    missing_j = 0.0
    for r in rows:
        low = cleanest(r.zone, r.bucket)
        cf = r.co2e_g * (low / r.mean_g) if low is not None and r.mean_g > 0 else r.co2e_g
        cf = min(cf, r.co2e_g)
        total += r.co2e_g
        best += cf
        records += r.requests + r.rejected
        missing += r.records_without_co2e
        missing_j += r.joules_without_co2e
        hour_of_day = datetime.fromtimestamp(r.bucket, tz=timezone.utc).hour
        for acc in (hours.setdefault(r.bucket, [0, 0, 0.0, 0.0, 0.0, 0.0, 0, 0.0]),
                    zones.setdefault(r.zone, [0, 0, 0.0, 0.0, 0.0, 0.0, 0, 0.0]),
                    hod.setdefault(hour_of_day, [0, 0, 0.0, 0.0, 0.0, 0.0, 0, 0.0])):
            acc[0] += r.requests
            acc[1] += r.rejected
            acc[2] += r.energy_j
            acc[3] += r.co2e_g
            acc[4] += cf
            acc[5] += r.g_energy
            acc[6] += r.records_without_co2e
            acc[7] += r.joules_without_co2e

    def row(label: str, key: str, acc: list[float]) -> dict[str, Any]:
        return {key: label, "requests": int(acc[0]), "rejected": int(acc[1]), "energy_j": acc[2], "co2e_g": acc[3],
                "g_per_kwh": recorded_intensity(acc[2] - acc[7], acc[3]), "cleanest_hour_co2e_g": acc[4],
                "records_without_co2e": int(acc[6]), "joules_without_co2e": acc[7]}

    notes = [f"CO2e as recorded with each request: its zone's intensity at the hour it ran (g/kWh: grams per kWh "
             f"drawn, PUE included, as in every view of the ledger). The counterfactual "
             f"takes the cleanest hour of the {window_s / 3600:g} h from the hour each request ran, from the zone's "
             "series where configured, else from the intensities this ledger recorded for the zone."]
    report = CarbonReport(window_s=window_s, total_co2e_g=total, cleanest_co2e_g=best, records=records,
                          records_without_co2e=missing, joules_without_co2e=missing_j)
    if missing:
        notes.append(f"{report.co2e_note()}: every co2e_g leaves them out, and g_per_kwh is over the joules that "
                     "have a figure.")
    report.by_hour = [row(datetime.fromtimestamp(b, tz=timezone.utc).strftime("%Y-%m-%d %H:00"), "hour", a)
                      | {"t": b} for b, a in sorted(hours.items())]
    report.by_hour_of_day = [row(f"{h:02d}:00", "hour_of_day", a) for h, a in sorted(hod.items())]
    report.by_zone = [row(z, "zone", a) for z, a in sorted(zones.items())]
    report.notes = notes
    return report


def rich_tables(rep: CarbonReport) -> list[Any]:
    from rich.markup import escape
    from rich.table import Table

    out = []
    for title, key, rows in (("CO2e by zone", "zone", rep.by_zone),
                             ("CO2e by hour of day (UTC)", "hour_of_day", rep.by_hour_of_day)):
        t = Table(title=title)
        columns = [key.replace("_", " "), "requests", "rejected", "g/kWh", "CO2e g", "at the cleanest hour g"]
        if rep.records_without_co2e:  # a column only for the ledgers that have such records
            columns.append("without CO2e")
        for col in columns:
            t.add_column(col, justify="left" if col == key.replace("_", " ") else "right")
        for r in rows:  # a zone is text from the records: `[beta]` is not markup
            cells = [escape(str(r[key])), f"{r['requests']:,}", f"{r['rejected']:,}",
                     "-" if r["g_per_kwh"] is None else f"{r['g_per_kwh']:.0f}",
                     f"{r['co2e_g']:.4g}", f"{r['cleanest_hour_co2e_g']:.4g}"]
            if rep.records_without_co2e:
                cells.append(f"{r['records_without_co2e']:,}")
            t.add_row(*cells)
        out.append(t)
    return out


def summary_line(rep: CarbonReport) -> str:
    saved = rep.total_co2e_g - rep.cleanest_co2e_g
    share = saved / rep.total_co2e_g if rep.total_co2e_g else 0.0
    note = rep.co2e_note()
    return (f"CO2e {rep.total_co2e_g:.4g} g; had each request run at the cleanest hour of its "
            f"{rep.window_s / 3600:g} h window: {rep.cleanest_co2e_g:.4g} g ({share:.0%} less)"
            + (f"; {note}" if note else ""))


__all__ = ["CarbonReport", "CarbonRow", "build_carbon", "carbon_rows", "rich_tables", "summary_line"]
