"""Outputs that cannot be written are refused before a command's work starts (exit 2, the option, the path and the
fix), not after a training run, a measurement or an export: `router train`, `router data`, `router ledger`.
`router simulate`'s own cases are in test_simulate_cli.py."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from router.cli import app
from router.ledger import LedgerRecord, SQLiteLedger


@pytest.fixture
def places(tmp_path: Path) -> dict[str, Path]:
    url_file = tmp_path / "ledger.sqlite3"
    led = SQLiteLedger.from_url(f"sqlite:///{url_file}")
    led.record(LedgerRecord("r0", "smollm2-135m", "small", 1.0, "estimated:cpu-time", ts=time.time() - 60))
    led.close()
    (tmp_path / "folder").mkdir()
    (tmp_path / "a-file").write_text("x")
    return {"ledger": url_file, "folder": tmp_path / "folder", "file": tmp_path / "a-file"}


LEDGER = ["ledger", "--ledger", "{ledger}"]
IS_A_FOLDER = "{path} is a folder; fix: name a file"
UNDER_A_FILE = "{file} is a file, so nothing can be made"


def must_not_start(*_args: object, **_kwargs: object) -> None:  # fault injection: the work must not begin
    raise AssertionError("the command's work started before its output was checked")


@pytest.mark.parametrize(("args", "option", "bad", "said"), [
    ([*LEDGER, "export", "-o"], "'-o' / '--output'", "folder", IS_A_FOLDER),
    ([*LEDGER, "export", "-o"], "'-o' / '--output'", "under a file", UNDER_A_FILE),
    ([*LEDGER, "report", "-o"], "'-o' / '--output'", "folder", IS_A_FOLDER),
    ([*LEDGER, "report", "--plot"], "'--plot'", "under a file", UNDER_A_FILE),
    (["data", "from-ledger", "--ledger", "{ledger}", "-o"], "'-o' / '--out'", "under a file", UNDER_A_FILE),
    (["data", "import-routellm", "{file}", "-o"], "'-o' / '--out'", "under a file",
     UNDER_A_FILE),
    (["train", "classifier", "--out"], "'--out'", "file", "{path} is a file; fix: name a folder"),
    (["train", "specialist", "sentiment", "--out"], "'--out'", "under a file",
     UNDER_A_FILE),
])
def test_an_unwritable_output_is_refused_before_the_work(places: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                                         args: list[str], option: str, bad: str, said: str) -> None:
    """`router data import-routellm ... -o notes.txt/out.jsonl` ended in a FileExistsError traceback; `router train
    classifier --out notes.txt` trained for minutes first; `router ledger export -o reports/` said only "Is a
    directory"."""
    for slow in ("router.training.classifier.train_classifier", "router.training.sentiment.train_sentiment",
                 "router.ledger.export.export_csv", "router.training.from_ledger.export_outcomes"):
        monkeypatch.setattr(slow, must_not_start)
    path = {"folder": places["folder"], "file": places["file"], "under a file": places["file"] / "new" / "out"}[bad]
    argv = [a.format(file=places["file"], ledger=f"sqlite:///{places['ledger']}") for a in args] + [str(path)]
    res = CliRunner().invoke(app, argv, env={"COLUMNS": "400"})
    assert res.exit_code == 2, (res.output, res.exception)
    text = " ".join(res.output.split())
    assert f"Invalid value for {option}: {said.format(path=path, file=places['file'])}" in text, text
    assert "fix: " in text and "Traceback" not in text


def test_a_folder_not_writable_is_refused(places: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    real_access = os.access
    # fault injection: the tests may run as root, whom no mode bit stops
    monkeypatch.setattr(os, "access", lambda p, mode: real_access(p, mode) and not (
        Path(p) == places["folder"] and mode & os.W_OK))
    monkeypatch.setattr("router.training.classifier.train_classifier", must_not_start)
    res = CliRunner().invoke(app, ["train", "classifier", "--out", str(places["folder"])], env={"COLUMNS": "400"})
    assert res.exit_code == 2
    assert f"{places['folder']} cannot be written (permission denied)" in " ".join(res.output.split())
