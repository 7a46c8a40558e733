"""``router energy``: which meter this machine uses, per-model profiles from this hardware, and conversions."""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ..config import RouterConfig, refuse_writing_installed_package
from ..energy.carbon import GRID_SOURCE, equivalents, format_joules
from .output import stdout_console

energy_app = typer.Typer(
    help="Meters, per-model energy profiles measured on this machine, and joules in everyday terms.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

_CONFIG_OPT = typer.Option(None, "--config", "-c", help="Router config YAML.")
_PROMPTS_FILE_OPT = typer.Option(None, "--prompts-file", help="JSONL of {id, prompt, max_tokens}.")
_MODELS_DIR_OPT = typer.Option(None, "--models", "--models-dir", help="Cards folder (default: config).")


@energy_app.command()
def meters(config: Path | None = _CONFIG_OPT) -> None:
    """Which meters this machine can read, and the one the router will use."""
    from ..energy.meters import RAPL_ROOT, auto_meter, find_rapl_domains

    cfg = RouterConfig.load(config)
    console = Console()
    domains = find_rapl_domains(RAPL_ROOT)
    console.print(
        f"RAPL: {', '.join(d.name for d in domains)}" if domains
        else f"RAPL: not readable ({RAPL_ROOT} absent, or energy_uj readable by root only)"
    )  # fmt: skip
    try:
        from ..energy.nvml import NvmlMeter

        gpu = NvmlMeter()
        console.print(f"NVML: {gpu.describe()}")
        gpu.close()
    except OSError as exc:
        console.print(f"NVML: not available ({exc})")
    m = cfg.cpu_power
    console.print(f"CPU-time model: {m.watts_per_busy_core:g} W per busy core + {m.idle_w:g} W idle share "
                  f"({m.source})")
    meter = auto_meter(cfg.meter, cfg.cpu_power)
    console.print(f"In use (config meter={cfg.meter!r}): [bold]{meter.kind}:{meter.name}[/bold]")
    console.print(f"Grid: {cfg.grid_g_per_kwh:g} gCO2e/kWh (default: {GRID_SOURCE})")
    meter.close()


def _finite_non_negative(value: float | None) -> float | None:
    """Energy and grid intensity are amounts: a negative one, NaN or infinity is a typing mistake, not a figure to
    turn into phone charges."""
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise typer.BadParameter(f"a finite number >= 0, got {value:g}")
    return value


@energy_app.command()
def convert(
    joules: float = typer.Argument(..., help="Energy in joules.", callback=_finite_non_negative),
    grid: float | None = typer.Option(
        None, "--grid", help="gCO2e per kWh (default: config).", callback=_finite_non_negative
    ),
    config: Path | None = _CONFIG_OPT,
) -> None:
    """Joules as kWh, grams CO2e, phone charges and kettle boils."""
    cfg = RouterConfig.load(config)
    Console().print(equivalents(joules, grid if grid is not None else cfg.grid_g_per_kwh).sentence())


@energy_app.command()
def profile(
    model: str = typer.Argument(..., help="Model card name (a local model: llama.cpp or ONNX)."),
    prompts: int | None = typer.Option(
        None, "--prompts", "-n", min=3, help="Use the first N prompts (default: all 20)."
    ),
    repeats: int = typer.Option(1, "--repeats", min=1, help="Run each prompt this many times."),
    write: bool = typer.Option(True, "--write/--dry-run", help="Write the profile into the card, or only show it."),
    prompts_file: Path | None = _PROMPTS_FILE_OPT,
    models_dir: Path | None = _MODELS_DIR_OPT,
    meter_name: str | None = typer.Option(None, "--meter", help="auto | rapl | nvml | cpu-time (default: config)."),
    config: Path | None = _CONFIG_OPT,
) -> None:
    """Measure MODEL's joules per call / input token / output token on this machine and write them to its card."""
    from ..backends import GenerationRequest, create_backend
    from ..cards import load_cards
    from ..energy.meters import auto_meter
    from ..energy.profile import fit_profile, load_prompts, profile_from_fit, run_profile, write_profile
    from ..types import ChatMessage

    cfg = RouterConfig.load(config, models_dir=models_dir, meter=meter_name)
    chosen = load_prompts(prompts_file, prompts)  # a bad prompts file is an error before any model loads
    console = stdout_console()
    errors = Console(stderr=True)
    cards = load_cards(cfg.models_dir)
    if model not in cards:
        errors.print(
            f"[red]error:[/red] no model card {escape(repr(model))} in {escape(str(cfg.models_dir))}; have: "
            f"{escape(', '.join(sorted(cards)))}"
        )
        raise typer.Exit(2)
    card = cards[model]
    if write:  # before the measuring, which runs the model for a while
        assert card.path is not None
        refuse_writing_installed_package(card.path, "router energy profile", "models_dir", "--models-dir")
    backend = create_backend(card)
    if not backend.local:
        errors.print(
            f"[red]error:[/red] {escape(model)} is a remote model: its energy cannot be metered here. Put your "
            "provider's published per-token figures in its card (energy.source: published, with a citation)."
        )
        raise typer.Exit(2)
    meter = auto_meter(cfg.meter, cfg.cpu_power)

    def call(p: object) -> tuple[int, int]:
        gen = backend.generate(
            GenerationRequest(
                messages=[ChatMessage(role="user", content=p.prompt)],  # type: ignore[attr-defined]
                max_tokens=p.max_tokens,  # type: ignore[attr-defined]
                temperature=0.0,
            )
        )
        return gen.prompt_tokens, gen.completion_tokens

    console.print(f"Profiling {escape(model)} with the {meter.kind}:{meter.name} meter "
                  f"({len(chosen)} prompts x {repeats})")
    call(chosen[0])  # warm-up: loading weights is not a per-call cost
    # the bar goes to stderr: stdout is the profile, which a pipe or a redirected file takes whole
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=errors,
        transient=True,
    ) as bar:
        task = bar.add_task(model, total=len(chosen) * repeats)
        samples = run_profile(call, meter, chosen, repeats, on_call=lambda s: bar.advance(task))
    backend.close()
    meter.close()
    fit = fit_profile(samples)
    new = profile_from_fit(card, fit, meter, samples)

    table = Table(title=f"{escape(model)}: energy profile ({new.source}, {new.meter})")
    for col in ("", "value", "bootstrap sd"):
        table.add_column(col, justify="right")
    sp = fit.spread
    table.add_row("J per call", f"{fit.per_call_j:.4g}", f"{sp['per_call_j_sd']:.2g}")
    table.add_row("J per input token", f"{fit.per_input_token_j:.4g}", f"{sp['per_input_token_j_sd']:.2g}")
    table.add_row("J per output token", f"{fit.per_output_token_j:.4g}", f"{sp['per_output_token_j_sd']:.2g}")
    console.print(table)
    total = sum(s.joules for s in samples)
    console.print(
        f"{len(samples)} calls, {format_joules(total)} in all; fit error median {sp['rel_error_p50']:.0%}, "
        f"90th percentile {sp['rel_error_p90']:.0%}, R² {sp['r2']:.3f}"
    )
    if write:
        assert card.path is not None
        write_profile(card.path, new)
        console.print(f"wrote the profile into {escape(str(card.path))}")
    else:
        console.print("dry run: card not changed")
