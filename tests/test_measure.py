"""``router data measure MODEL --anchors N``: the model is called through its backend on the shipped anchors, the
answers are scored (reference match for sentiment; a judge model against the reference answer for chat), every
call is a ledger record, and the model's row is fitted and saved where the classifier reads added models, leaving
the other models' rows as they were. Real local models (SmolLM2, Gemma 3 270M as the judge): the mechanics, not a
judgement."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from router.cards import load_cards
from router.classify.onnx_classifier import OnnxRequestClassifier
from router.cli import app
from router.ledger import open_ledger
from router.training.anchor_sets import load_anchors

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def copy_models(folder: Path) -> Path:
    """The shipped cards, a copy of the classifier (it is written to) and the specialist's weights (linked)."""
    folder.mkdir(parents=True)
    for card in (ROOT / "models").glob("*.yaml"):
        shutil.copy(card, folder / card.name)
    shutil.copytree(ROOT / "models" / "classifier", folder / "classifier")
    (folder / "sentiment").symlink_to(ROOT / "models" / "sentiment")
    return folder


def test_anchor_sets_are_shipped_with_what_scores_them() -> None:
    chat, sentiment = load_anchors("chat"), load_anchors("sentiment")
    assert len(chat) == len(sentiment) == 50
    assert all(a["reference"] and a["source"].startswith("alpaca_eval/") for a in chat)
    assert {a["label"] for a in sentiment} == {"positive", "negative"}


def test_measure_fits_only_the_measured_models_row(tmp_path: Path) -> None:
    models = copy_models(tmp_path / "models")
    ledger_url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    config = tmp_path / "router.yaml"
    config.write_text(f"models_dir: {models}\nledger_url: {ledger_url}\n")
    before = OnnxRequestClassifier(models / "classifier", load_cards(models))
    gemma_row = before.quality.row("gemma3-270m")

    run = CliRunner().invoke
    out = run(app, ["data", "measure", "smollm2-135m", "--task", "sentiment", "--anchors", "4", "--max-tokens", "12",
                    "--config", str(config)])
    assert out.exit_code == 0, out.output
    assert "smollm2-135m on 4 sentiment anchors (scored by reference match" in out.output
    out = run(app, ["data", "measure", "smollm2-135m", "--task", "chat", "--anchors", "3", "--judge", "gemma3-270m",
                    "--max-tokens", "24", "--config", str(config)])
    assert out.exit_code == 0, out.output
    assert "scored by gemma3-270m" in out.output

    added = json.loads((models / "classifier" / "added_models.json").read_text())
    assert set(added) == {"smollm2-135m"}
    assert added["smollm2-135m"]["from"]["chat"].startswith("anchors (")
    assert added["smollm2-135m"]["from"]["sentiment"] == "anchors (4)", "measuring chat kept the sentiment fit"
    after = OnnxRequestClassifier(models / "classifier", load_cards(models))
    assert after.quality.row("gemma3-270m") == gemma_row, "every other model keeps its row"
    assert after.quality.row("smollm2-135m")["from"]["chat"] == added["smollm2-135m"]["from"]["chat"]
    led = open_ledger(ledger_url)
    try:
        recs = led.records()
    finally:
        led.close()
    measured = [r for r in recs if r.reason.startswith("anchor measurement")]
    judged = [r for r in recs if r.reason.startswith("judge call: scoring smollm2-135m's answer to chat anchor")]
    assert len(measured) == 7 and {r.model for r in measured} == {"smollm2-135m"}
    assert len(judged) == 3 and {r.model for r in judged} == {"gemma3-270m"}
    assert all(r.energy_j > 0 and r.task == "anchors" for r in measured + judged)


def test_an_unknown_model_is_refused_before_any_anchor_runs(tmp_path: Path) -> None:
    config = tmp_path / "router.yaml"
    config.write_text(f"ledger_url: sqlite:///{tmp_path / 'ledger.sqlite3'}\n")
    # sentiment: chat anchors without a judge are refused earlier still, before the router loads
    out = CliRunner().invoke(app, ["data", "measure", "nope-model", "--task", "sentiment", "--anchors", "2",
                                   "--config", str(config)])
    assert out.exit_code == 2 and "unknown model 'nope-model'" in out.output, out.output
    assert "anchors" not in out.output.split("unknown model")[0], "the progress bar started before the check"


def test_a_judge_that_reasons_first_gets_the_configured_room_for_its_verdict(tmp_path: Path) -> None:
    """The anchors' judge verdict was cut at a hard-coded 8 tokens, so a hosted judge that reasons before its
    `Score: N` line scored no anchor ("no anchor answer ... could be scored", with no hint why). Its length limit is
    `--judge-max-tokens`, by default the config's `judge.score_max_tokens`; a verdict cut before its score says so."""
    from servers import procs

    with procs.upstream(tmp_path) as base:
        models = procs.models_dir(tmp_path / "models", {
            "remote-echo": procs.remote_card("remote-echo", base, "echo", tier="small"),
            "remote-judge": procs.remote_card("remote-judge", base, "judge:reasoning"),  # reasons, then "Score: 7"
        })
        config = tmp_path / "router.yaml"
        config.write_text(f"models_dir: {models}\nledger_url: sqlite:///{tmp_path / 'ledger.sqlite3'}\n")
        measure = ["data", "measure", "remote-echo", "--task", "chat", "--anchors", "2", "--judge", "remote-judge",
                   "--no-save", "--config", str(config)]
        run = CliRunner().invoke
        out = run(app, measure)
        assert out.exit_code == 2, out.output
        assert "its answers were cut at 8 tokens" in out.output and "--judge-max-tokens" in out.output
        out = run(app, [*measure, "--judge-max-tokens", "256"])
        assert out.exit_code == 0 and "(scored by remote-judge; 0 unscored): mean score 0.700" in out.output, out.output
        config.write_text(config.read_text() + "judge:\n  model: remote-judge\n  score_max_tokens: 256\n")
        out = run(app, measure)
        assert out.exit_code == 0 and "mean score 0.700" in out.output, out.output
