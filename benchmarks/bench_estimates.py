"""Are the energy figures behind decisions right? Learned estimates against what the ledger measured.

    python benchmarks/bench_estimates.py [--max-tokens 48] [--json out.json]

On the embedded default with a fresh ledger: the `router demo` requests and 50 mixed requests
(``bench_tiers.prompts50``: review sentiment, MMLU questions, short chat) warm the estimates up; then 50 other
mixed requests are routed, plus 10 short chat questions pinned to each local LLM so every local model has
later calls. For each local model it prints, over those later calls, the median and spread of
``estimated_j / energy_j`` (the estimate made before the call over what the meter charged), and whether the
cost comparison each later reason states (``X J (...) vs Y J (...) for M``) orders the two models as the
ledger's median joules per call on that task do.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_tiers import CHAT, prompts50  # noqa: E402

_COMPARISON = re.compile(r"; ([0-9.,]+) J \([^)]*\) vs ([0-9.,]+) J \([^)]*\) for (\S+)")


def run(ledger_url: str, max_tokens: int = 48, progress: bool = True) -> dict[str, Any]:
    """The whole measurement; returns per-model ratios and the reasons' ordering check."""
    from rich.progress import track

    from router import Router, RouterConfig
    from router.cli.demo import DEMO_REQUESTS

    def steps(items: list[Any], what: str) -> Any:
        return track(items, description=what) if progress else items

    router = Router(RouterConfig.load(ledger_url=ledger_url))
    local = [c.name for c in router.cards.values() if c.runs_here]
    try:
        for text, extra in steps(DEMO_REQUESTS, "router demo"):
            router.complete(messages=[{"role": "user", "content": text}], max_tokens=64, **extra)
        for text in steps(prompts50(seed=7), "50 mixed requests"):
            router.complete(messages=[{"role": "user", "content": text}], max_tokens=max_tokens)
        later: list[tuple[str, Any]] = []
        for text in steps(prompts50(seed=8), "later: routed"):
            later.append((text, router.complete(messages=[{"role": "user", "content": text}], max_tokens=max_tokens)))
        for name in [n for n in local if router.cards[n].tier != "specialist"]:
            for text in steps(CHAT[:10], f"later: pinned {name}"):
                later.append((text, router.complete(messages=[{"role": "user", "content": text}], model=name,
                                                    max_tokens=max_tokens)))
        records = router.ledger.records()
    finally:
        router.close()
    later_ids = {resp.id for _, resp in later}
    models: dict[str, dict[str, Any]] = {}
    for name in local:
        ratios = [r.estimated_j / r.energy_j for r in records
                  if r.request_id in later_ids and r.model == name and r.outcome == "ok" and r.energy_j > 0
                  and r.estimated_j is not None]
        models[name] = {
            "later_calls": len(ratios),
            "median_ratio": statistics.median(ratios) if ratios else None,
            "p10_ratio": _quantile(ratios, 0.1), "p90_ratio": _quantile(ratios, 0.9),
            "estimate_source": next((resp.routing.estimate_source for _, resp in later
                                     if resp.routing.model == name), None),
        }
    return {"models": models, "ordering": _ordering(later, records)}


def _ordering(later: list[tuple[str, Any]], records: list[Any]) -> dict[str, int]:
    """How many later reasons compare two models' joules, and how many order them as the ledger does (median
    joules per answered call of each model on the request's task)."""
    per: dict[tuple[str, str | None], list[float]] = {}
    for r in records:
        if r.outcome == "ok":
            per.setdefault((r.model, r.task), []).append(r.energy_j)
    compared = agree = 0
    for _, resp in later:
        m = _COMPARISON.search(resp.routing.reason)
        if m is None:
            continue
        chosen, other, task = resp.routing.model, m.group(3), resp.routing.task
        if (chosen, task) not in per or (other, task) not in per:
            continue
        compared += 1
        said = float(m.group(1).replace(",", "")) < float(m.group(2).replace(",", ""))
        measured = statistics.median(per[(chosen, task)]) < statistics.median(per[(other, task)])
        agree += said == measured
    return {"compared": compared, "agree": agree}


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    parser.add_argument("--ledger", help="ledger URL to write (default: a temporary SQLite file); keep it to "
                        "look at the calls with `router ledger`")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.ledger or f"sqlite:///{tmp}/estimates.sqlite3", args.max_tokens)
    table = Table(title="estimated_j / energy_j over later calls (1.0 = the estimate was the measurement)")
    for col in ("model", "later calls", "median", "p10", "p90", "estimate source"):
        table.add_column(col)
    for name, m in result["models"].items():
        table.add_row(name, str(m["later_calls"]), fmt(m["median_ratio"]), fmt(m["p10_ratio"]),
                      fmt(m["p90_ratio"]), str(m["estimate_source"]))
    console = Console(width=140)
    console.print(table)
    o = result["ordering"]
    console.print(f"reasons comparing two models' joules: {o['compared']}; ordered as the ledger measured: "
                  f"{o['agree']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
