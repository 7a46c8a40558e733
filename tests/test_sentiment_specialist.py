"""The shipped sentiment specialist (fine-tuned MiniLM, int8 ONNX + tokenizer) and the torch-free linear recipe
it replaced: ONNX contracts, held-out figures recorded honestly, odd input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from router.training.common import MODELS_DIR, detokenize
from router.training.sentiment import export_onnx, fit_nblr, onnx_predict, split_polarity
from router.training.sentiment_finetune import MAX_LENGTH, OnnxSentiment

FOLDER = MODELS_DIR / "sentiment"
ONNX = FOLDER / "sentiment.onnx"
TOKENIZER = FOLDER / "tokenizer.json"
METRICS = FOLDER / "metrics.json"
pytestmark = pytest.mark.skipif(not ONNX.exists(), reason="run `router train specialist sentiment` first")
ODD = ["", "   ", "😀😀", "\x00\x01", "これは映画です", "un film très ennuyeux", "x" * 100_000]


@pytest.fixture(scope="module")
def shipped() -> OnnxSentiment:
    return OnnxSentiment(ONNX, TOKENIZER)


def test_shipped_graph_contract_and_obvious_sentences(shipped: OnnxSentiment) -> None:
    assert [i.name for i in shipped.session.get_inputs()] == ["input_ids", "attention_mask"]
    assert [o.name for o in shipped.session.get_outputs()] == ["label", "probabilities"]
    probs = shipped.predict_proba(["A GORGEOUS, witty and moving film.", "dull, boring and painfully slow."])
    assert probs.argmax(1).tolist() == [1, 0]
    assert probs.shape == (2, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_metrics_beat_baselines_and_the_linear_model() -> None:
    m = json.loads(METRICS.read_text())
    fine = m["finetune"]
    assert m["test_accuracy"] > max(m["baselines_test_accuracy"].values())
    assert m["test_accuracy"] > m["linear_not_shipped"]["test_accuracy"] + 0.03
    # the epoch (and lr) were chosen on validation, and the shipped precision is the one recorded
    runs = fine["validation_accuracy_by_lr_and_epoch"]
    best = max(max(accs) for accs in runs.values())
    assert fine["chosen"]["validation_accuracy"] == best
    assert runs[f"{fine['chosen']['lr']:g}"][fine["chosen"]["epoch"] - 1] == best
    shipped = fine[f"onnx_{fine['shipped_precision']}"]
    assert m["test_accuracy"] == shipped["test_accuracy"] and m["onnx_bytes"] == ONNX.stat().st_size
    assert abs(fine["onnx_int8"]["test_accuracy"] - fine["test_accuracy_torch"]) < 0.01
    assert m["max_length"] == MAX_LENGTH


def test_shipped_matches_recorded_accuracy_on_a_sample(shipped: OnnxSentiment) -> None:
    split = split_polarity()
    n = 400
    acc = float((shipped.predict_proba(split.test_x[:n]).argmax(1) == split.test_y[:n]).mean())
    recorded = json.loads(METRICS.read_text())["test_accuracy"]
    assert abs(acc - recorded) < 0.05  # a 400-sentence sample of the 1,703 scored in metrics.json


def test_odd_input_does_not_crash(shipped: OnnxSentiment) -> None:
    probs = shipped.predict_proba(ODD)
    assert probs.shape == (len(ODD), 2) and np.isfinite(probs).all()


@pytest.fixture(scope="module")
def linear_graph(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """The torch-free recipe's graph (a small NB-LR, so the test stays fast) exported to a temporary file."""
    split = split_polarity()
    model = fit_nblr(split.train_x[:3000], split.train_y[:3000], 1.0, char=False)
    path = tmp_path_factory.mktemp("linear") / "linear.onnx"
    export_onnx(model, path)
    return path, model


def test_linear_onnx_matches_sklearn_on_held_out_sample(linear_graph: tuple[Path, object]) -> None:
    path, model = linear_graph
    split = split_polarity()
    texts = split.test_x[:600] + [detokenize(t).upper() for t in split.test_x[:100]]
    texts += ["great great great fun", "bad bad bad bad film"]  # repeated words: sublinear tf = 1 + log(tf)
    labels, probs = onnx_predict(path, texts)
    assert (labels == model.predict(texts)).all()  # type: ignore[attr-defined]
    assert np.abs(probs - model.predict_proba(texts)).max() < 1e-5  # type: ignore[attr-defined]


def test_linear_onnx_odd_input(linear_graph: tuple[Path, object]) -> None:
    labels, probs = onnx_predict(linear_graph[0], ODD)
    assert labels.shape == (len(ODD),) and np.isfinite(probs).all()


def test_train_command_says_how_to_get_torch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without the `embeddings` extra the MiniLM recipe stops before doing any work and names the fix."""
    import sys

    from typer.testing import CliRunner

    from router.cli import app

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    result = CliRunner().invoke(app, ["train", "specialist", "sentiment", "--out", str(tmp_path)])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "needs torch" in text and "pip install -e '.[embeddings]'" in text and "--model linear" in text
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epochs", "0"], "Invalid value for '--epochs': Input should be greater than or equal to 1"),
        (["--epochs", "-1"], "Invalid value for '--epochs': Input should be greater than or equal to 1"),
        (["--lr", "0"], "Invalid value for '--lr': a learning rate must be above 0, not 0"),
        (["--lr", "5e-5", "--lr", "-1e-05"], "Invalid value for '--lr': a learning rate must be above 0, not -1e-05"),
    ],
    ids=["epochs-0", "epochs-negative", "lr-0", "lr-negative"],
)
def test_train_command_refuses_epochs_and_rates_that_train_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, args: list[str], message: str
) -> None:
    from typer.testing import CliRunner

    from router.cli import app

    def no_training(**_kwargs: object) -> None:  # TEST DOUBLE: reaching the training at all is the failure
        raise AssertionError("training started with a value that should have been refused")

    monkeypatch.setattr("router.training.sentiment.train_sentiment", no_training)
    result = CliRunner().invoke(app, ["train", "specialist", "sentiment", "--model", "linear", "--out",
                                      str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output
    assert not any(tmp_path.iterdir())


def test_a_training_stopped_before_its_metrics_leaves_the_previous_outputs_intact(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The linear recipe on a small slice of the data, into a copy of the shipped outputs; the metrics writing
    fails after the graph was exported: the old graph, tokenizer and metrics stay, nothing half-written remains."""
    import shutil

    from router.training import sentiment

    data = tmp_path / "polarity"
    data.mkdir()
    for name in ("rt-polarity.pos", "rt-polarity.neg"):
        lines = (MODELS_DIR.parent / "data" / "sentiment_polarity" / name).read_bytes().splitlines(keepends=True)
        (data / name).write_bytes(b"".join(lines[:300]))
    out = tmp_path / "sentiment"
    shutil.copytree(FOLDER, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def failing_write(path: Path, _payload: object) -> None:  # TEST DOUBLE: the run dies writing its metrics
        raise RuntimeError(f"stopped before writing {path.name}")

    monkeypatch.setattr(sentiment, "write_json", failing_write)
    with pytest.raises(RuntimeError, match="stopped before writing metrics.json"):
        sentiment.train_sentiment(data_dir=data, out_dir=out, model="linear", compare_embeddings=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["polarity", "sentiment"], "no staging folder left"


def test_staged_outputs_move_in_together_and_drop_what_the_run_does_not_produce(tmp_path: Path) -> None:
    from router.training.common import staged_outputs

    out = tmp_path / "out"
    out.mkdir()
    for name, text in (("model.onnx", "old graph"), ("tokenizer.json", "old"), ("added_models.json", "kept")):
        (out / name).write_text(text)
    with staged_outputs(out, drop=("tokenizer.json",)) as stage:
        assert stage.parent == tmp_path and stage != out
        (stage / "model.onnx").write_text("new graph")
        (stage / "metrics.json").write_text("new")
    assert {p.name: p.read_text() for p in out.iterdir()} == {
        "model.onnx": "new graph", "metrics.json": "new", "added_models.json": "kept"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
