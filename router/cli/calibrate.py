"""`router calibrate`: fit each policy's thresholds on held-out outcomes and write them into the policy file.

Why: a predicted P(correct) compared with the target directly is only as good as the classifier's calibration.
The fitted margin makes the *achieved* quality meet the target with a stated confidence (Learn-then-Test with a
one-sided concentration bound; see :mod:`router.policy.calibration`), and the command reports target vs
achieved on tasks it did not fit on (MMLU's tasks are its subjects).
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import typer

from ..config import RouterConfig, refuse_writing_installed_package
from ..errors import ConfigError
from ..policy.calibration import (
    CalibrationData,
    build_data,
    choose,
    classifier_scores,
    evaluate,
    fit,
    oof_scores,
    quality,
    read_outcomes,
    split_groups,
)
from ..policy.loader import load_policy, write_calibrated
from ..policy.schema import Calibrated
from ..yaml_files import YAML_SUFFIXES, named_yaml_file, yaml_files


def load_calibration_data(outcomes: Path, scores: str = "oof", models_dir: Path | None = None,
                          models: list[str] | None = None) -> CalibrationData:
    """Outcomes + P(correct) scores (``oof``: task-held-out refits of the classifier recipe; ``classifier``:
    the shipped classifier, right only for traffic it was not trained on) + card energies."""
    from ..cards import load_catalogue

    config = RouterConfig.load()
    cards = load_catalogue(models_dir or config.models_dir)
    rows = read_outcomes(outcomes, cards, models)
    if len(set(rows.groups.tolist())) < 2:
        raise ConfigError(f"{outcomes}: calibration needs at least two requests with outcomes of the same models; "
                          f"it has {len(rows.prompts)}")
    if scores == "oof":
        p = oof_scores(rows.prompts, rows.groups, rows.correct)
        folds = min(5, len(set(rows.groups.tolist())))
        name = f"out-of-fold P(correct): TF-IDF + logistic regression, {folds} folds grouped by {rows.grouped_by}"
    elif scores == "classifier":
        from ..classify.onnx_classifier import load_default_classifier

        p = classifier_scores(rows.prompts, rows.models,
                              load_default_classifier(models_dir or config.models_dir, catalogue=True,
                                                      max_chars=config.classifier_max_chars))
        name = "shipped classifier P(correct)"
    else:
        raise typer.BadParameter("--scores must be oof or classifier")
    return build_data(rows, cards, p, name)


def calibrate_policy(data: CalibrationData, target_kind: str, target: float, *, confidence: float, bound: str,
                     held_out_share: float, seed: int) -> tuple[Calibrated, dict[str, Any]]:
    """Fit on the calibration groups (tasks, or requests for a source of one task), evaluate on the held-out ones;
    the block to write and a report."""
    data = data.for_target(target_kind)
    mask, held = split_groups(data.groups, held_out_share, seed)
    cal, test = data.take(mask), data.take(~mask)
    if len(cal.p) < 2:
        raise ConfigError(f"{len(data.p)} requests in {len(set(data.groups.tolist()))} {data.grouped_by}s: "
                          f"--held-out-share {held_out_share:g} leaves {len(cal.p)} to fit on, and a fit needs at "
                          "least 2; fix: give more outcomes or a smaller --held-out-share")
    f = fit(cal, target_kind, target, confidence=confidence, bound=bound)
    # A relative target's ratio has no value where the reference model is never right on these rows: such a
    # figure is None (null, "n/a"), never NaN. The fit itself tests E[Z] >= 0, which stays defined.
    report: dict[str, Any] = {
        "target_kind": target_kind, "target": target, "tau": f.tau, "feasible": f.feasible,
        "confidence": confidence, "bound": bound, "n_calibration": f.n, "achieved_calibration": _figure(f.achieved),
        "grouped_by": data.grouped_by, "held_out_subjects": held,
    }
    held_block = None
    if len(test.p) and f.feasible:  # an infeasible fit is never written, so it has no held-out figures to state
        ev = _figures(evaluate(test, choose(test, target_kind, target, f.tau)))
        achieved = ev["accuracy"] if target_kind == "absolute" else _figure(
            quality(test, choose(test, target_kind, target, f.tau), target_kind))
        report["held_out"] = {**ev, "achieved": achieved, "met": _met(achieved, target)}
        # the held-out groups are counted under the name the scores line gives them ("grouped by task"): tasks,
        # or requests for a source of one task
        held_block = {k: v for k, v in {"target": target, "achieved": _rounded(achieved), "n": ev["n"],
                                        "energy_vs_large": _rounded(ev["energy_vs_large"]),
                                        f"{data.grouped_by}s": len(held)}.items() if v is not None}
    if len(test.p):
        raw = _figures(evaluate(test, choose(test, target_kind, target, 0.0)))
        raw_achieved = raw["accuracy"] if target_kind == "absolute" else _figure(
            quality(test, choose(test, target_kind, target, 0.0), target_kind))
        report["uncalibrated_held_out"] = {**raw, "achieved": raw_achieved, "met": _met(raw_achieved, target)}
    block = Calibrated(
        target_kind=target_kind,
        target=target,
        offsets={m: round(v, 4) for m, v in f.offsets(data.models).items()},
        confidence=confidence,
        bound=bound,
        n_calibration=f.n,
        achieved_calibration=_rounded(_figure(f.achieved)),
        held_out=held_block,
        fitted_at=datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        scores=data.scores,
    )
    return block, report


def _figure(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _figures(report: dict[str, Any]) -> dict[str, Any]:
    return {k: _figure(v) if isinstance(v, float) else v for k, v in report.items()}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _met(achieved: float | None, target: float) -> bool | None:
    return None if achieved is None else achieved >= target


def _shown(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def calibrate(
    policies: list[str] = typer.Argument(  # noqa: B008
        None, help="Policy names or YAML files (default: every policy in --policies-dir, else in the config's "
        "policies_dir: ROUTER_POLICIES_DIR, or the shipped policies)."
    ),
    outcomes: list[Path] = typer.Option(  # noqa: B008
        None, "--outcomes",
        help="RouteLLM CSV folder/file or outcomes JSONL; repeat for several sources (each is fitted on its own). "
        "Default: RouteLLM's MMLU outcomes in a source checkout's data/routellm_mmlu.",
    ),
    models: str = typer.Option(
        None, "--models", help="Comma-separated models to calibrate among (default: every model of each source)."
    ),
    scores: Literal["oof", "classifier"] = typer.Option(
        "oof", "--scores", help="oof (refits with whole tasks held out) or classifier (shipped)."
    ),
    confidence: float = typer.Option(0.9, "--confidence", min=0.5, max=0.999, help="1 - delta of the guarantee."),
    bound: Literal["bernstein", "hoeffding"] = typer.Option(
        "bernstein", "--bound", help="bernstein (empirical Bernstein) or hoeffding."
    ),
    held_out_share: float = typer.Option(0.3, "--held-out-share", min=0.0, max=0.9,
                                         help="Share of tasks (requests, for a source of one task) kept out "
                                         "of the fit, to report on."),
    seed: int = typer.Option(0, "--seed", help="Seed of the held-out split."),
    policies_dir: Path | None = typer.Option(  # noqa: B008
        None, "--policies", "--policies-dir", help="Where policy names are looked up."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Report only; do not write the policy files."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Fit each policy's decision thresholds on held-out outcomes so achieved quality meets its target with the
    stated confidence; write them into the policy's `calibrated` block and report target vs achieved on
    tasks not used for fitting."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from ..training.common import source_data
    from .output import stdout_console

    outcomes = outcomes or [source_data(
        "router calibrate without --outcomes", fix="pass --outcomes FILE (an outcomes file such as `router data "
        "from-ledger` writes, or RouteLLM CSVs), or run it in a checkout of the repository") / "routellm_mmlu"]
    folder = policies_dir or RouterConfig.load().policies_dir
    files = [Path(p) if p.endswith(YAML_SUFFIXES) else named_yaml_file(folder, p) or folder / f"{p}.yaml"
             for p in (policies or [])]
    if not files:
        files = yaml_files(folder)
        if not files:  # nothing to write the fit into: say so before the fitting, which takes a while
            where = "--policies-dir" if policies_dir is not None else "the config's policies_dir"
            problem = "holds no policy files (.yaml or .yml)" if folder.is_dir() else "is not a folder"
            raise typer.BadParameter(f"{folder} ({where}) {problem}; fix: name the folder of your policy files, "
                                     "or name the policies to calibrate")
    for f in files:
        if not f.is_file():
            known = ", ".join(sorted({p.stem for p in yaml_files(folder)})) or "(none)"
            raise typer.BadParameter(f"{f}: no such policy file (.yaml or .yml); policies in {folder}: {known}")
    if not dry_run:  # before the fitting, which takes a while
        for f in files:
            refuse_writing_installed_package(f, "router calibrate", "policies_dir", "--policies-dir")
    wanted = [m.strip() for m in models.split(",")] if models else None
    results: dict[str, Any] = {}
    infeasible: list[str] = []
    written: list[Path] = []
    # scoring the outcomes takes seconds per source: a bar on stderr says what is running (stdout keeps the table)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=Console(stderr=True), transient=True) as bar:
        job = bar.add_task("calibrate", total=len(outcomes) * (1 + len(files)))
        sources: dict[str, CalibrationData] = {}
        for f in outcomes:
            bar.update(job, description=f"scoring {f.name}")
            sources[f.name] = load_calibration_data(f, scores, models=wanted)
            bar.advance(job)
        tasks = sorted({t for d in sources.values() for t in d.tasks})
        if len(tasks) == 1 and not dry_run:
            # The offsets are per model, not per task: written, they would route every task by a fit on this one
            # (the source's largest model, always adequate at offset -1, would take the other tasks' traffic too).
            raise ConfigError(f"{', '.join(sources)}: the outcomes cover one task only ({tasks[0]}), but the "
                              "fitted offsets are per model and would change the routing of every task; fix: give "
                              "outcomes of the tasks you serve (repeat --outcomes), or use --dry-run to see this fit")
        for f in files:
            policy = load_policy(f)
            blocks, reports = {}, {}
            for name, data in sources.items():
                bar.update(job, description=f"fitting {policy.name} on {name}")
                blocks[name], reports[name] = calibrate_policy(
                    data, policy.accuracy.kind, policy.accuracy.value, confidence=confidence, bound=bound,
                    held_out_share=held_out_share, seed=seed)
                bar.advance(job)
            results[policy.name] = reports
            if not all(r["feasible"] for r in reports.values()):
                infeasible.append(policy.name)  # no certified τ: the policy file is left as it was
            elif not dry_run:
                write_calibrated(f, merge_blocks(blocks))
                written.append(f)
    if as_json:
        typer.echo(json.dumps({"sources": {k: {"models": d.models, "scores": d.scores} for k, d in sources.items()},
                               "policies": results, "infeasible": infeasible,
                               "written": [str(f) for f in written]}, indent=2))
        if infeasible:
            typer.echo(_infeasible_line(infeasible), err=True)
            raise typer.Exit(1)
        return
    table = Table(title="router calibrate: " + "; ".join(
        f"{k}, {len(d.p)} requests, models {', '.join(d.models)}" for k, d in sources.items()))
    for col in ("policy", "source", "target", "τ", "fit n", "fit achieved", "held-out achieved", "met",
                "energy vs large", "uncalibrated (τ=0)"):
        table.add_column(col, justify="right" if col not in ("policy", "source") else "left")
    for name, per_source in results.items():
        for source, r in per_source.items():
            h, u = r.get("held_out", {}), r.get("uncalibrated_held_out", {})
            kind = {"absolute": "acc", "relative": "of large", "relative_best": "of best"}[r["target_kind"]]
            table.add_row(
                name, source, f"{r['target']:.2f} {kind}",
                f"{r['tau']:+.3f}" + ("" if r["feasible"] else " (infeasible)"),
                str(r["n_calibration"]), _shown(r["achieved_calibration"], ".3f"),
                _shown(h.get("achieved"), ".3f"),
                {True: "yes", False: "NO"}.get(h.get("met"), "n/a") if r["feasible"] else "NO (no fit)",
                _shown(h.get("energy_vs_large"), ".1%"),
                f"{_shown(u.get('achieved'), '.3f')} @ {_shown(u.get('energy_vs_large'), '.0%')}",
            )
    stdout_console().print(table)
    for source, d in sources.items():
        if d.grouped_by == "request":
            typer.echo(f"{source}: one task only, so requests, not tasks, are held out: its held-out figures are "
                       "for new requests of the same task")
    typer.echo(f"confidence {confidence:.0%} ({bound}); {held_out_share:.0%} of each source's groups held out; "
               + ("dry run, nothing written" if dry_run else
                  f"wrote the calibrated block into {', '.join(map(str, written))}" if written else "nothing written"))
    if infeasible:
        typer.echo(_infeasible_line(infeasible), err=True)
        raise typer.Exit(1)


def _infeasible_line(infeasible: list[str]) -> str:
    """Why calibrate ends with exit status 1, on stderr (with --json too: its object says it only in a field)."""
    return (f"infeasible: no τ certifies the target of {', '.join(infeasible)} on these outcomes, even "
            "always-largest; those policies were not calibrated (their files are unchanged)")


def merge_blocks(blocks: dict[str, Calibrated]) -> Calibrated:
    """One ``calibrated`` block from the per-source fits: each source's models get that source's margin (a model
    in several sources keeps the largest, the more cautious), counts add up, the held-out figures are kept per
    source (``<source>:<figure>``)."""
    items = list(blocks.items())
    first = items[0][1]
    if len(items) == 1:
        first.fitted_on = items[0][0]
        return first
    offsets: dict[str, float] = {}
    held: dict[str, float | int] = {}
    for source, block in items:
        for model, off in block.offsets.items():
            offsets[model] = max(off, offsets.get(model, -1.0))
        for key, value in (block.held_out or {}).items():
            held[f"{source}:{key}"] = value
    achieved = [b.achieved_calibration for _, b in items if b.achieved_calibration is not None]
    return first.model_copy(update={
        "offsets": offsets, "n_calibration": sum(b.n_calibration for _, b in items),
        "achieved_calibration": min(achieved) if achieved else None, "held_out": held or None,
        "fitted_on": ", ".join(name for name, _ in items), "scores": first.scores,
    })
