"""`router data ...`: bring outside data into the project's formats."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

data_app = typer.Typer(help="Turn outside data (e.g. RouteLLM response CSVs) into outcomes files.",
                       no_args_is_help=True)
console = Console(stderr=True)


@data_app.command("import-routellm")
def import_routellm_cmd(
    path: Path = typer.Argument(..., help="A RouteLLM response CSV, or a folder of them."),  # noqa: B008
    out: Path = typer.Option(..., "-o", "--out", help="Outcomes file to write (JSON Lines)."),  # noqa: B008
    models: Path = typer.Option(None, "--models", help="Model card folder (default: the shipped cards)."),  # noqa: B008
    keep_responses: bool = typer.Option(False, help="Keep GSM8K response texts as `answer`."),
) -> None:
    """Convert RouteLLM response CSVs into an outcomes file; model columns map to model cards by alias."""
    from ..cards import load_cards
    from ..config import RouterConfig
    from ..errors import RouterError
    from ..simulate.importers import import_routellm

    try:
        cards = load_cards(models or RouterConfig.load().models_dir)
        with console.status("importing") as status:
            report = import_routellm(
                path, out, cards, keep_responses=keep_responses,
                progress=lambda name, n: status.update(f"imported {name} ({n} rows)"),
            )
    except RouterError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None
    mapped = ", ".join(f"{col} -> {card}" for col, card in report.models.items())
    typer.echo(f"wrote {report.rows:,} requests from {report.files} file(s) to {out}; models: {mapped}")
