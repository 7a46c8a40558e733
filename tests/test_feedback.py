"""Feedback from the library (``Router.feedback``), who may give it, how scores combine, opt-in prompt storage with
its retention and delete command, the export of scored requests, and the proxy writer's delegation. Requests go
to the shipped sentiment specialist (real, in-process, milliseconds)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from cli_helpers import router_main
from conftest_redis import start_redis_server
from forking import in_a_forked_child
from typer.testing import CliRunner

from router import (
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    PermissionDeniedError,
    Router,
    RouterConfig,
)
from router.cards import load_cards
from router.cli import app
from router.feedback import combined_score
from router.keys import KeyStore, digest, hash_key
from router.ledger import Feedback, LedgerRecord, SQLiteLedger, StoredPrompt
from router.proxy.ledger_writer import BackgroundLedger
from router.simulate.outcomes import load_outcomes
from router.training.from_ledger import export_outcomes

REVIEW = "Is this review positive or negative? 'a gorgeous, witty film with a heart of gold'"
DAY = 86_400.0


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _config(tmp_path: Path, **kw: object) -> RouterConfig:
    return RouterConfig(ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}", **kw)  # type: ignore[arg-type]


def test_feedback_is_kept_beside_the_record_every_one_of_them(tmp_path: Path) -> None:
    with Router(_config(tmp_path)) as r:
        resp = r.complete(user(REVIEW))
        assert resp.routing.model == "sentiment-onnx"
        first = r.feedback(resp.id, 0.25, comment="the label was wrong")
        second = r.feedback(resp.id, 1)
        got = r.ledger.feedback(resp.id)
        assert [f.feedback_id for f in got] == [first.feedback_id, second.feedback_id], "every feedback is kept"
        assert [(f.score, f.source, f.comment) for f in got] == [(0.25, "user", "the label was wrong"),
                                                                 (1.0, "user", None)]
        assert combined_score(got) == 1.0, "a person's newest score wins"
        assert r.ledger.request_record(resp.id).model == "sentiment-onnx"  # type: ignore[union-attr]


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"response_id": "chatcmpl-nobody", "score": 0.5}, "id"),
    ({"score": 1.5}, "score"), ({"score": -0.01}, "score"), ({"score": True}, "score"), ({"score": "0.5"}, "score"),
    ({"score": float("nan")}, "score"), ({"score": 10**400}, "score"), ({"response_id": "", "score": 0.5}, "id"),
    ({"response_id": "x" * 200, "score": 0.5}, "id"), ({"score": 0.5, "comment": "c" * 2001}, "comment"),
    ({"score": 0.5, "comment": 3}, "comment"), ({"score": 0.5, "comment": "half an emoji \ud83d"}, "comment"),
    ({"response_id": "chatcmpl-\udc00", "score": 0.5}, "id"),
])  # fmt: skip
def test_bad_feedback_is_refused_with_a_typed_error_naming_the_field(tmp_path: Path, kwargs: dict[str, object],
                                                                     param: str) -> None:
    with Router(_config(tmp_path)) as r:
        resp = r.complete(user(REVIEW))
        args = {"response_id": resp.id, **kwargs}
        want = NotFoundError if args["response_id"] == "chatcmpl-nobody" else BadRequestError
        with pytest.raises(want) as info:
            r.feedback(args.pop("response_id"), args.pop("score"), **args)  # type: ignore[arg-type]
        assert info.value.param == param
        assert r.ledger.feedback() == []


def test_a_request_that_ended_in_an_error_is_not_scored(tmp_path: Path) -> None:
    """Its newest record is ``error``: the caller got no answer, and the export would leave the score out unseen;
    a later answer under the same id (a retry) may be scored."""
    with Router(_config(tmp_path)) as r:
        r.ledger.record(LedgerRecord("chatcmpl-failed", "gemma3-270m", "small", 0.5, "estimated:cpu-time",
                                     outcome="error", error="upstream 503"))
        with pytest.raises(NotFoundError, match=r"that request failed \(upstream 503\) and got no answer") as info:
            r.feedback("chatcmpl-failed", 0.0)
        assert info.value.param == "id" and r.ledger.feedback() == []
        r.ledger.record(LedgerRecord("chatcmpl-failed", "gemma3-270m", "small", 0.5, "estimated:cpu-time",
                                     ts=time.time() + 1))
        assert r.feedback("chatcmpl-failed", 1.0).score == 1.0


def test_with_keys_only_the_requesting_key_or_an_admin_key_may_score(tmp_path: Path) -> None:
    keys = KeyStore.from_entries([{"name": "a", "sha256": digest("sk-a")}, {"name": "b", "sha256": digest("sk-b")},
                                  {"name": "ops", "sha256": digest("sk-ops"), "admin": True}])
    with Router(_config(tmp_path), keys=keys) as r:
        resp = r.complete(user(REVIEW), api_key="sk-a")
        assert r.feedback(resp.id, 0.5, api_key="sk-a").key_hash == hash_key("sk-a")
        with pytest.raises(PermissionDeniedError, match="another API key"):
            r.feedback(resp.id, 0.0, api_key="sk-b")
        with pytest.raises(AuthenticationError):
            r.feedback(resp.id, 0.0, api_key="sk-unknown")
        assert r.feedback(resp.id, 0.9, api_key="sk-ops").key_hash == hash_key("sk-ops")
        assert r.feedback(resp.id, 0.7).key_hash is None, "the application itself (no key) may score"
        assert [f.score for f in r.ledger.feedback(resp.id)] == [0.5, 0.9, 0.7]


def test_with_keys_a_request_id_another_key_used_is_refused(tmp_path: Path) -> None:
    """Another key reusing a chosen request id used to put its own record on top, then score (and outvote) the
    first key's answer. The first key may reuse its id (a retry); without keys nobody owns an id."""
    keys = KeyStore.from_entries([{"name": "a", "sha256": digest("sk-a")}, {"name": "b", "sha256": digest("sk-b")}])
    with Router(_config(tmp_path), keys=keys) as r:
        r.complete(user(REVIEW), api_key="sk-a", request_id="review-3")
        with pytest.raises(PermissionDeniedError, match="'review-3' is taken by a response made with another API"):
            r.complete(user(REVIEW), api_key="sk-b", request_id="review-3")
        with pytest.raises(PermissionDeniedError):
            asyncio.run(r.aprepare(user(REVIEW), api_key="sk-b", request_id="review-3"))
        with pytest.raises(PermissionDeniedError, match="another API key"):
            r.feedback("review-3", 0.0, api_key="sk-b")
        assert r.complete(user(REVIEW), api_key="sk-a", request_id="review-3").id == "review-3"
        assert {rec.key_hash for rec in r.ledger.records()} == {hash_key("sk-a")}
    with Router(_config(tmp_path)) as r:
        assert r.complete(user(REVIEW), api_key="sk-b", request_id="review-3").id == "review-3"


@pytest.mark.redis
def test_with_keys_a_chosen_request_id_is_answered_while_the_store_is_down(tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """Checking who owns a chosen request id reads the ledger. While its store is down requests go on (records
    are journaled), so that read must not fail them with a 503; nor may another key take an id it cannot check:
    the request is answered under an id the router makes, logged once per outage, and chosen ids are checked and
    kept again once the store is back. A real Redis, stopped and started."""
    server = start_redis_server(tmp_path)
    keys = KeyStore.from_entries([{"name": "a", "sha256": digest("sk-a")}, {"name": "b", "sha256": digest("sk-b")}])
    config = RouterConfig(ledger_url=f"{server.url}/0?prefix=owner:&socket_timeout=1&socket_connect_timeout=1",
                          journal={"folder": str(tmp_path / "journal"), "replay_interval_s": 0.2})  # type: ignore[arg-type]
    try:
        with Router(config, keys=keys) as r:
            r.complete(user(REVIEW), api_key="sk-a", request_id="review-1")
            caplog.set_level(logging.WARNING, logger="router")
            server.stop()
            try:
                answered = [r.complete(user(REVIEW), api_key="sk-a", request_id=f"review-{i}").id for i in (2, 3)]
                answered.append(asyncio.run(r.acomplete(user(REVIEW), api_key="sk-b", request_id="review-4")).id)
                assert len(set(answered)) == 3 and not {"review-2", "review-3", "review-4"} & set(answered)
                assert len([m for m in caplog.messages if "answered under one the router makes" in m]) == 1
            finally:
                server.start()
            deadline = time.time() + 30
            while r.ledger.unavailable and time.time() < deadline:  # type: ignore[attr-defined]
                time.sleep(0.1)
            r.complete(user(REVIEW), api_key="sk-a", request_id="review-5")  # this Redis keeps nothing on disk
            with pytest.raises(PermissionDeniedError, match="another API key"):
                r.complete(user(REVIEW), api_key="sk-b", request_id="review-5")  # checked again
            assert "request ids the callers choose are checked and kept again" in caplog.text
            assert set(answered) <= {rec.request_id for rec in r.ledger.records()}
    finally:
        server.stop()


def test_afeedback_is_the_async_twin(tmp_path: Path) -> None:
    with Router(_config(tmp_path)) as r:
        resp = r.complete(user(REVIEW))
        fb = asyncio.run(r.afeedback(resp.id, 0.6))
        assert [f.feedback_id for f in r.ledger.feedback(resp.id)] == [fb.feedback_id]


def test_combined_score_people_win_over_judges_newest_person_wins_judges_average() -> None:
    fb = [Feedback("r", 0.2, source="judge:a", ts=1), Feedback("r", 0.6, source="judge:a", ts=3),
          Feedback("r", 1.0, source="judge:b", ts=2)]
    assert combined_score(fb) == pytest.approx(0.8), "each judge's newest (0.6 and 1.0), averaged"
    fb += [Feedback("r", 0.1, ts=4, key_hash="key-a"), Feedback("r", 0.3, ts=5, key_hash="key-ops")]
    assert combined_score(fb) == 0.3, "a person's newest score wins over every judge"
    assert combined_score([]) is None


def test_prompts_are_not_stored_by_default(tmp_path: Path) -> None:
    with Router(_config(tmp_path)) as r:
        assert r.learning is None, "nothing runs after answers unless the operator opts in"
        r.complete(user(REVIEW))
        assert r.ledger.prompts() == []


def test_prompts_are_stored_when_opted_in_and_retention_deletes_old_ones_at_start(tmp_path: Path) -> None:
    now = time.time()
    seed = SQLiteLedger(tmp_path / "ledger.sqlite3")
    seed.store_prompt(StoredPrompt("old", "p", "[]", ts=now - 40 * DAY))
    seed.store_prompt(StoredPrompt("recent", "p", "[]", ts=now - 1 * DAY))
    seed.close()
    with Router(_config(tmp_path, prompts={"store": True, "retention_days": 30})) as r:
        assert [p.request_id for p in r.ledger.prompts()] == ["recent"], "retention applied when the router starts"
        resp = r.complete(user(REVIEW))
        assert r.learning is not None and r.learning.drain(30)
        stored = r.ledger.prompts(request_id=resp.id)
        assert len(stored) == 1
        p = stored[0]
        assert (p.prompt, p.model, p.answer) == (REVIEW, "sentiment-onnx", resp.choices[0].message.content)
        assert json.loads(p.messages) == user(REVIEW)


def test_a_forked_child_stores_its_prompts_with_a_learning_thread_of_its_own(tmp_path: Path) -> None:
    """A Router made before the process forks (gunicorn --preload, multiprocessing's fork, Celery's prefork pool):
    the child's answers are stored by a learning thread of its own (a fork copies no thread: without one the child's
    prompts were never stored and ``drain()`` never returned)."""
    with Router(_config(tmp_path, prompts={"store": True})) as r:
        r.complete(user(REVIEW))
        assert r.learning is not None and r.learning.drain(30)

        def in_the_child() -> None:  # a failed assert ends the child with exit code 1
            resp = r.complete(user(REVIEW))
            assert r.learning is not None and r.learning.drain(20), "the child's answer was never stored"
            assert len(r.ledger.prompts(request_id=resp.id)) == 1

        in_a_forked_child(in_the_child, "the child's prompt was stored")


def test_retention_at_start_applies_even_with_storing_turned_off(tmp_path: Path) -> None:
    seed = SQLiteLedger(tmp_path / "ledger.sqlite3")
    seed.store_prompt(StoredPrompt("old", "p", "[]", ts=time.time() - 31 * DAY))
    seed.close()
    with Router(_config(tmp_path, prompts={"store": False, "retention_days": 30})) as r:
        assert r.ledger.prompts() == []


def test_router_ledger_prompts_delete(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    led = SQLiteLedger(tmp_path / "ledger.sqlite3")
    stamps = [time.time() - age * DAY for age in (10, 5, 1)]
    for i, ts in enumerate(stamps):
        led.store_prompt(StoredPrompt(f"r{i}", "p", "[]", ts=ts))
    led.close()
    run = CliRunner().invoke
    out = run(app, ["ledger", "prompts", "delete", "--request", "r2", "--ledger", url])
    assert out.exit_code == 0 and "deleted 1 stored prompt of request r2\n" in out.output
    out = run(app, ["ledger", "prompts", "delete", "--before", "7d", "--ledger", url])
    assert out.exit_code == 0 and "deleted 1 prompt stored before " in out.output
    oldest = datetime.fromtimestamp(stamps[1], tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    assert f"1 stored prompt; oldest {oldest}" in run(app, ["ledger", "prompts", "count", "--ledger", url]).output
    for bad in ([], ["--all", "--request", "r1"]):
        out = run(app, ["ledger", "prompts", "delete", *bad, "--ledger", url])
        assert out.exit_code == 2 and "exactly one of" in out.output
    out = run(app, ["ledger", "--ledger", url, "prompts", "delete", "--all"])
    assert out.exit_code == 0 and "deleted 1 stored prompt (all)" in out.output
    out = run(app, ["ledger", "--ledger", url, "prompts", "delete", "--all"])
    assert out.exit_code == 0 and "deleted 0 stored prompts (all)" in out.output


def test_prompts_delete_before_a_date_in_the_future_is_refused_unless_forced(tmp_path: Path) -> None:
    """`router ledger prompts delete --before 2062-01-01` (a year mistyped for 2026) deleted every stored prompt and
    said they were 'stored before 2062-01-01'. A cut-off in the future is refused as `router ledger prune` refuses
    one, saying how many prompts it would delete; `--force` deletes them, saying so."""
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    led = SQLiteLedger(tmp_path / "ledger.sqlite3")
    for i, age in enumerate((40, 1, 0)):
        led.store_prompt(StoredPrompt(f"r{i}", "p", "[]", ts=time.time() - age * DAY))
    led.close()
    for future in ("2062-01-01", str(int(time.time()) + 3600)):
        code, said = router_main("ledger", "prompts", "delete", "--before", future, "--ledger", url)
        said = " ".join(said.split())
        assert code == 2, said
        assert "in the future" in said and "would delete 3 stored prompts" in said and "--force" in said, said
    led = SQLiteLedger(tmp_path / "ledger.sqlite3")
    assert led.prompt_summary()[0] == 3, "nothing was deleted"
    led.close()
    code, said = router_main("ledger", "prompts", "delete", "--before", "2062-01-01", "--force", "--ledger", url)
    said = " ".join(said.split())
    assert code == 0, said
    assert "deleted 3 prompts stored before 2062-01-01 00:00 UTC, a cut-off in the future (--force)" in said
    code, said = router_main("ledger", "prompts", "count", "--ledger", url)
    assert code == 0 and "0 stored prompts" in said, said


def test_prompts_delete_with_an_empty_before_deletes_nothing(tmp_path: Path) -> None:
    """``--before "$CUTOFF"`` with the variable unset is no cut-off: it deleted every stored prompt and said they
    were 'stored before 1970-01-01 00:00 UTC'; it is a usage error and every prompt stays."""
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    led = SQLiteLedger(tmp_path / "ledger.sqlite3")
    for i, age in enumerate((40, 1)):
        led.store_prompt(StoredPrompt(f"r{i}", "p", "[]", ts=time.time() - age * DAY))
    led.close()
    out = CliRunner().invoke(app, ["ledger", "prompts", "delete", "--before", "", "--ledger", url],
                             env={"COLUMNS": "200"})
    assert out.exit_code == 2 and "--before" in out.output and "--all" in out.output, out.output
    led = SQLiteLedger(tmp_path / "ledger.sqlite3")
    assert led.prompt_summary()[0] == 2
    led.close()


def test_background_writer_sees_a_record_just_handed_over_and_delegates(tmp_path: Path) -> None:
    writer = BackgroundLedger(SQLiteLedger(tmp_path / "l.sqlite3"), interval_s=0.5, journal=False)
    try:
        rec = LedgerRecord("chatcmpl-q", "sentiment-onnx", "specialist", 0.1, "estimated:cpu-time")
        writer.record(rec)
        found = writer.request_record("chatcmpl-q")  # queued a moment ago: the lookup waits for the writer
        assert found is not None and found.record_id == rec.record_id
        writer.add_feedback(Feedback("chatcmpl-q", 0.4))
        writer.store_prompt(StoredPrompt("chatcmpl-q", "p", "[]"))
        assert [f.score for f in writer.feedback("chatcmpl-q")] == [0.4]
        assert writer.prompt_summary()[0] == 1
        assert writer.delete_prompts() == 1 and writer.prompts() == []
    finally:
        writer.close()


def test_export_scored_requests_as_an_outcomes_file(tmp_path: Path) -> None:
    """One line per prompt (requests with the same text merged), one outcome per model that answered, with the
    combined score; requests without feedback, or without an answer, are left out; simulation reads the file."""
    led = SQLiteLedger(tmp_path / "l.sqlite3")
    t = time.time() - 100

    def answered(rid: str, prompt: str, model: str, tokens: int, joules: float, outcome: str = "ok") -> None:
        led.record(LedgerRecord(rid, model, "small", joules, "estimated:cpu-time", outcome=outcome,  # type: ignore[arg-type]
                                output_tokens=tokens, task="chat", ts=t))
        led.store_prompt(StoredPrompt(rid, prompt, json.dumps(user(prompt)), "answer", model, ts=t))

    answered("a1", "What is the capital of France?", "smollm2-135m", 10, 2.0)
    answered("a2", "What is the capital of France?", "smollm2-135m", 20, 4.0)
    answered("a3", "What is the capital of France?", "gemma3-270m", 8, 6.0)
    answered("b1", "Name a prime number.", "gemma3-270m", 5, 3.0)
    answered("c1", "unscored", "gemma3-270m", 5, 3.0)
    answered("d1", "failed", "gemma3-270m", 0, 1.0, outcome="error")
    for rid, score, source in [("a1", 1.0, "user"), ("a2", 0.2, "judge:gemma3-270m"), ("a2", 0.6, "judge:x"),
                               ("a3", 0.0, "user"), ("b1", 0.5, "judge:gemma3-270m"), ("d1", 1.0, "user")]:
        led.add_feedback(Feedback(rid, score, source=source, ts=t + 1))
    out = tmp_path / "scored.jsonl"
    report = export_outcomes(led, out)
    led.close()
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert (report.lines, report.requests, report.without_feedback, report.without_answer) == (2, 4, 1, 1)
    first = lines[0]
    assert (first["id"], first["prompt"], first["task"]) == ("a1", "What is the capital of France?", "chat")
    assert first["outcomes"]["smollm2-135m"] == {"correct": pytest.approx(0.7), "output_tokens": 15, "energy_j": 3.0,
                                                 "requests": 2}, "mean of 1.0 (a person) and 0.4 (two judges' mean)"
    assert first["outcomes"]["gemma3-270m"]["correct"] == 0.0
    assert lines[1]["outcomes"] == {"gemma3-270m": {"correct": 0.5, "output_tokens": 5, "energy_j": 3.0,
                                                    "requests": 1}}
    table = load_outcomes(out, load_cards(Path(__file__).resolve().parents[1] / "models"))
    assert table.n == report.requests, "router simulate and router calibrate read the export, request by request"


def test_feedback_on_a_stream_still_open_says_it_is_recorded_when_the_stream_ends(tmp_path: Path) -> None:
    with Router(_config(tmp_path)) as r:
        stream = r.complete(user(REVIEW), stream=True)
        first = next(iter(stream))
        with pytest.raises(NotFoundError, match="recorded when its stream ends") as refused:
            r.feedback(first.id, 1)
        assert refused.value.param == "id"
        for _ in stream:
            pass
        assert r.feedback(first.id, 1).request_id == first.id
