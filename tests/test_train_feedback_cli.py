"""``router train feedback`` as a user runs it, on a copy of the shipped cards and classifier in tmp_path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_helpers import router_main
from servers.procs import ROOT

from router.classify.onnx_classifier import load_default_classifier
from router.errors import ConfigError

LOCAL = ("smollm2-135m", "gemma3-270m")


def cards_folder(tmp_path: Path, *, with_classifier: bool) -> Path:
    models = tmp_path / "models"
    models.mkdir(parents=True)
    for name in LOCAL:
        shutil.copy(ROOT / "models" / f"{name}.yaml", models)
    if with_classifier:
        shutil.copytree(ROOT / "models" / "classifier", models / "classifier")  # the refit writes into this copy
    return models


def scored_file(path: Path) -> Path:
    """Six chat requests: people liked the first local model's answers and disliked the second's."""
    good, bad = LOCAL
    rows = [{"prompt": f"Tell me about topic {i}.", "task": "chat",
             "outcomes": {good: {"correct": 1.0}, bad: {"correct": 0.0}}} for i in range(6)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_a_cards_folder_without_a_classifier_is_one_error_line_naming_it_and_the_fix(tmp_path: Path) -> None:
    models = cards_folder(tmp_path, with_classifier=False)
    code, out = router_main("train", "feedback", str(scored_file(tmp_path / "scored.jsonl")), "--models",
                            str(models), "--min-requests", "3")
    assert code == 2, out
    text = " ".join(out.split())
    assert "Traceback" not in out
    assert f"{models / 'classifier'} holds no trained classifier" in text, out
    assert f"router train classifier --out {models / 'classifier'}" in text, out
    assert not (models / "classifier").exists()


def test_paths_with_brackets_print_as_given_and_the_saved_refit_is_reported(tmp_path: Path) -> None:
    """The outcomes and models paths are the user's text, not Rich markup: ``[v2]`` stays and ``[/x]`` (a
    closing tag matching nothing) does not crash the command after the refit was already saved."""
    models = cards_folder(tmp_path / "cards[v2]", with_classifier=True)
    (tmp_path / "runs[").mkdir()
    scored = scored_file(tmp_path / "runs[" / "x].jsonl")  # .../runs[/x].jsonl
    code, out = router_main("train", "feedback", str(scored), "--models", str(models), "--min-requests", "3")
    assert code == 0, out
    text = "".join(out.split())  # the table title may wrap anywhere at the test's terminal width
    assert "refittedfrom" + "".join(str(scored).split()) in text, out
    saved = models / "classifier" / "added_models.json"
    assert "savedto" + "".join(str(saved).split()) in text, out
    assert set(json.loads(saved.read_text())) == set(LOCAL)


@pytest.mark.parametrize(("name", "content"), [("classifier.json", b'{"tasks": ["chat"'),
                                               ("classifier.json", b'{"tasks": ["chat", "poetry"]}'),
                                               ("classifier.onnx", b"not a graph " * 100)],
                         ids=["json", "tasks", "onnx"])
def test_a_corrupt_classifier_is_one_error_line_naming_the_file_and_the_fix(
    tmp_path: Path, name: str, content: bytes
) -> None:
    """As the live router treats it: a configuration error naming the file, not a traceback nor the rules."""
    models = cards_folder(tmp_path, with_classifier=True)
    broken = models / "classifier" / name
    broken.write_bytes(content)
    code, out = router_main("train", "feedback", str(scored_file(tmp_path / "scored.jsonl")), "--models",
                            str(models), "--min-requests", "3")
    assert code == 2, out
    text = " ".join(out.split())
    assert "Traceback" not in out
    assert f"error: {broken}: not a readable trained classifier" in text, out
    assert f"router train classifier --out {models / 'classifier'}" in text, out
    assert not (models / "classifier" / "added_models.json").exists()
    with pytest.raises(ConfigError, match="not a readable trained classifier"):
        load_default_classifier(models)  # what Router() loads
