"""`router simulate`: replay an outcomes file through the classifier and a policy, without calling any model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from .output import STDIN, is_stdout, refuse_stdout, refuse_two_on_stdout, stdout_console, text_output
from .paths import refuse_overwriting_inputs, refuse_unwritable_outputs

err = Console(stderr=True)
CARBON_SPAN_MAX_H = 876_000.0
"""The longest ``--carbon-span``, 100 years in hours: the series repeats over a longer span, and a far longer one
puts request times past what the hour index can hold."""


def _targets(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"--targets: comma-separated numbers in [0, 1], got {text!r}") from None
    if not values or any(not 0.0 <= v <= 1.0 for v in values):
        raise typer.BadParameter(f"--targets: numbers in [0, 1], got {text!r}")
    return values


def _carbon_start(carbon: str | None, start: str | None, span: float | None) -> float | None:
    """``--carbon-start`` as epoch seconds (UTC unless it says otherwise). It and ``--carbon-span`` place the
    workload in the ``--carbon`` series: without one they would be ignored, so they are an error."""
    for name, value in (("--carbon-start", start), ("--carbon-span", span)):
        if value is not None and carbon is None:
            raise typer.BadParameter("needs --carbon (the intensity series it places the workload in)",
                                     param_hint=f"'{name}'")
    if not start:
        return None
    from datetime import datetime, timezone

    try:
        when = datetime.fromisoformat(start)
    except ValueError:
        raise typer.BadParameter(f"an ISO date, got {start!r}", param_hint="'--carbon-start'") from None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()


def _input_files(outcomes: Path, carbon: str | None, policy: str, config: Path | None) -> dict[Path, str]:
    """The files ``simulate`` reads: the outcomes, the carbon series (a shipped one named by its file name too, as
    ``replay`` finds it), a policy given as a path and the config."""
    from ..carbon.grid import shipped_series

    inputs = {} if outcomes == STDIN else {outcomes: "the --outcomes file"}
    if config is not None:
        inputs[config] = "the --config file"
    if carbon is not None:
        shipped = shipped_series(carbon)
        inputs[Path(carbon) if shipped is None or Path(carbon).is_file() else shipped] = "the --carbon series"
    if Path(policy).is_file():
        inputs[Path(policy)] = "the --policy file"
    return inputs


def simulate(
    outcomes: Path = typer.Option(  # noqa: B008
        ..., "--outcomes", dir_okay=False, help="Outcomes file (JSON Lines; docs/simulation.md); - reads stdin."
    ),
    policy: str = typer.Option("balanced", "--policy", help="Policy name (policies/NAME.yaml) or YAML path."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
    decisions: Path = typer.Option(None, "--decisions", help="Write one JSON line per request here (- for "  # noqa: B008
                                   "stdout; the tables then go to stderr)."),
    sweep: bool = typer.Option(False, "--sweep", help="Vary the accuracy target; print the quality/energy curve."),
    targets: str = typer.Option(None, "--targets", help="Sweep these targets, e.g. 0.5,0.6,0.7 (implies --sweep; "
                                "default 0.30..1.00)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip and count bad lines instead of stopping."),
    plot: Path = typer.Option(None, "--plot", help="Write the quality-vs-energy PNG here."),  # noqa: B008
    html_out: Path = typer.Option(None, "--html", help="Write a self-contained HTML report here (- for stdout; "  # noqa: B008
                                  "the tables then go to stderr)."),
    threshold: float = typer.Option(0.6, "--threshold", min=0.0, max=1.0, help="The plain threshold baseline's τ."),
    config_file: Path = typer.Option(  # noqa: B008
        None, "--config", "-c", help="Router config YAML: its models_dir, policies_dir and classifier_max_chars "
        "(--models and --policies win over its folders)."
    ),
    models: Path = typer.Option(  # noqa: B008
        None, "--models", help="Model card folder; its catalogue/ is read too (default: the config's models_dir)."
    ),
    policies: Path = typer.Option(None, "--policies", help="Policy folder (default: the config's "  # noqa: B008
                                  "policies_dir)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars on stderr."),
    carbon: str = typer.Option(None, "--carbon", help="Replay the requests over this carbon intensity series (CSV "
                               "timestamp,g_co2e_per_kwh, or a shipped one: CA_2022_hourly.csv) and report CO2e."),
    carbon_start: str = typer.Option(None, "--carbon-start", help="Where in the series the workload starts (ISO "
                                     "date, UTC; default: its first hour)."),
    carbon_span: float = typer.Option(None, "--carbon-span", min=1.0, max=CARBON_SPAN_MAX_H, help="Hours the "
                                      f"workload is spread over, 1 to {CARBON_SPAN_MAX_H:g} (100 years; default: "
                                      "the whole series)."),
) -> None:
    """Replay every request through the classifier and the policy (no model is called); report accuracy,
    quality vs the largest model, joules, shares per model, APGR/CPT for two-model data, and baselines."""
    from ..cards import load_catalogue
    from ..classify.onnx_classifier import load_default_classifier
    from ..config import RouterConfig
    from ..errors import RouterError
    from ..policy.loader import check_models
    from ..simulate.outcomes import load_outcomes, parse_outcomes_lines
    from ..simulate.policy_bridge import PolicyEngineBridge
    from ..simulate.report import plot_png, write_html
    from ..simulate.simulator import DEFAULT_SWEEP, Simulator

    sweep_targets = _targets(targets)
    sweep = sweep or sweep_targets is not None
    start = _carbon_start(carbon, carbon_start, carbon_span)
    refuse_stdout("--plot", plot, "a PNG image is binary")
    refuse_two_on_stdout({"--json": as_json, "--decisions -": is_stdout(decisions), "--html -": is_stdout(html_out)})
    outputs = {"--decisions": decisions, "--plot": plot, "--html": html_out}
    refuse_overwriting_inputs(outputs, _input_files(outcomes, carbon, policy, config_file))
    refuse_unwritable_outputs(outputs)  # before the run, which takes minutes on a large file
    try:
        config = RouterConfig.load(config_file)
        models_dir = models or config.models_dir
        cards = load_catalogue(models_dir)
        engine = PolicyEngineBridge(policy, policies or config.policies_dir)
        check_models(engine.policy, cards, policy)  # what the Router refuses (pins included), simulation refuses too
        classifier = load_default_classifier(models_dir, catalogue=True, max_chars=config.classifier_max_chars)
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=err, disable=not progress, transient=True,
        ) as bar:
            if outcomes == STDIN:  # a pipe's size is not known: no bar, the other steps have theirs
                table = parse_outcomes_lines(sys.stdin.buffer, cards, name="<stdin>", skip_bad=skip_bad)
            else:
                size = outcomes.stat().st_size if outcomes.is_file() else 0
                read = bar.add_task("read outcomes (bytes)", total=size)
                table = load_outcomes(outcomes, cards, skip_bad=skip_bad,
                                      progress=lambda b: bar.update(read, completed=b))
            tasks: dict[str, TaskID] = {}

            def step(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=total)
                bar.update(tasks[stage], completed=done, total=total)

            intensity, carbon_info = None, None
            if carbon is not None:
                from ..simulate.carbon import replay

                intensity, carbon_info = replay(carbon, table.n, start=start,
                                                span_s=None if carbon_span is None else carbon_span * 3600)
                if "start_note" in carbon_info:
                    err.print(f"note: {carbon_info['start_note']}", highlight=False, soft_wrap=True, markup=False)
            sim = Simulator(table, cards, classifier, engine, progress=step, intensity=intensity)
            result = sim.run(
                policy_name=engine.name,
                classifier_name=type(classifier).__name__,
                sweep=(sweep_targets or list(DEFAULT_SWEEP)) if sweep else None,
                threshold=threshold,
                want_reasons=decisions is not None,
            )
    except RouterError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None
    except ValueError as exc:  # e.g. the policy chose a model with no outcome
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    result.carbon = carbon_info
    if any(t.startswith(("mmlu", "alpaca_eval")) for t in table.task_names) and "Onnx" in result.classifier:
        result.notes.append(
            "the shipped classifier's quality model was trained on all RouteLLM MMLU subjects and all shipped "
            "AlpacaEval instructions: on those rows these results are in-sample (optimistic); "
            "benchmarks/bench_mixed.py and bench_alpaca.py hold requests out"
        )
    if decisions is not None:
        with text_output(decisions) as target:
            write_decisions(target, table, result)
    png = None
    if plot is not None or html_out is not None:
        png = plot_png(result, plot)
    if html_out is not None:
        with text_output(html_out) as target:
            write_html(result, target, png)
    if as_json:
        sys.stdout.write(json.dumps(_clean(result.to_json()), allow_nan=False) + "\n")
        return
    # where stdout holds the decisions or the HTML, the tables go to stderr, as the progress does
    to_stderr = is_stdout(decisions) or is_stdout(html_out)
    _print(result, plot, html_out, decisions, stdout_console(stderr=to_stderr))


def _clean(x: object) -> object:
    """JSON has no NaN: undefined numbers become null."""
    if isinstance(x, float):
        return None if x != x or x in (float("inf"), float("-inf")) else x
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def write_decisions(path: Path, table, result) -> None:  # noqa: ANN001
    """One line per request: id, chosen model, predicted P(correct) per model, reason."""
    import math

    path.parent.mkdir(parents=True, exist_ok=True)
    models = result.models
    p = result.p_correct
    group_p = [
        {m: round(float(v), 4) for m, v in zip(models, row, strict=True) if not math.isnan(v)} for row in p
    ]
    with open(path, "w", encoding="utf-8") as out:
        for rid, g, c in zip(table.ids, table.group.tolist(), result.chosen.tolist(), strict=True):
            out.write(json.dumps({"id": rid, "model": models[c], "p_correct": group_p[g],
                                  "reason": result.reasons[g] if result.reasons else ""}) + "\n")


def _print(result, plot: Path | None, html_out: Path | None, decisions: Path | None,  # noqa: ANN001
           out: Console) -> None:
    from rich.markup import escape

    from ..simulate.report import SEGMENT_HEADER, best_single_lines, segment_rows, stats_header, stats_rows

    # paths, policy, classifier and model names come from the user: `[v2]` in one is text, not Rich markup
    out.print(
        f"[bold]router simulate[/]: {result.requests:,} requests from {escape(str(result.outcomes))} "
        f"({result.distinct_prompts:,} distinct prompts; {result.skipped} bad lines skipped); "
        f"policy [cyan]{escape(str(result.policy))}[/]; classifier {escape(str(result.classifier))}"
    )
    if result.skipped:
        reasons = "; ".join(f"{reason} ({count})" for reason, count in result.skipped_reasons.items())
        out.print(f"[yellow]skipped {result.skipped} bad lines[/]: {escape(reasons)}")
        for example in result.skipped_examples:
            out.print(f"  {escape(example)}")
    t = Table(title="policy and baselines (quality and energy relative to always-large and to always-best)")
    for h in stats_header(result):
        t.add_column(h, justify="left" if h == "router" else "right")
    for name, *cells in stats_rows(result):
        t.add_row(escape(name), *cells)
    out.print(t)
    used = [m for m in result.models if result.router.share_requests[m] > 0]
    unused = len(result.models) - len(used)
    s = Table(title=f"policy `{escape(str(result.policy))}`: share per model",
              caption=f"{unused} other models were sent no request" if unused else None)
    for h in ("model", "requests", "energy"):
        s.add_column(h, justify="left" if h == "model" else "right")
    for m in used:
        s.add_row(escape(m), f"{100 * result.router.share_requests[m]:.1f} %",
                  f"{100 * result.router.share_energy[m]:.1f} %")
    out.print(s)
    if result.router.by_segment:
        g = Table(title=f"policy `{escape(str(result.policy))}` per workload segment")
        for h in SEGMENT_HEADER:
            g.add_column(h, justify="left" if h == "segment" else "right")
        for name, *cells in segment_rows(result):
            g.add_row(escape(name), *cells)
        out.print(g)
    rm = result.routing_metrics
    if rm and "policy_sweep" in rm:
        r = Table(title=f"routing metrics, {rm['weak']} -> {rm['strong']} (RouteLLM definitions)")
        for h in ("router", "APGR", "CPT(50%)", "CPT(80%)"):
            r.add_column(h, justify="left" if h == "router" else "right")
        for name, key in (("policy, target swept", "policy_sweep"), ("classifier score", "classifier_score"),
                          ("random", "random"), ("oracle", "oracle")):
            v = rm[key]
            r.add_row(name, f"{v['apgr']:.3f}", f"{100 * v['cpt50']:.1f} %", f"{100 * v['cpt80']:.1f} %")
        out.print(r)
    if result.sweep:
        w = Table(title="accuracy target sweep: the quality/energy curve")
        for h in ("target", "accuracy", "quality vs large", "quality vs best", "J / request", "energy vs large",
                  "energy vs best"):
            w.add_column(h, justify="right")
        for p in result.sweep:
            w.add_row(f"{p.target:g}", f"{100 * p.accuracy:.1f} %", f"{100 * p.quality_vs_large:.1f} %",
                      f"{100 * p.quality_vs_best:.1f} %", f"{p.energy_j_per_request:,.3g}",
                      f"{100 * p.energy_vs_large:.1f} %", f"{100 * p.energy_vs_best:.1f} %")
        out.print(w)
    for line in best_single_lines(result):
        out.print(escape(line))
    for note in result.notes:
        out.print(f"[dim]note: {escape(note)}[/]")
    for label, path in (("plot", plot), ("html", html_out), ("decisions", decisions)):
        if path is not None and not is_stdout(path):
            out.print(f"{label}: {escape(str(path))}")
