"""When deferrable work should run: the cleanest hours inside its window, by a forecast, and the deadline first.

:func:`plan` is pure (the batch scheduler and ``benchmarks/bench_carbon_batch.py`` call the same function): given
the forecast for the hours left before the deadline, how many lines are left and how many lines an hour can run,
it picks the cleanest hours (ties: the earliest) until they hold the remaining lines with a safety margin, and
says whether to run now. When even every hour left could not hold them with that margin, it runs now: the
deadline wins over the carbon preference. A flat forecast makes every hour a tie, so work starts at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .._dates import utc_minute
from .sources import HOUR_S, hour_of

SAFETY = 2.0
"""Plan for twice the capacity the remaining lines need: the throughput estimate is rough, and a line that must
run again after a crash needs room."""


@dataclass(frozen=True)
class Plan:
    run_now: bool
    hours: list[float] = field(default_factory=list)
    """The hours chosen (their starts), in time order."""
    reason: str = ""
    expected_g_per_kwh: float | None = None
    """The mean forecast intensity of the chosen hours (weighted by the lines each may hold)."""


def plan(forecast: list[tuple[float, float]], *, now: float, deadline: float, lines_left: int,
         lines_per_hour: float, safety: float = SAFETY) -> Plan:
    """Choose the hours to run ``lines_left`` lines before ``deadline`` (see the module docstring)."""
    if lines_left <= 0:
        return Plan(False, reason="nothing left to run")
    current = hour_of(now)
    slots = []
    for h, g in forecast:
        start, end = max(h, now), min(h + HOUR_S, deadline)
        if end <= start:
            continue
        slots.append((g, h, lines_per_hour * (end - start) / HOUR_S))
    need = lines_left * safety
    if not slots or sum(c for _, _, c in slots) <= need:
        return Plan(True, [current], "deadline first: the hours left barely hold the remaining lines")
    chosen: list[tuple[float, float, float]] = []
    held = 0.0
    for slot in sorted(slots, key=lambda s: (s[0], s[1])):
        chosen.append(slot)
        held += slot[2]
        if held >= need:
            break
    starts = sorted(h for _, h, _ in chosen)
    expected = sum(g * c for g, _, c in chosen) / held if held else None
    run_now = current in starts
    cleanest = min(g for g, _, _ in chosen)
    if len(chosen) == len(slots):
        reason = "deadline first: every hour left is needed for the remaining lines"
    elif run_now:
        reason = f"this hour is among the cleanest in the window ({cleanest:.0f} g/kWh forecast)"
    else:
        reason = f"waiting for cleaner hours ({cleanest:.0f} g/kWh forecast from {utc_minute(starts[0])})"
    return Plan(run_now, starts, reason, expected)


__all__ = ["Plan", "SAFETY", "plan"]
