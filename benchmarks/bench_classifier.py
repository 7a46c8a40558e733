"""Classifier latency: 10,000 varied prompts (10 to 8,000 chars) through classification alone and through
classification + a routing decision; prints p50 / p99 latency and peak memory.

The decision here is a simple one (no policy engine function existed when this was written): the
lowest-energy model on the cards whose predicted P(correct) meets the target, else the most accurate one.
"""

from __future__ import annotations

import random
import resource
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.progress import track  # noqa: E402
from rich.table import Table  # noqa: E402

from router.cards import load_cards  # noqa: E402
from router.classify.onnx_classifier import load_default_classifier  # noqa: E402
from router.training.requests import build_request_set  # noqa: E402

N = 10_000
TARGET = 0.7


def prompts(seed: int = 7) -> list[str]:
    """Held-out request-set texts, stretched or cut to lengths spread log-uniformly over 10..8,000 chars,
    plus odd input (empty, emoji, binary-ish, non-English)."""
    rng = random.Random(seed)
    _, held_out = build_request_set()
    base = held_out.texts
    odd = ["", "   ", "😀🎉👍" * 20, "\x00\x01\x02junk\xff" * 50, "これは素晴らしい映画でした。", "Это ужасный фильм."]
    out = []
    for i in range(N):
        if i % 50 == 0:
            out.append(odd[(i // 50) % len(odd)])
            continue
        length = int(10 ** rng.uniform(1, 3.903))  # 10 .. 8000
        text = rng.choice(base)
        while len(text) < length:
            text += " " + rng.choice(base)
        out.append(text[:length])
    return out


def energy_per_call(card) -> float:  # type: ignore[no-untyped-def]
    e = card.energy
    return e.per_call_j + 100 * e.per_input_token_j + 50 * e.per_output_token_j


def main() -> None:
    console = Console()
    clf = load_default_classifier(ROOT / "models")
    cards = load_cards(ROOT / "models")
    energy = {name: energy_per_call(card) for name, card in cards.items()}
    texts = prompts()
    for t in texts[:200]:  # warm-up
        clf.classify(t)

    # timing passes run without tracemalloc (it hooks every allocation and inflated the first published
    # p50 by ~0.1 ms); peak memory is measured in a separate pass below
    alone = []
    for t in track(texts, description="classify", console=console):
        t0 = time.perf_counter()
        clf.classify(t)
        alone.append(time.perf_counter() - t0)
    decided = []
    for t in track(texts, description="classify + decide", console=console):
        t0 = time.perf_counter()
        c = clf.classify(t)
        ok = [m for m, p in c.p_correct.items() if p >= TARGET and m in energy]
        choice = min(ok, key=energy.__getitem__) if ok else max(c.p_correct, key=c.p_correct.__getitem__)
        decided.append(time.perf_counter() - t0)
        del choice
    tracemalloc.start()
    for t in texts[:2000]:
        clf.classify(t)
    _, peak_py = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def q(xs: list[float], p: float) -> float:
        return statistics.quantiles(xs, n=1000)[int(p * 1000) - 1] * 1000

    table = Table(title=f"{type(clf).__name__}: {N:,} prompts, 10-8,000 chars")
    for col in ("path", "p50 ms", "p99 ms", "mean ms"):
        table.add_column(col, justify="right" if col != "path" else "left")
    for name, xs in (("classification", alone), ("classification + decision", decided)):
        table.add_row(name, f"{q(xs, 0.5):.3f}", f"{q(xs, 0.99):.3f}", f"{statistics.mean(xs) * 1000:.3f}")
    console.print(table)
    console.print(
        f"peak Python heap (tracemalloc, 2,000-prompt pass): {peak_py / 1e6:.2f} MB; "
        f"peak RSS of the process: {rss_mb:.0f} MB"
    )


if __name__ == "__main__":
    main()
