"""Which ledger a ``router`` command means, and whether it is there: shared by ``router ledger`` and ``router data``.

A SQLite ledger that is not there is an error for a command that reads one: opening it would make an empty ledger
(and its folders), and a mistyped path would report nothing as if nothing had been routed."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from .._dates import utc_minute
from ..config import RouterConfig
from ..ledger import Ledger, open_ledger
from ..ledger.stores import sqlite_file


def open_configured(cfg: RouterConfig, *, create: bool = False) -> Ledger:
    """The config's ledger; a SQLite file that is not there is an error (exit 2) unless ``create``."""
    if not create:
        require_ledger(cfg.ledger_url)
    return open_ledger(cfg.ledger_url, retention_days=cfg.ledger_retention_days)


def require_ledger(url: str) -> None:
    """Fail (exit 2) when ``url`` names a SQLite file that is not there, before anything opens (and creates) it."""
    path = sqlite_file(url)
    if path is not None and not path.exists():
        fail(f"no ledger at {path}: nothing has been recorded there; route a request first (`router demo`) or "
             "name the ledger your router writes to (--ledger, ROUTER_LEDGER_URL or `ledger_url` in the config)")


def ledger_inputs(url: str, what: str) -> dict[Path, str]:
    """The files of the SQLite ledger ``url`` names (the database, its write-ahead log and shared-memory index),
    each with what it is, for ``refuse_overwriting_inputs``; none for a ledger that is not a SQLite file."""
    ledger_file = sqlite_file(url)
    if ledger_file is None:
        return {}
    return {ledger_file: what, Path(f"{ledger_file}-wal"): f"{what} (its write-ahead log)",
            Path(f"{ledger_file}-shm"): f"{what} (its shared-memory index)"}


def fail(msg: str, code: int = 2) -> NoReturn:
    """Print ``msg`` as the command's error on stderr and exit with ``code`` (2: the ledger or an option)."""
    Console(stderr=True).print(f"[red]error:[/red] {escape(msg)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def refuse_a_future_cut_off(led: Ledger, option: str, given: str, cut: float, *, force: bool, deletion: str,
                            doomed: Callable[[], str], age: str) -> bool:
    """Whether the cut-off ``cut`` (``option given``) of a deletion is in the future. A date meant for ``--since``, or
    a mistyped year, would delete everything written until now: without ``force`` this closes ``led`` and fails
    (exit 2) saying what ``deletion`` (e.g. "the prune") would delete (``doomed()``, asked only then) and how to
    keep it or delete it all the same."""
    if cut <= time.time():
        return False
    if not force:
        try:
            what = doomed()
        finally:
            led.close()
        fail(f"{option} {given} is {utc_minute(cut)}, in the future: {deletion} would delete {what}; give an age "
             f"({age}) or a past date, or add --force to delete them")
    return True
