"""Models the classifier was not trained on: a card works at once from its prior, and anchor outcomes fit its own
intercept and vector without retraining anything else."""

from __future__ import annotations

import json

import numpy as np
import pytest

from router.cards import load_cards, load_catalogue
from router.classify.onnx_classifier import OnnxRequestClassifier, load_default_classifier
from router.training.anchors import fit_anchors
from router.training.common import MODELS_DIR

FOLDER = MODELS_DIR / "classifier"
needs_model = pytest.mark.skipif(not (FOLDER / "classifier.onnx").exists(), reason="run `router train classifier`")
CHAT = "Write a short story about a lighthouse keeper who befriends a seagull."


@pytest.fixture
def fresh_card():
    base = load_catalogue(MODELS_DIR)["llama-3-70b-instruct"]
    return base.model_copy(update={"name": "my-new-70b", "aliases": [], "family": "llama-3"})


@needs_model
def test_trained_table_covers_local_hosted_and_alpaca_models() -> None:
    clf = load_default_classifier(MODELS_DIR)
    p = clf.classify(CHAT).p_correct
    assert {"smollm2-135m", "gemma3-270m", "sentiment-onnx", "mixtral-8x7b-instruct", "gpt-4-1106-preview",
            "fusechat-gemma-2-9b", "fusechat-llama-3.2-1b"} <= set(p)
    assert p["sentiment-onnx"] < 0.05  # a specialist answers chat by construction not at all
    assert p["fusechat-gemma-2-9b"] > p["fusechat-llama-3.2-1b"]  # measured: 0.71 vs 0.29 on AlpacaEval
    q = clf.quality
    assert q.sources["smollm2-135m"]["sentiment"] == "measured"
    assert q.sources["fusechat-gemma-2-9b"]["chat"] == "measured"


@needs_model
def test_a_new_card_works_at_once_from_its_prior(fresh_card) -> None:
    clf = OnnxRequestClassifier(FOLDER)
    assert "my-new-70b" not in clf.classify(CHAT).p_correct
    assert clf.add_card_priors({"my-new-70b": fresh_card}) == ["my-new-70b"]
    p = clf.classify(CHAT).p_correct["my-new-70b"]
    assert 0.0 < p < 1.0 and clf.quality.sources["my-new-70b"]["chat"] == "card prior"
    # the card's own published accuracy wins over the source prior on its task
    assert clf.quality.sources["my-new-70b"]["multiple_choice"] == "card prior_accuracy"


@needs_model
def test_anchors_fit_a_new_model_and_are_saved(tmp_path, fresh_card) -> None:
    import shutil

    folder = tmp_path / "classifier"
    shutil.copytree(FOLDER, folder)
    clf = OnnxRequestClassifier(folder)
    lines = [json.loads(x) for x in (MODELS_DIR.parent / "data" / "alpaca_eval" / "outcomes.jsonl").read_text()
             .splitlines()[:50]]
    prompts = [x["prompt"] for x in lines]
    good = [1.0] * 50
    row = fit_anchors(clf, fresh_card, prompts, good, task="chat", save=True)
    assert row["from"]["chat"] == "anchors (50)"
    high = clf.classify(CHAT).p_correct["my-new-70b"]
    fit_anchors(clf, fresh_card, prompts, [0.0] * 50, task="chat")
    low = clf.classify(CHAT).p_correct["my-new-70b"]
    assert high > 0.8 > 0.2 > low  # the anchors, not the prior, decide the level
    again = OnnxRequestClassifier(folder)  # the saved row is loaded after the trained ones
    assert again.classify(CHAT).p_correct["my-new-70b"] == pytest.approx(high, abs=1e-3)
    with pytest.raises(ValueError, match="one score"):
        fit_anchors(clf, fresh_card, prompts, [0.5], task="chat")


@needs_model
def test_default_keeps_the_local_models_and_simulation_gets_the_catalogue() -> None:
    local = load_default_classifier(MODELS_DIR)
    assert set(load_cards(MODELS_DIR)) <= set(local.classify(CHAT).p_correct)
    sim = load_default_classifier(MODELS_DIR, catalogue=True)
    assert set(load_catalogue(MODELS_DIR)) <= set(sim.classify(CHAT).p_correct)
    assert np.isfinite(list(sim.classify("").p_correct.values())).all()
