"""`router data ...` on the command line: argument mistakes are one clear error, exit 2, before any work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from router.cli import app

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "command",
    [
        ["import-routellm", str(ROOT / "data" / "routellm_mmlu" / "mmlu_anatomy.csv")],
        ["import-alpaca-eval", str(ROOT / "data" / "alpaca_eval")],
        ["from-ledger"],
    ],
    ids=lambda c: c[0],
)
def test_an_output_that_is_a_folder_is_refused(tmp_path: Path, command: list[str]) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    res = CliRunner().invoke(app, ["data", *command, "-o", str(folder)])
    assert res.exit_code == 2, res.output
    assert f"Invalid value for '-o' / '--out': file '{folder}' is a directory." in res.output
    assert list(tmp_path.iterdir()) == [folder], "nothing written beside it"


def test_from_ledger_refuses_a_ledger_that_is_not_there(tmp_path: Path) -> None:
    ledger = tmp_path / "none" / "n.sqlite3"
    out = tmp_path / "x.jsonl"
    res = CliRunner().invoke(app, ["data", "from-ledger", "-o", str(out), "--ledger", f"sqlite:///{ledger}"])
    assert res.exit_code == 2, res.output
    assert f"error: no ledger at {ledger}: nothing has been recorded there" in res.output
    assert not ledger.parent.exists() and not out.exists()


def test_from_ledger_with_prompts_only_before_since_says_so(tmp_path: Path) -> None:
    """It said "they are kept only with `prompts: {store: true}`" to an operator whose ledger held prompts, all older
    than --since."""
    import time

    from router.ledger import SQLiteLedger, StoredPrompt

    led = SQLiteLedger(tmp_path / "l.sqlite3")
    led.store_prompt(StoredPrompt("r1", "p", "[]", ts=time.time() - 3 * 86_400))
    led.close()
    res = CliRunner().invoke(app, ["data", "from-ledger", "-o", str(tmp_path / "x.jsonl"), "--since", "1d",
                                   "--ledger", f"sqlite:///{tmp_path / 'l.sqlite3'}"])
    assert res.exit_code == 0, res.output
    assert "no stored prompts since 1d: the ledger holds 1, all older" in res.output


def _config(tmp_path: Path) -> str:
    config = tmp_path / "router.yaml"
    config.write_text(f"ledger_url: sqlite:///{tmp_path / 'ledger.sqlite3'}\n")
    return str(config)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "math"], "Invalid value for '--task': no anchor set for task 'math'; there are: chat, sentiment"),
        ([], "error: chat anchors are scored by a judge model: pass --judge MODEL"),
    ],
    ids=["task", "judge"],
)
def test_measure_checks_its_arguments_before_loading_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    def no_router(*_a: object, **_k: object) -> None:
        raise AssertionError("the router (classifier, models) was loaded before the arguments were checked")

    monkeypatch.setattr("router._router.Router", no_router)
    res = CliRunner().invoke(app, ["data", "measure", "smollm2-135m", *args, "--config", _config(tmp_path)])
    assert res.exit_code == 2 and message in res.output, res.output


def test_measure_into_a_cards_folder_without_a_classifier_is_refused_naming_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A models folder of cards alone routes with the shipped classifier; saving the fitted row would write into the
    shipped models/classifier/ while the user named another folder. Refused before anything loads."""
    from cli_helpers import router_main
    from servers.procs import ROOT

    def no_router(*_a: object, **_k: object) -> None:  # TEST DOUBLE: loading the router (and measuring) is the failure
        raise AssertionError("the router was loaded to measure into a folder without a classifier")

    monkeypatch.setattr("router._router.Router", no_router)
    models = tmp_path / "cards"
    models.mkdir()
    shutil.copy(ROOT / "models" / "smollm2-135m.yaml", models)
    config = tmp_path / "router.yaml"
    config.write_text(f"models_dir: {models}\nledger_url: sqlite:///{tmp_path / 'ledger.sqlite3'}\n")
    shipped_added = ROOT / "models" / "classifier" / "added_models.json"
    before = shipped_added.read_bytes() if shipped_added.exists() else None
    code, out = router_main("data", "measure", "smollm2-135m", "--task", "sentiment", "--anchors", "2",
                            "--config", str(config))
    assert code == 2, out
    text = " ".join(out.split())
    assert f"{models / 'classifier'} holds no trained classifier" in text, out
    assert f"router train classifier --out {models / 'classifier'}" in text, out
    assert (shipped_added.read_bytes() if shipped_added.exists() else None) == before
    assert not (models / "classifier").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["router", "--task", "sentiment"], "error: unknown model 'router'; use one of: "),
        (["smollm2-135m", "--judge", "nosuch"], "Invalid value for '--judge': unknown model 'nosuch'; use one of: "),
    ],
    ids=["model", "judge"],
)
def test_measure_names_the_cards_it_can_measure(tmp_path: Path, args: list[str], message: str) -> None:
    res = CliRunner().invoke(app, ["data", "measure", *args, "--anchors", "2", "--no-save",
                                   "--config", _config(tmp_path)])
    assert res.exit_code == 2 and message in res.output, res.output
    assert "'router:<policy>'" not in res.output and "anchors" not in res.output.split("unknown model")[0]


def test_measure_local_help_shows_the_real_defaults_and_n_0_is_refused() -> None:
    res = CliRunner().invoke(app, ["data", "measure-local", "--help"])
    text = " ".join(res.output.split())  # the help is wrapped to the terminal
    assert res.exit_code == 0 and "(default: 200 sentiment, 60 math, every chat item)" in text
    assert "default: 0" not in text
    res = CliRunner().invoke(app, ["data", "measure-local", "sentiment", "--n", "0"])
    assert res.exit_code == 2 and "Invalid value for '--n'" in res.output, res.output


def test_from_ledger_refuses_to_write_the_outcomes_over_the_ledger(tmp_path: Path) -> None:
    """`-o` naming the ledger itself truncated it to an empty file: every record of the ledger was lost."""
    from router.ledger import SQLiteLedger, StoredPrompt

    ledger = tmp_path / "l.sqlite3"
    led = SQLiteLedger(ledger)
    led.store_prompt(StoredPrompt("r1", "p", "[]"))
    led.close()
    before = ledger.read_bytes()
    res = CliRunner().invoke(app, ["data", "from-ledger", "-o", str(ledger), "--ledger", f"sqlite:///{ledger}"])
    assert res.exit_code == 2, res.output
    assert f"Invalid value for '-o' / '--out': {ledger} is the ledger the requests are read from" in res.output
    assert ledger.read_bytes() == before


def test_measure_local_writes_where_out_says_and_leaves_the_shipped_outcomes(tmp_path: Path) -> None:
    """`measure-local` had no --out: a trial run (`--n 1`) replaced the project's 200 measured sentiment outcomes
    in data/outcomes/, which `router train classifier` reads. --out puts a run in a file of its own."""
    shipped = Path(__file__).resolve().parents[1] / "data" / "outcomes" / "sentiment_local.jsonl"
    before = shipped.read_bytes()
    out = tmp_path / "trial.jsonl"
    res = CliRunner().invoke(app, ["data", "measure-local", "sentiment", "--n", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert f"wrote {out}" in " ".join(res.output.split()) and "rerun `router train classifier`" not in res.output
    (line,) = out.read_text().splitlines()
    assert json.loads(line)["task"] == "sentiment"
    assert shipped.read_bytes() == before
