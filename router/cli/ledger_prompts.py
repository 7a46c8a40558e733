"""``router ledger prompts``: the prompts kept beside the ledger (only with ``prompts: {store: true}``): count them,
delete them by request, by age or all. Retention (``prompts.retention_days``, default 30) also deletes them when a
router starts and hourly while it stores them."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from .._dates import utc_minute
from .ledger import _CONFIG_OPT, _LEDGER_OPT, _clean_errors, _config, _opts, ledger_app
from .ledger_files import fail, open_configured, refuse_a_future_cut_off
from .output import counted
from .when import parse_when

prompts_app = typer.Typer(help="Stored prompts (kept only with `prompts: {store: true}`): count or delete them.",
                          no_args_is_help=True, rich_markup_mode=None)


@prompts_app.command("count")
@_clean_errors
def count(ctx: typer.Context, ledger: str | None = _LEDGER_OPT, config: Path | None = _CONFIG_OPT) -> None:
    """How many prompts are stored, and the oldest one's time."""
    ledger, config = _opts(ctx, ledger, config)
    led = open_configured(_config(config, ledger))
    try:
        count, oldest_ts = led.prompt_summary()
    finally:
        led.close()
    oldest = "-" if oldest_ts is None else utc_minute(oldest_ts)
    Console().print(f"{counted(count, 'stored prompt')}; oldest {oldest}")


@prompts_app.command("delete")
@_clean_errors
def delete(
    ctx: typer.Context,
    before: str | None = typer.Option(None, "--before", help="Delete those stored before this: an ISO date "
                                      "(UTC), 30d (older than 30 days), or epoch seconds."),
    all_: bool = typer.Option(False, "--all", help="Delete every stored prompt."),
    request: str | None = typer.Option(None, "--request", help="Delete the prompt of this request id."),
    force: bool = typer.Option(False, "--force", help="Delete even with a --before in the future: every prompt "
                               "stored until then goes."),
    ledger: str | None = _LEDGER_OPT,
    config: Path | None = _CONFIG_OPT,
) -> None:
    """Delete stored prompts: exactly one of --before DATE, --all or --request ID. Feedback and ledger records
    stay (they hold no prompt text)."""
    if sum([before is not None, request is not None, all_]) != 1:
        fail("give exactly one of --before DATE, --all or --request ID")
    # parse_when reads "" as no time at all, and no cut-off would delete every prompt (an unset $CUTOFF)
    cut = None if before is None else parse_when(before)
    if before is not None and cut is None:
        raise typer.BadParameter("give a date (2024-05-01, UTC), an age (30d) or epoch seconds; --all deletes "
                                 "every stored prompt", param_hint="'--before'")
    ledger, config = _opts(ctx, ledger, config)
    led = open_configured(_config(config, ledger))
    in_the_future = before is not None and cut is not None and refuse_a_future_cut_off(
        led, "--before", before, cut, force=force, deletion="the deletion", age="30d",
        doomed=lambda: f"{counted(led.prompt_summary()[0], 'stored prompt')}, every prompt stored until then")
    try:
        if request is not None:
            n = led.delete_prompts(request_id=request)
            said = f"{counted(n, 'stored prompt')} of request {request}"
        elif cut is not None:
            n = led.delete_prompts(before=cut)
            said = (f"{counted(n, 'prompt')} stored before {utc_minute(cut)}"
                    + (", a cut-off in the future (--force)" if in_the_future else ""))
        else:
            n = led.delete_prompts()
            said = f"{counted(n, 'stored prompt')} (all)"
    finally:
        led.close()
    Console().print(f"deleted {said}")


ledger_app.add_typer(prompts_app, name="prompts")
