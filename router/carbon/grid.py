"""The grid as the Router sees it: a source of carbon intensity per zone, the zone of each model, and a clock.

* A model that runs on this host draws from this host's zone (``carbon.zone``); the joules metered here are
  multiplied by ``carbon.pue`` (the building's overhead, default 1.0: no overhead counted).
* A hosted model draws from its card's ``zone`` (its provider's region), or ``carbon.hosted_zone`` when the card
  names none. Its joules come from its card's token profile, which already includes its data centre's PUE (the
  cards say so), so no PUE is applied to them: the overhead is never counted twice.
* A zone with no source configured uses the static ``grid_g_per_kwh`` (default: the IEA world average).

The clock is the system's, or, for tests and replays, a file holding epoch seconds (``carbon.clock_file``): the
batch scheduler plans with it and intensities are read at its time.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import DEFAULT_GRID_G_PER_KWH, CarbonSettings, ZoneSource, shipped_series
from ..errors import ConfigError
from .http import HttpIntensity
from .sources import Intensity, IntensitySource, PersistenceForecast, SeriesIntensity, StaticIntensity

if TYPE_CHECKING:
    from ..cards import ModelCard

_log = logging.getLogger(__name__)
_LAST_EPOCH_SECOND = 253_402_300_800.0
"""The end of year 9999 UTC: the last time a date can show; a clock past it fails every lookup."""

J_PER_KWH = 3.6e6
Clock = Callable[[], float]


class FileClock:
    """``now`` read from a file holding epoch seconds (a test or a replay moves time by writing it). A file that
    is missing or being rewritten (empty) keeps the last reading.

    What the file holds is checked where it is read: ``nan``, ``inf`` or text that is no number would reach every
    intensity lookup (a series index of NaN, a timestamp past any date) and fail each one. At start a bad file is a
    ConfigError naming it; later, a bad reading is refused (the last good one is kept) and logged once, since the
    clock is read as each request's record is written and failing there would lose the record."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._last = time.time()
        self._refused: str | None = None
        """The last text refused, so that a file left bad is logged once, not at every request."""
        with contextlib.suppress(OSError):
            text = self.path.read_text()
            problem = self._problem(text)
            if problem is not None:
                raise ConfigError(problem)
            if text.strip():
                self._last = float(text)

    def __call__(self) -> float:
        with contextlib.suppress(OSError):
            text = self.path.read_text()
            problem = self._problem(text)
            if problem is None:
                if text.strip():
                    self._last = float(text)
            elif text != self._refused:
                self._refused = text
                _log.warning("%s; keeping the last reading, %s", problem, self._last)
        return self._last

    def _problem(self, text: str) -> str | None:
        """Why ``text`` is no clock reading (None when it is one, or is empty: a file being rewritten)."""
        if not text.strip():
            return None
        try:
            seconds = float(text)
        except ValueError:
            seconds = math.nan
        if math.isfinite(seconds) and 0 <= seconds < _LAST_EPOCH_SECOND:
            return None
        return (f"carbon.clock_file {self.path} holds {text.strip()[:40]!r}, not a time; fix: write the time as "
                f"epoch seconds, a number from 0 to {_LAST_EPOCH_SECOND:.0f} (e.g. 1656633600 for 2022-07-01 "
                "00:00 UTC), or remove clock_file to use the system clock")


def open_source(zone: str, spec: ZoneSource, fallback_g: float) -> IntensitySource:
    """The intensity source a zone's config block describes."""
    if spec.type == "static":
        return StaticIntensity(spec.g_per_kwh if spec.g_per_kwh is not None else fallback_g, f"static:{zone}")
    if spec.type == "file":
        assert spec.path is not None
        path = spec.path if spec.path.is_file() else (shipped_series(str(spec.path)) or spec.path)
        return SeriesIntensity(path, replay=spec.replay, offset_s=spec.offset_s)
    assert spec.url is not None
    key = None
    if spec.api_key_env:
        key = os.environ.get(spec.api_key_env)
        if not key:
            raise ConfigError(f"carbon zone {zone!r}: the environment variable {spec.api_key_env} is not set; fix: "
                              "export the provider's API key there, or remove `api_key_env`")
    return HttpIntensity(spec.url, spec.api_zone or zone, api_key=key, timeout_s=spec.timeout_s,
                         cache_s=spec.cache_s, forecast_cache_s=spec.forecast_cache_s, fallback_g_per_kwh=fallback_g)


class Grid:
    """Intensity per zone, at the clock's time; what ledger records, carbon budgets and the scheduler read."""

    def __init__(self, sources: dict[str, IntensitySource] | None = None, *, host_zone: str = "local",
                 hosted_zone: str = "world", default_g_per_kwh: float = DEFAULT_GRID_G_PER_KWH, pue: float = 1.0,
                 clock: Clock | None = None) -> None:
        self.sources = dict(sources or {})
        self.host_zone = host_zone
        self.hosted_zone = hosted_zone
        self.default = StaticIntensity(default_g_per_kwh, "static:grid_g_per_kwh")
        self.pue = pue
        self.clock: Clock = clock or time.time
        self._placed: dict[int, tuple[ModelCard, str, float]] = {}
        """``(card, zone, overhead)`` by card (by identity; cards are not edited once loaded, and the entry holds the
        card so that its id is not reused): read for every ledger record, where ``runs_here`` (a property over
        pydantic fields) was most of the cost."""

    @classmethod
    def from_settings(cls, settings: CarbonSettings, default_g_per_kwh: float) -> Grid:
        sources = {zone: open_source(zone, spec, default_g_per_kwh) for zone, spec in settings.zones.items()}
        clock = FileClock(settings.clock_file) if settings.clock_file is not None else None
        return cls(sources, host_zone=settings.zone, hosted_zone=settings.hosted_zone,
                   default_g_per_kwh=default_g_per_kwh, pue=settings.pue, clock=clock)

    def source(self, zone: str) -> IntensitySource:
        return self.sources.get(zone, self.default)

    def zone_of(self, card: ModelCard) -> str:
        if card.zone:
            return card.zone
        return self.host_zone if card.runs_here else self.hosted_zone

    def intensity(self, zone: str, at: float | None = None) -> Intensity:
        return self.source(zone).intensity(self.clock() if at is None else at)

    def carbon_of(self, card: ModelCard, joules: float, at: float | None = None) -> tuple[float, float, str]:
        """``(grams CO2e, grid g/kWh, zone)`` of ``joules`` drawn by ``card`` (PUE applied to local models only)."""
        placed = self._placed.get(id(card))
        if placed is None:
            if len(self._placed) >= 256:  # a Router's few cards; cards built per call (tests) must not grow it
                self._placed.clear()
            overhead = self.pue if self.pue != 1.0 and card.runs_here else 1.0
            placed = self._placed[id(card)] = (card, self.zone_of(card), overhead)
        _, zone, overhead = placed
        g = self.intensity(zone, at).g_per_kwh
        return joules / J_PER_KWH * g * overhead, g, zone

    def grams_per_joule(self, card: ModelCard, at: float | None = None) -> float:
        return self.carbon_of(card, 1.0, at)[0]

    def forecast(self, zone: str, start: float, end: float, *, method: str = "provider",
                 now: float | None = None) -> list[tuple[float, float]]:
        """Hourly ``(hour start, g/kWh)`` over ``[start, end)``: the source's own forecast (``provider``; for a file,
        perfect foresight) or the persistence forecast (``persistence``: same hour of the previous day)."""
        source = self.source(zone)
        if method == "persistence":
            source = PersistenceForecast(source)
        return source.forecast(start, end, self.clock() if now is None else now)

    def flat(self, zone: str) -> bool:
        return self.source(zone).flat

    def close(self) -> None:
        for s in self.sources.values():
            s.close()


__all__ = ["Clock", "FileClock", "Grid", "J_PER_KWH", "open_source", "shipped_series"]
