"""`router data ...`: bring outside data into the project's formats."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

data_app = typer.Typer(
    help="Outcomes files: import outside data (RouteLLM CSVs, AlpacaEval results) or measure the local models.",
    no_args_is_help=True,
)
console = Console(stderr=True)


@data_app.command("import-routellm")
def import_routellm_cmd(
    path: Path = typer.Argument(..., help="A RouteLLM response CSV, or a folder of them."),  # noqa: B008
    out: Path = typer.Option(..., "-o", "--out", help="Outcomes file to write (JSON Lines)."),  # noqa: B008
    models: Path = typer.Option(None, "--models", help="Model card folder (default: the shipped cards)."),  # noqa: B008
    keep_responses: bool = typer.Option(False, help="Keep GSM8K response texts as `answer`."),
) -> None:
    """Convert RouteLLM response CSVs into an outcomes file; model columns map to model cards by alias."""
    from ..cards import load_catalogue
    from ..config import RouterConfig
    from ..errors import RouterError
    from ..simulate.importers import import_routellm

    try:
        cards = load_catalogue(models or RouterConfig.load().models_dir)
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


@data_app.command("import-alpaca-eval")
def import_alpaca_eval_cmd(
    path: Path = typer.Argument(  # noqa: B008
        ..., help="AlpacaEval's results/ folder (e.g. ../shared/data/alpaca_eval/results) or a checkout root."
    ),
    out: Path = typer.Option(..., "-o", "--out", help="Outcomes file to write (JSON Lines)."),  # noqa: B008
    models: Path = typer.Option(  # noqa: B008
        None, "--models", help="Model card folder; its catalogue/ is read too (default: the shipped cards)."
    ),
    include_reference: bool = typer.Option(
        False, help="Also write the judge's reference model (gpt4_1106_preview, 0.5 on every row by construction)."
    ),
) -> None:
    """Convert AlpacaEval judge annotations into an outcomes file: `correct` = the judge's preference - 1 (a
    score in [0, 1]), `output_tokens` = ceil(answer characters / 4), one line per instruction, task
    `alpaca_eval/<source set>`. Generators map to cards by name or alias; variants (`-togetherai`, `_concise`,
    ...) map to their base model's card, and are skipped when the base model is in the folder too."""
    from ..cards import load_catalogue
    from ..config import RouterConfig
    from ..errors import RouterError
    from ..simulate.alpaca_eval import import_alpaca_eval

    try:
        cards = load_catalogue(models or RouterConfig.load().models_dir)
        with console.status("importing") as status:
            report = import_alpaca_eval(
                path, out, cards, include_reference=include_reference,
                progress=lambda name, k: status.update(f"read {name} ({k} models)"),
            )
    except RouterError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {report.rows:,} instructions ({report.outcomes:,} outcomes of {len(report.models)} models) "
               f"to {out}; by source: " + ", ".join(f"{k} {v}" for k, v in sorted(report.per_dataset.items())))
    for variant, base in report.variants_skipped.items():
        typer.echo(f"skipped {variant}: a variant of {base}, which is in the folder too (one card, one column)")
    if report.missing_preference:
        typer.echo(f"skipped {report.missing_preference} annotations without a preference")


_MEASURE_SIZES = {"sentiment": 200, "math": 60}


@data_app.command("measure-local")
def measure_local_cmd(
    task: str = typer.Argument(..., help="What to measure: sentiment, math or chat."),
    n: int = typer.Option(0, "--n", help="How many requests (default: 200 sentiment, 60 math, every chat item)."),
) -> None:
    """Run the local models on shipped data and write data/outcomes/<task>_local.jsonl (correct, joules, latency
    per model and request), so the local tiers' P(correct) is measured here, not assumed. Takes minutes: every
    request goes to each local LLM."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
    from rich.table import Table

    from ..training import local_outcomes as lo

    if task not in ("sentiment", "math", "chat"):
        raise typer.BadParameter("task must be sentiment, math or chat", param_hint="TASK")
    total = n or _MEASURE_SIZES.get(task) or len(lo.read_jsonl(lo.DATA_DIR / "chat_checked" / "questions.jsonl"))
    columns = (BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*Progress.get_default_columns()[:1], *columns, console=console) as bar:
        models = lo.LOCAL_MODELS if task == "sentiment" else lo.LLM_MODELS
        job = bar.add_task(f"{task}: {', '.join(models)} (one model at a time)", total=total * len(models))
        tick = lambda _stage, done: bar.update(job, completed=done)  # noqa: E731
        if task == "sentiment":
            summary = lo.measure_sentiment(n=total, progress=tick)
        elif task == "math":
            summary = lo.measure_math(n=total, progress=tick)
        else:
            summary = lo.measure_chat(limit=n or None, progress=tick)
    table = Table(title=f"{task}: {summary['n']} requests, measured on this machine (joules: CPU-time model)")
    for col in ("model", "accuracy", "median J", "median latency s"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for model, stats in summary.items():
        if isinstance(stats, dict):
            table.add_row(model, f"{stats['accuracy']:.1%}", f"{stats['median_energy_j']:.4g}",
                          f"{stats['median_latency_s']:.3g}")
    Console().print(table)
    typer.echo(f"wrote data/outcomes/{task}_local.jsonl; rerun `router train classifier` to use it")
