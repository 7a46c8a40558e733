"""`router demo`: route a handful of mixed requests on the embedded default and show what went where."""

from __future__ import annotations

import time
from typing import TypedDict

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..ledger.errors import redact


class _Params(TypedDict, total=False):
    model: str


DEMO_REQUESTS: list[tuple[str, _Params]] = [
    ("Is this review positive or negative? 'a gorgeous, witty film with a heart of gold'", {}),
    ("Sentiment: the plot is a tired mess and the jokes never land.", {}),
    ("What is the capital of France?", {}),
    (
        "A shop sells pens at 3 dollars each. Ana buys 4 pens and pays with a 20 dollar bill. "
        "How much change does she get?",
        {},
    ),
    ("Name a planet in our solar system that has rings.", {"model": "gemma3-270m"}),
]


def demo(
    ledger_url: str = typer.Option(None, "--ledger", help="Ledger URL (default: SQLite in your data dir)."),
    max_tokens: int = typer.Option(64, min=1, help="Cap on generated tokens per answer."),
) -> None:
    """Route a handful of mixed requests on the embedded default and print, for each, the model chosen,
    its tier, the reason, the answer, the latency and the joules (measured or estimated)."""
    from .. import Router, RouterConfig

    console = Console()
    if not console.is_terminal:  # piped or in CI: do not squeeze the table into 80 columns
        console = Console(width=150)
    config = RouterConfig.load(ledger_url=ledger_url)
    with console.status("Loading model cards, classifier and ledger..."):
        router = Router(config)
    with console.status("Loading the local models (once, so no request's latency or joules include it)..."):
        router.warm_up()
    console.print(
        f"[bold]router demo[/]: {len(router.cards)} model cards from {escape(str(config.models_dir))}; "
        f"policy [cyan]{escape(router.policy_name)}[/]; ledger {escape(redact(config.ledger_url))}; "
        f"meter {escape(router.meter.name)}"
    )
    table = Table(show_lines=True, title="What went where")
    for col in ("request", "model (tier)", "reason", "answer", "latency", "energy"):
        table.add_column(col, overflow="fold")
    total_j = 0.0
    for text, extra in DEMO_REQUESTS:
        with console.status(f"Routing: {text[:60]}..."):
            t0 = time.perf_counter()
            resp = router.complete(messages=[{"role": "user", "content": text}], max_tokens=max_tokens, **extra)
            wall = (time.perf_counter() - t0) * 1000
        r = resp.routing
        total_j += r.energy_j
        note = "".join(f"  [dim](caller set {k}={v})[/]" for k, v in extra.items())
        table.add_row(
            text + note,
            f"{r.model}\n({r.tier})",
            r.reason,
            (resp.choices[0].message.content or "").strip(),  # None only for tool calls, which no demo asks for
            f"{wall:,.0f} ms",
            f"{r.energy_j:.3g} J\n{r.energy_source}",
        )
    console.print(table)
    console.print(
        f"Total {total_j:.3g} J for {len(DEMO_REQUESTS)} requests, written to the ledger "
        f"([cyan]router ledger[/] shows totals). 'estimated:cpu-time' = process CPU seconds x "
        f"{config.cpu_power.watts_per_busy_core} W per busy core + {config.cpu_power.idle_w} W idle share; "
        f"'measured:rapl' where the CPU's energy counters are readable."
    )
    router.close()
