"""``router data from-ledger``: the requests this router answered and someone scored, as an outcomes file, so the
offline tools (``router train feedback``, ``router calibrate``, ``router simulate``) learn from real traffic.

A request is exported when the ledger holds all three: its stored prompt (only kept when the operator opted in,
``prompts.store``), at least one feedback, and an answer (its newest record has outcome ``ok``). Its score is
:func:`router.feedback.combined_score` of its feedback: a person's newest score wins over judges', else the mean of
each judge's newest. Requests with the same prompt text become one line (the outcomes format's shape: one request,
the outcome of each model that answered it): per model the mean score, the mean output tokens and the mean
measured joules (``energy_j``, which simulation takes over the card's estimate), plus how many requests it is.
Each line: ``{"id": <the first request id>, "prompt", "task": <the router's task for it>, "outcomes": {model:
{"correct", "output_tokens", "energy_j", "requests"}}}`` (docs/simulation.md, *The outcomes file*).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..feedback import combined_score
from ..ledger import Feedback, Ledger


@dataclass
class ExportReport:
    lines: int = 0
    requests: int = 0
    """Scored, answered requests with a stored prompt: what the lines hold."""
    prompts: int = 0
    """Stored prompts looked at."""
    without_feedback: int = 0
    without_answer: int = 0
    models: Counter[str] = field(default_factory=Counter)
    sources: Counter[str] = field(default_factory=Counter)
    """Feedback of the exported requests by source (``user``, ``judge:<model>``)."""


def export_outcomes(ledger: Ledger, out: Path, *, since: float = 0.0, until: float | None = None,
                    progress: Callable[[int, int], None] | None = None) -> ExportReport:
    """Write the scored requests stored in ``[since, until)`` to ``out`` (JSON Lines); see the module docstring."""
    report = ExportReport()
    prompts = ledger.prompts(since, until)
    report.prompts = len(prompts)
    given: dict[str, list[Feedback]] = defaultdict(list)
    for fb in ledger.feedback(since=since):  # feedback comes after its prompt was stored
        given[fb.request_id].append(fb)
    lines: dict[str, dict[str, Any]] = {}
    per_model: dict[str, dict[str, list[tuple[float, int, float]]]] = defaultdict(lambda: defaultdict(list))
    for done, stored in enumerate(prompts, 1):
        if progress is not None:
            progress(done, len(prompts))
        feedback = given.get(stored.request_id)
        score = combined_score(feedback or ())
        if score is None:
            report.without_feedback += 1
            continue
        record = ledger.request_record(stored.request_id)
        if record is None or record.outcome != "ok":
            report.without_answer += 1
            continue
        report.requests += 1
        report.models[record.model] += 1
        report.sources.update(fb.source for fb in feedback or ())
        lines.setdefault(stored.prompt, {"id": stored.request_id, "prompt": stored.prompt,
                                         "task": record.task or "chat", "outcomes": {}})
        per_model[stored.prompt][record.model].append((score, record.output_tokens, record.energy_j))
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for prompt, line in lines.items():
            for model, calls in per_model[prompt].items():
                n = len(calls)
                line["outcomes"][model] = {
                    "correct": round(sum(c[0] for c in calls) / n, 6),
                    "output_tokens": round(sum(c[1] for c in calls) / n),
                    "energy_j": round(sum(c[2] for c in calls) / n, 6),
                    "requests": n,
                }
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    report.lines = len(lines)
    return report
