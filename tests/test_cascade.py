"""Cascade: a cheap model answers first and the Router escalates when the model's own confidence is low; the
ledger records both attempts and their joules."""

from __future__ import annotations

import pytest
from test_budgets import REVIEW, make_router, setup

CASCADE = """\
    name: t
    accuracy: {min_accuracy: 0.7}
    cascade: {enabled: true, escalate_below: %s, escalate_to: next}
    """


def test_low_confidence_escalates_and_both_attempts_are_in_the_ledger(tmp_path):
    # spec-b is predicted more accurate (prior 0.9) but dearer: spec-a answers first; its class probability on a
    # review is below 0.999, so the Router escalates.
    r = make_router(setup(tmp_path, CASCADE % 0.999, b_prior=0.9))
    resp = r.complete(REVIEW)
    assert resp.routing.model == "spec-b"
    a, b = resp.routing.attempts
    assert (a.model, a.outcome, b.model, b.outcome) == ("spec-a", "escalated", "spec-b", "ok")
    assert a.confidence is not None and a.confidence < 0.999
    assert resp.routing.energy_j == pytest.approx(a.energy_j + b.energy_j)
    recs = r.ledger.records()
    assert [(x.model, x.outcome, x.attempt) for x in recs] == [("spec-a", "escalated", 0), ("spec-b", "ok", 1)]
    assert all(x.energy_j > 0 for x in recs) and "low confidence, escalating" in recs[0].reason
    r.close()


def test_confident_answer_does_not_escalate(tmp_path):
    r = make_router(setup(tmp_path, CASCADE % 0.01, b_prior=0.9))
    resp = r.complete(REVIEW)
    assert resp.routing.model == "spec-a" and len(resp.routing.attempts) == 1
    assert "escalates to spec-b if confidence < 0.01" in resp.routing.reason
    r.close()


@pytest.mark.slow
def test_llama_cpp_reports_mean_token_probability_when_asked(small_backend):
    from router.backends import GenerationRequest
    from router.types import ChatMessage

    msgs = [ChatMessage(role="user", content="Say hello.")]
    plain = small_backend.generate(GenerationRequest(msgs, max_tokens=8))
    asked = small_backend.generate(GenerationRequest(msgs, max_tokens=8, want_confidence=True))
    assert plain.confidence is None and 0 < asked.confidence <= 1
    assert asked.text == plain.text  # reading the logits does not change greedy decoding
