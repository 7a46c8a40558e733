"""Energy meters: one interface, chosen automatically, named in every record.

A meter's ``start()`` returns a span; ``span.stop()`` returns an :class:`EnergyReading` that says whether the
joules were measured (and by which meter) or estimated (and from what).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

EnergyKind = Literal["measured", "estimated"]


@dataclass(slots=True)
class EnergyReading:
    """The energy of one call or span: joules, and where they come from. Read-only by convention, not frozen: one
    is made for every model call, and a frozen dataclass's ``__init__`` sets every field through
    ``object.__setattr__``, about twice the cost of a slotted one (nothing hashes a reading)."""

    joules: float
    kind: EnergyKind
    method: str
    """Which meter or model: ``rapl``, ``nvml``, ``cpu-time``, ``token-profile``."""
    detail: str = ""

    @property
    def source(self) -> str:
        """The short label stored in every record, e.g. ``measured:rapl`` or ``estimated:cpu-time``."""
        return f"{self.kind}:{self.method}"

    def __add__(self, other: EnergyReading) -> EnergyReading:
        if not isinstance(other, EnergyReading):
            return NotImplemented
        kind: EnergyKind = "measured" if self.kind == other.kind == "measured" else "estimated"
        method = self.method if self.method == other.method else f"{self.method}+{other.method}"
        return EnergyReading(self.joules + other.joules, kind, method, f"{self.detail}; {other.detail}")


class MeterSpan(ABC):
    @abstractmethod
    def stop(self) -> EnergyReading:
        """End the measurement and return the energy used since ``start``."""


class Meter(ABC):
    """Measures (or models) the energy of a block of local work."""

    name: str = "meter"
    kind: EnergyKind = "measured"

    @abstractmethod
    def start(self) -> MeterSpan:
        """Begin measuring; cheap (the budget is ≤ 50 µs per request for start + stop)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release handles (NVML, files)."""
