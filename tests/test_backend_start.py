"""A remote backend whose card names a key variable that is not set does not start: a ConfigError naming the card,
the field and the variable (on the request path, a failed attempt: the next model answers, the detail is logged)."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_a_card_naming_an_unset_key_variable_is_refused_before_any_call(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """``backend.api_key_env`` names the variable holding the endpoint's key: unset, the backend does not start
    (a ConfigError naming the card, the field and the variable), instead of calling without a key and relaying
    the endpoint's 401."""
    from router.backends.openai_http import OpenAIHTTPBackend
    from router.cards import load_card
    from router.errors import ConfigError

    card_file = tmp_path / "hosted.yaml"
    card_file.write_text("name: hosted\ntier: large\nbackend:\n  type: openai\n  base_url: http://127.0.0.1:9/v1\n"
                         "  model: m\n  api_key_env: ROUTER_TEST_KEY_VAR\ncontext_length: 8192\n"
                         "energy: {per_call_j: 1, source: estimate, citation: test}\n")
    monkeypatch.delenv("ROUTER_TEST_KEY_VAR", raising=False)
    with pytest.raises(ConfigError, match=r"hosted\.yaml: field `backend.api_key_env`.*ROUTER_TEST_KEY_VAR is not set"):
        OpenAIHTTPBackend(load_card(card_file))
    monkeypatch.setenv("ROUTER_TEST_KEY_VAR", "sk-test")
    backend = OpenAIHTTPBackend(load_card(card_file))
    assert backend._headers["Authorization"] == "Bearer sk-test"
    backend.close()


def test_a_model_that_cannot_start_is_passed_over_until_its_cooldown_ends(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A model whose backend could not start (here: its key variable unset) is not started again for the
    cooldown's seconds, and meanwhile requests are decided as if it were cooling down: the next model answers
    with no failed attempt or ledger record per request for it; it is tried only when no other model
    may answer, and again once the cooldown has passed (then it starts, the variable now set)."""
    from servers.procs import models_dir, only_policy, policies_dir, remote_card, upstream

    from router import Router
    from router.config import RouterConfig
    from router.errors import BackendError
    from router.ledger import open_ledger

    monkeypatch.delenv("ROUTER_TEST_KEY_VAR", raising=False)
    question = [{"role": "user", "content": "What is the capital of France?"}]
    ask = {"model": "remote-nokey", "max_tokens": 8}  # pinned: ranked first while it is not cooling down

    with upstream(tmp_path) as up:
        nokey = remote_card("remote-nokey", up, "echo", tier="small").replace(
            "  max_retries:", "  api_key_env: ROUTER_TEST_KEY_VAR\n  max_retries:")
        models = models_dir(tmp_path / "models", {"remote-nokey": nokey,
                                                  "remote-echo": remote_card("remote-echo", up, "echo")})
        policies = policies_dir(tmp_path / "policies", {"onlynokey": only_policy("remote-nokey")})

        def router(cooldown_s: float, ledger: str) -> Router:
            config = tmp_path / f"{ledger}.yaml"
            config.write_text(f"models_dir: {models}\npolicies_dir: {policies}\n"
                              f"ledger_url: sqlite:///{tmp_path / ledger}.sqlite3\n"
                              f"cooldown: {{failures: 3, seconds: {cooldown_s}}}\n")
            return Router(RouterConfig.load(config))

        with router(300, "cooling") as cooling:
            first = cooling.complete(question, **ask)  # the failed start: one failed attempt, then the next model
            assert [(a.model, a.outcome) for a in first.routing.attempts] == [("remote-nokey", "error"),
                                                                              ("remote-echo", "ok")]
            for _ in range(3):
                prepared = cooling.prepare(question, **ask)
                assert prepared.decision.model == "remote-echo" and "cooling_down" in prepared.decision.flags
                assert prepared.decision.fallbacks == ("remote-nokey",)  # still the last resort
                answer = cooling.send(prepared)
                assert [(a.model, a.outcome) for a in answer.routing.attempts] == [("remote-echo", "ok")]
                assert "remote-nokey cooling down after failing" in answer.routing.reason
            streamed = list(cooling.complete(question, stream=True, **ask))
            assert streamed[-1].routing is not None and streamed[-1].routing.model == "remote-echo"
            with pytest.raises(BackendError, match="remote-nokey: its backend could not start"):
                cooling.complete(question, policy="onlynokey", max_tokens=8)  # nothing else may answer
            records = cooling.ledger.records()
            from starlette.testclient import TestClient

            from router.proxy import create_app

            with TestClient(create_app(router=cooling)) as client:  # what an operator's dashboard sees
                metrics = client.get("/metrics").text
            assert 'router_backend_cooling_down{model="remote-nokey"} 1.0' in metrics
            assert 'router_backend_cooling_down{model="remote-echo"} 0.0' in metrics
        failed = [r for r in records if r.model == "remote-nokey"]
        assert [r.outcome for r in failed] == ["error", "error"]  # the first request and the last resort only
        assert sum(r.model == "remote-echo" and r.outcome == "ok" for r in records) == 5

        with router(0, "retried") as retried:  # a cooldown that has always passed by the next request
            for _ in range(2):
                answer = retried.complete(question, **ask)
                assert [(a.model, a.outcome) for a in answer.routing.attempts] == [("remote-nokey", "error"),
                                                                                   ("remote-echo", "ok")]
                assert "cooling_down" not in answer.routing.flags
            monkeypatch.setenv("ROUTER_TEST_KEY_VAR", "sk-test")
            answer = retried.complete(question, **ask)
            assert [(a.model, a.outcome) for a in answer.routing.attempts] == [("remote-nokey", "ok")]
    ledger = open_ledger(f"sqlite:///{tmp_path / 'retried'}.sqlite3")
    try:
        assert [r.outcome for r in ledger.records() if r.model == "remote-nokey"] == ["error", "error", "ok"]
    finally:
        ledger.close()


def _unset_key_cards(tmp_path: Path) -> tuple[Path, Path]:
    """A models folder with one remote card whose key variable is unset and one whose variable is set, and a config
    naming it."""
    from servers.procs import models_dir, remote_card

    base = "http://127.0.0.1:9/v1"  # never called: only start-up is looked at
    nokey = remote_card("remote-nokey", base, "echo", tier="small").replace(
        "  max_retries:", "  api_key_env: ROUTER_TEST_KEY_VAR\n  max_retries:")
    keyed = remote_card("remote-keyed", base, "echo").replace(
        "  max_retries:", "  api_key_env: ROUTER_TEST_SET_KEY_VAR\n  max_retries:")
    models = models_dir(tmp_path / "models", {"remote-nokey": nokey, "remote-keyed": keyed}, specialist=False)
    config = tmp_path / "router.yaml"
    config.write_text(f"models_dir: {models}\nledger_url: sqlite:///{tmp_path / 'ledger.sqlite3'}\n"
                      "proxy: {warm_up: false}\n")
    return models, config


SET_KEY = "sk-test-never-shown-0123456789"


def test_an_unset_key_variable_is_a_warning_when_the_router_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """The Router started without a word and only each call to the model failed (and fell back). It still starts
    (the variable may be set for a later deploy), but says so once, naming the card, the variable and the fix."""
    from router import Router
    from router.config import RouterConfig

    monkeypatch.delenv("ROUTER_TEST_KEY_VAR", raising=False)
    monkeypatch.setenv("ROUTER_TEST_SET_KEY_VAR", SET_KEY)
    models, config = _unset_key_cards(tmp_path)
    with caplog.at_level("WARNING", logger="router"), Router(RouterConfig.load(config)) as router:
        assert {"remote-nokey", "remote-keyed"} <= set(router.cards)
    warned = [r for r in caplog.records if "ROUTER_TEST_KEY_VAR" in r.getMessage()]
    assert [r.levelname for r in warned] == ["WARNING"]
    warnings = [r.getMessage() for r in warned]
    assert str(models.resolve() / "remote-nokey.yaml") in warnings[0]
    assert "export ROUTER_TEST_KEY_VAR=..." in warnings[0]
    assert not any("remote-keyed" in r.getMessage() or SET_KEY in r.getMessage() for r in caplog.records)


def test_router_serve_shows_the_unset_key_variable_at_start(tmp_path: Path) -> None:
    from servers.procs import router_serve

    _, config = _unset_key_cards(tmp_path)
    env = {"ROUTER_TEST_KEY_VAR": "", "ROUTER_TEST_SET_KEY_VAR": SET_KEY}  # empty counts as unset
    with router_serve(config, tmp_path, env=env) as url:
        log = (tmp_path / f"serve-{url.rsplit(':', 1)[1]}.log").read_text()
    assert log.count("API key variable ROUTER_TEST_KEY_VAR (backend.api_key_env) is not set") == 1, log
    assert "remote-nokey.yaml" in log and "export ROUTER_TEST_KEY_VAR=..." in log
    assert "ready in" in log and "remote-nokey" in log.split("ready in", 1)[1]  # it starts all the same
    assert SET_KEY not in log and "ROUTER_TEST_SET_KEY_VAR" not in log


def test_a_model_not_called_says_estimated_none_in_the_answer_as_in_its_ledger_record(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The answer's ``routing.attempts`` name the source of each attempt's joules as the ledger's records do: a
    model whose backend could not start (its key variable unset) and one whose context cannot hold the prompt
    were never called, 0 J ``estimated:none`` (the attempts once said ``-``, no source at all, where the ledger's
    record of the same attempt said ``estimated:none``)."""
    from servers.procs import models_dir, remote_card, upstream

    from router import Router
    from router.config import RouterConfig

    monkeypatch.delenv("ROUTER_TEST_KEY_VAR", raising=False)
    with upstream(tmp_path) as up:
        nokey = remote_card("remote-nokey", up, "echo", tier="small").replace(
            "  max_retries:", "  api_key_env: ROUTER_TEST_KEY_VAR\n  max_retries:")
        short = remote_card("remote-short", up, "echo", tier="small").replace("context_length: 8192",
                                                                               "context_length: 16")
        models = models_dir(tmp_path / "models", {"remote-nokey": nokey, "remote-short": short,
                                                  "remote-echo": remote_card("remote-echo", up, "echo")})
        config = RouterConfig.load(models_dir=models, ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
        ask = [{"role": "user", "content": "What is the capital of France? Answer in one word, please."}]
        with Router(config) as router:
            routing = router.complete(ask, model="remote-nokey", max_tokens=8).routing
            assert routing is not None
            assert [(a.model, a.outcome, a.energy_j, a.energy_source) for a in routing.attempts] == [
                ("remote-nokey", "error", 0.0, "estimated:none"), ("remote-short", "rejected", 0.0, "estimated:none"),
                ("remote-echo", "ok", routing.energy_j, "estimated:token-profile")]
            record = next(r for r in router.ledger.records() if r.model == "remote-nokey")
            assert (record.energy_j, record.energy_source) == (0.0, "estimated:none")
