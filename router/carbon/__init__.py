"""Carbon intensity of the grid over time: sources per zone, the Router's view of them, and when to run
deferrable work. See docs/energy.md (*Carbon intensity over time*) and docs/batch.md."""

from .grid import J_PER_KWH, Clock, FileClock, Grid, open_source, shipped_series
from .http import HttpIntensity
from .schedule import Plan, plan
from .sources import (
    HOUR_S,
    Intensity,
    IntensitySource,
    PersistenceForecast,
    SeriesIntensity,
    StaticIntensity,
    hour_of,
    hours,
)

__all__ = [
    "Clock", "FileClock", "Grid", "HOUR_S", "HttpIntensity", "Intensity", "IntensitySource", "J_PER_KWH",
    "PersistenceForecast", "Plan", "SeriesIntensity", "StaticIntensity", "hour_of", "hours", "open_source", "plan",
    "shipped_series",
]
