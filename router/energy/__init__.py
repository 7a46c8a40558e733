"""Energy: meters and estimates. Every figure says whether it was measured or estimated, and how."""

from .base import EnergyReading, Meter, MeterSpan
from .carbon import co2e_grams, equivalents
from .meters import (
    CpuTimeMeter,
    RaplMeter,
    SumMeter,
    auto_meter,
    estimate_from_profile,
    host_meter,
)
from .share import FairShare

__all__ = [
    "CpuTimeMeter",
    "EnergyReading",
    "FairShare",
    "Meter",
    "MeterSpan",
    "RaplMeter",
    "SumMeter",
    "auto_meter",
    "co2e_grams",
    "equivalents",
    "estimate_from_profile",
    "host_meter",
]
