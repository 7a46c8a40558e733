"""Errors every `router` command shares: how a bad option value reads."""

from __future__ import annotations

from typer.testing import CliRunner

from router.cli import app


def test_a_bad_choice_reads_without_pydantics_prefix() -> None:
    res = CliRunner().invoke(app, ["ledger", "report", "--by", "foo"])
    assert res.exit_code == 2, res.output
    assert "Invalid value for '--by': 'foo' is not one of 'model', " in res.output
    assert "Value error" not in res.output
