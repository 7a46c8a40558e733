"""Tables on stdout keep every cell whole: piped or redirected (no width to fit), a model name prints in full and
every figure is there; on a narrow terminal a name may fold onto several lines, but figures are whole."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from router.cli import app
from router.energy.carbon import format_joules
from router.ledger import LedgerRecord, SQLiteLedger

LONG_NAME = "sentiment-onnx-distilled-multilingual-v2"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture
def ledger(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    led = SQLiteLedger.from_url(url)
    now = time.time()
    for i, (model, joules) in enumerate(((LONG_NAME, 123_456.0), ("qwen2.5-7b-instruct", 98_765.0))):
        led.record(LedgerRecord(f"r{i}", model, "small", joules, "estimated:cpu-time", input_tokens=20,
                                output_tokens=5, latency_ms=4321.0, policy="balanced", ts=now - 3600))
    led.close()
    return url


def run(env: dict[str, str], *args: str) -> str:
    res = CliRunner().invoke(app, list(args), env=env)
    assert res.exit_code == 0, res.output
    return ANSI.sub("", res.stdout)


# COLUMNS as a terminal of 80 and one of 40 would set it: a pipe has no width, whatever the environment says
PIPED = [{"COLUMNS": "80", "TTY_COMPATIBLE": "0"}, {"COLUMNS": "40", "TTY_COMPATIBLE": "0"}]


@pytest.mark.parametrize("env", PIPED, ids=["COLUMNS=80", "COLUMNS=40"])
@pytest.mark.parametrize("command", [["ledger"], ["ledger", "report"]], ids=" ".join)
def test_piped_tables_hold_whole_names_and_every_figure(ledger: str, env: dict[str, str], command: list[str]) -> None:
    """`router ledger | grep sentiment-onnx` found nothing: the name printed as `sentiment-…` at 80 columns."""
    text = run(env, *command, "--ledger", ledger)
    rows = [line for line in text.splitlines() if LONG_NAME in line]
    assert rows, text
    assert format_joules(123_456.0) in rows[0], text
    if command == ["ledger"]:
        assert "4321" in rows[0], text  # the mean latency, the last column


@pytest.mark.parametrize("command", [["ledger"], ["ledger", "report"]], ids=" ".join)
def test_a_narrow_terminal_folds_names_and_keeps_figures(ledger: str, command: list[str]) -> None:
    """At COLUMNS=40 in a terminal the figure columns were empty (or cut to `1…`)."""
    text = run({"COLUMNS": "40", "TTY_COMPATIBLE": "1", "NO_COLOR": "1"}, *command, "--ledger", ledger)
    for figure in (format_joules(123_456.0), format_joules(98_765.0)):
        assert figure in text, text
    if command == ["ledger"]:
        assert text.count("4321") == 3, text  # the mean latency: per model (two rows) and per day (one)
    # the name is there, folded over lines of the table
    assert LONG_NAME in "".join(re.findall(r"│ ([^│ ]+)", text)), text
