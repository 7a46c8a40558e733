"""Energy budgets: engine behaviour on a snapshot, and the Router reserving atomically against a real SQLite ledger
(window roll-over, fallback / reject / allow-and-flag, two threads racing for the last joules)."""

from __future__ import annotations

import logging
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest_postgres import postgres_server  # noqa: F401 - the fixture
from conftest_redis import start_redis_server

from router import Router, RouterConfig
from router.backends import FaultInjectingBackend, create_backend
from router.cards import load_cards
from router.classify.base import Classification
from router.errors import BudgetExhaustedError, LedgerError, PermissionDeniedError
from router.keys import digest
from router.ledger import Reservation, SQLiteLedger, hash_key
from router.ledger.errors import ledger_error
from router.policy.base import BudgetState
from router.policy.engine import decide_pure
from router.policy.loader import load_policy
from router.policy.schema import Policy

ROOT = Path(__file__).resolve().parent.parent
REVIEW = [{"role": "user", "content": "Is this review positive or negative? 'a gorgeous, witty film'"}]
ONNX = ROOT / "models" / "sentiment" / "sentiment.onnx"


def specialist_card(name: str, per_call_j: float, prior: float) -> str:
    return textwrap.dedent(f"""\
        name: {name}
        tier: specialist
        tasks: [sentiment]
        backend: {{type: onnx, path: {ONNX}, labels: [negative, positive]}}
        context_length: 100000
        prior_accuracy: {{sentiment: {prior}}}
        energy: {{per_call_j: {per_call_j}, source: estimate, citation: test card}}
        """)


def setup(tmp_path: Path, policy: str, *, a_j: float = 1.0, b_j: float = 2.0, b_prior: float = 0.77) -> Path:
    """Two real ONNX specialists on the shipped sentiment model: `spec-a` (cheaper) and `spec-b`."""
    models, policies = tmp_path / "models", tmp_path / "policies"
    models.mkdir()
    policies.mkdir()
    (models / "spec-a.yaml").write_text(specialist_card("spec-a", a_j, 0.77))
    (models / "spec-b.yaml").write_text(specialist_card("spec-b", b_j, b_prior))
    (policies / "t.yaml").write_text(textwrap.dedent(policy))
    return tmp_path


def make_router(root: Path, **backends) -> Router:
    config = RouterConfig.load(models_dir=root / "models", policies_dir=root / "policies", default_policy="t",
                               ledger_url=f"sqlite:///{root / 'ledger.sqlite3'}")
    return Router(config, backends=backends or None)


def policy(on: str, limit: float, per: float = 60, model: str = "spec-a") -> str:
    return f"""\
        name: t
        accuracy: {{min_accuracy: 0.7}}
        budgets: [{{model: {model}, joules: {limit}, per: {per}}}]
        on_budget_exhausted: {on}
        """


def spend_early(r: Router, budget: str, joules: float, limit: float, window_s: float, need_s: float) -> None:
    """Spend ``joules`` of ``budget`` as other traffic would, with at least ``need_s`` left in the window: a call
    that crossed into the next window would find it empty (a 60 s window rolled between the two once in CI)."""
    left = window_s - time.time() % window_s
    if left < need_s:
        time.sleep(left + 0.05)
    r.ledger.try_reserve(budget, joules, limit, window_s)


# -- engine, on a snapshot ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local():
    return {n: c for n, c in load_cards(ROOT / "models").items() if c.callable}


def chat() -> Classification:
    return Classification("chat", {"chat": 1.0}, {"smollm2-135m": 0.5, "gemma3-270m": 0.9})


def test_engine_fallback_reject_and_flag_on_a_spent_budget(local):
    budgets = [{"model": "gemma3-270m", "joules": 100, "per": "minute"}]
    full = BudgetState({"model:gemma3-270m:60s": 95.0}, now=1000.0)
    base = {"name": "t", "accuracy": {"min_accuracy": 0.8}, "budgets": budgets}
    d = decide_pure(chat(), local, full, Policy.model_validate({**base, "on_budget_exhausted": "fallback"}), None)
    assert d.model == "smollm2-135m" and "budget_fallback" in d.flags and "fell back to smollm2-135m" in d.reason
    with pytest.raises(BudgetExhaustedError) as err:
        decide_pure(chat(), local, full, Policy.model_validate({**base, "on_budget_exhausted": "reject"}), None)
    assert err.value.retry_after_s == pytest.approx(20.0) and err.value.code == "budget_exhausted"
    assert "95 J of 100 J" in str(err.value)
    d = decide_pure(chat(), local, full, Policy.model_validate({**base, "on_budget_exhausted": "allow_and_flag"}), None)
    assert d.model == "gemma3-270m" and "over_budget_allowed" in d.flags and "allowed and flagged" in d.reason
    roomy = BudgetState({"model:gemma3-270m:60s": 5.0}, now=1000.0)
    assert decide_pure(chat(), local, roomy, Policy.model_validate(base), None).model == "gemma3-270m"


def test_engine_leaves_out_models_whose_budget_cannot_be_read(local):
    """The ledger's store is down: a budget that cannot be read cannot be enforced, so a model under one is no
    first choice where the policy falls back and never a fallback or an escalation; never a 429 for it."""
    budgets = [{"model": "gemma3-270m", "joules": 100, "per": "minute"}]
    down = BudgetState({}, now=1000.0, unreadable=frozenset({"model:gemma3-270m:60s"}))
    base = {"name": "t", "accuracy": {"min_accuracy": 0.8}, "budgets": budgets}
    d = decide_pure(chat(), local, down, Policy.model_validate({**base, "on_budget_exhausted": "fallback"}), None)
    assert d.model == "smollm2-135m" and {"budget_fallback", "budget_unreadable"} <= set(d.flags)
    assert "model:gemma3-270m:60s could not be read" in d.reason and "gemma3-270m" not in d.fallbacks
    for mode in ("reject", "allow_and_flag"):  # kept: its reservation then refuses the request (503)
        d = decide_pure(chat(), local, down, Policy.model_validate({**base, "on_budget_exhausted": mode}), None)
        assert d.model == "gemma3-270m" and "over_budget_allowed" not in d.flags, mode
    cascading = Policy.model_validate({**base, "accuracy": {"min_accuracy": 0.4},
                                       "cascade": {"enabled": True, "escalate_below": 0.5, "escalate_to": "next"}})
    assert decide_pure(chat(), local, BudgetState(), cascading, None).escalate_to == ("gemma3-270m",)
    d = decide_pure(chat(), local, down, cascading, None)
    assert d.model == "smollm2-135m" and d.escalate_to == () and d.fallbacks == ()


def test_per_key_budgets_and_key_policies(local):
    p = load_policy(ROOT / "policies" / "examples" / "per-key.yaml")
    team_b = hash_key("sk-team-b")
    d = decide_pure(chat(), local, None, p, {"key_hash": team_b})
    assert d.target == 0.8  # the key's own absolute target
    other = hash_key("sk-someone")
    d = decide_pure(chat(), local, None, p, {"key_hash": other})
    assert f"key:{other}:tier:large:86400s" in d.model_budgets["gemma3-270m"][1].key
    spent = BudgetState({f"key:{other}:tier:large:86400s": 50_000.0}, now=0.0)
    with pytest.raises(BudgetExhaustedError):  # this key's day is spent; the policy rejects
        decide_pure(Classification("chat", {"chat": 1.0}, {"smollm2-135m": 0.1, "gemma3-270m": 0.9}), local,
                    spent, p, {"key_hash": other})
    # another key is not affected by that key's spending
    assert decide_pure(chat(), local, spent, p, {"key_hash": hash_key("sk-x")}).model


# -- Router, real SQLite ledger -------------------------------------------------------------------------------
def test_reservation_is_settled_with_the_actual_joules(tmp_path):
    r = make_router(setup(tmp_path, policy("reject", 100.0)))
    resp = r.complete(REVIEW)
    assert resp.routing.model == "spec-a"
    assert r.ledger.budget_used("model:spec-a:60s", 60) == pytest.approx(resp.routing.energy_j)
    r.close()


@pytest.mark.parametrize("budgets, api_key", [
    # a key's own budget on the counter the policy's per-key budget names (the way to give one key less)
    ("budgets: [{model: spec-a, joules: 100, per: minute, scope: per_key}]\n"
     "keys: [{key_hash: KEY, budgets: [{model: spec-a, joules: 1.5, per: 60}]}]", "sk-team-a"),
    # `*` (each model) and one model by name, in the same window: both are the model's counter
    ("budgets: [{model: '*', joules: 100, per: minute}, {model: spec-a, joules: 1.5, per: 60}]", None),
], ids=["key-entry-and-per-key", "star-and-model"])
def test_budgets_naming_one_counter_charge_it_once_under_the_smallest_limit(tmp_path, budgets, api_key):
    """Two budgets of one policy that name the same ledger counter held and settled each call twice: a 1 J call
    under a 1.5 J budget was refused before its first call, and one under larger limits charged 2 J a call."""
    key_hash = hash_key(api_key) if api_key else None
    root = setup(tmp_path, f"""\
        name: t
        accuracy: {{min_accuracy: 0.7}}
        on_budget_exhausted: reject
        {budgets.replace("KEY", key_hash or "").replace(chr(10), chr(10) + " " * 8)}
        """)
    counter = f"key:{key_hash}:model:spec-a:60s" if key_hash else "model:spec-a:60s"
    r = make_router(root)
    spend_early(r, counter, 0.0, 1.5, 60, need_s=10)  # a call and its refusal in one window
    resp = r.complete(REVIEW, api_key=api_key)
    assert resp.routing.model == "spec-a"
    assert r.ledger.budget_used(counter, 60) == pytest.approx(resp.routing.energy_j)  # charged once
    with pytest.raises(BudgetExhaustedError, match="of 1.5 J"):  # the smaller limit holds: 1 J + ~1 J > 1.5 J
        r.complete(REVIEW, api_key=api_key)
    r.close()


def test_reject_then_window_rolls_over(tmp_path):
    r = make_router(setup(tmp_path, policy("reject", 1.5, per=2)))
    spend_early(r, "model:spec-a:2s", 1.0, 1.5, 2, need_s=1)  # other traffic spent 1 of 1.5 J this window
    with pytest.raises(BudgetExhaustedError) as err:
        r.complete(REVIEW)
    assert 0 < err.value.retry_after_s <= 2.0 and "spec-a" in str(err.value)
    (refused,) = r.ledger.records()  # refused before any call, and still recorded
    assert (refused.outcome, refused.model, refused.energy_j, refused.request_id) == (
        "rejected", "spec-a", 0.0, err.value.request_id)
    time.sleep(err.value.retry_after_s + 0.05)
    assert r.complete(REVIEW).routing.model == "spec-a"  # a new window
    r.close()


def test_fallback_to_the_next_model_when_spent(tmp_path):
    r = make_router(setup(tmp_path, policy("fallback", 1.5)))
    spend_early(r, "model:spec-a:60s", 1.0, 1.5, 60, need_s=10)
    resp = r.complete(REVIEW)
    assert resp.routing.model == "spec-b" and "fell back to spec-b" in resp.routing.reason
    r.close()


def test_allow_and_flag(tmp_path):
    r = make_router(setup(tmp_path, policy("allow_and_flag", 1.5)))
    spend_early(r, "model:spec-a:60s", 1.0, 1.5, 60, need_s=10)
    resp = r.complete(REVIEW)
    assert resp.routing.model == "spec-a" and "allowed and flagged" in resp.routing.reason
    # said once: the decision found it spent, and the reservation it then made over the limit says no more
    assert resp.routing.reason.count("model:spec-a:60s") == 1, resp.routing.reason
    assert "over_budget_allowed" in resp.routing.flags
    rec = r.ledger.records()[-1]
    assert rec.outcome == "ok" and rec.reason == resp.routing.reason
    assert r.ledger.budget_used("model:spec-a:60s", 60) > 1.0  # the spend still counts
    r.close()


def test_a_key_with_lock_policy_cannot_leave_its_policy_for_its_spent_budget(tmp_path):
    """A key's per-key budget, spent, once gave way to ``policy=...`` or ``model="router:<other>"`` naming a
    policy without that budget. With ``lock_policy: true`` (here a key without a policy: held to the config's
    default) naming another policy is a 403, and a pinned model is decided under the key's policy, budget and
    all. A key without ``lock_policy`` may still choose another policy."""
    root = setup(tmp_path, """\
        name: t
        accuracy: {min_accuracy: 0.0}
        budgets: [{model: 'tier:specialist', joules: 1.5, per: hour, scope: per_key}]
        on_budget_exhausted: reject
        """)
    (root / "policies" / "free.yaml").write_text("name: free\naccuracy: {min_accuracy: 0.0}\n")
    held, free = "sk-held-by-t", "sk-free-to-choose"
    config = RouterConfig.load(models_dir=root / "models", policies_dir=root / "policies", default_policy="t",
                               ledger_url=f"sqlite:///{root / 'ledger.sqlite3'}",
                               keys=[{"name": "held", "sha256": digest(held), "lock_policy": True},
                                     {"name": "free", "sha256": digest(free)}])
    r = Router(config)
    try:
        for key in (held, free):  # each key's own 1.5 J an hour: 1 J spent, the cheapest call needs 1 J
            spend_early(r, f"key:{hash_key(key)}:tier:specialist:3600s", 1.0, 1.5, 3600, need_s=10)
        for asked in ({}, {"model": "router:t"}, {"policy": "t"}, {"model": "spec-a"}, {"model": "spec-b"}):
            with pytest.raises(BudgetExhaustedError):
                r.complete(REVIEW, api_key=held, **asked)
        for asked, param in (({"policy": "free"}, "policy"), ({"model": "router:free"}, "model"),
                             ({"model": "spec-a", "policy": "free"}, "policy")):
            with pytest.raises(PermissionDeniedError) as denied:
                r.complete(REVIEW, api_key=held, **asked)
            assert denied.value.param == param and "held to policy 't'" in str(denied.value)
            assert "lock_policy" in str(denied.value)
        with pytest.raises(BudgetExhaustedError):
            r.complete(REVIEW, api_key=free)
        for asked in ({"policy": "free"}, {"model": "router:free"}):  # no lock: the key may choose
            assert r.complete(REVIEW, api_key=free, **asked).routing.policy == "free"
    finally:
        r.close()


def _race(r: Router, n: int = 2) -> tuple[list[str], list[Exception]]:
    barrier = threading.Barrier(n)
    models: list[str] = []
    errors: list[Exception] = []

    def go() -> None:
        barrier.wait()
        try:
            models.append(r.complete(REVIEW).routing.model)
        except Exception as exc:  # collected and checked below
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return models, errors


def test_two_threads_cannot_both_spend_the_last_joules(tmp_path):
    # Each call reserves its 1 J estimate; 1.5 J is left: one call fits, not two. The injected delay keeps the
    # first call running (its reservation held) while the second reserves.
    root = setup(tmp_path, policy("reject", 1.5))
    cards = load_cards(root / "models")
    slow = FaultInjectingBackend(create_backend(cards["spec-a"]), delay_s=0.5)
    r = make_router(root, **{"spec-a": slow})
    models, errors = _race(r)
    assert models == ["spec-a"] and len(errors) == 1 and isinstance(errors[0], BudgetExhaustedError)
    r.close()


def test_race_with_fallback_sends_the_loser_to_the_next_model(tmp_path):
    root = setup(tmp_path, policy("fallback", 1.5))
    cards = load_cards(root / "models")
    slow = FaultInjectingBackend(create_backend(cards["spec-a"]), delay_s=0.5)
    r = make_router(root, **{"spec-a": slow})
    models, errors = _race(r)
    assert errors == [] and sorted(models) == ["spec-a", "spec-b"]
    # the loser either saw the spent budget at decision time (snapshot) or lost the reservation at call time
    # (then a 0 J `rejected` record says why); both leave spec-b's answer explained
    records = r.ledger.records()
    rejected = [x for x in records if x.outcome == "rejected"]
    assert all(x.model == "spec-a" and x.energy_j == 0 for x in rejected) and len(rejected) <= 1
    b = next(x for x in records if x.model == "spec-b" and x.outcome == "ok")
    assert "model:spec-a:60s" in b.reason and "spent" in b.reason
    r.close()


def test_stream_checks_the_budget_before_the_first_token(tmp_path):
    r = make_router(setup(tmp_path, policy("reject", 1.5)))
    spend_early(r, "model:spec-a:60s", 1.0, 1.5, 60, need_s=10)
    with pytest.raises(BudgetExhaustedError):
        list(r.complete(REVIEW, stream=True))
    r.close()


def gemma_router(tmp_path: Path, cards, large_backend, limit_j: float) -> Router:
    """The shipped cards, the real gemma3-270m backend, and a `reject` budget of ``limit_j`` an hour on it (the
    card estimates a call at ~60 J with the policy's default 128 output tokens)."""
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "t.yaml").write_text(textwrap.dedent(policy("reject", limit_j, 3600, "gemma3-270m")))
    config = RouterConfig.load(policies_dir=tmp_path / "policies", default_policy="t",
                               ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    return Router(config, cards=cards, backends={"gemma3-270m": large_backend})


def test_a_short_max_tokens_is_estimated_as_the_few_tokens_it_can_write(tmp_path, cards, large_backend):
    r = gemma_router(tmp_path, cards, large_backend, 20.0)
    planet = [{"role": "user", "content": "Name a planet"}]
    resp = r.complete(planet, model="gemma3-270m", max_tokens=4)
    assert resp.routing.model == "gemma3-270m" and resp.usage.completion_tokens <= 4
    assert resp.routing.estimated_j == pytest.approx(cards["gemma3-270m"].energy.joules(3, 4))
    # max_energy_j compares the same estimate: a 10 J limit leaves both local LLMs in at 4 tokens (not at 128)
    decision = r.prepare(planet, max_energy_j=10, max_tokens=4).decision
    assert decision.estimated_j <= 10
    r.close()


def test_a_call_dearer_than_the_whole_budget_is_refused_as_such_not_as_spent(tmp_path, cards, large_backend):
    """Nothing is spent and no window will have room for a ~60 J call under a 20 J budget: the refusal says so and
    names no retry time."""
    r = gemma_router(tmp_path, cards, large_backend, 20.0)
    with pytest.raises(BudgetExhaustedError) as err:
        r.complete([{"role": "user", "content": "Name a planet"}], model="gemma3-270m")
    message = str(err.value)
    assert "gemma3-270m's call needs about" in message and "more than the whole of its budget" in message
    assert "(20 J a window)" in message and "spent" not in message and "retry" not in message
    assert err.value.retry_after_s is None and err.value.code == "budget_exhausted"
    (refused,) = r.ledger.records()  # no call: the refusal alone, at 0 J
    assert (refused.outcome, refused.model, refused.energy_j, refused.error) == (
        "rejected", "gemma3-270m", 0.0, "budget_exhausted")
    r.close()


def test_fallback_with_no_room_waits_only_for_models_a_window_can_hold(local):
    """gemma3-270m's call is dearer than its whole budget and smollm2-135m's budget is spent: only smollm2's window
    rolling over helps, so that is the retry time."""
    budgets = [{"model": "gemma3-270m", "joules": 20, "per": "hour"},
               {"model": "smollm2-135m", "joules": 100, "per": "minute"}]
    p = Policy.model_validate({"name": "t", "accuracy": {"min_accuracy": 0.8}, "budgets": budgets,
                               "on_budget_exhausted": "fallback"})
    state = BudgetState({"model:smollm2-135m:60s": 99.0}, now=1000.0)
    with pytest.raises(BudgetExhaustedError) as err:
        decide_pure(chat(), local, state, p, None)
    assert "more than the whole of its budget model:gemma3-270m:3600s" in str(err.value)
    assert err.value.retry_after_s == pytest.approx(20.0)  # smollm2's minute, not gemma's hour


@pytest.mark.parametrize(("limit_j", "max_tokens", "advice", "limit"), [
    (20, None, "; lower max_tokens or raise the budget", "max_tokens"),  # ~63 J for 128 tokens; one (~6 J) fits
    # the advice names the limit as the caller gave it
    (20, 100, "; lower max_completion_tokens or raise the budget", "max_completion_tokens"),
    (2, None, "; raise the budget", "max_tokens"),  # not even one output token fits: fewer tokens cannot help
    (2, 1, "; raise the budget", "max_tokens"),  # max_tokens is already as low as it goes
])
def test_a_call_dearer_than_its_budget_advises_lower_max_tokens_only_where_that_helps(local, limit_j, max_tokens,
                                                                                      advice, limit):
    budgets = [{"model": "gemma3-270m", "joules": limit_j, "per": "hour"}]
    p = Policy.model_validate({"name": "t", "accuracy": {"min_accuracy": 0.8}, "budgets": budgets,
                               "on_budget_exhausted": "reject"})
    with pytest.raises(BudgetExhaustedError) as err:
        decide_pure(chat(), local, BudgetState({}, now=1000.0), p, {"max_tokens": max_tokens,
                                                                    "max_tokens_param": limit})
    assert "more than the whole of its budget" in err.value.message
    assert err.value.message.endswith(advice), err.value.message


# -- Router, the ledger's store down (real Redis and PostgreSQL, stopped and started) ------------------------------
def _requests_go_on_while_the_store_is_down(root: Path, url: str, stop: Callable[[], None],
                                            start: Callable[[], None], caplog: pytest.LogCaptureFixture) -> None:
    """Policy `t` budgets spec-b (as the shipped policies budget tier:large), `a` the first choice spec-a
    (fallback), `r` spec-a too (reject). While the store is down spec-a answers `t`, spec-b answers `a` and `r`
    fails closed (503); budgets are read again once the store is back, and every answer is in the ledger."""
    for name, on in (("a", "fallback"), ("r", "reject")):
        (root / "policies" / f"{name}.yaml").write_text(
            textwrap.dedent(policy(on, 100.0)).replace("name: t", f"name: {name}"))
    config = RouterConfig.load(models_dir=root / "models", policies_dir=root / "policies", default_policy="t",
                               ledger_url=url, journal={"folder": str(root / "journal"), "replay_interval_s": 0.2})
    r = Router(config)
    assert r.complete(REVIEW).routing.model == "spec-a"
    caplog.set_level(logging.WARNING, logger="router")
    stop()
    try:
        answered = [r.complete(REVIEW) for _ in range(3)]
        assert [a.routing.model for a in answered] == ["spec-a"] * 3
        fell = r.complete(REVIEW, policy="a")
        assert fell.routing.model == "spec-b" and "model:spec-a:60s could not be read" in fell.routing.reason
        assert {"budget_fallback", "budget_unreadable"} <= set(fell.routing.flags)  # to test, not parse
        with pytest.raises(LedgerError, match="cannot be enforced while the store is unavailable"):
            r.complete(REVIEW, policy="r")
        assert len([m for m in caplog.messages if "until budgets can be read" in m]) == 1, "once per outage"
    finally:
        start()
    deadline = time.time() + 30
    while r.ledger.unavailable and time.time() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.1)
    assert r.complete(REVIEW, policy="a").routing.model == "spec-a"
    assert "budgets can be read again" in caplog.text
    stored = {x.request_id: x for x in r.ledger.records()}
    assert {a.id for a in [*answered, fell]} <= set(stored), "journaled while down, replayed since"
    assert "could not be read" in stored[fell.id].reason
    r.close()


@pytest.mark.redis
def test_requests_go_on_while_redis_is_down(tmp_path, caplog):
    server = start_redis_server(tmp_path)
    try:
        _requests_go_on_while_the_store_is_down(
            setup(tmp_path, policy("fallback", 100.0, model="spec-b")),
            f"{server.url}/0?prefix=down:&socket_timeout=1&socket_connect_timeout=1", server.stop, server.start,
            caplog)  # fmt: skip
    finally:
        server.stop()


@pytest.mark.redis
def test_a_cascade_keeps_its_answer_when_the_escalation_budget_cannot_be_read(tmp_path):
    """The store goes down after the decision: spec-a answers with low confidence, and spec-b (the escalation, under
    a budget) cannot be reserved. spec-a's answer is the answer, saying why spec-b was not tried, and the ledger
    keeps both (the 503 threw the answer away, plain and streamed)."""
    server = start_redis_server(tmp_path)
    try:
        root = setup(tmp_path, policy("fallback", 100.0, model="spec-b")
                     + "cascade: {enabled: true, escalate_below: 0.999, escalate_to: spec-b, start: cheapest}\n")
        config = RouterConfig.load(models_dir=root / "models", policies_dir=root / "policies", default_policy="t",
                                   ledger_url=f"{server.url}/0?prefix=cascade:&socket_timeout=1&socket_connect_timeout=1",
                                   journal={"folder": str(root / "journal"), "replay_interval_s": 0.2})
        r = Router(config)
        up = r.complete(REVIEW)
        assert [a.model for a in up.routing.attempts] == ["spec-a", "spec-b"]
        plain, streamed = r.prepare(REVIEW), r.prepare(REVIEW)
        server.stop()
        kept = r.send(plain)
        chunks = list(r.send(streamed, stream=True))
        assert kept.routing.model == "spec-a" and kept.choices[0].message.content
        assert [(a.model, a.outcome) for a in kept.routing.attempts] == [("spec-a", "escalated"),
                                                                          ("spec-b", "rejected")]
        assert "could not be read (the ledger's store is unavailable): spec-b not tried" in kept.routing.reason
        assert {"budget_unreadable", "escalation_skipped"} <= set(kept.routing.flags)
        assert chunks[-1].routing is not None and chunks[-1].routing.model == "spec-a"
        assert "escalation_skipped" in chunks[-1].routing.flags
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
            kept.choices[0].message.content)
        server.start()
        deadline = time.time() + 30
        while r.ledger.unavailable and time.time() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.1)
        for request_id in (plain.request_id, streamed.request_id):  # journaled while down, replayed since
            recs = [x for x in r.ledger.records() if x.request_id == request_id]
            assert sorted((x.model, x.outcome, x.error) for x in recs) == [
                ("spec-a", "escalated", None), ("spec-b", "rejected", "budget_unreadable")]
        r.close()
    finally:
        server.stop()


@pytest.mark.postgres
def test_requests_go_on_while_postgresql_is_down(tmp_path, caplog, postgres_server):  # noqa: F811
    _requests_go_on_while_the_store_is_down(
        setup(tmp_path, policy("fallback", 100.0, model="spec-b")),
        f"{postgres_server.url}?schema=budgets_down&connect_timeout=2", postgres_server.stop, postgres_server.start,
        caplog)  # fmt: skip


def test_a_request_the_proxy_refuses_for_a_spent_budget_is_recorded(tmp_path):
    """The proxy answers 429 and the ledger keeps the refused request: one 0 J ``rejected`` record under the id the
    429 carries, naming the spent budget's model, whether the budget was found spent in the decision (here) or when
    the call reserved it."""
    from starlette.testclient import TestClient

    from router.proxy.app import create_app

    root = setup(tmp_path, policy("reject", 1.5, per=3600))
    config = RouterConfig.load(models_dir=root / "models", policies_dir=root / "policies", default_policy="t",
                               ledger_url=f"sqlite:///{root / 'ledger.sqlite3'}", proxy={"warm_up": False})
    with TestClient(create_app(config=config)) as c:
        router = c.app.state.router
        router.ledger.try_reserve("model:spec-a:3600s", 1.0, 1.5, 3600)  # other traffic spent 1 of 1.5 J
        r = c.post("/v1/chat/completions", json={"model": "router", "messages": REVIEW, "policy": "t"})
        assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exhausted"
        router.ledger.flush()
        (rec,) = router.ledger.records()
    assert rec.request_id == r.headers["x-request-id"]
    assert (rec.outcome, rec.model, rec.tier, rec.energy_j, rec.error, rec.policy) == (
        "rejected", "spec-a", "specialist", 0.0, "budget_exhausted", "t")
    assert rec.reason == r.json()["error"]["message"]


def test_refusals_are_counted_apart_not_as_requests_and_cannot_be_scored(tmp_path, monkeypatch):
    """A 429's 0 J ``rejected`` record is no request of the model whose budget is spent: ``router ledger``, its
    report and the dashboard count it as ``rejected``, out of the requests and the mean latency, and feedback on
    the 429's id is a 404 (there is no answer to score), as it was before refusals were recorded."""
    from cli_helpers import router_main
    from starlette.testclient import TestClient

    from router.ledger.report import build_report
    from router.proxy.app import create_app

    root = setup(tmp_path, policy("reject", 1.5, per=3600))
    url = f"sqlite:///{root / 'ledger.sqlite3'}"
    config = RouterConfig.load(models_dir=root / "models", policies_dir=root / "policies", default_policy="t",
                               ledger_url=url, proxy={"warm_up": False})
    body = {"model": "router", "messages": REVIEW, "policy": "t"}
    with TestClient(create_app(config=config)) as c:
        router = c.app.state.router
        answered = c.post("/v1/chat/completions", json=body)
        assert answered.status_code == 200, answered.text
        router.ledger.try_reserve("model:spec-a:3600s", 1.0, 1.5, 3600)  # other traffic holds 1 of 1.5 J
        refused = [c.post("/v1/chat/completions", json=body) for _ in range(2)]
        assert [r.status_code for r in refused] == [429, 429]
        router.ledger.flush()
        assert sorted(r.outcome for r in router.ledger.records()) == ["ok", "rejected", "rejected"]
        (ok,) = [r for r in router.ledger.records() if r.outcome == "ok"]

        totals = c.get("/dashboard/api/totals?window=1h").json()
        assert (totals["requests"], totals["answered"], totals["errors"], totals["rejected"]) == (1, 1, 0, 2)
        (spec_a,) = totals["by_model"]
        assert (spec_a["group"], spec_a["requests"], spec_a["rejected"]) == ("spec-a", 1, 2)
        assert spec_a["mean_latency_ms"] == pytest.approx(ok.latency_ms)
        assert [t["requests"] for t in totals["by_tier"]] == [1]
        assert sum(s["requests"] for s in totals["by_source"]) == 1
        series = c.get("/dashboard/api/series?window=1h").json()
        assert sum(sum(p["requests"].values()) for p in series["points"]) == 1

        fb = c.post("/v1/feedback", json={"id": refused[0].headers["x-request-id"], "score": 1.0})
        assert fb.status_code == 404 and fb.json()["error"]["param"] == "id", fb.text
        assert "refused" in fb.json()["error"]["message"]
        assert c.post("/v1/feedback", json={"id": answered.json()["id"], "score": 1.0}).status_code == 200

        report = build_report(router.ledger, router.cards)
        (row,) = report.rows
        assert (row.group, row.requests, row.errors, row.rejected) == ("spec-a", 1, 0, 2)
        assert row.mean_latency_ms == pytest.approx(ok.latency_ms)
        (by_model,) = router.ledger.totals()
        assert (by_model["requests"], by_model["rejected"]) == (1, 2)
        assert by_model["mean_latency_ms"] == pytest.approx(ok.latency_ms)

    code, out = router_main("ledger", "--ledger", url)
    assert code == 0, out
    (line,) = [x for x in out.splitlines() if "spec-a" in x]
    assert [cell.strip() for cell in line.split("│")[1:5]] == ["spec-a", "1", "0", "2"], out
    assert "rejected" in out
    monkeypatch.setenv("COLUMNS", "100")
    code, out = router_main("ledger", "--ledger", url, "report")
    assert code == 0 and "rejected" in out and "…" not in out, out  # the default view fits 100 columns
    (line,) = [x for x in out.splitlines() if "spec-a" in x]
    assert [cell.strip() for cell in line.split("│")[1:5]] == ["spec-a", "1", "0", "2"], out


def test_a_refusal_near_the_windows_end_says_the_same_wait_as_its_retry_after(local):
    """With 0.4 s left the message said "retry in 0 s" while Retry-After (rounded up) said 1."""
    budgets = [{"model": "gemma3-270m", "joules": 100, "per": "minute"}]
    full = BudgetState({"model:gemma3-270m:60s": 95.0}, now=1019.6)  # 0.4 s before the minute rolls
    policy = Policy.model_validate({"name": "t", "accuracy": {"min_accuracy": 0.8}, "budgets": budgets,
                                    "on_budget_exhausted": "reject"})
    with pytest.raises(BudgetExhaustedError) as err:
        decide_pure(chat(), local, full, policy, None)
    assert err.value.retry_after_s == pytest.approx(0.4) and "retry in 1 s" in str(err.value), str(err.value)


class ReservationFailsDouble(SQLiteLedger):
    """TEST DOUBLE: a real SQLite ledger whose store fails every reservation against one budget (``fails``), as
    a store that goes down between a request's reservations; everything else is SQLite's own."""

    def __init__(self, path: Path, fails: str) -> None:
        super().__init__(path)
        self.fails = fails

    def try_reserve(self, budget: str, joules: float, limit_j: float, window_s: float,
                    hold_s: float | None = None) -> Reservation | None:
        if budget == self.fails:
            raise ledger_error(self.url, "could not reserve: the store is down (injected)", "bring it back")
        return super().try_reserve(budget, joules, limit_j, window_s, hold_s)


@pytest.mark.parametrize("spent", [False, True], ids=["within-budget", "held-over-budget"])
def test_a_failed_second_reservation_releases_the_first_hold(tmp_path, spent):
    """spec-a is under two budgets and the store fails the second reservation: the request fails (503), and the
    hold the first reservation made, within its budget or over it (``allow_and_flag``), is released at once. It
    stayed until the window ended, refusing other requests the room it held."""
    root = setup(tmp_path, """\
        name: t
        accuracy: {min_accuracy: 0.7}
        budgets: [{model: spec-a, joules: 1.5, per: 60}, {model: 'tier:specialist', joules: 100, per: 60}]
        on_budget_exhausted: allow_and_flag
        """)
    first, second = "model:spec-a:60s", "tier:specialist:60s"
    config = RouterConfig.load(models_dir=root / "models", policies_dir=root / "policies", default_policy="t",
                               ledger_url=f"sqlite:///{root / 'ledger.sqlite3'}")
    with Router(config, ledger=ReservationFailsDouble(root / "ledger.sqlite3", fails=second)) as r:
        assert [ref.key for ref in r.prepare(REVIEW).decision.model_budgets["spec-a"]] == [first, second]
        if spent:  # other traffic spent 1 of 1.5 J: spec-a's call is held over its budget, then the second fails
            spend_early(r, first, 1.0, 1.5, 60, need_s=20)
        before = r.ledger.budget_used(first, 60)
        with pytest.raises(LedgerError, match="injected"):
            r.complete(REVIEW)
        assert r.ledger.budget_used(first, 60) == pytest.approx(before)


class RoomTakenThenReadFailsDouble(SQLiteLedger):
    """TEST DOUBLE: a real SQLite ledger on which, once the decision has found room in ``budget``, other traffic
    takes all of it just before the request's reservation (so SQLite itself refuses the hold), and the store then
    fails the read of what the budget has spent, as a store that goes down just after refusing."""

    def __init__(self, path: Path, budget: str) -> None:
        super().__init__(path)
        self.budget = budget
        self.down = False

    def try_reserve(self, budget: str, joules: float, limit_j: float, window_s: float,
                    hold_s: float | None = None) -> Reservation | None:
        if budget == self.budget and not self.down:
            super().try_reserve(budget, limit_j - super().budget_used(budget, window_s), limit_j, window_s)
            self.down = True
        return super().try_reserve(budget, joules, limit_j, window_s, hold_s)

    def budget_used(self, budget: str, window_s: float) -> float:
        if self.down:
            raise ledger_error(self.url, "could not read a budget: the store is down (injected)", "bring it back")
        return super().budget_used(budget, window_s)


def _room_taken_router(tmp_path: Path, name: str, on: str) -> Router:
    (tmp_path / name).mkdir()
    root = setup(tmp_path / name, policy(on, 100.0, per=3600))
    config = RouterConfig.load(models_dir=root / "models", policies_dir=root / "policies", default_policy="t",
                               ledger_url=f"sqlite:///{root / 'ledger.sqlite3'}", proxy={"warm_up": False})
    return Router(config, ledger=RoomTakenThenReadFailsDouble(root / "ledger.sqlite3", "model:spec-a:3600s"))


def test_a_refusal_stays_a_refusal_when_the_spent_figure_cannot_be_read(tmp_path):
    """The budget refuses spec-a's hold and the store fails the read of what it spent, which only the refusal's
    message wanted: the library raises the budget's refusal and the proxy answers 429 (both were a 503 for the
    store), ``fallback`` still falls back, and the message says the figure could not be read."""
    from starlette.testclient import TestClient

    from router.proxy.app import create_app

    unread = "what it has spent this window could not be read, the ledger's store failed"
    with _room_taken_router(tmp_path, "lib", "reject") as r:
        with pytest.raises(BudgetExhaustedError) as refused:
            r.complete(REVIEW)
        assert unread in str(refused.value) and "spec-a's energy budget model:spec-a:3600s is spent" in str(
            refused.value)
        assert refused.value.model == "spec-a" and 0 < refused.value.retry_after_s <= 3600
    with _room_taken_router(tmp_path, "fallback", "fallback") as r:
        answer = r.complete(REVIEW)
        assert answer.routing.model == "spec-b" and unread in answer.routing.reason
    router = _room_taken_router(tmp_path, "proxy", "reject")
    with TestClient(create_app(router=router)) as c:
        res = c.post("/v1/chat/completions", json={"model": "router", "messages": REVIEW})
    assert res.status_code == 429 and res.json()["error"]["code"] == "budget_exhausted", res.text
    assert unread in res.json()["error"]["message"]
