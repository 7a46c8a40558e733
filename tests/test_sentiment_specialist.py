"""The shipped sentiment specialist: ONNX contract, agreement with sklearn, better than bag-of-words."""

from __future__ import annotations

import json

import numpy as np
import pytest

from router.training.common import MODELS_DIR, detokenize
from router.training.sentiment import fit_nblr, onnx_predict, split_polarity

ONNX = MODELS_DIR / "sentiment" / "sentiment.onnx"
METRICS = MODELS_DIR / "sentiment" / "metrics.json"
pytestmark = pytest.mark.skipif(not ONNX.exists(), reason="run `router train specialist sentiment` first")


def test_onnx_contract_and_obvious_sentences() -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(ONNX), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "text" and inp.shape[1] == 1
    assert [o.name for o in session.get_outputs()] == ["label", "probabilities"]
    labels, probs = onnx_predict(ONNX, ["A GORGEOUS, witty and moving film.", "dull, boring and painfully slow."])
    assert labels.tolist() == [1, 0]
    assert probs.shape == (2, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_metrics_beat_bag_of_words_baseline() -> None:
    m = json.loads(METRICS.read_text())
    assert m["test_accuracy"] > max(m["baselines_test_accuracy"].values())
    assert m["onnx_sklearn_label_agreement"] >= 0.995


def test_onnx_matches_sklearn_on_held_out_sample() -> None:
    split = split_polarity()
    n = 600
    model = fit_nblr(split.train_x[:3000], split.train_y[:3000], 1.0, char=False)
    from router.training.sentiment import export_onnx

    path = ONNX.parent / "_test_tmp.onnx"
    try:
        export_onnx(model, path)
        texts = split.test_x[:n] + [detokenize(t).upper() for t in split.test_x[:100]]
        labels, probs = onnx_predict(path, texts)
        assert (labels == model.predict(texts)).mean() >= 0.99
        assert np.abs(probs - model.predict_proba(texts)).max() < 0.05
    finally:
        path.unlink(missing_ok=True)


def test_odd_input_does_not_crash() -> None:
    labels, probs = onnx_predict(ONNX, ["", "   ", "😀😀", "\x00\x01", "これは映画です", "x" * 100_000])
    assert labels.shape == (6,) and np.isfinite(probs).all()
