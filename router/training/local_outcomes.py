"""Measure the local models on shipped data and write outcomes files, so P(correct) for the local tiers and
the specialist-vs-LLM energy ratio come from runs on this machine, not from guesses.

Bounded on purpose (a few hundred requests, max_tokens small): the figures are estimates with the sample
size stated beside them.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .common import DATA_DIR, MODELS_DIR, SEED, detokenize, seed_everything
from .polarity import LABELS, split_polarity
from .requests import SENTIMENT_ASK_TEMPLATES, math_problem

LOCAL_MODELS = ("sentiment-onnx", "smollm2-135m", "gemma3-270m")
LLM_MODELS = ("smollm2-135m", "gemma3-270m")
_LABEL = re.compile(r"\b(positive|negative)\b", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d+")

Progress = Callable[[str, int], None]


def parse_sentiment(text: str) -> str | None:
    """The first 'positive' / 'negative' in an answer (None when the model gave neither)."""
    match = _LABEL.search(text or "")
    return match.group(1).lower() if match else None


def _backends(models_dir: Path, names: tuple[str, ...]) -> dict[str, Any]:
    from ..backends import create_backend
    from ..cards import load_cards

    cards = load_cards(models_dir)
    return {name: create_backend(cards[name]) for name in names}


def _run(backend: Any, prompt: str, max_tokens: int) -> tuple[str, int, float, float]:
    """Answer text, output tokens, joules (CPU-time meter) and seconds for one request."""
    from ..backends import GenerationRequest
    from ..energy.meters import CpuTimeMeter
    from ..types import ChatMessage

    meter = CpuTimeMeter()
    request = GenerationRequest(messages=[ChatMessage(role="user", content=prompt)], max_tokens=max_tokens)
    t0 = time.perf_counter()
    span = meter.start()
    result = backend.generate(request)
    reading = span.stop()
    return result.text, int(result.completion_tokens), reading.joules, time.perf_counter() - t0


def _answer_all(
    models_dir: Path,
    names: tuple[str, ...],
    prompts: list[str],
    max_tokens: int,
    correct: Callable[[int, str], bool],
    progress: Progress | None,
    stage: str,
) -> list[dict[str, Any]]:
    """Every prompt through every model, one model at a time (after one warm-up call), and the per-prompt
    outcomes. Why model by model: llama.cpp's worker threads keep spinning for a few milliseconds after a
    call, and a CPU-time meter started in that window charges them to whatever runs next (a 6 ms specialist
    call read ~13 ms of CPU right after an LLM call)."""
    outcomes: list[dict[str, Any]] = [{} for _ in prompts]
    backends = _backends(models_dir, names)
    done = 0
    for name, backend in backends.items():
        _run(backend, prompts[0], max_tokens=max_tokens)  # warm-up: first-call allocations are not the model's
        for k, prompt in enumerate(prompts):
            text, tokens, joules, seconds = _run(backend, prompt, max_tokens=max_tokens)
            outcomes[k][name] = {
                "correct": correct(k, text),
                "output_tokens": tokens,
                "energy_j": round(joules, 5),
                "latency_s": round(seconds, 4),
                "answer": text[:80],
            }
            done += 1
            if progress:
                progress(stage, done)
    return outcomes


def measure_sentiment(
    n: int = 200,
    out: Path = DATA_DIR / "outcomes" / "sentiment_local.jsonl",
    models_dir: Path = MODELS_DIR,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Held-out polarity sentences, asked in natural phrasings, answered by every local model."""
    rng = seed_everything()
    split = split_polarity()
    order = rng.permutation(len(split.test_x))[:n]
    prompts, golds = [], []
    for k, idx in enumerate(order):
        template = SENTIMENT_ASK_TEMPLATES[k % len(SENTIMENT_ASK_TEMPLATES)]
        prompts.append(template.format(text=detokenize(split.test_x[idx])))
        golds.append(LABELS[int(split.test_y[idx])])
    outcomes = _answer_all(models_dir, LOCAL_MODELS, prompts, 12, lambda k, text: parse_sentiment(text) == golds[k],
                           progress, "sentiment")
    rows = [
        {"id": f"polarity-test-{int(idx)}", "prompt": prompt, "task": "sentiment", "label": gold, "outcomes": outs}
        for idx, prompt, gold, outs in zip(order, prompts, golds, outcomes, strict=True)
    ]
    _write_jsonl(out, rows)
    return summarize(rows)


def parse_number(text: str) -> int | None:
    """The last integer in an answer (word problems end with the result); commas and $ ignored."""
    numbers = _NUMBER.findall((text or "").replace(",", ""))
    return int(numbers[-1]) if numbers else None


def measure_math(
    n: int = 60,
    out: Path = DATA_DIR / "outcomes" / "math_local.jsonl",
    models_dir: Path = MODELS_DIR,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Generated multi-step arithmetic word problems (answers computed) answered by the local LLMs.

    MMLU rows cannot be used for the local models: the RouteLLM CSVs hold outcomes, not the gold letter."""
    rng = random.Random(SEED + 1)
    problems = [math_problem(rng) for _ in range(n)]
    outcomes = _answer_all(models_dir, LLM_MODELS, [p.text for p in problems], 64,
                           lambda k, text: parse_number(text) == problems[k].answer, progress, "math")
    rows = [
        {"id": f"math-gen-{k}", "prompt": p.text, "task": "math", "answer": p.answer, "outcomes": outs}
        for k, (p, outs) in enumerate(zip(problems, outcomes, strict=True))
    ]
    _write_jsonl(out, rows)
    return summarize(rows)


def score_chat(answer: str, accept: list[str]) -> bool:
    """Lenient reference check for short chat answers: any accepted answer as a whole word, any case
    (``data/chat_checked/README.md`` says why and what it over-credits)."""
    text = (answer or "").casefold()
    for option in accept:
        pattern = r"(?<!\w)" + re.escape(option.casefold()) + r"(?!\w)"
        if re.search(pattern, text):
            return True
    return False


def measure_chat(
    questions: Path = DATA_DIR / "chat_checked" / "questions.jsonl",
    out: Path = DATA_DIR / "outcomes" / "chat_local.jsonl",
    models_dir: Path = MODELS_DIR,
    progress: Progress | None = None,
    max_tokens: int = 32,
    limit: int | None = None,
) -> dict[str, Any]:
    """Short chat requests with checkable answers (written for this project) answered by the local LLMs, so
    chat outcomes are measured rather than assumed; open-ended chat still has no ground truth here."""
    items = read_jsonl(questions)[:limit]
    outcomes = _answer_all(models_dir, LLM_MODELS, [it["prompt"] for it in items], max_tokens,
                           lambda k, text: score_chat(text, items[k]["accept"]), progress, "chat")
    rows = [
        {"id": it["id"], "prompt": it["prompt"], "task": "chat", "kind": it["kind"], "accept": it["accept"],
         "outcomes": outs}
        for it, outs in zip(items, outcomes, strict=True)
    ]
    _write_jsonl(out, rows)
    return summarize(rows)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy, median joules and median latency per model over an outcomes file's rows."""
    models = sorted({m for row in rows for m in row["outcomes"]})
    summary: dict[str, Any] = {"n": len(rows)}
    for model in models:
        outs = [row["outcomes"][model] for row in rows if model in row["outcomes"]]
        summary[model] = {
            "accuracy": round(float(np.mean([o["correct"] for o in outs])), 4),
            "median_energy_j": float(f"{np.median([o['energy_j'] for o in outs]):.4g}"),
            "mean_energy_j": float(f"{np.mean([o['energy_j'] for o in outs]):.4g}"),
            "median_latency_s": float(f"{np.median([o['latency_s'] for o in outs]):.4g}"),
        }
    return summary


if __name__ == "__main__":  # pragma: no cover
    import sys

    def _print(stage: str, done: int) -> None:
        if done % 10 == 0:
            print(stage, done, flush=True)

    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    if what in ("sentiment", "all"):
        print(json.dumps(measure_sentiment(progress=_print), indent=2), flush=True)
    if what in ("math", "all"):
        print(json.dumps(measure_math(progress=_print), indent=2), flush=True)
    if what in ("chat", "all"):
        print(json.dumps(measure_chat(progress=_print), indent=2), flush=True)
