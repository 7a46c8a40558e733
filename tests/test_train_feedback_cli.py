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


def test_requests_with_the_same_prompt_count_each_scored_request(tmp_path: Path) -> None:
    """`router data from-ledger` writes the requests that had the same prompt as one line with their number
    (`requests`); the refit counted each line as one scored request, so six people scoring the same two questions
    were refused as '2 scored requests < --min-requests 5'."""
    from router.ledger import LedgerRecord, open_ledger
    from router.ledger.feedback import Feedback, StoredPrompt

    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    ledger = open_ledger(url)
    for i in range(6):
        rid, prompt = f"chatcmpl-{i}", f"Tell me about topic {i // 4}."  # four ask one question, two another
        ledger.record(LedgerRecord(request_id=rid, model=LOCAL[0], tier="small", energy_j=2.0,
                                   energy_source="measured:cpu-time", output_tokens=9, task="chat"))
        ledger.store_prompt(StoredPrompt(rid, prompt, "[]", "an answer", LOCAL[0], None, 1.0e9 + i))
        ledger.add_feedback(Feedback(request_id=rid, score=1.0 if i < 4 else 0.0))
    ledger.close()
    scored = tmp_path / "scored.jsonl"
    code, out = router_main("data", "from-ledger", "-o", str(scored), "--ledger", url)
    assert code == 0 and len(scored.read_text().splitlines()) == 2, out
    models = cards_folder(tmp_path, with_classifier=True)
    code, out = router_main("train", "feedback", str(scored), "--models", str(models), "--min-requests", "5")
    assert code == 0, out
    assert "not refitted" not in out, out
    row = next(line for line in out.splitlines() if line.startswith(f"│ {LOCAL[0]} "))
    assert [cell.strip() for cell in row.split("│")[3:5]] == ["6", "0.667"], out  # 4 of the 6 liked it
    assert json.loads((models / "classifier" / "added_models.json").read_text())[LOCAL[0]]["from"]["chat"] == \
        "feedback (6)"


def test_stdout_holds_the_results_only_progress_and_errors_go_to_stderr(tmp_path: Path) -> None:
    """`router train feedback ... > results.txt`: the spinner's last frame was written into the results and an
    error went into the file too, leaving the terminal silent on a failed run."""
    from typer.testing import CliRunner

    from router.cli import app

    models = cards_folder(tmp_path, with_classifier=True)
    scored = scored_file(tmp_path / "scored.jsonl")
    args = ["train", "feedback", "--models", str(models), "--min-requests", "3", "--no-save"]
    done = CliRunner().invoke(app, [*args, str(scored)])
    assert done.exit_code == 0, done.output
    assert "refitted from" in done.stdout
    assert "fitting smollm2-135m on chat" in done.stderr  # the spinner's last description
    assert "fitting" not in done.stdout

    failed = CliRunner().invoke(app, [*args, str(tmp_path / "missing.jsonl")])
    assert failed.exit_code == 2, failed.output
    assert failed.stdout == ""
    assert "error:" in failed.stderr and "missing.jsonl" in failed.stderr


def test_an_outcomes_file_with_nothing_scored_says_there_is_nothing_to_refit(tmp_path: Path) -> None:
    """An empty outcomes file printed an empty table, and one below --min-requests the skipped groups only: neither
    said the classifier was left as it was."""
    models = cards_folder(tmp_path, with_classifier=True)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, out = router_main("train", "feedback", str(empty), "--models", str(models))
    text = " ".join(out.split())
    assert code == 0 and "nothing to refit" in text and "holds no scored requests" in text, out
    code, out = router_main("train", "feedback", str(scored_file(tmp_path / "scored.jsonl")), "--models",
                            str(models), "--min-requests", "10")
    text = " ".join(out.split())
    assert code == 0 and "not refitted:" in text and "nothing refitted" in text, out
    assert not (models / "classifier" / "added_models.json").exists()


def test_scores_of_requests_with_tools_do_not_refit_the_models_chat_routing(tmp_path: Path) -> None:
    """Requests with tools are the `tools` task by rule and routed on the cards' priors, the classifier never asked;
    the refit read their scores as chat's (the classifier has no `tools` task), so six disliked tool calls lowered
    the model's P(good answer) on every chat request, while its tool routing stayed as it was."""
    from router.ledger import LedgerRecord, open_ledger
    from router.ledger.feedback import Feedback, StoredPrompt

    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    ledger = open_ledger(url)
    for i in range(6):
        rid, prompt = f"chatcmpl-{i}", f"What is the weather in city {i}?"
        ledger.record(LedgerRecord(request_id=rid, model=LOCAL[0], tier="small", energy_j=2.0,
                                   energy_source="measured:cpu-time", output_tokens=9, task="tools"))
        ledger.store_prompt(StoredPrompt(rid, prompt, "[]", "a tool call", LOCAL[0], None, 1.0e9 + i))
        ledger.add_feedback(Feedback(request_id=rid, score=0.0))
    ledger.close()
    scored = tmp_path / "scored.jsonl"
    code, out = router_main("data", "from-ledger", "-o", str(scored), "--ledger", url)
    assert code == 0 and {json.loads(line)["task"] for line in scored.read_text().splitlines()} == {"tools"}, out
    models = cards_folder(tmp_path, with_classifier=True)
    code, out = router_main("train", "feedback", str(scored), "--models", str(models), "--min-requests", "5")
    text = " ".join(out.split())
    assert code == 0, out
    assert f"not refitted: {LOCAL[0]} / tools (6 scored requests): requests with tools are routed on each card's " \
           "prior_accuracy.tools" in text, out
    assert "nothing refitted" in text and f"│ {LOCAL[0]} " not in out, out
    assert not (models / "classifier" / "added_models.json").exists()
