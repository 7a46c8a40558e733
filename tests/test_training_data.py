"""The training data builders: held-out request templates are never trained on, chat answers are scored by a
rule that can fail, and the shipped outcomes files are what the scorers say they are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from router.training import requests as rq
from router.training.local_outcomes import parse_sentiment, score_chat, summarize

ROOT = Path(__file__).resolve().parents[1]


def test_held_out_requests_use_templates_never_seen_in_training() -> None:
    train, test = rq.build_request_set(per_task=200)
    for templates in (rq.SENTIMENT_ASK_TEMPLATES, rq.SENTIMENT_DECOYS):
        prefixes = {t.split("{")[0].strip().lower() for t in templates if t.split("{")[0].strip()}
        train_hits = {p for p in prefixes if any(x.lower().startswith(p) for x in train.texts)}
        test_hits = {p for p in prefixes if any(x.lower().startswith(p) for x in test.texts)}
        # exact prefixes only (noise may alter a few): a template's opening seen in both parts is a leak
        assert not (train_hits & test_hits), sorted(train_hits & test_hits)[:5]
    assert set(test.labels) == {"sentiment", "multiple_choice", "math", "chat"}


@pytest.mark.parametrize(
    ("answer", "accept", "expected"),
    [
        ("The capital of France is Paris.", ["Paris"], True),
        ("PARIS", ["Paris"], True),
        ("Parisian food is great", ["Paris"], False),  # whole words only
        ("It is Lyon.", ["Paris"], False),
        ("buenos días, amigo", ["buenos dias", "buenos días"], True),
        ("There are 24 hours.", ["24", "twenty-four"], True),
        ("There are 240 hours.", ["24", "twenty-four"], False),
        ("", ["Paris"], False),
    ],
)
def test_score_chat(answer: str, accept: list[str], expected: bool) -> None:
    assert score_chat(answer, accept) is expected


def test_parse_sentiment_takes_the_first_label() -> None:
    assert parse_sentiment("Negative, not positive") == "negative"
    assert parse_sentiment("no idea") is None


def test_shipped_chat_outcomes_agree_with_the_scorer() -> None:
    """Every shipped chat outcome is re-scored from its stored answer (the first 80 characters are stored, so
    only a stored *correct* answer must re-score as correct when the accepted answer lies in that prefix)."""
    questions = {
        q["id"]: q
        for q in map(json.loads, (ROOT / "data/chat_checked/questions.jsonl").read_text().splitlines())
    }
    rows = [json.loads(x) for x in (ROOT / "data/outcomes/chat_local.jsonl").read_text().splitlines() if x.strip()]
    assert len(rows) == len(questions) > 100
    for row in rows:
        assert row["task"] == "chat" and row["accept"] == questions[row["id"]]["accept"]
        for outcome in row["outcomes"].values():
            if score_chat(outcome["answer"], row["accept"]):
                assert outcome["correct"] is True
    summary = summarize(rows)
    assert {"smollm2-135m", "gemma3-270m"} <= set(summary)


def test_local_models_are_measured_one_model_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """All of one model's calls (after a warm-up) before the next model's, so an LLM's still-spinning threads
    are never metered as the next model's CPU time."""
    from router.backends.base import Generation
    from router.training import local_outcomes as lo

    calls: list[str] = []

    class RecordingBackendDouble:  # TEST DOUBLE: records the call order instead of running a model
        def __init__(self, name: str) -> None:
            self.name = name

        def generate(self, request: object) -> Generation:
            calls.append(self.name)
            return Generation(text="positive" if self.name == "a" else "no idea", finish_reason="stop",
                              prompt_tokens=1, completion_tokens=1)

    monkeypatch.setattr(lo, "_backends", lambda _dir, names: {n: RecordingBackendDouble(n) for n in names})
    out = lo._answer_all(ROOT, ("a", "b"), ["p1", "p2", "p3"], 4, lambda _k, text: text == "positive", None, "x")
    assert calls == ["a"] * 4 + ["b"] * 4
    assert [o["a"]["correct"] for o in out] == [True] * 3 and not any(o["b"]["correct"] for o in out)
