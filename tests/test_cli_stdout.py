"""`-` as an output file is stdout (text) or refused (a PNG, a model folder), never a file named `-`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from router.cli import app
from router.ledger import SQLiteLedger, StoredPrompt

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # where a file named `-` would land


def test_import_routellm_to_stdout(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["data", "import-routellm", str(ROOT / "data" / "routellm_mmlu" /
                                                                   "mmlu_anatomy.csv"), "-o", "-"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert lines and all("outcomes" in line for line in lines)
    assert f"wrote {len(lines):,} requests from 1 file(s) to stdout" in res.stderr
    assert not (tmp_path / "-").exists()


def test_from_ledger_to_stdout(tmp_path: Path) -> None:
    led = SQLiteLedger(tmp_path / "l.sqlite3")
    led.store_prompt(StoredPrompt("r1", "p", "[]", ts=time.time()))
    led.close()
    res = CliRunner().invoke(app, ["data", "from-ledger", "-o", "-", "--ledger", f"sqlite:///{tmp_path / 'l.sqlite3'}"])
    assert res.exit_code == 0, res.output
    assert res.stdout == ""  # no scored request: no outcome line, and the summary is not mixed into them
    assert "wrote 0 lines (0 scored requests) to stdout" in res.stderr
    assert not (tmp_path / "-").exists()


@pytest.mark.parametrize("command", [["ledger", "report", "--ledger", "sqlite:///x.sqlite3", "--plot", "-"],
                                     ["train", "classifier", "--out", "-"], ["train", "embeddings", "--out", "-"]],
                         ids=lambda c: " ".join(c[:2]))
def test_binary_and_folder_outputs_refuse_stdout(tmp_path: Path, command: list[str]) -> None:
    res = CliRunner().invoke(app, command)
    assert res.exit_code == 2, res.output
    assert "- (stdout):" in res.output and "fix: name a file" in res.output, res.output
    assert not (tmp_path / "-").exists()
