"""`router energy` on the command line: bad arguments are one clear error (exit 2) before anything is loaded."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from router.cli import app


@pytest.mark.parametrize(
    ("args", "where"),
    [
        (["1000", "--grid", "-100"], "'--grid'"),
        (["1000", "--grid", "nan"], "'--grid'"),
        (["--", "-5"], "'joules'"),
        (["nan"], "'joules'"),
        (["inf"], "'joules'"),
    ],
)
def test_convert_refuses_negative_and_non_finite_figures(args: list[str], where: str) -> None:
    res = CliRunner().invoke(app, ["energy", "convert", *args])
    assert res.exit_code == 2, res.output
    assert f"Invalid value for {where}: a finite number >= 0" in res.output
    assert "Traceback" not in res.output and "phone charges" not in res.output


def test_convert_still_converts() -> None:
    res = CliRunner().invoke(app, ["energy", "convert", "360000", "--grid", "400"])
    assert res.exit_code == 0, res.output
    assert "1 kettle boils" in res.output and "40 g CO2e at 400 g/kWh" in res.output
