"""Cascade: a cheap model answers first and the Router escalates when the model's own confidence is low; the
ledger records both attempts and their joules."""

from __future__ import annotations

import pytest
from test_budgets import ONNX, REVIEW, make_router, policy, setup, spend_early

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


def escalation_budget(tmp_path):
    """spec-a answers first and escalates to spec-b (its confidence on a review is below 0.999), whose budget is
    100 J a day."""
    return make_router(setup(tmp_path, policy("fallback", 100.0, per=86400, model="spec-b")
                             + "cascade: {enabled: true, escalate_below: 0.999, escalate_to: spec-b}\n", b_prior=0.9))


def test_an_escalation_whose_budget_is_spent_at_call_time_keeps_the_answer_it_escalated_from(tmp_path):
    """The decision saw room in spec-b's budget, then other traffic spent it before the escalation: under
    `fallback` the answer spec-a already gave is the model with room, not a 429 that says every budget is spent
    (spec-a had none), plain and streamed."""
    r = escalation_budget(tmp_path)
    plain, streamed = r.prepare(REVIEW), r.prepare(REVIEW)
    assert plain.decision.escalate_to == ("spec-b",)
    spend_early(r, "model:spec-b:86400s", 99.5, 100.0, 86400, need_s=60)
    kept = r.send(plain)
    chunks = list(r.send(streamed, stream=True))
    assert kept.routing.model == "spec-a" and kept.choices[0].message.content in ("positive", "negative")
    assert [(a.model, a.outcome) for a in kept.routing.attempts] == [("spec-a", "escalated"), ("spec-b", "rejected")]
    assert "escalation_skipped" in kept.routing.flags
    assert "spec-b's energy budget model:spec-b:86400s is spent" in kept.routing.reason
    assert kept.routing.energy_j == pytest.approx(kept.routing.attempts[0].energy_j)
    final = chunks[-1].routing
    assert final is not None and final.model == "spec-a" and "escalation_skipped" in final.flags
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == kept.choices[0].message.content
    outcomes = [(x.model, x.outcome) for x in r.ledger.records()]
    assert outcomes == [("spec-a", "escalated"), ("spec-b", "rejected")] * 2
    r.close()


def test_the_reason_of_a_kept_answer_names_the_model_that_gave_it(tmp_path):
    """The escalation was not made: the reason says spec-a answered and spec-b was rejected, not 'answered by
    spec-b' (the model that produced nothing)."""
    r = escalation_budget(tmp_path)
    prepared = r.prepare(REVIEW)
    spend_early(r, "model:spec-b:86400s", 99.5, 100.0, 86400, need_s=60)
    kept = r.send(prepared)
    assert kept.routing.model == "spec-a"
    assert "answered by spec-a, kept after spec-b rejected" in kept.routing.reason
    assert "answered by spec-b" not in kept.routing.reason
    r.close()


def test_the_escalation_reason_reads_a_confidence_close_to_its_threshold_apart_from_it() -> None:
    from router._attempts import _below

    assert _below(0.62, 0.8) == "0.62 < 0.80"
    assert _below(0.9987, 0.999) == "0.9987 < 0.9990", "two decimals read 1.00 < 1.00"
    assert _below(0.3, 0.3000000001) == "0.300000 < 0.300000"  # closer than any text shows: six decimals at most


@pytest.mark.parametrize("stream", [False, True])
def test_an_escalation_model_that_fails_keeps_the_answer_escalated_from(tmp_path, stream):
    """spec-b's model file does not load: the escalation fails like a model that is down. The answer spec-a gave
    (paid for, and an answer) is kept, flagged, rather than a 502; the ledger has both attempts."""
    root = setup(tmp_path, CASCADE % 0.999, b_prior=0.9)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx graph")
    card = root / "models" / "spec-b.yaml"
    card.write_text(card.read_text().replace(f"path: {ONNX}", f"path: {broken}"))
    r = make_router(root)
    if stream:
        chunks = list(r.complete(REVIEW, stream=True))
        routing = chunks[-1].routing
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        resp = r.complete(REVIEW)
        routing, text = resp.routing, resp.choices[0].message.content
    assert routing is not None and routing.model == "spec-a" and text in ("positive", "negative")
    assert [(a.model, a.outcome) for a in routing.attempts] == [("spec-a", "escalated"), ("spec-b", "error")]
    assert "escalation_skipped" in routing.flags
    assert "answered by spec-a, kept after spec-b error" in routing.reason
    assert [(x.model, x.outcome) for x in r.ledger.records()] == [("spec-a", "escalated"), ("spec-b", "error")]
    r.close()
