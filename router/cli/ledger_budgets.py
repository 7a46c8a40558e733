"""``router ledger budgets``: each policy budget's use in its current window (spent plus held by calls still
running), its limit and what is left, and when the window rolls; the dashboard's budgets panel on the command line.

The figures come from :func:`~router.ledger.budget_use.budget_use`, which the dashboard reads too: the ledger's
budget counters (what a reservation is checked against) under the limits of the config's policies."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from .._dates import utc_minute
from ..energy.carbon import format_joules
from .ledger import _CONFIG_OPT, _LEDGER_OPT, _clean_errors, _config, _opts, ledger_app
from .ledger_files import open_configured
from .output import stdout_console


def _amount(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return format_joules(value) if unit == "J" else f"{value:.4g} g CO2e"


def _window(seconds: float) -> str:
    for size, unit in ((86400.0, "d"), (3600.0, "h"), (60.0, "min")):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def _rolls_in(seconds: float) -> str:
    minutes = max(0, round(seconds / 60))
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


@ledger_app.command()
@_clean_errors
def budgets(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (the dashboard's /dashboard/api/"
                                 "budgets) instead of the table."),
    ledger: str | None = _LEDGER_OPT,
    config: Path | None = _CONFIG_OPT,
) -> None:
    """Each policy budget's use in its current window (spent + held), its limit, what is left and when the window
    rolls, as the router enforces them."""
    from .._parts import load_engine
    from ..cards import load_cards
    from ..ledger.budget_use import budget_use, per_key_budgets_in_ledger

    ledger, config = _opts(ctx, ledger, config)
    cfg = _config(config, ledger)
    engine = load_engine(cfg, load_cards(cfg.models_dir), cfg.default_policy)
    led = open_configured(cfg)
    try:
        now = time.time()
        rows = budget_use(engine, led, per_key_budgets_in_ledger(engine, led, now), now)
    finally:
        led.close()
    if as_json:
        sys.stdout.write(json.dumps({"now": now, "budgets": rows}, indent=2) + "\n")
        return
    console = stdout_console()
    if not rows:
        console.print(f"No budgets: the policies in {escape(str(cfg.policies_dir))} set none.")
        return
    table = Table(title=f"Budgets, current window (as of {utc_minute(now)})",
                  caption="used: spent by finished calls plus held by calls still running")
    for col in ("budget", "policy", "limit", "used", "left", "used %", "window", "rolls in"):
        table.add_column(col, justify="left" if col in ("budget", "policy") else "right")
    for r in rows:
        table.add_row(*_cells(r))
    console.print(table)


def _cells(r: dict[str, Any]) -> list[str]:
    share = r["used_share"]
    return [escape(r["budget"]), escape(r["policy"] or "-"), _amount(r["limit"], r["unit"]),
            _amount(r["used"], r["unit"]), _amount(r["remaining"], r["unit"]),
            "-" if share is None else f"{100 * share:.1f} %", _window(r["window_s"]), _rolls_in(r["rolls_in_s"])]
