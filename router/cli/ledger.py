"""``router ledger``: what the requests cost. Alone it prints totals per model and per day with everyday
equivalents; ``report`` adds groupings, carbon, the energy saved against an always-large router and a plot;
``export`` hands the records to other tools; ``prune`` and ``retention`` keep the file bounded; ``doctor``
checks the store and replays journals.

Every command prints what went wrong and exits non-zero (2: the ledger or an option; 1: anything else), never
a traceback (``router -v`` logs it).

Length: one command group, each command short; what they share (opening the configured ledger, the progress on
stderr, the error line) is here so each reads the same."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from .._dates import utc_minute
from ..config import RouterConfig
from ..energy.carbon import equivalents, format_joules, recorded_equivalents
from ..errors import RouterError
from ..ledger import Ledger
from ..ledger.base import group_gaps, totals_from_summary
from ..ledger.errors import redact
from .ledger_files import fail, ledger_inputs, open_configured, refuse_a_future_cut_off, require_ledger
from .output import STDOUT, counted, make_folder_for, refuse_stdout, stdout_console
from .paths import refuse_overwriting_inputs, refuse_unwritable_outputs
from .when import SINCE_HELP, parse_length, parse_range, parse_when

ledger_app = typer.Typer(
    help="Energy and carbon of the requests routed so far: totals, reports, budgets used and left, exports, "
    "retention. `router ledger` alone prints the totals per model and per day, with everyday equivalents.",
    invoke_without_command=True,
    no_args_is_help=False,
    rich_markup_mode=None,
)

log = logging.getLogger("router.cli")
F = TypeVar("F", bound=Callable[..., Any])

_LEDGER_OPT = typer.Option(
    None, "--ledger", help="Ledger URL (sqlite:///PATH, redis://..., postgresql://...); default: config."
)
_CONFIG_OPT = typer.Option(None, "--config", "-c", help="Router config YAML.")


class By(str, Enum):
    model = "model"
    tier = "tier"
    key = "key"
    policy = "policy"
    task = "task"
    day = "day"
    source = "source"


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"
    html = "html"


class ExportFormat(str, Enum):
    csv = "csv"
    parquet = "parquet"


_BY_OPT = typer.Option(By.model, "--by", help="Group rows by this.")
_FORMAT_OPT = typer.Option(None, "--format", "-f", help="table, csv, json or html; default: the one -o's file "
                           "ending names (.csv, .json, .html), else table.")
_REPORT_OUTPUT_OPT = typer.Option(None, "--output", "-o",
                                  help="Write the report here instead of stdout (- is stdout too).")
_PLOT_OPT = typer.Option(None, "--plot", help="Also write the over-time plot as PNG here (a file: not -).")
_EXPORT_OUTPUT_OPT = typer.Option(..., "--output", "-o", help="File to write; - writes CSV to stdout.")
_EXPORT_FORMAT_OPT = typer.Option(None, "--format", "-f", help="csv or parquet; default: parquet for an -o ending in "
                                  ".parquet, else csv.")

OutputFormat = TypeVar("OutputFormat", Format, ExportFormat)


def _format_for(output: Path | None, given: OutputFormat | None, default: OutputFormat) -> OutputFormat:
    """``--format`` as given, else the one the output file's ending names (``-o ledger.parquet``, ``-o r.html``):
    without this, a file so named got the default format (CSV bytes in a .parquet file, a text table in a .csv)."""
    if given is not None:
        return given
    if output is None or output == STDOUT:
        return default
    ending = output.suffix.lower().removeprefix(".")
    ending = {"htm": "html", "pq": "parquet"}.get(ending, ending)
    return next((f for f in type(default) if f.value == ending), default)


def _config(config: Path | None, ledger: str | None) -> RouterConfig:
    return RouterConfig.load(config, ledger_url=ledger)


def _clean_errors(fn: F) -> F:
    """The command's errors as one message and a non-zero exit: ``RouterError`` (a ``LedgerError`` names the
    URL, the problem and the fix) and file errors exit 2, anything unexpected exits 1; no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.BadParameter, SystemExit, BrokenPipeError):
            raise  # a closed pipe is not the command's failure: main() ends it quietly
        except RouterError as exc:
            fail(str(exc))
        except OSError as exc:
            fail(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))
        except Exception as exc:  # noqa: BLE001 - the point: a person sees one line, `router -v` the detail
            log.info("router ledger failed", exc_info=True)
            fail(f"unexpected {type(exc).__name__}: {exc} (run `router -v ledger ...` for the traceback)", 1)

    return wrapper  # type: ignore[return-value]


_SINCE_READERS = ("report", "export")
"""The subcommands that read the group's ``--since`` (``router ledger --since 7d report``): a range of records."""

_NOT_SINCE = {
    "prune": "its cut-off is its own --older-than (e.g. prune --older-than 90d)",
    "prompts": "`prompts delete` takes its own cut-off, --before (e.g. prompts delete --before 30d)",
    "retention": "it keeps a number of days (e.g. retention 90)",
    "budgets": "it reads each budget's current window",
    "doctor": "it checks the whole ledger",
}


def _refuse_since_for(subcommand: str | None, since: str | None) -> None:
    """A usage error (exit 2) for the group's ``--since`` before a subcommand that reads no range: it went
    unread, so ``router ledger --since 1h prompts delete --all`` deleted every stored prompt, not the last hour's."""
    if since is None or subcommand is None or subcommand in _SINCE_READERS:
        return
    why = _NOT_SINCE.get(subcommand, "it reads no range of records")
    raise typer.BadParameter(f"applies to the ledger's totals, report and export, not to {subcommand}: {why}",
                             param_hint="'--since'")


@ledger_app.callback()
@_clean_errors
def ledger_main(
    ctx: typer.Context,
    ledger: str | None = _LEDGER_OPT,
    config: Path | None = _CONFIG_OPT,
    since: str | None = typer.Option(None, "--since", help=SINCE_HELP),
) -> None:
    """Totals per model and per day, with everyday equivalents (run a subcommand for more)."""
    _refuse_since_for(ctx.invoked_subcommand, since)
    ctx.obj = {"ledger": ledger, "config": config, "since": since}
    if ctx.invoked_subcommand is not None:
        return
    from ..ledger.report import report_dims

    try:
        cfg = _config(config, ledger)
        led = open_configured(cfg)
        start = parse_when(since) or 0.0
        summary = led.summary(start, dims=report_dims("model"))  # per model and per day: no row per key or task
        gap_rows = led.carbon_gap_rows(start, dims=("model",))  # the bucket gives the day
        led.close()
    except RouterError as exc:
        fail(str(exc))
        return
    console = stdout_console()
    if not summary:
        when = "" if since is None else f" since {utc_minute(start)}"
        where = escape(redact(cfg.ledger_url))
        console.print(f"No records{when} in {where}." if when else f"No records yet in {where}.")
        return
    gaps = (sum(r.requests for r in gap_rows), sum(r.energy_j for r in gap_rows))
    for by, title in (("model", "Per model"), ("day", "Per day (UTC)")):
        table = Table(title=title)
        group_gap = group_gaps(gap_rows, by)
        columns = [by, "requests", "errors", "rejected", "energy", "CO2e g", "mean latency ms"]
        if gaps[0]:  # a column only for the ledgers that have such records, as `router ledger report`'s
            columns.append("without CO2e")
            table.caption = "without CO2e: records with no CO2e figure, left out of CO2e g"
        for col in columns:
            table.add_column(col, justify="left" if col == by else "right")
        for t in totals_from_summary(summary, by):  # a group is text from the records: `[beta]` is not markup
            table.add_row(
                escape(t["group"]), f"{t['requests']:,}", f"{t['errors']:,}", f"{t['rejected']:,}",
                format_joules(t["energy_j"]), f"{t['co2e_g']:.3g}", f"{t['mean_latency_ms']:.0f}",
                *([f"{group_gap.get(t['group'], (0, 0.0))[0]:,}"] if gaps[0] else []),
            )  # fmt: skip
        console.print(table)
    total = sum(r.energy_j for r in summary)
    measured = sum(r.energy_j for r in summary if r.energy_source.startswith("measured"))
    everyday = recorded_equivalents(total, sum(r.co2e_g for r in summary), cfg.grid_g_per_kwh,
                                    records=sum(r.requests for r in summary), gaps=gaps)
    console.print(f"Total: {everyday.sentence()}")
    console.print(
        f"{measured / total:.0%} of these joules were measured (RAPL/NVML), the rest estimated (CPU-time "
        "model or card token profiles); `router ledger report` shows the energy saved by routing."
        if total
        else "No energy recorded."
    )


def _stderr_progress(*columns: ProgressColumn) -> Progress:
    """A bar for a step that takes minutes on a big ledger, on stderr and only where stderr is a terminal (so a file
    or pipe gets nothing, and stdout, which may be a report, neither), gone when the step ends."""
    err = Console(stderr=True)
    return Progress(TextColumn("{task.description}"), *columns, TimeElapsedColumn(), console=err, transient=True,
                    disable=not err.is_terminal)


def _record_count(led: Ledger, since: float, until: float | None) -> int:
    """How many records ``since <= ts < until`` hold, from the hourly summary (thousands of rows, not millions)."""
    return sum(r.requests for r in led.summary(since, until, dims=()))


def _opts(ctx: typer.Context, ledger: str | None, config: Path | None) -> tuple[str | None, Path | None]:
    parent = ctx.obj or {}
    return ledger or parent.get("ledger"), config or parent.get("config")


def _since(ctx: typer.Context, since: str | None) -> str | None:
    """A subcommand's ``--since``, else the group's (``router ledger --since 7d report``)."""
    return since if since is not None else (ctx.obj or {}).get("since")



def _savings_sentence(saved_j: float, counterfactual: str, grid_g_per_kwh: float) -> str:
    """What routing saved against always using ``counterfactual``, or (when it cost more) how much more, at
    ``grid_g_per_kwh`` (the records' intensity)."""
    if saved_j >= 0:
        return f"Saved against always {counterfactual} (estimate): {equivalents(saved_j, grid_g_per_kwh).sentence()}"
    return (f"Routing used more than always {counterfactual} would have (estimate): "
            f"{equivalents(-saved_j, grid_g_per_kwh).sentence()} more")


@ledger_app.command()
@_clean_errors
def report(
    ctx: typer.Context,
    since: str | None = typer.Option(None, "--since", help=SINCE_HELP),
    until: str | None = typer.Option(None, "--until", help="Up to (exclusive); same forms as --since."),
    by: By = _BY_OPT,
    fmt: Format | None = _FORMAT_OPT,
    output: Path | None = _REPORT_OUTPUT_OPT,
    plot: Path | None = _PLOT_OPT,
    counterfactual: str | None = typer.Option(
        None, "--counterfactual", help="Model for the always-large estimate (default: largest callable card)."
    ),
    window: str = typer.Option("24h", "--window", help="The carbon counterfactual: had each request run at the "
                               "cleanest hour of this window from when it ran (e.g. 24h, 8h)."),
    ledger: str | None = _LEDGER_OPT,
    config: Path | None = _CONFIG_OPT,
) -> None:
    """Totals by model/tier/key/policy/task/day/source, CO2e (also by hour and by zone, and at the cleanest hour of
    a window), and energy saved against always using the large model."""
    from ..carbon.grid import Grid
    from ..cards import load_cards
    from ..ledger.carbon_report import build_carbon, rich_tables, summary_line
    from ..ledger.report import build_report, plot_png, rich_table, to_csv, to_html

    ledger, config = _opts(ctx, ledger, config)
    start, end = parse_range(_since(ctx, since), until)
    window_s = parse_length(window, "--window")
    refuse_stdout("--plot", plot, "a PNG image is binary")
    fmt = _format_for(output, fmt, Format.table)
    if output == STDOUT:
        output = None
    try:
        cfg = _config(config, ledger)
        refuse_overwriting_inputs({"-o/--output": output, "--plot": plot},
                                  ledger_inputs(cfg.ledger_url, "the ledger's own file"))
        refuse_unwritable_outputs({"-o/--output": output, "--plot": plot})
        cards = load_cards(cfg.models_dir)
        if counterfactual is not None and counterfactual not in cards:
            fail(f"--counterfactual {counterfactual!r} is not a model card in {cfg.models_dir}")
        led = open_configured(cfg)
        rep = build_report(
            led, cards, by=by.value, since=start, until=end, grid_g_per_kwh=cfg.grid_g_per_kwh,
            counterfactual=counterfactual,
        )  # fmt: skip
        # The cleanest-hour counterfactual reads only time-series files (other zones: the intensities the ledger
        # recorded), so a report needs neither an HTTP zone's API key in this shell nor a call to its API.
        series_zones = {zone: spec for zone, spec in cfg.carbon.zones.items() if spec.type == "file"}
        grid = Grid.from_settings(cfg.carbon.model_copy(update={"zones": series_zones}), cfg.grid_g_per_kwh)
        carbon = build_carbon(led, start, end, grid=grid, window_s=window_s)
        led.close()
    except RouterError as exc:
        fail(str(exc))
        return
    for path in (output, plot):
        make_folder_for(path)
    if plot is not None:
        plot_png(rep, plot)
    if fmt is Format.table:
        console = stdout_console(file=output.open("w", encoding="utf-8") if output else None,
                                 width=160 if output else None)
        console.print(rich_table(rep))
        for table in rich_tables(carbon):
            console.print(table)
        console.print(summary_line(carbon))
        console.print(f"Total: {rep.everyday().sentence()}")
        if rep.counterfactual_model:
            console.print(_savings_sentence(rep.total.saved_j, rep.counterfactual_model,
                                            rep.everyday().grid_g_per_kwh))
        if output:
            console.file.close()
    else:
        if fmt is Format.json:
            text = json.dumps({**rep.as_dict(), "carbon": carbon.as_dict()}, indent=2) + "\n"
        else:
            text = {Format.csv: to_csv, Format.html: to_html}[fmt](rep)
        if output:
            output.write_text(text, encoding="utf-8")
        else:
            sys.stdout.write(text)
    if output or plot:
        Console(stderr=True).print("wrote " + ", ".join(str(p) for p in (output, plot) if p))


@ledger_app.command()
@_clean_errors
def export(
    ctx: typer.Context,
    output: Path = _EXPORT_OUTPUT_OPT,
    fmt: ExportFormat | None = _EXPORT_FORMAT_OPT,
    since: str | None = typer.Option(None, "--since", help=SINCE_HELP),
    until: str | None = typer.Option(None, "--until", help="Up to (exclusive)."),
    ledger: str | None = _LEDGER_OPT,
    config: Path | None = _CONFIG_OPT,
) -> None:
    """Every record (one row each) as CSV or Parquet, for pandas, DuckDB, spreadsheets."""
    from ..ledger.export import export_csv, export_parquet, parquet_available

    fmt = _format_for(output, fmt, ExportFormat.csv)
    if fmt is ExportFormat.parquet and not parquet_available():
        fail("Parquet export needs pyarrow, which is not installed here (pip install pyarrow); use --format csv")
    to_stdout = output == STDOUT
    if to_stdout and fmt is ExportFormat.parquet:
        fail("-o -: Parquet is written to a file, not to stdout; name a file, or use --format csv for stdout")
    ledger, config = _opts(ctx, ledger, config)
    start, end = parse_range(_since(ctx, since), until)
    cfg = _config(config, ledger)
    if not to_stdout:
        refuse_overwriting_inputs({"-o/--output": output}, ledger_inputs(cfg.ledger_url, "the ledger's own file"))
        refuse_unwritable_outputs({"-o/--output": output})  # before the export, which streams every record
    led = open_configured(cfg)
    make_folder_for(output)
    fn = export_parquet if fmt is ExportFormat.parquet else export_csv
    with _stderr_progress(BarColumn(), MofNCompleteColumn()) as bar:
        total = None if bar.disable else _record_count(led, start, end)
        job = bar.add_task("records written", total=total)

        def written(done: int) -> None:
            # a summary that trails its records (`router ledger doctor` finds that) makes the bar grow, not overflow
            bar.update(job, completed=done, total=None if total is None else max(total, done))

        if to_stdout:
            n = export_csv(led, sys.stdout, start, end, progress=written)
        else:
            n = fn(led, output, start, end, progress=written)
    led.close()
    where = "stdout" if to_stdout else escape(str(output))
    Console(stderr=True).print(f"wrote {counted(n, 'record')} to {where} ({fmt.value})")


@ledger_app.command()
@_clean_errors
def prune(
    ctx: typer.Context,
    older_than: str = typer.Option(..., "--older-than", help="Delete records older than this: 90d, 2w, a date "
                                   "(a date in the future is refused without --force)."),
    force: bool = typer.Option(False, "--force", help="Prune even with a cut-off in the future: every record "
                               "written until then goes, those budgets and reports count on too."),
    ledger: str | None = _LEDGER_OPT,
    config: Path | None = _CONFIG_OPT,
) -> None:
    """Delete old records now, with their hourly summaries, feedback and stored prompts older than the same cut-off,
    and budget counters of windows that ended before it. Says how many records go before it deletes them."""
    ledger, config = _opts(ctx, ledger, config)
    cut = parse_when(older_than)
    if cut is None:
        raise typer.BadParameter("--older-than: give an age (90d) or a date")
    led = open_configured(_config(config, ledger))
    n = _record_count(led, 0.0, cut)
    in_the_future = refuse_a_future_cut_off(
        led, "--older-than", older_than, cut, force=force, deletion="the prune", age="90d",
        doomed=lambda: f"{counted(n, 'record')}, every record written until then, those budgets and reports count on "
                       "too")
    Console(stderr=True).print(f"pruning {counted(n, 'record')} older than {utc_minute(cut)}")
    # one transaction with no way to tell how far it is: a spinner says it is still at work
    with _stderr_progress(SpinnerColumn()) as bar:
        bar.add_task("pruning", total=None)
        n = led.prune(cut)
    led.close()
    future = ", a cut-off in the future (--force)" if in_the_future else ""
    Console().print(f"pruned {counted(n, 'record')} older than {utc_minute(cut)}{future} (and the feedback and stored "
                    "prompts of that age)")


class _StoredRetention(Protocol):
    """A ledger that stores its retention setting (SQLite, PostgreSQL, Redis; a journaled one passes it on)."""

    def set_retention_days(self, days: float | None) -> None: ...

    def apply_retention(self) -> int: ...


@ledger_app.command()
@_clean_errors
def retention(
    ctx: typer.Context,
    days: float | None = typer.Argument(None, help="Keep this many days; omit to show the setting."),
    off: bool = typer.Option(False, "--off", help="Keep everything (remove the setting)."),
    ledger: str | None = _LEDGER_OPT,
    config: Path | None = _CONFIG_OPT,
) -> None:
    """Show or set how long records are kept; stored with the ledger so every process applies it."""
    if off and days is not None:  # which one was meant is a guess either way: neither is applied
        raise typer.BadParameter(f"give either a number of days or --off, not both (got {days:g} and --off)",
                                 param_hint="'days' / '--off'")
    ledger, config = _opts(ctx, ledger, config)
    # a setting may come before the records
    led = open_configured(_config(config, ledger), create=days is not None or off)
    if days is not None or off:
        if getattr(led, "set_retention_days", None) is None:
            fail(f"{type(led).__name__} has no stored retention setting; use `router ledger prune`")
        stored = cast(_StoredRetention, led)
        if off:
            stored.set_retention_days(None)
        else:
            stored.set_retention_days(days)
            pruned = stored.apply_retention()
            Console().print(f"pruned {counted(pruned, 'record')} older than {days:g} day{'' if days == 1 else 's'}")
    current = getattr(led, "retention_days", None)
    kept = "keep everything" if current is None else f"{current:g} day{'' if current == 1 else 's'}"
    Console().print(f"retention: {kept}")
    led.close()


_JOURNAL_OPT = typer.Option(
    None, "--journal", help="Journal folder (default: the config's journal.folder, else beside a "
    "SQLite ledger or in the user data dir)."
)
_REPLAY_OPT = typer.Option(True, "--replay/--no-replay", help="Replay the journals of stopped processes.")
_REPAIR_OPT = typer.Option(False, "--repair", help="Rebuild the hourly summary if it disagrees with the records.")


@ledger_app.command()
@_clean_errors
def doctor(
    ctx: typer.Context,
    journal: Path | None = _JOURNAL_OPT,
    replay: bool = _REPLAY_OPT,
    repair: bool = _REPAIR_OPT,
    ledger: str | None = _LEDGER_OPT,
    config: Path | None = _CONFIG_OPT,
) -> None:
    """Check the store (integrity, schema version, summary against records) and its journals; replay the
    journals of stopped processes. Exits 1 when a problem remains."""
    from ..ledger.doctor import diagnose
    from ..ledger.journal import journal_folder

    ledger, config = _opts(ctx, ledger, config)
    cfg = _config(config, ledger)
    require_ledger(cfg.ledger_url)
    if journal is not None and not journal.is_dir():
        # a mistyped folder would read as "nothing pending" while the real one holds records not yet replayed
        fail(f"--journal {journal} is not a folder: no journal to check or replay there; leave --journal out for "
             f"this ledger's own ({journal_folder(cfg.journal, cfg.ledger_url)}), or name the folder a router "
             "journals into (journal.folder in its config)")
    folder = journal or journal_folder(cfg.journal, cfg.ledger_url)
    with _stderr_progress(BarColumn()) as bar:
        job = bar.add_task("opening the ledger", total=None)
        rep = diagnose(cfg.ledger_url, journal_folder=folder, replay=replay, repair=repair,
                       progress=lambda what, done, total: bar.update(job, description=what, completed=done,
                                                                     total=total))
    console = Console(highlight=False, soft_wrap=True)
    console.print(f"ledger {escape(rep.url)}")
    for f in rep.findings:
        console.print(("[green]ok[/green]      " if f.ok else "[red]problem[/red] ") + escape(f.text))
    for action in rep.actions:
        console.print("[cyan]did[/cyan]     " + escape(action))
    if rep.problems:
        console.print(f"{len(rep.problems)} problem(s)")
        raise typer.Exit(1)
    console.print("no problems")
