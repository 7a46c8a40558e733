"""Times and lengths of time as the CLI takes them (``--since 7d``, ``--until 2024-05-01``, ``--window 24h``):
one reading for every command, with a usage error naming the option for anything else."""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone

import typer

SINCE_HELP = "From when: 7d, 24h, 30m, 2w, an ISO date/time (UTC) or epoch seconds."

RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


_LAST_TS = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc).timestamp()
_COMPACT_DATE = re.compile(r"^\s*[12]\d{3}(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])\s*$")


def parse_when(text: str | None, now: float | None = None) -> float | None:
    """``7d`` (relative), ``2024-05-01`` / ``20240501`` / ``2024-05-01T12:00`` (UTC unless it says otherwise) or
    epoch seconds, between 1970 and the year 9999 (a cut-off before 1970 is the start of time)."""
    if text is None or text == "":
        return None
    now = time.time() if now is None else now
    m = RELATIVE.match(text)
    if m:
        return max(0.0, now - float(m.group(1)) * UNIT_S[m.group(2)])
    # eight digits are a compact date (20240501), which ISO 8601 allows, not seconds into 1970
    compact_date = _COMPACT_DATE.match(text) is not None
    try:
        if compact_date:
            raise ValueError(text)
        ts = float(text)
    except ValueError:
        try:
            dt = datetime.fromisoformat(text.strip())
        except ValueError as exc:
            raise typer.BadParameter(f"{text!r}: {SINCE_HELP}") from exc
        ts = (dt if dt.tzinfo is not None else dt.replace(tzinfo=timezone.utc)).timestamp()
    if not 0 <= ts <= _LAST_TS:  # NaN fails this too
        raise typer.BadParameter(f"{text!r}: a time between 1970 and the year 9999; {SINCE_HELP}")
    return ts


def parse_range(since: str | None, until: str | None) -> tuple[float, float | None]:
    """``(--since, --until)`` as epoch seconds (since 0 when not given); an empty range is a mistake."""
    start, end = parse_when(since) or 0.0, parse_when(until)
    if end is not None and end <= start:
        raise typer.BadParameter(f"--until {until!r} is not after --since {since!r}: the range is empty")
    return start, end


def parse_length(text: str, option: str) -> float:
    """A length of time in seconds: ``24h``, ``90m``, ``2d`` (more than zero)."""
    m = RELATIVE.match(text)
    if not m or float(m.group(1)) <= 0:
        raise typer.BadParameter(f"{option} {text!r}: a length above zero, such as 24h, 90m or 2d")
    return float(m.group(1)) * UNIT_S[m.group(2)]
