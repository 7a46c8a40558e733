"""Carbon intensity of a grid zone over time: one small interface and the sources behind it.

A source answers one question, ``intensity(at)``: the grams CO2e per kWh of its zone at the time ``at`` (epoch
seconds). Forecasts are a second, optional extension point with a default: ``forecast(start, end, now)`` gives
hourly values as known at ``now``; a source without a forecast of its own answers with its own values (for a
time-series file that is *perfect foresight*: the future is read from the series; :class:`PersistenceForecast`
is the honest alternative).

* :class:`StaticIntensity`: one constant (the config's ``grid_g_per_kwh``, by default the IEA world average; its
  sources are in :mod:`router.energy.carbon`).
* :class:`SeriesIntensity`: a CSV ``timestamp,g_co2e_per_kwh`` (like ``data/grid_carbon/*.csv``), replayed by time
  of year (a past year stands in for this one) or shifted by an offset the operator sets; gaps are interpolated.
* :class:`~router.carbon.http.HttpIntensity`: a grid-intensity API in the shape of Electricity Maps' ``latest``
  and ``forecast`` endpoints, cached, with a timeout and the last good value when the API fails.
"""

from __future__ import annotations

import bisect
import csv
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..errors import ConfigError

HOUR_S = 3600.0


def hour_of(ts: float) -> float:
    """The start of the UTC hour holding ``ts``."""
    return math.floor(ts / HOUR_S) * HOUR_S


def hours(start: float, end: float) -> list[float]:
    """The starts of the hours that overlap ``[start, end)``."""
    h, out = hour_of(start), []
    while h < end:
        out.append(h)
        h += HOUR_S
    return out


@dataclass(frozen=True)
class Intensity:
    """Grams CO2e per kWh, and where the figure came from (``static``, ``file:CA_2022_hourly.csv``, ...)."""

    g_per_kwh: float
    source: str


class IntensitySource(ABC):
    """The carbon intensity of one grid zone over time."""

    label: str = "source"

    @abstractmethod
    def intensity(self, at: float) -> Intensity:
        """Grams CO2e per kWh at time ``at`` (epoch seconds). Never blocks on the network for long: it is read
        for every ledger record."""

    def forecast(self, start: float, end: float, now: float) -> list[tuple[float, float]]:
        """``(hour start, g/kWh)`` for each hour overlapping ``[start, end)``, as known at ``now``. The default reads
        the source's own values, which for a recorded series is perfect foresight."""
        return [(h, self.intensity(h).g_per_kwh) for h in hours(start, end)]

    @property
    def flat(self) -> bool:
        """True when the intensity never changes (then nothing is gained by waiting)."""
        return False

    def close(self) -> None:  # noqa: B027 - optional hook
        """Stop background work (the HTTP source's refresh thread)."""


class StaticIntensity(IntensitySource):
    """One constant intensity for every hour."""

    def __init__(self, g_per_kwh: float, label: str = "static") -> None:
        if not (math.isfinite(g_per_kwh) and g_per_kwh >= 0):
            raise ConfigError(f"a static grid intensity is a finite number >= 0 g/kWh, got {g_per_kwh!r}")
        self.g = float(g_per_kwh)
        self.label = label
        self._value = Intensity(self.g, label)

    def intensity(self, at: float) -> Intensity:
        return self._value

    @property
    def flat(self) -> bool:
        return True


class SeriesIntensity(IntensitySource):
    """An hourly series from a CSV file (``timestamp,g_co2e_per_kwh``; timestamps ISO 8601, UTC unless they say).

    ``replay``: ``time_of_year`` maps a time to the same hour of the year in the series (a 2022 series answers
    for 12 March 14:00 of any year with 12 March 2022 14:00; past the series' end it wraps), ``offset`` reads the
    series at ``at + offset_s`` (wrapping around the series' length), so an operator can replay a past week
    against today. By time of year, hours are counted from 1 January, so in a leap year the days after 28 February
    read the series' next day (and 31 December wraps to its start). Hours the file leaves empty or out are
    interpolated linearly between their neighbours (``gaps`` says how many); values must be finite and >= 0. Rows
finer than an hour are averaged into their hour; a timestamp written twice is refused."""

    def __init__(self, path: str | Path, *, replay: str = "time_of_year", offset_s: float = 0.0,
                 label: str | None = None) -> None:
        self.path = Path(path)
        if replay not in ("time_of_year", "offset"):
            raise ConfigError(f"{self.path}: replay is `time_of_year` or `offset`, got {replay!r}")
        self.replay = replay
        self.offset_s = float(offset_s)
        self.label = label or f"file:{self.path.name}"
        self.start, self.values, self.gaps = _read_series(self.path)
        self.n = len(self.values)
        self._year_offset = self.start - _year_start(self.start)

    def index(self, at: float) -> int:
        """The series' hour that answers for ``at``."""
        offset = self.replay == "offset"
        pos = at + self.offset_s - self.start if offset else (at - _year_start(at)) - self._year_offset
        return int(math.floor(pos / HOUR_S)) % self.n

    def intensity(self, at: float) -> Intensity:
        return Intensity(float(self.values[self.index(at)]), self.label)

    def forecast(self, start: float, end: float, now: float) -> list[tuple[float, float]]:
        return [(h, float(self.values[self.index(h)])) for h in hours(start, end)]

    def lowest(self, start: float, span_h: int) -> float:
        """The lowest :meth:`intensity` over the ``span_h`` hours from ``start``'s hour, at a cost bounded by the
        series' length, not the span's (a report's window may be any length)."""
        if self.replay == "offset":
            return self._lowest_run(self.index(start), span_h)
        # By time of year the series is read in one run per calendar year. Any 8 years in a row hold a leap year,
        # so 10 years from any hour hold a whole one, whose hours are every place the series is ever read at.
        span_h = min(span_h, 10 * 8784)
        h, low = hour_of(start), math.inf
        while span_h > 0:
            year = datetime.fromtimestamp(h, tz=timezone.utc).year
            year_end = datetime(year + 1, 1, 1, tzinfo=timezone.utc).timestamp()
            run = min(span_h, round((year_end - h) / HOUR_S))
            low = min(low, self._lowest_run(self.index(h), run))
            h, span_h = h + run * HOUR_S, span_h - run
        return low

    def _lowest_run(self, first: int, count: int) -> float:
        """The lowest of ``count`` values from index ``first``, wrapping past the series' end."""
        if count >= self.n:
            return float(self.values.min())
        end = first + count
        if end <= self.n:
            return float(self.values[first:end].min())
        return float(min(self.values[first:].min(), self.values[: end - self.n].min()))


class PersistenceForecast(IntensitySource):
    """The honest forecast of a recorded series: an hour not yet reached is expected to be like the same hour of
    the last day already seen (``at - 24 h``, ``- 48 h`` ... until it is not in the future of ``now``). Past and
    present hours are the series' own values."""

    def __init__(self, inner: IntensitySource, period_s: float = 86_400.0) -> None:
        self.inner = inner
        self.period_s = period_s
        self.label = f"persistence({inner.label})"

    def intensity(self, at: float) -> Intensity:
        return self.inner.intensity(at)

    def forecast(self, start: float, end: float, now: float) -> list[tuple[float, float]]:
        current = hour_of(now)
        out = []
        for h in hours(start, end):
            seen = h
            if h > current:
                seen = h - math.ceil((h - current) / self.period_s) * self.period_s
            out.append((h, self.inner.intensity(seen).g_per_kwh))
        return out

    @property
    def flat(self) -> bool:
        return self.inner.flat


def _year_start(ts: float) -> float:
    year = datetime.fromtimestamp(ts, tz=timezone.utc).year
    return datetime(year, 1, 1, tzinfo=timezone.utc).timestamp()


def _parse_ts(text: str) -> float:
    dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def _read_series(path: Path) -> tuple[float, np.ndarray, int]:
    """(first hour, hourly values with the gaps filled, how many hours were filled)."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # Excel's "CSV UTF-8" starts with a byte-order mark: not text
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the carbon intensity series ({exc.strerror or exc}); fix: give "
                          "the path of a CSV `timestamp,g_co2e_per_kwh` (the shipped ones are in data/grid_carbon/)"
                          ) from None
    rows = csv.reader(text.splitlines())
    header = next(rows, None)
    if not header or [h.strip() for h in header[:2]] != ["timestamp", "g_co2e_per_kwh"]:
        raise ConfigError(f"{path}: line 1 must be the header `timestamp,g_co2e_per_kwh`, got {header!r}")
    readings: dict[int, list[float]] = {}  # hour -> the values of the rows in it
    lines: dict[float, int] = {}  # timestamp -> the line it is on
    for line_no, row in enumerate(rows, start=2):
        if not row or not row[0].strip():
            continue
        try:
            ts = _parse_ts(row[0])
        except ValueError:
            raise ConfigError(f"{path}:{line_no}: timestamp {row[0]!r} is not ISO 8601") from None
        if ts in lines:  # two figures for one moment: which is right is not ours to guess
            raise ConfigError(f"{path}:{line_no}: timestamp {row[0].strip()!r} is also on line {lines[ts]}; fix: keep "
                              "one of the two rows")
        lines[ts] = line_no
        hour = int(hour_of(ts) // HOUR_S)
        value = row[1].strip() if len(row) > 1 else ""
        if not value:
            continue  # an empty hour, as published: filled below
        try:
            g = float(value)
        except ValueError:
            raise ConfigError(f"{path}:{line_no}: {value!r} is not a number of g/kWh") from None
        if not (math.isfinite(g) and 0 <= g <= 10_000):
            raise ConfigError(f"{path}:{line_no}: {g!r} g/kWh is outside [0, 10000]")
        readings.setdefault(hour, []).append(g)
    # rows finer than an hour (00:00, 00:15, ...) make the hour's value their mean, as hourly series are published
    known = {hour: sum(values) / len(values) for hour, values in readings.items()}
    if len(known) < 2:
        raise ConfigError(f"{path}: needs at least two hours with a value, found {len(known)}")
    first, last = min(known), max(known)
    have = sorted(known)
    values = np.empty(last - first + 1)
    gaps = 0
    for i, h in enumerate(range(first, last + 1)):
        if h in known:
            values[i] = known[h]
            continue
        gaps += 1
        j = bisect.bisect_left(have, h)
        lo, hi = have[j - 1], have[j]
        values[i] = known[lo] + (known[hi] - known[lo]) * (h - lo) / (hi - lo)
    return first * HOUR_S, values, gaps
