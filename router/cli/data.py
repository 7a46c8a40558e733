"""`router data ...`: bring outside data into the project's formats."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from .output import is_stdout, stdout_console, text_output
from .paths import refuse_unwritable_outputs

if TYPE_CHECKING:
    from .._router import Router

data_app = typer.Typer(
    help="Outcomes files: import outside data (RouteLLM CSVs, AlpacaEval results), measure models, or export the "
    "requests scored by feedback from the ledger.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
console = Console(stderr=True)


def _say(out: Path) -> Callable[[str], None]:
    """How a command says what it wrote: on stdout, or on stderr where ``out`` is ``-`` and stdout holds the
    outcomes themselves."""
    return functools.partial(typer.echo, err=is_stdout(out))


def _where(out: Path) -> str:
    return "stdout" if is_stdout(out) else str(out)


_OUT_OPT = typer.Option(..., "-o", "--out", dir_okay=False,
                        help="Outcomes file to write (JSON Lines); - writes them to stdout.")


@data_app.command("import-routellm")
def import_routellm_cmd(
    path: Path = typer.Argument(..., help="A RouteLLM response CSV, or a folder of them."),  # noqa: B008
    out: Path = _OUT_OPT,
    models: Path = typer.Option(None, "--models", help="Model card folder (default: the shipped cards)."),  # noqa: B008
    keep_responses: bool = typer.Option(False, help="Keep GSM8K response texts as `answer`."),
) -> None:
    """Convert RouteLLM response CSVs into an outcomes file; model columns map to model cards by alias."""
    from ..cards import load_catalogue
    from ..config import RouterConfig
    from ..errors import RouterError
    from ..simulate.importers import csv_files, import_routellm
    from .paths import refuse_overwriting_inputs

    try:
        refuse_overwriting_inputs({"-o/--out": out}, dict.fromkeys(csv_files(path), "a RouteLLM CSV being imported"))
        refuse_unwritable_outputs({"-o/--out": out})
        cards = load_catalogue(models or RouterConfig.load().models_dir)
        with console.status("importing") as status, text_output(out) as target:
            report = import_routellm(
                path, target, cards, keep_responses=keep_responses,
                progress=lambda name, n: status.update(f"imported {name} ({n} rows)"),
            )
    except RouterError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None
    mapped = ", ".join(f"{col} -> {card}" for col, card in report.models.items())
    # with -o -, stdout holds the outcomes: what was written is said on stderr
    typer.echo(f"wrote {report.rows:,} requests from {report.files} file(s) to {_where(out)}; models: {mapped}",
               err=is_stdout(out))


@data_app.command("import-alpaca-eval")
def import_alpaca_eval_cmd(
    path: Path = typer.Argument(  # noqa: B008
        ..., help="AlpacaEval's results/ folder (e.g. ../shared/data/alpaca_eval/results) or a checkout root."
    ),
    out: Path = _OUT_OPT,
    models: Path = typer.Option(  # noqa: B008
        None, "--models", help="Model card folder; its catalogue/ is read too (default: the shipped cards)."
    ),
    include_reference: bool = typer.Option(
        False, help="Also write the judge's reference model (gpt4_1106_preview, 0.5 on every row by construction)."
    ),
) -> None:
    """Convert AlpacaEval judge annotations into an outcomes file: `correct` = the judge's preference - 1 (a
    score in [0, 1]), `output_tokens` = answer UTF-8 bytes / 4 (the Router's estimate), one line per instruction, task
    `alpaca_eval/<source set>`. Generators map to cards by name or alias; variants (`-togetherai`, `_concise`,
    ...) map to their base model's card, and are skipped when the base model is in the folder too."""
    from ..cards import load_catalogue
    from ..config import RouterConfig
    from ..errors import RouterError
    from ..simulate.alpaca_eval import import_alpaca_eval

    refuse_unwritable_outputs({"-o/--out": out})
    try:
        cards = load_catalogue(models or RouterConfig.load().models_dir)
        with console.status("importing") as status, text_output(out) as target:
            report = import_alpaca_eval(
                path, target, cards, include_reference=include_reference,
                progress=lambda name, k: status.update(f"read {name} ({k} models)"),
            )
    except RouterError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None
    say = _say(out)
    say(f"wrote {report.rows:,} instructions ({report.outcomes:,} outcomes of {len(report.models)} models) "
        f"to {_where(out)}; by source: " + ", ".join(f"{k} {v}" for k, v in sorted(report.per_dataset.items())))
    for variant, base in report.variants_skipped.items():
        say(f"skipped {variant}: a variant of {base}, which is in the folder too (one card, one column)")
    if report.missing_preference:
        say(f"skipped {report.missing_preference} annotations without a preference")


_MEASURE_SIZES = {"sentiment": 200, "math": 60}


@data_app.command("measure-local")
def measure_local_cmd(
    task: str = typer.Argument(..., help="What to measure: sentiment, math or chat."),
    n: int | None = typer.Option(
        None, "--n", min=1, help="How many requests (default: 200 sentiment, 60 math, every chat item)."
    ),
    out: Path | None = typer.Option(  # noqa: B008
        None, "--out", "-o", help="Where to write the outcomes (default: data/outcomes/<task>_local.jsonl, the file "
        "`router train classifier` reads, replaced); - writes them to stdout (and the table to stderr)."),
) -> None:
    """Run the local models on shipped data and write data/outcomes/<task>_local.jsonl (correct, joules, latency
    per model and request), so the local tiers' P(correct) is measured here, not assumed. Takes minutes: every
    request goes to each local LLM. A trial run (a small --n) belongs in a file of its own (--out): the default
    replaces the project's measured outcomes."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
    from rich.table import Table

    from ..training import local_outcomes as lo
    from ..training.common import source_data

    if task not in ("sentiment", "math", "chat"):
        raise typer.BadParameter("task must be sentiment, math or chat", param_hint="TASK")
    source_data("router data measure-local")
    destination = out or lo.DATA_DIR / "outcomes" / f"{task}_local.jsonl"
    refuse_unwritable_outputs({"-o/--out": destination})  # before the models run, which takes hours
    total = n or _MEASURE_SIZES.get(task) or len(lo.read_jsonl(lo.DATA_DIR / "chat_checked" / "questions.jsonl"))
    columns = (BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*Progress.get_default_columns()[:1], *columns, console=console) as bar, \
            text_output(destination) as target:
        models = lo.LOCAL_MODELS if task == "sentiment" else lo.LLM_MODELS
        job = bar.add_task(f"{task}: {', '.join(models)} (one model at a time)", total=total * len(models))
        tick = lambda _stage, done: bar.update(job, completed=done)  # noqa: E731
        if task == "sentiment":
            summary = lo.measure_sentiment(n=total, out=target, progress=tick)
        elif task == "math":
            summary = lo.measure_math(n=total, out=target, progress=tick)
        else:
            summary = lo.measure_chat(out=target, limit=n or None, progress=tick)
    table = Table(title=f"{task}: {summary['n']} requests, measured on this machine (joules: CPU-time model)")
    for col in ("model", "accuracy", "median J", "median latency s"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for model, stats in summary.items():
        if isinstance(stats, dict):
            table.add_row(model, f"{stats['accuracy']:.1%}", f"{stats['median_energy_j']:.4g}",
                          f"{stats['median_latency_s']:.3g}")
    (console if is_stdout(destination) else stdout_console()).print(table)
    _say(destination)(f"wrote {_where(destination)}"
                      + ("; rerun `router train classifier` to use it" if out is None else ""))


@data_app.command("from-ledger")
def from_ledger_cmd(
    out: Path = _OUT_OPT,
    ledger: str = typer.Option(None, "--ledger", help="Ledger URL (default: the config's)."),
    config: Path = typer.Option(None, "--config", "-c", help="Router config YAML."),  # noqa: B008
    since: str = typer.Option(None, "--since", help="Only requests from then: 7d, 24h, an ISO date or epoch s."),
) -> None:
    """Export the requests people or the judge scored as an outcomes file (id, prompt, task, outcomes {model:
    {correct, output_tokens, energy_j, requests}}), for `router train feedback`, `router calibrate` and `router
    simulate`. Needs the prompts, which are kept only with `prompts: {store: true}` in the config. Per request, a
    person's newest score wins over judges'; without one, the mean of each judge's newest. Requests with the same
    prompt are one line, one outcome per model that answered (mean score)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress

    from ..config import RouterConfig
    from ..errors import RouterError
    from ..training.from_ledger import export_outcomes
    from .ledger_files import ledger_inputs, open_configured
    from .paths import refuse_overwriting_inputs
    from .when import parse_when

    try:
        cfg = RouterConfig.load(config, ledger_url=ledger)
        refuse_overwriting_inputs({"-o/--out": out},
                                  ledger_inputs(cfg.ledger_url, "the ledger the requests are read from"))
        refuse_unwritable_outputs({"-o/--out": out})
        led = open_configured(cfg)  # as `router ledger`: a SQLite ledger not there is an error, not created empty
        try:
            with Progress(*Progress.get_default_columns()[:1], BarColumn(), MofNCompleteColumn(), console=console,
                          transient=True) as bar:
                job = bar.add_task("stored prompts", total=None)
                with text_output(out) as target:
                    report = export_outcomes(led, target, since=parse_when(since) or 0.0,
                                             progress=lambda done, total: bar.update(job, completed=done,
                                                                                     total=total))
            stored_anywhere = led.prompt_summary()[0] if not report.prompts else report.prompts
        finally:
            led.close()
    except RouterError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None
    say = _say(out)
    say(f"wrote {report.lines:,} lines ({report.requests:,} scored requests) to {_where(out)}")
    if report.models:
        say("answered by: " + ", ".join(f"{m} {n}" for m, n in report.models.most_common()))
        say("feedback from: " + ", ".join(f"{s} {n}" for s, n in report.sources.most_common()))
    say(f"skipped: {report.without_feedback:,} stored prompts without feedback, {report.without_answer:,} "
        "requests without an answer")
    if not report.prompts and stored_anywhere:
        say(f"no stored prompts since {since}: the ledger holds {stored_anywhere:,}, all older")
    elif not report.prompts:
        say("no stored prompts: they are kept only with `prompts: {store: true}` in the config")


def _anchor_task(task: str) -> str:
    from ..training.anchor_sets import TASKS

    if task not in TASKS:
        raise typer.BadParameter(f"no anchor set for task {task!r}; there are: {', '.join(TASKS)}")
    return task


def _check_names(router: Router, model: str, judge: str | None) -> None:
    """MODEL and --judge name cards with a backend: an error before the progress bar starts, not after."""
    from ..errors import UnknownModelError

    router.resolve_model(model, routed=False)
    if judge is not None:
        try:
            router.resolve_model(judge, routed=False)
        except UnknownModelError as exc:
            raise typer.BadParameter(exc.message, param_hint="'--judge'") from None


@data_app.command("measure")
def measure_cmd(
    model: str = typer.Argument(..., help="The model card (name or alias) to measure; it must have a backend."),
    anchors: int = typer.Option(20, "--anchors", min=1, max=50, help="How many anchors of the fixed set to use."),
    task: str = typer.Option("chat", "--task", callback=_anchor_task, help="chat (scored by a judge against a "
                             "reference answer) or sentiment (scored by the label)."),
    judge: str | None = typer.Option(None, "--judge", help="The judge model for chat anchors (default: the config's "
                              "judge.model)."),
    max_tokens: int = typer.Option(256, "--max-tokens", min=1, help="Answer length limit per anchor."),
    judge_max_tokens: int | None = typer.Option(
        None, "--judge-max-tokens", min=1, max=8192, help="The judge's verdict length limit (default: the config's "
        "judge.score_max_tokens, else 8; 256 or more for a judge that reasons before its score line)."),
    save: bool = typer.Option(True, "--save/--no-save", help="Write the fitted row to <models>/classifier/"
                              "added_models.json, which needs a classifier of its own there (--no-save: only "
                              "print it)."),
    config: Path = typer.Option(None, "--config", "-c", help="Router config YAML (models, ledger)."),  # noqa: B008
) -> None:
    """Call MODEL through its backend on N fixed anchor requests (data/anchors/), score the answers (reference
    match where there is one, else a judge model from the cards against the reference answer) and fit MODEL's
    representation from them without retraining the rest; saved to <models>/classifier/added_models.json, where
    the classifier reads added models. Every call, the judge's included, is a ledger record."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from .._router import Router
    from ..classify.onnx_classifier import OnnxRequestClassifier
    from ..classify.quality import ADDED_FILE
    from ..config import JudgeSettings, RouterConfig, refuse_writing_installed_package
    from ..errors import ConfigError, RouterError
    from ..training.measure import measure_model
    from .paths import own_classifier_folder

    try:
        cfg = RouterConfig.load(config)
        judge = judge or (cfg.judge.model if cfg.judge else None)
        if judge_max_tokens is None:
            judge_max_tokens = cfg.judge.score_max_tokens if cfg.judge else JudgeSettings.model_fields[
                "score_max_tokens"].default
        if task == "chat" and judge is None:
            raise ConfigError("chat anchors are scored by a judge model: pass --judge MODEL (or set judge.model in "
                              "the config)")
        if save:  # before the anchors are run, which takes a while
            folder = own_classifier_folder(cfg.models_dir, "add the measured model to")
            refuse_writing_installed_package(folder / ADDED_FILE, "router data measure", "models_dir", None,
                                             "--no-save")
        with Router(cfg) as router:
            if not isinstance(router.classifier, OnnxRequestClassifier):
                raise typer.BadParameter(f"{cfg.models_dir}/classifier holds no trained classifier to add a model to")
            saved_to = router.classifier.folder / ADDED_FILE
            _check_names(router, model, judge if task == "chat" else None)
            columns = (BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
            with Progress(*Progress.get_default_columns()[:1], *columns, console=console) as bar:
                job = bar.add_task(f"{model} on {task} anchors", total=anchors)
                report = measure_model(router, router.classifier, model, task=task, anchors=anchors,
                                       judge=judge, max_tokens=max_tokens, judge_max_tokens=judge_max_tokens,
                                       save=save, progress=lambda done, _n: bar.update(job, completed=done))
    except (RouterError, ValueError) as exc:
        typer.echo(f"error: {getattr(exc, 'message', exc)}", err=True)
        raise typer.Exit(2) from None
    n = len(report.scores)
    cut = f", {report.judge_cut} cut at the judge's --judge-max-tokens" if report.judge_cut else ""
    typer.echo(f"{report.model} on {n} {task} anchors (scored by {report.judge or 'reference match'}; "
               f"{report.unscored} unscored{cut}): mean score {sum(report.scores) / n:.3f}, {report.joules:.1f} J")
    typer.echo(f"predicted P(good answer) on them: {report.before:.3f} before -> {report.after:.3f} fitted"
               + (f"; saved to {saved_to}" if save else " (not saved)"))
