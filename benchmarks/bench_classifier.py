"""Classifier latency: 10,000 varied prompts (10 to 8,000 chars) through classification alone and through
classification + the routing decision of the shipped default policy (the policy engine over the shipped cards);
then the cost per text when concurrent requests are classified together (``classify_batch``, what the proxy's
:class:`~router.classify.batching.ClassifyBatcher` does under load); prints p50 / p99 latency, µs per text and
peak memory.

    python benchmarks/bench_classifier.py
"""

from __future__ import annotations

import random
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.progress import track  # noqa: E402
from rich.table import Table  # noqa: E402

from router import Router  # noqa: E402
from router.backends.base import estimated_tokens, utf8_size  # noqa: E402
from router.config import RouterConfig  # noqa: E402
from router.errors import RouterError  # noqa: E402
from router.ledger.sqlite import SQLiteLedger  # noqa: E402
from router.policy.base import BudgetState, DecisionRequest  # noqa: E402
from router.training.requests import build_request_set  # noqa: E402

N = 10_000
BATCHES = (1, 4, 16, 64)


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


def per_text_us(classify_batch, texts: list[str], size: int, rounds: int = 3) -> float:  # type: ignore[no-untyped-def]
    """CPU µs per text of ``classify_batch`` over ``texts`` in batches of ``size`` (best of ``rounds``)."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        for i in range(0, len(texts), size):
            classify_batch(texts[i : i + size])
        best = min(best, (time.process_time() - t0) / len(texts))
    return best * 1e6


MANY = ("fusechat-llama-3.2-1b", "fusechat-llama-3.2-3b", "fusechat-qwen-2.5-7b", "fusechat-llama-3.1-8b",
        "fusechat-gemma-2-9b", "mixtral-8x7b-instruct", "llama-3-8b-instruct", "llama-3-70b-instruct",
        "gpt-4-1106-preview", "claude-2")
"""Catalogue models added as candidates for the many-model run (given an HTTP backend that is never called)."""


def many_cards() -> dict:
    """The shipped cards plus :data:`MANY` from the catalogue, each with an OpenAI-compatible backend spec, so the
    policy engine treats them as callable candidates (13 in all); nothing is called, only decided."""
    from router.cards import OpenAIBackendSpec, load_catalogue

    cards = load_catalogue(ROOT / "models")
    out = {n: c for n, c in cards.items() if c.callable}
    for name in MANY:
        spec = OpenAIBackendSpec(type="openai", base_url="http://127.0.0.1:9/v1", model=name)
        out[name] = cards[name].model_copy(update={"backend": spec})
    return out


def main() -> None:
    console = Console()
    config = RouterConfig.load(None, models_dir=ROOT / "models", policies_dir=ROOT / "policies")
    with tempfile.TemporaryDirectory() as tmp:
        router = Router(config, ledger=SQLiteLedger(Path(tmp) / "ledger.sqlite3"))
        run(console, router)
        router.close()
        cards = many_cards()
        router = Router(config, cards=cards, ledger=SQLiteLedger(Path(tmp) / "many.sqlite3"))
        console.print(f"\n[bold]{len(cards)} candidate models[/] (the shipped cards + {len(MANY)} catalogue cards):")
        run(console, router, batches=False)
        router.close()


def run(console: Console, router: Router, batches: bool = True) -> None:
    clf, engine, policy, ledger = router.classifier, router.engine, router.policy_name, router.ledger
    texts = prompts()
    def decide(text: str) -> bool:
        """Classify and decide; False when the policy refuses the request (no model can serve it, e.g. a
        prompt longer than every local model's context): a decision too, timed the same way."""
        try:
            c = clf.classify(text)
            req = DecisionRequest(policy=policy, input_tokens_hint=estimated_tokens(utf8_size(text)))
            now = time.time()  # the budget reads the Router makes before each decision
            used = {r.key: ledger.budget_used(r.key, r.window_s) for r in engine.budget_refs(req)}
            engine.decide(c, req, BudgetState(used, now))
        except RouterError:
            return False
        return True

    for t in texts[:200]:  # warm-up
        decide(t)

    # timing passes run without tracemalloc (it hooks every allocation and inflated the first published
    # p50 by ~0.1 ms); peak memory is measured in a separate pass below
    alone = []
    for t in track(texts, description="classify", console=console):
        t0 = time.perf_counter()
        clf.classify(t)
        alone.append(time.perf_counter() - t0)
    decided = []
    refused = 0
    for t in track(texts, description="classify + decide", console=console):
        t0 = time.perf_counter()
        refused += not decide(t)
        decided.append(time.perf_counter() - t0)
    # batches: the same texts, the lengths the proxy sees most (up to 1,000 chars: the classifier's window)
    short = [t for t in texts if len(t) <= 1000][:4096]
    batched = {size: per_text_us(clf.classify_batch, short, size) for size in BATCHES} if batches else {}
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
    for name, xs in (("classification", alone), (f"classification + decision (policy `{policy}`)", decided)):
        table.add_row(name, f"{q(xs, 0.5):.3f}", f"{q(xs, 0.99):.3f}", f"{statistics.mean(xs) * 1000:.3f}")
    console.print(table)
    console.print(f"decisions: {N - refused:,} routed, {refused:,} refused by the policy (no model can serve them)")
    if not batches:
        return
    batch_table = Table(title=f"classify_batch: CPU per text, {len(short):,} prompts of at most 1,000 chars")
    batch_table.add_column("batch size", justify="right")
    batch_table.add_column("µs per text", justify="right")
    for size, us in batched.items():
        batch_table.add_row(str(size), f"{us:.1f}")
    console.print(batch_table)
    console.print(
        f"peak Python heap (tracemalloc, 2,000-prompt pass): {peak_py / 1e6:.2f} MB; "
        f"peak RSS of the process: {rss_mb:.0f} MB"
    )


if __name__ == "__main__":
    main()
