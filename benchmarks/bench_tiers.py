"""Per tier: median latency and joules per request on a fixed set of 50 prompts.

    python benchmarks/bench_tiers.py [--max-tokens 48] [--json out.json]

The 50 prompts are built deterministically from shipped data: 20 movie-review sentences phrased as
sentiment requests, 15 MMLU questions (data/routellm_mmlu) and 15 short chat questions. Every model answers
every prompt (pinned), so the tiers are compared on the same work. Energy comes from the router's meter
(RAPL where readable, else the CPU-time model) and says which.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHAT = [
    "What is the capital of France?", "Give me one tip for sleeping better.", "What does a bee make?",
    "Name three primary colours.", "How many days are in a leap year?", "What is the boiling point of water?",
    "Suggest a name for a pet cat.", "What is photosynthesis, in one sentence?", "Translate 'thank you' to Spanish.",
    "Who wrote Romeo and Juliet?", "What is 12 times 12?", "Why is the sky blue?",
    "Recommend a fruit high in vitamin C.", "What language is spoken in Brazil?", "What is a haiku?",
]  # fmt: skip


def prompts50(seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    pos = (ROOT / "data/sentiment_polarity/rt-polarity.pos").read_text(encoding="latin-1").splitlines()
    neg = (ROOT / "data/sentiment_polarity/rt-polarity.neg").read_text(encoding="latin-1").splitlines()
    sentences = rng.sample(pos, 10) + rng.sample(neg, 10)
    sentiment = [f"Is this review positive or negative? '{s.strip()}'" for s in sentences]
    mmlu: list[str] = []
    files = sorted((ROOT / "data/routellm_mmlu").glob("*.csv"))
    for file in rng.sample(files, 15):
        with file.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))[1:]
        mmlu.append(rng.choice(rows)[0])
    return sentiment + mmlu + CHAT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()

    from rich.console import Console
    from rich.progress import track
    from rich.table import Table

    from router import Router, RouterConfig

    prompts = prompts50()
    with tempfile.TemporaryDirectory() as tmp:
        router = Router(RouterConfig.load(ledger_url=f"sqlite:///{tmp}/bench.sqlite3"))
        models = [c for c in sorted(router.cards.values(), key=lambda c: ["specialist", "small", "large"].index(c.tier))
                  if c.callable and c.backend.type != "openai"]
        rows = []
        for card in models:
            router.complete(messages=[{"role": "user", "content": prompts[0]}], model=card.name, max_tokens=4)
            lat, joules, sources, out_tokens = [], [], set(), []
            for p in track(prompts, description=f"{card.name:>16}"):
                t0 = time.perf_counter()
                resp = router.complete(messages=[{"role": "user", "content": p}], model=card.name,
                                       max_tokens=args.max_tokens)
                lat.append((time.perf_counter() - t0) * 1000)
                joules.append(resp.routing.energy_j)
                sources.add(resp.routing.energy_source)
                out_tokens.append(resp.usage.completion_tokens)
            rows.append({
                "model": card.name, "tier": card.tier, "requests": len(prompts),
                "median_latency_ms": statistics.median(lat), "p90_latency_ms": sorted(lat)[int(0.9 * len(lat))],
                "median_j": statistics.median(joules), "mean_j": statistics.fmean(joules),
                "mean_output_tokens": statistics.fmean(out_tokens), "energy_source": ", ".join(sorted(sources)),
            })
        router.close()

    table = Table(title=f"Per tier, 50 fixed prompts, max_tokens={args.max_tokens}")
    for col in ("model", "tier", "median latency", "p90 latency", "median J", "mean J", "mean out tokens",
                "energy source"):
        table.add_column(col)
    base = rows[0]["median_j"]
    for r in rows:
        table.add_row(r["model"], r["tier"], f"{r['median_latency_ms']:.1f} ms", f"{r['p90_latency_ms']:.1f} ms",
                      f"{r['median_j']:.4g}", f"{r['mean_j']:.4g}", f"{r['mean_output_tokens']:.1f}",
                      r["energy_source"])
    console = Console(width=140)
    console.print(table)
    for r in rows[1:]:
        console.print(f"{r['model']} uses {r['median_j'] / base:,.0f}x the median joules of {rows[0]['model']}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
