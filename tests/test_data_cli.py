"""`router data ...` on the command line: argument mistakes are one clear error, exit 2, before any work."""

from __future__ import annotations

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
