"""Checks of the arguments and settings a ledger is given, shared by every store (router/ledger/base.py and the
feedback methods use them): each returns the value normalised, or raises the library's typed error naming the
argument and what is allowed, before any store sees it."""

from __future__ import annotations

import logging
import math
import numbers
import sys
from typing import SupportsFloat, cast

from ..errors import BadRequestError, ConfigError

log = logging.getLogger("router.ledger")


MAX_RETENTION_DAYS = 36_525.0
"""A century: longer is "keep everything" (``None``), and a cut-off further back than 1900 is not a time."""


def checked_retention_days(days: float | None) -> float | None:
    """``days`` if it is a retention setting a store may keep (None, or a finite number in (0, a century]);
    a :class:`~router.errors.ConfigError` otherwise, before anything is stored."""
    if days is None:
        return None
    if isinstance(days, bool) or not isinstance(days, int | float) or not 0 < days <= MAX_RETENTION_DAYS:
        raise ConfigError(f"retention_days={days!r}: give a number of days above 0 and at most "
                          f"{MAX_RETENTION_DAYS:,.0f}, or none to keep everything")
    return float(days)


def stored_retention_days(value: str | bytes | None, where: str) -> float | None:
    """The retention setting read back from a store. One that no longer passes :func:`checked_retention_days`
    (written by an older version) is ignored with a warning, so the ledger still opens and can be set again."""
    if value is None:
        return None
    try:
        return checked_retention_days(float(value))
    except (ValueError, ConfigError) as exc:
        log.warning("%s: ignoring the stored retention setting %r (%s); set it again with `router ledger retention "
                    "DAYS` or `--off`", where, value, exc)
        return None


GROUPS = ("model", "tier", "key", "policy", "task", "day", "source", "outcome")


def checked_group(by: object) -> str:
    """``by`` if it is one of ``GROUPS`` (what ``totals`` and reports group by), else a
    :class:`~router.errors.BadRequestError` naming them."""
    if not isinstance(by, str) or by not in GROUPS:
        raise BadRequestError(f"by={by!r}: choose one of {', '.join(GROUPS)}", param="by")
    return by


EARLIEST_TS = -sys.float_info.max
"""The earliest time a read can start from: every record, however old (reads refuse infinite times)."""

MAX_COUNT = 2**63 - 1
"""The largest count a read takes: the largest integer SQLite, PostgreSQL and Redis hold."""


def is_finite_number(value: object) -> bool:
    """Whether ``value`` is a real number (not a boolean) within a float's range. An integer may run past it (a
    JSON number or a command line's may have hundreds of digits), and ``math.isfinite`` raises on that."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def shown(value: object) -> str:
    """``value`` as a message names it: its repr, except an integer of more than 30 digits by how many it has
    (Python refuses to write one of over 4,300 digits, and a message of 400 digits says no more)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and abs(cast(int, value)) >= 10**30:
        return f"<a {math.floor(math.log10(abs(cast(int, value)))) + 1:,}-digit integer>"
    return repr(value)


def checked_count(name: str, value: object, *, least: int = 0, unit: str = "", hint: str = "") -> int:
    """``value`` if it is a whole number from ``least`` to :data:`MAX_COUNT` (a limit, a page size, a step),
    else a :class:`~router.errors.BadRequestError` naming the argument. Booleans are refused: ``True`` is not a
    count. Checked before a store sees it: SQLite reads ``LIMIT -1`` as no limit and Redis a negative count as
    all, and a count past 64 bits is an OverflowError to each."""
    # cast: an Integral compares as an int does; typeshed's numbers.Integral declares no __ge__
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not least <= cast(int, value) <= MAX_COUNT:
        what = f"a whole number of {unit}" if unit else "a whole number"
        raise BadRequestError(f"{name}={shown(value)}: give {what}, {least} or more (below 2**63){hint}",
                              param=name)
    return int(value)


def checked_limit(limit: object) -> int | None:
    """A read's ``limit``: None (no limit) or a whole number, 0 or more."""
    return None if limit is None else checked_count("limit", limit, hint=", or None for no limit")


def checked_time(name: str, value: object, *, none: str = "") -> float:
    """``value`` as epoch seconds if it is a finite number, else a :class:`~router.errors.BadRequestError` naming
    the argument: a store compares a string or NaN with its times without complaint and matches nothing (or,
    in SQLite, every row: numbers sort before text), and an integer beyond a float is an OverflowError to each.
    ``none``: what None means where the caller may pass it (checked by the caller; named in the message)."""
    if not is_finite_number(value):
        tail = f", or None for {none}" if none else ""
        raise BadRequestError(f"{name}={shown(value)}: give a finite number of epoch seconds, e.g. "
                              f"time.time() - 3600{tail}", param=name)
    return float(cast(SupportsFloat, value))  # a finite numbers.Real


def checked_joules(name: str, value: object, *, unlimited: bool = False) -> float:
    """``value`` as a float if it is a number of joules, 0 or more and finite (``unlimited``: or ``math.inf``, a
    limit no amount reaches), else a :class:`~router.errors.BadRequestError` naming the argument. Checked before a
    store sees it, so every store refuses the same amounts: the stores read a NaN apart (SQLite finds no room,
    Redis's script room for any amount, or fails), and negative joules would give a budget's spent joules back."""
    if not (is_finite_number(value) or unlimited and value == math.inf) or cast(float, value) < 0:
        tail = ", or math.inf for no limit" if unlimited else ""
        raise BadRequestError(f"{name}={shown(value)}: give a finite number of joules, 0 or more{tail}", param=name)
    return float(cast(SupportsFloat, value))


def checked_budget(budget: object) -> str:
    """A reservation's ``budget`` (the ledger key its joules count against) if it is a string with something in
    it, else a :class:`~router.errors.BadRequestError` naming ``budget``: unchecked, SQLite stored ``42`` or
    ``b"day"`` as a budget of their own and refused None as if the store had failed, so a caller's mistake read
    as an outage (a 503 from the proxy)."""
    if not isinstance(budget, str) or not budget.strip():
        raise BadRequestError(f"budget={shown(budget)}: give the budget's name, a non-empty string (e.g. "
                              "'model:gemma3-270m:86400s')", param="budget")
    return budget


def checked_hold_s(hold_s: object) -> float | None:
    """A reservation's ``hold_s``: None (the hold lasts until its window ends) or a finite number of seconds, 0 or
    more, else a :class:`~router.errors.BadRequestError`: a NaN or infinite expiry is one the stores read apart
    (never, now, or a server error)."""
    if hold_s is None:
        return None
    if not is_finite_number(hold_s) or cast(float, hold_s) < 0:
        raise BadRequestError(f"hold_s={shown(hold_s)}: give a finite number of seconds, 0 or more, or None for "
                              "a hold that lasts until its window ends", param="hold_s")
    return float(cast(SupportsFloat, hold_s))


def checked_span(since: object, until: object = None) -> tuple[float, float | None]:
    """A read's range ``[since, until)`` checked by :func:`checked_time` (``until`` None: no end)."""
    return checked_time("since", since), None if until is None else checked_time("until", until, none="no end")
