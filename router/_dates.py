"""How a moment is written for people: to the minute, in UTC, everywhere the CLI and reports name one."""

from __future__ import annotations

from datetime import datetime, timezone


def utc_minute(ts: float) -> str:
    """``2026-11-30 21:05 UTC`` for epoch seconds ``ts``."""
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
