"""Errors every `router` command shares: how a bad option value reads."""

from __future__ import annotations

from typer.testing import CliRunner

from router.cli import app


def test_a_bad_choice_reads_without_pydantics_prefix() -> None:
    res = CliRunner().invoke(app, ["ledger", "report", "--by", "foo"])
    assert res.exit_code == 2, res.output
    assert "Invalid value for '--by': 'foo' is not one of 'model', " in res.output
    assert "Value error" not in res.output


def test_demo_refuses_max_tokens_0_before_loading_anything(monkeypatch) -> None:
    def no_router(*_a: object, **_k: object) -> None:
        raise AssertionError("the router was loaded before --max-tokens was checked")

    monkeypatch.setattr("router.Router", no_router)
    res = CliRunner().invoke(app, ["demo", "--max-tokens", "0"])
    assert res.exit_code == 2, res.output
    assert "Invalid value for '--max-tokens': Input should be greater than or equal to 1" in res.output
