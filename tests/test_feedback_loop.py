"""The loop, end to end: requests through a real ``router serve`` (the official ``openai`` client, prompts stored
because the config opts in), feedback posted on ``/v1/feedback``, ``router data from-ledger`` exports the scored
requests, ``router train feedback`` refits what the feedback informs, and ``router simulate`` on the export shows
the policy choosing differently.

The people scoring are scripted: they dislike the answers of the local model the router picks for these questions on
its cards' figures and like the other's. The shipped local models are tiny, so what this proves is the mechanics of
learning from traffic (every step reads what the previous one wrote, through the real commands), not which model is
better."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import pytest
from servers.procs import ROOT, router_serve

from router.cards import load_cards
from router.classify.onnx_classifier import OnnxRequestClassifier

pytestmark = pytest.mark.slow
LOCAL = ("smollm2-135m", "gemma3-270m")
QUESTIONS = [json.loads(x)["prompt"] for x in (ROOT / "data" / "chat_checked" / "questions.jsonl")
             .read_text().splitlines()[:6]]


def router_cli(*args: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([sys.executable, "-c", "from router.cli import app; app()", *args], capture_output=True,
                         text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def simulate(outcomes: Path, models: Path) -> dict[str, Any]:
    out = router_cli("simulate", "--outcomes", str(outcomes), "--policy", "balanced", "--models", str(models),
                     "--json", "--no-progress")
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_requests_feedback_export_retrain_simulate(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    for card in (ROOT / "models").glob("*.yaml"):
        shutil.copy(card, models / card.name)
    shutil.copytree(ROOT / "models" / "classifier", models / "classifier")  # the retraining writes into this copy
    (models / "sentiment").symlink_to(ROOT / "models" / "sentiment")
    ledger_url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    config = tmp_path / "router.yaml"
    config.write_text(f"models_dir: {models}\nledger_url: {ledger_url}\nprompts: {{store: true, retention_days: 30}}\n")

    # 1. traffic: each question routed, and answered by each local model (pinned), through the proxy
    with router_serve(config, tmp_path, env={"PYTHONPATH": str(ROOT)}) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        answers: list[tuple[str, str, str]] = []  # (question, model, response id)
        picked = []
        for q in QUESTIONS:
            routed = client.chat.completions.create(model="router", messages=[{"role": "user", "content": q}],
                                                    max_tokens=16, temperature=0.0)
            assert routed.model in LOCAL and routed.model_extra["routing"]["task"] == "chat"  # type: ignore[index]
            picked.append(routed.model)
            answers.append((q, routed.model, routed.id))
            for model in LOCAL:
                resp = client.chat.completions.create(model=model, messages=[{"role": "user", "content": q}],
                                                      max_tokens=16, temperature=0.0)
                answers.append((q, model, resp.id))
        # "today": the pick on the cards' energy figures alone (the first request, before any call was measured;
        # later picks may follow the energy learned from these very calls, which simulation does not replay)
        today = picked[0]
        other = next(m for m in LOCAL if m != today)

        # 2. feedback: the scripted people dislike today's pick and like the other model
        for _q, model, rid in answers:
            got = client.post("/feedback", cast_to=object, body={"id": rid, "score": 0.0 if model == today else 1.0})
            assert got["response_id"] == rid  # type: ignore[index]

    # 3. export the scored requests: one line per question, both models' outcomes, the feedback's scores
    scored = tmp_path / "scored.jsonl"
    out = router_cli("data", "from-ledger", "-o", str(scored), "--config", str(config))
    assert "wrote 6 lines (18 scored requests)" in out.stdout, out.stdout
    lines = [json.loads(x) for x in scored.read_text().splitlines()]
    assert [line["prompt"] for line in lines] == QUESTIONS
    for line in lines:
        assert line["outcomes"][today]["correct"] == 0.0 and line["outcomes"][other]["correct"] == 1.0
        assert line["outcomes"][today]["requests"] + line["outcomes"][other]["requests"] == 3
        assert all(o["energy_j"] > 0 and o["output_tokens"] > 0 for o in line["outcomes"].values())

    # 4. before retraining, simulation agrees with the live router: it picks the model people dislike
    before = simulate(scored, models)
    assert before["share_requests"][today] == 1.0 and before["accuracy"] == 0.0

    # 5. retrain only what the feedback informs: the two models' chat rows
    cards = load_cards(models)
    shipped = OnnxRequestClassifier(models / "classifier", cards).quality.row("sentiment-onnx")
    out = router_cli("train", "feedback", str(scored), "--models", str(models), "--min-requests", "3")
    added = json.loads((models / "classifier" / "added_models.json").read_text())
    scored_requests = {m: sum(line["outcomes"][m]["requests"] for line in lines) for m in LOCAL}  # 18 in all
    assert set(added) == set(LOCAL) and all(added[m]["from"]["chat"] == f"feedback ({scored_requests[m]})"
                                            for m in LOCAL)
    refitted = OnnxRequestClassifier(models / "classifier", cards)
    assert refitted.quality.row("sentiment-onnx") == shipped, "a model without feedback keeps its row"

    # 6. simulation now routes these questions to the model people liked
    after = simulate(scored, models)
    assert after["share_requests"].get(other, 0.0) == 1.0 and after["accuracy"] == 1.0, (before, after)
