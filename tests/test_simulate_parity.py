"""The simulation decides as the live Router does for the same request, policy and cards (docs/simulation.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from servers.procs import ROOT, models_dir, policies_dir, remote_card, upstream

from router import Router
from router.cards import load_cards
from router.config import PromptSettings, RouterConfig
from router.simulate.outcomes import load_outcomes
from router.simulate.policy_bridge import PolicyEngineBridge
from router.simulate.simulator import Simulator

CHEAPEST = "name: cheapest\naccuracy: {min_accuracy: 0.0}\n"


def test_a_long_prompt_goes_where_the_router_sends_it(tmp_path: Path) -> None:
    """A prompt of ~1,940 estimated tokens for a small model of 2,048: the Router leaves a model out only where the
    prompt surely cannot fit (its backend counts the rest) and answers with the small model, so the simulation,
    on both its paths, picks the small one too, not the large one at ten times the joules."""
    prompt = "Summarise: " + "The quick brown fox jumps over the lazy dog. " * 172
    with upstream(tmp_path) as url:
        small = remote_card("remote-small", url, "echo", tier="small").replace("context_length: 8192",
                                                                                "context_length: 2048")
        large = remote_card("remote-large", url, "echo", tier="large", per_call_j=50.0)
        models = models_dir(tmp_path / "models", {"remote-small": small, "remote-large": large}, specialist=False)
        policies = policies_dir(tmp_path / "policies", {"cheapest": CHEAPEST})
        config = RouterConfig(models_dir=models, policies_dir=policies, default_policy="cheapest",
                              ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
        with Router(config) as router:
            answer = router.complete([{"role": "user", "content": prompt}])
            live = router.ledger.request_record(answer.id)
            classifier = router.classifier
    assert live is not None and live.model == "remote-small"

    outcomes = tmp_path / "outcomes.jsonl"
    outcomes.write_text(json.dumps({"id": answer.id, "prompt": prompt, "task": "chat", "outcomes": {
        "remote-small": {"correct": 1.0, "output_tokens": 5}, "remote-large": {"correct": 1.0, "output_tokens": 5},
    }}) + "\n")
    cards = load_cards(models)
    table = load_outcomes(outcomes, cards)
    for scalar_limit in (200_000, 0):  # the engine per prompt, and the vectorised decide_batch
        result = Simulator(table, cards, classifier, PolicyEngineBridge("cheapest", policies)).run(
            policy_name="cheapest", classifier_name="shipped", scalar_limit=scalar_limit)
        assert table.models[int(result.chosen[0])] == live.model


def router_cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "router", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_scored_traffic_from_the_ledger_is_simulated_request_by_request(tmp_path: Path) -> None:
    """`router data from-ledger` writes a prompt asked three times as one line whose outcome says `requests: 3`;
    `router simulate` on that file replays four requests, and its joules are the ledger's for the same traffic."""
    ledger_url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    with upstream(tmp_path) as url:
        models = models_dir(tmp_path / "models", {"remote-small": remote_card("remote-small", url, "echo", "small")},
                            specialist=False)
        policies = policies_dir(tmp_path / "policies", {"cheapest": CHEAPEST})
        config = RouterConfig(models_dir=models, policies_dir=policies, default_policy="cheapest",
                              ledger_url=ledger_url, prompts=PromptSettings(store=True))
        with Router(config) as router:
            for question in ("What is 2 + 2?", "What is 2 + 2?", "What is 2 + 2?", "Name a colour."):
                answer = router.complete([{"role": "user", "content": question}])
                router.feedback(answer.id, 1.0)
            ledger_j = sum(r.energy_j for r in router.ledger.records())
    outcomes = tmp_path / "scored.jsonl"
    router_cli("data", "from-ledger", "--ledger", ledger_url, "-o", str(outcomes))
    assert len(outcomes.read_text().splitlines()) == 2
    report = json.loads(router_cli("simulate", "--outcomes", str(outcomes), "--policy", "cheapest", "--models",
                                   str(models), "--policies", str(policies), "--json", "--no-progress"))
    assert report["requests"] == 4
    assert report["energy_j_total"] == pytest.approx(ledger_j, rel=1e-6)


def test_a_chinese_prompt_weighs_what_an_ascii_prompt_of_its_bytes_weighs(tmp_path: Path) -> None:
    """The Router estimates a prompt's input tokens as its UTF-8 bytes over four: 600 Chinese characters (1,800
    bytes) weigh 450 tokens, as 1,800 ASCII characters do. A model dear per input token costs more than a flat one
    at 450 tokens (45 J against 30 J) and less at 150 (the characters over four), so the simulation, counting
    characters, would send the Chinese prompt elsewhere than the Router does; it gives both prompts the Router's
    tokens, card joules and model."""
    chinese = "请" * 600
    ascii_prompt = "a" * 1800
    with upstream(tmp_path) as url:
        flat = remote_card("remote-flat", url, "echo", tier="small", per_call_j=30.0).replace(
            "per_input_token_j: 0.01", "per_input_token_j: 0.0")
        steep = remote_card("remote-steep", url, "echo", tier="small", per_call_j=0.0).replace(
            "per_input_token_j: 0.01", "per_input_token_j: 0.1")
        models = models_dir(tmp_path / "models", {"remote-flat": flat, "remote-steep": steep}, specialist=False)
        policies = policies_dir(tmp_path / "policies", {"cheapest": CHEAPEST})
        config = RouterConfig(models_dir=models, policies_dir=policies, default_policy="cheapest",
                              ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
        live = {}
        with Router(config) as router:
            for prompt in (chinese, ascii_prompt):
                answer = router.complete([{"role": "user", "content": prompt}])
                record = router.ledger.request_record(answer.id)
                assert record is not None
                live[prompt] = record.model
            classifier = router.classifier
    assert live == {chinese: "remote-flat", ascii_prompt: "remote-flat"}

    outcomes = tmp_path / "outcomes.jsonl"
    outcomes.write_text("".join(json.dumps({"id": f"r{i}", "prompt": prompt, "task": "chat", "outcomes": {
        "remote-flat": {"correct": 1.0, "output_tokens": 5}, "remote-steep": {"correct": 1.0, "output_tokens": 5},
    }}) + "\n" for i, prompt in enumerate((chinese, ascii_prompt))))
    cards = load_cards(models)
    table = load_outcomes(outcomes, cards)
    steep_j = table.energy_j[:, table.models.index("remote-steep")]
    assert steep_j.tolist() == pytest.approx([0.1 * 450 + 0.1 * 5] * 2)  # the card joules: 450 input tokens each
    for scalar_limit in (200_000, 0):  # the engine per prompt, and the vectorised decide_batch
        result = Simulator(table, cards, classifier, PolicyEngineBridge("cheapest", policies)).run(
            policy_name="cheapest", classifier_name="shipped", scalar_limit=scalar_limit)
        assert [table.models[int(j)] for j in result.chosen] == [live[chinese], live[ascii_prompt]]
