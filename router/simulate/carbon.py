"""``router simulate --carbon FILE``: the workload replayed over a carbon intensity series.

An outcomes file has no timestamps, so request ``i`` of ``n`` is placed at ``start + i x span / n``: spread evenly
over the span (default: the whole series, e.g. the year of the shipped files). Each request's joules, under the
policy and under every baseline, are charged that hour's intensity, so the run reports grams CO2e per policy in
the same JSON and plot as its joules. Routing does not depend on the time (no grid switch is replayed), so the
CO2e of two routers differs by the joules they choose, at the same hours.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._dates import utc_minute
from ..carbon.grid import shipped_series
from ..carbon.sources import HOUR_S, SeriesIntensity
from ..errors import ConfigError


def replay(path: str, n: int, *, start: float | None = None, span_s: float | None = None
           ) -> tuple[np.ndarray, dict[str, Any]]:
    """(g/kWh per request, a description for the report)."""
    found = shipped_series(path)
    file = path if found is None or _exists(path) else str(found)
    series = SeriesIntensity(file, replay="offset")
    t0 = series.start if start is None else start
    span = series.n * HOUR_S if span_s is None else span_s
    if span <= 0:
        raise ConfigError("--carbon-span must be positive")
    note = _start_note(series, t0) if start is not None else None
    times = t0 + np.arange(n) * (span / max(n, 1))
    idx = (np.floor((times - series.start) / HOUR_S).astype(np.int64)) % series.n
    g = series.values[idx]
    info = {"series": series.label, "start": float(t0), "span_s": float(span), "hours_filled": series.gaps,
            "mean_g_per_kwh": float(g.mean()) if n else None, "min_g_per_kwh": float(g.min()) if n else None,
            "max_g_per_kwh": float(g.max()) if n else None,
            "placement": "request i of n at start + i * span / n (an outcomes file has no timestamps)"}
    if note:
        info["start_note"] = note
    return g, info


def _start_note(series: SeriesIntensity, t0: float) -> str | None:
    """Where a start outside the series lands (the series repeats), so nobody reads a 2030 start as 2030's grid."""
    length = series.n * HOUR_S
    if series.start <= t0 < series.start + length:
        return None
    mapped = series.start + (t0 - series.start) % length
    return (f"--carbon-start {utc_minute(t0)} is outside the series ({utc_minute(series.start)} to "
            f"{utc_minute(series.start + length - HOUR_S)}); the series repeats, so the workload starts at its hour "
            f"{utc_minute(mapped)}")


def _exists(path: str) -> bool:
    from pathlib import Path

    return Path(path).is_file()


__all__ = ["replay"]
