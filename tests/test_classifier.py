"""The shipped request classifier: task detection on held-out phrasings, decoys, bad input, calibration."""

from __future__ import annotations

import json

import numpy as np
import pytest

from router.classify.base import TASKS
from router.classify.onnx_classifier import OnnxRequestClassifier, bound_text, has_options, load_default_classifier
from router.classify.rules import RuleClassifier
from router.training.classifier import expected_calibration_error, routing_metrics
from router.training.common import MODELS_DIR

FOLDER = MODELS_DIR / "classifier"
needs_model = pytest.mark.skipif(not (FOLDER / "classifier.onnx").exists(), reason="run `router train classifier`")


@needs_model
@pytest.mark.parametrize(
    ("text", "task"),
    [
        ("Is this review positive or negative? 'a gorgeous, witty film'", "sentiment"),
        ("how does this tweet feel: ugh, the worst service ever", "sentiment"),
        ("SENTIMENT: boring and way too long", "sentiment"),
        ("Which planet is largest?\nA. Mars\nB. Jupiter\nC. Venus\nD. Earth\nAnswer:", "multiple_choice"),
        ("Maya has 12 apples and buys 7 more, then gives 5 to Sam. How many apples does she have left?", "math"),
        ("Write a short poem about the sea.", "chat"),
    ],
)
def test_task_detection(onnx_classifier: OnnxRequestClassifier, text: str, task: str) -> None:
    assert onnx_classifier.classify(text).task == task


@needs_model
def test_write_a_positive_review_is_not_sentiment(onnx_classifier: OnnxRequestClassifier) -> None:
    c = onnx_classifier.classify("Write a positive review of this film: a gorgeous, witty film")
    assert c.task != "sentiment"


@needs_model
@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n\t",
        "x" * 1_000_000,
        "\x00\xff\x01binary\ud800junk",
        "😀🎉" * 500,
        "Это ужасный фильм, не смотрите его.",
        "これは素晴らしい映画でした。",
    ],
)
def test_bad_input_gives_a_defined_decision(onnx_classifier: OnnxRequestClassifier, text: str) -> None:
    c = onnx_classifier.classify(text)
    assert c.task in TASKS
    assert abs(sum(c.task_probs.values()) - 1) < 1e-4
    assert all(0 <= p <= 1 for p in c.p_correct.values())
    assert c.truncated == (len(text) > onnx_classifier.max_chars)


@needs_model
def test_p_correct_covers_models_and_gpt4_beats_mixtral_on_average(onnx_classifier: OnnxRequestClassifier) -> None:
    c = onnx_classifier.classify("Which planet is largest?\nA. Mars\nB. Jupiter\nC. Venus\nD. Earth\nAnswer:")
    assert {"mixtral-8x7b-instruct", "gpt-4-1106-preview", "sentiment-onnx"} <= set(c.p_correct)
    assert c.p_correct["sentiment-onnx"] < 0.05
    meta = json.loads((FOLDER / "classifier.json").read_text())
    assert meta["metrics"]["task_detection"]["held_out_accuracy"] >= 0.85
    assert meta["metrics"]["task_detection"]["ece_top_label"] <= 0.1


@needs_model
def test_held_out_routing_beats_random_and_is_calibrated() -> None:
    m = json.loads((FOLDER / "classifier.json").read_text())["metrics"]
    best = max(v["apgr"] for v in m["p_correct_subject_held_out"].values() if isinstance(v, dict) and "apgr" in v)
    assert best > m["reference_routers"]["random"]["apgr"] + 0.02
    assert all(e < 0.08 for e in m["p_correct_subject_held_out"]["ece"].values())


def test_routing_metrics_on_known_cases() -> None:
    weak = np.array([1, 0, 0, 1, 0, 1, 0, 1])
    strong = np.array([1, 1, 1, 1, 0, 1, 1, 1])
    oracle = routing_metrics(((weak == 0) & (strong == 1)).astype(float), weak, strong)
    worst = routing_metrics(-((weak == 0) & (strong == 1)).astype(float), weak, strong)
    assert oracle["apgr"] > 0.8 > worst["apgr"]
    assert oracle["cpt50"] <= 0.25


def test_ece_detects_miscalibration() -> None:
    rng = np.random.default_rng(0)
    p = rng.random(5000)
    y = (rng.random(5000) < p).astype(float)
    assert expected_calibration_error(p, y) < 0.03
    assert expected_calibration_error(np.clip(p + 0.3, 0, 1), y) > 0.2


def test_options_rule_and_fallback(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert has_options("Q?\nA. x\nB. y")
    assert not has_options("What is a good name for a cat?")
    assert isinstance(load_default_classifier(tmp_path, shipped=tmp_path / "none"), RuleClassifier)


@needs_model
def test_a_models_dir_of_ones_own_keeps_the_trained_classifier(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    """A custom models_dir without a classifier/ folder got the rules without a word: now the shipped classifier,
    predicting for its cards too, and the log says which one."""
    import logging
    import shutil

    from router import Router
    from router.config import RouterConfig

    mine = tmp_path / "mymodels"
    mine.mkdir()
    shutil.copy(MODELS_DIR / "smollm2-135m.yaml", mine / "smollm2-135m.yaml")
    caplog.set_level(logging.INFO, "router.classify")
    clf = load_default_classifier(mine)
    assert isinstance(clf, OnnxRequestClassifier) and clf.classify("Is this review positive? 'great'").method != "rules"
    assert f"the trained ONNX classifier in {FOLDER} (the shipped one: {mine / 'classifier'} has none)" in caplog.text
    cfg = RouterConfig.model_validate({"models_dir": str(mine), "ledger_url": f"sqlite:///{tmp_path}/l.sqlite3",
                                       "journal": {"enabled": False}})
    with Router(cfg) as router:
        assert isinstance(router.classifier, OnnxRequestClassifier)
        assert set(router.classifier.classify("hello there").p_correct) == {"smollm2-135m"}
    shutil.copytree(FOLDER, mine / "classifier")  # its own classifier wins
    caplog.clear()
    assert isinstance(load_default_classifier(mine), OnnxRequestClassifier)
    assert f"the trained ONNX classifier in {mine / 'classifier'}\n" in caplog.text + "\n"


@needs_model
def test_fast_graph_and_feature_comparison_recorded() -> None:
    import onnx

    ops = {n.op_type for n in onnx.load(str(FOLDER / "classifier.onnx")).graph.node}
    assert "Normalizer" not in ops  # the slow dense op is replaced by a norm after the MatMul
    m = json.loads((FOLDER / "classifier.json").read_text())["metrics"]
    assert m["onnx_agreement"]["task_argmax_agreement"] >= 0.99
    assert m["onnx_agreement"]["request_vector_max_abs_diff"] < 1e-3
    comparison = m["feature_comparison"]
    assert "skipped" in comparison or {"minilm", "tfidf+minilm", "encoder_ms_single_thread"} <= set(comparison)


def test_exported_graph_computes_the_sklearn_tfidf_head(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The exported graph reads only each text's own n-grams (sparse head); it must give the numbers of the
    dense recipe it replaces: sklearn's L2-normalised sublinear TF-IDF row @ W + b, softmax over the task
    columns, the rest (the request representation) as it is."""
    import onnxruntime as ort

    from router.training.classifier import export_classifier, vectorizer

    corpus = ["the film was great great great", "a dull film", "what is two plus two", "the the the",
              "Which is right? A. one B. two", "write a poem about the sea", "great dull sea poem film two"]
    vec = vectorizer().set_params(min_df=1).fit(corpus)
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(len(vec.vocabulary_), len(TASKS) + 2))
    bias = rng.normal(size=len(TASKS) + 2)
    path = tmp_path / "classifier.onnx"
    export_classifier(vec, weights, bias, path)
    texts = [*corpus, "", "no known words here", "GREAT Film!!! great", "ünïcode film ✓ sea", "film " * 300]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    task_probs, request_vector = session.run(None, {"text": np.array([[t] for t in texts], dtype=object)})
    logits = vec.transform(texts).toarray() @ weights + bias
    want_tasks = np.exp(logits[:, : len(TASKS)]) / np.exp(logits[:, : len(TASKS)]).sum(1, keepdims=True)
    np.testing.assert_allclose(task_probs, want_tasks, atol=1e-5)
    np.testing.assert_allclose(request_vector, logits[:, len(TASKS):], atol=1e-5)  # h, as the quality table reads it
    single, _ = session.run(None, {"text": np.array([[texts[0]]], dtype=object)})
    np.testing.assert_allclose(single[0], task_probs[0], atol=1e-6)  # a batch gives each text its own answer


def test_has_options_counts_markers_as_the_plain_pattern_does() -> None:
    """The two-pattern scan must count exactly what ``re.findall(r"(?:^|\\s)\\(?[A-Da-d][.):]\\s")`` counts,
    overlaps and start-of-text included."""
    import random
    import re

    oracle = re.compile(r"(?:^|\s)\(?[A-Da-d][.):]\s")
    rng = random.Random(7)
    texts = ["A. x\nB. y", "A. B. ", " A. B. ", "(a) one (b) two", "a: b: ", "A.\tB.\n", "x A. y", "", "A.",
             *("".join(rng.choice("AaBbDdEe .):(\n\t\xa0x") for _ in range(rng.randint(0, 24))) for _ in range(20000))]
    for text in texts:
        assert has_options(text) == (len(oracle.findall(text)) >= 2), repr(text)


def test_bound_text_replaces_exactly_what_the_control_pattern_matches() -> None:
    """Translating the UTF-8 bytes must turn into spaces exactly the characters the control pattern matches, after
    lone surrogates became "?": every code point below 0x800, surrogates, emoji, mixed texts."""
    import random
    import re

    control = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

    def oracle(text: str) -> str:
        return control.sub(" ", text.encode("utf-8", "replace").decode("utf-8"))

    rng = random.Random(3)
    alphabet = [*map(chr, range(0x800)), "\ud800", "\udfff", "\ud83d", "\U0001f600", "\u2028", "\uffff"]
    texts = [*alphabet, "".join(alphabet), *("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
                                              for _ in range(2000))]
    for text in texts:
        assert bound_text(text, 10_000, 7_000, 3_000) == (oracle(text), False), repr(text)
    long = "\x01" * 600 + "\ud800" * 600
    assert bound_text(long, 1000, 700, 300) == (oracle(long[:700] + " \u2026 " + long[-300:]), True)


def test_the_rules_fallback_reads_classifier_max_chars(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """With no trained classifier found, the rules read the config's ``classifier_max_chars``, not a fixed 4,000:
    a sentiment cue past the limit is not seen, and the classification says it was truncated."""
    import shutil

    import router.config
    from router import Router
    from router.config import RouterConfig

    cue_late = "x" * 60 + " Is this review positive or negative? 'great'"
    rules = load_default_classifier(tmp_path, shipped=tmp_path / "none", max_chars=50)
    assert isinstance(rules, RuleClassifier)
    late = rules.classify(cue_late)
    assert late.task == "chat" and late.truncated
    # a package whose models folder has no classifier (a wheel built without it): the Router falls back to the rules
    real = router.config.embedded_dir
    monkeypatch.setattr(router.config, "embedded_dir",
                        lambda name: tmp_path / "bare" if name == "models" else real(name))
    mine = tmp_path / "mymodels"
    mine.mkdir()
    shutil.copy(MODELS_DIR / "smollm2-135m.yaml", mine / "smollm2-135m.yaml")
    cfg = RouterConfig.model_validate({"models_dir": str(mine), "ledger_url": f"sqlite:///{tmp_path}/l.sqlite3",
                                       "journal": {"enabled": False}, "classifier_max_chars": 50})
    with Router(cfg) as r:
        assert isinstance(r.classifier, RuleClassifier)
        late = r.classifier.classify(cue_late)
        assert late.task == "chat" and late.truncated
        assert r.classifier.classify(cue_late[60:]).task == "sentiment"
