"""`router energy` on the command line: bad arguments are one clear error (exit 2) before anything is loaded."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import router_main
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


@pytest.mark.parametrize(
    ("joules", "sentence"),
    [
        ("0", "0 J (0 kWh) ≈ 0 phone charges ≈ 0 kettle boils; 0 g CO2e"),
        ("1e-15", "1e-15 J (2.78e-22 kWh) ≈ 2.06e-20 phone charges"),
        ("1e-12", "1 pJ (2.78e-19 kWh)"),
        ("1e-9", "1 nJ (2.78e-16 kWh)"),  # was "1e-06 mJ", which reads as a millionth of a joule
        ("2.5e-6", "2.5 µJ (6.94e-13 kWh)"),
        ("1e-3", "1 mJ (2.78e-10 kWh)"),
        ("1", "1 J (2.78e-07 kWh) ≈ 2.06e-05 phone charges ≈ 2.78e-06 kettle boils; 0.000132 g CO2e"),
        ("1e3", "1 kJ (0.000278 kWh) ≈ 0.0206 phone charges ≈ 0.00278 kettle boils; 0.132 g CO2e"),
        ("1e6", "1 MJ (0.278 kWh) ≈ 20.6 phone charges ≈ 2.78 kettle boils; 132 g CO2e"),
        ("1e9", "1 GJ (278 kWh) ≈ 20,600 phone charges ≈ 2,780 kettle boils; 132,000 g CO2e"),  # not 2.06e+04
        ("1e12", "1 TJ (278,000 kWh) ≈ 20,600,000 phone charges ≈ 2,780,000 kettle boils; 132,000,000 g CO2e"),
        ("1e15", "1 PJ (278,000,000 kWh) ≈ 2.06e+10 phone charges"),  # was "1e+03 TJ"
        ("1e18", "1 EJ (2.78e+11 kWh)"),
        ("1e30", "1e+30 J (2.78e+23 kWh) ≈ 2.06e+25 phone charges ≈ 2.78e+24 kettle boils; 1.32e+26 g CO2e"),
        ("1e300", "1e+300 J (2.78e+293 kWh)"),
    ],
)
def test_convert_prints_every_magnitude_in_a_unit_that_reads_right(joules: str, sentence: str) -> None:
    res = CliRunner().invoke(app, ["energy", "convert", joules], env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    assert res.output.startswith(sentence), res.output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read the prompts file: No such file or directory"),
        ("", "0 prompt(s); a profile fits 3 coefficients, so it needs at least 3"),
        ('{"id": 1, "prompt": "a"}\n{"id": 2, "prompt": "b"}\n', "2 prompt(s)"),
        ('{"id": 1, "prompt": "a"}\n{oops\n', ":2: not valid JSON"),
        ('{"id": 1}\n', ":1: each line must be a JSON object with `id` and `prompt`"),
        ('{"id": 1, "prompt": "a", "max_tokens": "x"}\n', ":1: `max_tokens` must be a positive integer"),
    ],
)
def test_profile_checks_the_prompts_file_before_loading_a_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str | None, message: str
) -> None:
    def no_model(*_a: object, **_k: object) -> None:
        raise AssertionError("a model card or backend was loaded before the prompts file was checked")

    monkeypatch.setattr("router.cards.load_cards", no_model)
    monkeypatch.setattr("router.backends.create_backend", no_model)
    file = tmp_path / "p.jsonl"
    if content is not None:
        file.write_text(content)
    code, out = router_main("energy", "profile", "sentiment-onnx", "--dry-run", "--prompts-file", str(file))
    assert code == 2, out
    assert out.startswith(f"error: {file}") and message in out, out
    assert "Traceback" not in out


def test_profile_says_a_prompts_folder_is_a_folder(tmp_path: Path) -> None:
    code, out = router_main("energy", "profile", "sentiment-onnx", "--dry-run", "--prompts-file", str(tmp_path))
    assert code == 2 and f"error: {tmp_path}: cannot read the prompts file: is a folder" in out, out


def test_meters_states_the_cpu_time_figures_once(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["energy", "meters"])
    text = " ".join(res.output.split())
    assert res.exit_code == 0, res.output
    assert text.count("W per busy core") == 1
    assert "CPU-time model: 15 W per busy core + 2 W idle share (assumed:" in text
    config = tmp_path / "router.yaml"
    config.write_text("cpu_power: {watts_per_busy_core: 9.5}\n")
    res = CliRunner().invoke(app, ["energy", "meters", "--config", str(config)])
    text = " ".join(res.output.split())
    assert "CPU-time model: 9.5 W per busy core + 2 W idle share" in text and "15 W" not in text, text


def test_profile_errors_go_to_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """"no model card" and "remote model" were printed on stdout, where a pipe takes them for the profile."""
    (tmp_path / "hosted.yaml").write_text(
        "name: hosted\ntier: large\nbackend:\n  type: openai\n  base_url: http://127.0.0.1:9/v1\n  model: m\n"
        "  api_key_env: ROUTER_TEST_KEY_VAR\ncontext_length: 8192\n"
        "energy: {per_call_j: 1, source: estimate, citation: test}\n")
    monkeypatch.setenv("ROUTER_TEST_KEY_VAR", "sk-test")
    for model, message in (("nosuch", "no model card 'nosuch'"), ("hosted", "hosted is a remote model")):
        res = CliRunner().invoke(app, ["energy", "profile", model, "--dry-run", "--models-dir", str(tmp_path)])
        assert res.exit_code == 2, res.output
        assert message in " ".join(res.stderr.split()) and res.stdout == "", (res.stdout, res.stderr)


def test_names_with_square_brackets_print_as_they_are(tmp_path: Path) -> None:
    """A model name or folder is text, not Rich markup: `[v2]` vanished from the message and `[/x]` crashed it."""
    models = tmp_path / "cards[v2]"
    models.mkdir()
    for model in ("nosuch[v2]", "a[/x]"):
        res = CliRunner().invoke(app, ["energy", "profile", model, "--dry-run", "--models-dir", str(models)])
        assert res.exit_code == 2, res.output
        said = " ".join(res.stderr.split())
        assert f"no model card {model!r} in {models}" in said, said


def test_profile_progress_bar_stays_off_stdout() -> None:
    """The bar was drawn on stdout: `router energy profile MODEL > profile.txt` kept its last frame in the file."""
    res = CliRunner().invoke(app, ["energy", "profile", "sentiment-onnx", "--dry-run", "--prompts", "3"])
    assert res.exit_code == 0, res.output
    assert "J per call" in res.stdout and "dry run: card not changed" in res.stdout, res.stdout
    assert "3/3" not in res.stdout and "sentiment-onnx ━" not in res.stdout, res.stdout
