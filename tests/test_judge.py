"""The judge: it runs after the answer is sent (never delaying it), stores its score as feedback with source
``judge:<model>``, and its own calls are ledger records with their joules and a reason saying they are judge
calls. The only local judge is Gemma 3 270M base: these tests prove the mechanics, not the judgements."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from router import ConfigError, Router, RouterConfig
from router.backends import create_backend
from router.backends.faults import FaultInjectingBackend
from router.cards import load_cards
from router.judge import parse_score, reference_prompt, rubric_prompt
from router.ledger.feedback import Feedback

ROOT = Path(__file__).resolve().parents[1]
REVIEW = "Is this review positive or negative? 'a gorgeous, witty film with a heart of gold'"
QUESTION = "What is the capital of Japan?"


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _config(tmp_path: Path, **judge: object) -> RouterConfig:
    return RouterConfig(ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}",
                        judge={"model": "gemma3-270m", "share": 1.0, **judge})  # type: ignore[arg-type]


def test_parse_score() -> None:
    assert parse_score("10") == 1.0 and parse_score("7.5 out of 10") == 0.75 and parse_score("Score: 0") == 0.0
    assert parse_score("42") is None and parse_score("Tokyo.") is None and parse_score("Score: 42") is None


@pytest.mark.parametrize(("answer", "score"), [
    # a chat judge that restates the request before its verdict
    ("The user asked for 3 examples of prime numbers and the reply gives 2, 3 and 5, all correct.\nScore: 8", 0.8),
    ("The request asks for a 5-line poem; the reply has 4 lines.\n\n**Score:** 6", 0.6),
    ("Rating: 7", 0.7),
    ("I would rate this reply 9/10: it answers all 2 questions.", 0.9),
    ("The reply is correct but long. Score (0-10): 7.5", 0.75),
    ("Score: 4\nOn reflection, the reply misses 1 of the 2 points asked for.\nFinal score: 3", 0.3),  # the last one
    # what the shipped base models write after the prompt's closing "Score:"
    ("8", 0.8), (" 10.", 1.0), ("10 (better)", 1.0), ("7\nReply: I think", 0.7),
    # no score: a number the judge quotes is not one, and what cannot be read stores nothing
    ("The user asked for 3 examples of prime numbers.", None),
    ("2, 3, 5", None), ("3 examples were asked for and given.", None), ("Score: N", None), ("", None),
])
def test_the_score_is_the_one_the_judge_marked_not_a_number_it_quotes(answer: str, score: float | None) -> None:
    """The first number from 0 to 10 in the judge's answer was its score: a judge restating the request ("The user
    asked for 3 examples ... Score: 8") scored 3."""
    assert parse_score(answer) == score


def test_the_judges_prompts_ask_for_a_marked_score_and_end_with_the_marker() -> None:
    for prompt in (rubric_prompt("Give 3 examples", "2, 3, 5"), reference_prompt("Give 3 examples", "2, 3", "2, 3, 5"),
                   rubric_prompt("Give 3 examples", "2, 3, 5", rubric="all examples correct")):
        assert "on its own line: Score: N" in prompt and prompt.endswith(" Score:")
        assert parse_score(prompt) is None, "a judge echoing its prompt gives no score"


@pytest.mark.slow
def test_the_judge_scores_after_the_answer_without_delaying_it(tmp_path: Path) -> None:
    """The judge model here is the real Gemma behind a fault-injecting double that makes it 2 s slow: the answer
    comes back in milliseconds all the same, the score arrives later."""
    cards = load_cards(ROOT / "models")
    slow_judge = FaultInjectingBackend(create_backend(cards["gemma3-270m"]), delay_s=2.0)
    with Router(_config(tmp_path), backends={"gemma3-270m": slow_judge}) as r:
        started = time.perf_counter()
        resp = r.complete(user(REVIEW))
        assert time.perf_counter() - started < 1.5 and resp.routing.model == "sentiment-onnx"
        assert r.ledger.feedback(resp.id) == [], "not judged yet: the answer did not wait"
        assert r.learning is not None and r.learning.drain(120)
        judged = r.ledger.feedback(resp.id)
        assert len(judged) == 1 and judged[0].source == "judge:gemma3-270m" and 0.0 <= judged[0].score <= 1.0
        calls = [x for x in r.ledger.records() if x.request_id == f"{resp.id}:judge"]
        assert len(calls) == 1 and calls[0].model == "gemma3-270m" and calls[0].outcome == "ok"
        assert calls[0].reason.startswith(f"judge call: scoring {resp.id} (sentiment-onnx's answer) by rubric")
        assert calls[0].energy_j > 0 and calls[0].task == "judge" and calls[0].output_tokens > 0
        assert r.learning.stats["judged"] == 1
        assert sum(t["energy_j"] for t in r.ledger.totals("model") if t["group"] == "gemma3-270m") > 0, \
            "the judge's joules count in the ledger's totals"


@pytest.mark.slow
def test_the_judge_against_the_largest_models_answer(tmp_path: Path) -> None:
    with Router(_config(tmp_path, against="largest", max_tokens=24)) as r:
        small = r.complete(user(QUESTION), model="smollm2-135m", max_tokens=16)
        large = r.complete(user(QUESTION), model="gemma3-270m", max_tokens=16)
        assert r.learning is not None and r.learning.drain(180)
        by_id = {x.request_id: x for x in r.ledger.records()}
        ref = by_id[f"{small.id}:reference"]
        assert ref.model == "gemma3-270m" and "reference answer (gemma3-270m, the largest model)" in ref.reason
        assert by_id[f"{small.id}:judge"].reason.endswith("against gemma3-270m's answer")
        assert [f.source for f in r.ledger.feedback(small.id)] == ["judge:gemma3-270m"]
        assert f"{large.id}:judge" not in by_id and r.ledger.feedback(large.id) == [], \
            "an answer of the reference model itself is not judged against itself"


def test_share_zero_judges_nothing_and_a_failing_judge_leaves_the_answer_alone(tmp_path: Path) -> None:
    cards = load_cards(ROOT / "models")
    with Router(_config(tmp_path, share=0.0)) as r:
        for _ in range(5):
            r.complete(user(REVIEW))
        assert r.learning is not None and r.learning.drain(30)
        assert r.ledger.feedback() == [] and {x.model for x in r.ledger.records()} == {"sentiment-onnx"}
    broken = FaultInjectingBackend(create_backend(cards["gemma3-270m"]), fail_on_call=True)
    with Router(_config(tmp_path / "b"), backends={"gemma3-270m": broken}) as r:
        resp = r.complete(user(REVIEW))
        assert resp.choices[0].message.content
        assert r.learning is not None and r.learning.drain(30)
        failed = [x for x in r.ledger.records() if x.request_id == f"{resp.id}:judge"]
        assert len(failed) == 1 and failed[0].outcome == "error" and "injected failure" in (failed[0].error or "")
        assert r.ledger.feedback() == [] and r.learning.stats["failed"] == 1


def test_a_judge_without_a_card_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="judge.model"):
        Router(RouterConfig(ledger_url=f"sqlite:///{tmp_path / 'l.sqlite3'}", judge={"model": "gpt-nobody"}))


def test_a_specialist_judge_is_refused_and_judge_errors_name_the_config_file(tmp_path: Path) -> None:
    """`judge: {model: sentiment-onnx}` used to start, and every judge call spent joules on a label and stored nothing;
    an unknown judge's error did not say which file to fix."""
    config = tmp_path / "router.yaml"
    config.write_text(f"ledger_url: sqlite:///{tmp_path / 'l.sqlite3'}\njudge: {{model: sentiment-onnx}}\n")
    with pytest.raises(ConfigError) as err:
        Router(RouterConfig.load(config))
    assert str(err.value) == (f"{config}: field `judge.model`: 'sentiment-onnx' is a specialist (it answers only with "
                              "a label, never a score); the judge must be a general model (tier small or large); "
                              "fix: name one of: gemma3-270m, smollm2-135m")
    config.write_text(f"ledger_url: sqlite:///{tmp_path / 'l.sqlite3'}\njudge: {{model: gpt-nobody}}\n")
    with pytest.raises(ConfigError) as err:
        Router(RouterConfig.load(config))
    assert str(err.value).startswith(f"{config}: field `judge.model`: unknown model 'gpt-nobody'; use one of: ")
    assert str(err.value).endswith("fix: name a general model card with a backend: gemma3-270m, smollm2-135m")


def test_a_router_that_fails_to_start_leaves_no_journal_threads_or_locked_segments(tmp_path: Path) -> None:
    """The ledger (with its journal's threads and flock'd segment) opens before the judge is checked; a caller who
    catches the ConfigError and tries again must not collect them, one set per attempt."""
    import threading

    def journal_threads() -> int:
        return sum(t.name.startswith("ledger-journal") for t in threading.enumerate())

    before = journal_threads()
    config = RouterConfig(ledger_url=f"sqlite:///{tmp_path / 'l.sqlite3'}", judge={"model": "gpt-nobody"})
    for _ in range(3):
        with pytest.raises(ConfigError, match="judge.model"):
            Router(config)
    assert journal_threads() == before
    with Router(RouterConfig(ledger_url=f"sqlite:///{tmp_path / 'l.sqlite3'}")) as router:  # the same ledger opens
        assert router.ledger.records() == []
    assert journal_threads() == before


def test_close_cancels_a_judge_call_the_endpoint_is_slow_to_answer(tmp_path: Path) -> None:
    """Router.close() waited for the judge's call to end (up to 30 s, then closed the backends under it), so a
    judge on a slow hosted model held every shutdown; the call is now cancelled at once and recorded so, the prompt
    stored all the same."""
    import httpx
    from servers import procs

    with procs.upstream(tmp_path) as base:
        models = procs.models_dir(tmp_path / "models", {
            "remote-echo": procs.remote_card("remote-echo", base, "echo", tier="small"),
            "remote-judge": procs.remote_card("remote-judge", base, "sleep:15"),  # answers after 15 s
        })
        config = RouterConfig(models_dir=models, ledger_url=f"sqlite:///{tmp_path / 'l.sqlite3'}",
                              prompts={"store": True}, judge={"model": "remote-judge", "share": 1.0})
        r = Router(config)
        resp = r.complete(user(QUESTION), model="remote-echo")
        while httpx.get(base.removesuffix("/v1") + "/stats").json()["calls"].get("sleep:15") != 1:
            time.sleep(0.05)  # until the judge's call is at the endpoint
        r.close()
        assert r.learning is not None and r.learning.stats["dropped"] == 1 and r.learning.stats["judged"] == 0
    from router.ledger import open_ledger

    ledger = open_ledger(config.ledger_url)
    try:
        call = next(x for x in ledger.records() if x.request_id == f"{resp.id}:judge")
        assert call.outcome == "cancelled" and call.error is not None and call.error.startswith("cancelled:")
        assert ledger.feedback(resp.id) == [] and [p.request_id for p in ledger.prompts()] == [resp.id]
    finally:
        ledger.close()


def test_the_judges_feedback_holds_its_score_not_its_words(tmp_path: Path) -> None:
    """The feedback's comment was the judge's own answer (up to 200 characters): a judge that quotes the request
    put prompt text into the feedback table, with `prompts.store` off and after prompt retention, though
    docs/feedback.md says feedback holds no prompt text. Its score was the first number in its answer, the
    request's "7", not its "Score: 8"; a judge that only echoes its prompt gives no score and stores nothing."""
    from servers import procs

    with procs.upstream(tmp_path) as base:
        models = procs.models_dir(tmp_path / "models", {
            "remote-echo": procs.remote_card("remote-echo", base, "echo", tier="small"),
            "remote-judge": procs.remote_card("remote-judge", base, "judge"),  # quotes the request, then "Score: 8"
        })
        stored: dict[str, list[Feedback]] = {}
        for judge in ("remote-judge", "remote-echo"):
            config = RouterConfig(models_dir=models, ledger_url=f"sqlite:///{tmp_path / judge}.sqlite3",
                                  judge={"model": judge, "share": 1.0})
            with Router(config) as r:
                resp = r.complete(user("SECRET plan 7 for the merger"), model="remote-echo")
                assert r.learning is not None and r.learning.drain(30)
                stored[judge] = r.ledger.feedback(resp.id)
    (judged,) = stored["remote-judge"]
    assert judged.score == 0.8 and judged.comment == "by rubric: the judge (remote-judge) answered 8/10", judged
    assert stored["remote-echo"] == [], "the echoing judge's only number is the request's 7: it gave no score"


def test_a_judge_that_reasons_first_gets_room_for_its_score_or_a_warning_naming_the_setting(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The judge's answer was cut at a hard-coded 8 tokens: a hosted judge that writes its reasons before its
    `Score: N` line (as the prompt asks) was cut before the score, on every judged request, and nothing said so.
    `judge.score_max_tokens` gives it room; at the default, each cut answer stores nothing and a warning that
    names the setting is logged the first time and at the 10th, not once a request. The upstream honours the
    token limit as a real server does."""
    import logging

    from servers import procs

    caplog.set_level(logging.WARNING, logger="router.judge")
    with procs.upstream(tmp_path) as base:
        models = procs.models_dir(tmp_path / "models", {
            "remote-echo": procs.remote_card("remote-echo", base, "echo", tier="small"),
            "remote-judge": procs.remote_card("remote-judge", base, "judge:reasoning"),  # reasons, then "Score: 7"
        })
        roomy = RouterConfig(models_dir=models, ledger_url=f"sqlite:///{tmp_path / 'roomy.sqlite3'}",
                             judge={"model": "remote-judge", "share": 1.0, "score_max_tokens": 256})
        with Router(roomy) as r:
            resp = r.complete(user(QUESTION), model="remote-echo")
            assert r.learning is not None and r.learning.drain(30)
            assert [(f.source, f.score) for f in r.ledger.feedback(resp.id)] == [("judge:remote-judge", 0.7)]
            assert r.learning.stats["judged"] == 1 and caplog.messages == []
        short = RouterConfig(models_dir=models, ledger_url=f"sqlite:///{tmp_path / 'short.sqlite3'}",
                             judge={"model": "remote-judge", "share": 1.0})
        with Router(short) as r:
            for _ in range(10):
                r.complete(user(QUESTION), model="remote-echo")
            assert r.learning is not None and r.learning.drain(30)
            assert r.ledger.feedback() == [] and r.learning.stats["unscored"] == 10
            assert r.learning.judge is not None and r.learning.judge.cut_unscored == 10
    assert len(caplog.messages) == 2, caplog.messages
    first, tenth = caplog.messages
    assert "cut at judge.score_max_tokens = 8 tokens" in first and "(1 answer(s) cut so far" in first
    assert "fix: raise `score_max_tokens` under `judge:`" in first and "(10 answer(s) cut so far" in tenth


def test_score_max_tokens_is_a_judge_setting_from_1_to_8192(tmp_path: Path) -> None:
    def judge(**settings: object) -> RouterConfig:
        return RouterConfig(ledger_url=f"sqlite:///{tmp_path / 'l.sqlite3'}",
                            judge={"model": "gemma3-270m", **settings})  # type: ignore[arg-type]

    assert judge().judge.score_max_tokens == 8 and judge(score_max_tokens=512).judge.score_max_tokens == 512
    for bad, why in ((0, "greater than or equal to 1"), (10_000, "less than or equal to 8192"), ("lots", "integer")):
        with pytest.raises(ConfigError, match=f"field `judge.score_max_tokens`: .*{why}"):
            judge(score_max_tokens=bad)
