"""`router ledger` and its report/export/prune commands on a real SQLite ledger and the shipped cards."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import router_main
from typer.testing import CliRunner

from router.batch.store import default_store_url
from router.cards import load_cards
from router.cli import app
from router.cli.ledger import _savings_sentence
from router.cli.when import parse_when
from router.energy.carbon import format_joules
from router.ledger import LedgerRecord, SQLiteLedger, StoredPrompt
from router.ledger.base import SummaryRow

ROOT = Path(__file__).resolve().parent.parent
NOW = time.time()


@pytest.fixture
def ledger(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    led = SQLiteLedger.from_url(url)
    # hours before now, not before the module's import: a test run half an hour after collection (a loaded
    # runner) found the 1-hour-old record past a 1.44-hour retention
    now = time.time()
    rows = [
        # (model, tier, joules, in, out, outcome, hours ago)
        ("sentiment-onnx", "specialist", 0.01, 20, 1, "ok", 30),
        ("smollm2-135m", "small", 4.0, 30, 20, "ok", 26),
        ("smollm2-135m", "small", 3.0, 40, 10, "escalated", 2),
        ("gemma3-270m", "large", 20.0, 40, 30, "ok", 2),
        ("smollm2-135m", "small", 0.5, 10, 0, "error", 1),
    ]
    for i, (m, tier, j, tin, tout, outcome, ago) in enumerate(rows):
        led.record(LedgerRecord(f"r{i}", m, tier, j, "estimated:cpu-time", outcome=outcome,  # type: ignore[arg-type]
                                input_tokens=tin, output_tokens=tout, latency_ms=100.0, policy="balanced",
                                ts=now - ago * 3600))  # fmt: skip
    led.close()
    return url


def run(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    return result.output


def test_ledger_alone_prints_model_and_day_totals_with_equivalents(ledger: str) -> None:
    out = run("ledger", "--ledger", ledger)
    assert "Per model" in out and "Per day" in out
    assert "smollm2-135m" in out and "gemma3-270m" in out
    assert "phone charges" in out and "kettle boils" in out and "g CO2e" in out


def test_ledger_co2e_is_what_the_records_carry(tmp_path: Path) -> None:
    """`router ledger` computed CO2e as joules x the static 475 g/kWh, disagreeing with the records (each at its
    zone's intensity when it ran) and with `router ledger report`'s carbon tables."""
    url = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    led = SQLiteLedger.from_url(url)
    for i, (joules, g_per_kwh) in enumerate(((3.6e6, 200.0), (3.6e6, 100.0))):  # 1 kWh each
        led.record(LedgerRecord(f"r{i}", "smollm2-135m", "small", joules, "estimated:cpu-time", co2e_g=g_per_kwh,
                                grid_g_per_kwh=g_per_kwh, zone="US-CAL", ts=NOW - 3600))
    led.close()
    out = run("ledger", "--ledger", url)
    model_row = next(line for line in out.splitlines() if "smollm2-135m" in line)
    assert model_row.split("│")[6].strip() == "300", model_row  # the records' 200 + 100, not 2 kWh x 475
    assert "300 g CO2e at 150 g/kWh (the records' own: each one's zone and hour, PUE included)" in out
    report = run("ledger", "report", "--ledger", url)
    assert "300 g CO2e at 150 g/kWh (the records' own: each one's zone and hour, PUE included)" in report


def test_report_counterfactual_is_the_large_profile_for_answered_requests(ledger: str) -> None:
    out = run("ledger", "report", "--ledger", ledger, "--format", "csv")
    rows = {r["model"]: r for r in csv.DictReader(io.StringIO(out))}
    p = load_cards(ROOT / "models")["gemma3-270m"].energy
    # answered by small models: the large profile on their tokens; escalated and error rows: nothing;
    # answered by the large model itself: what it really used
    expected = (
        (p.per_call_j + 20 * p.per_input_token_j + 1 * p.per_output_token_j)
        + (p.per_call_j + 30 * p.per_input_token_j + 20 * p.per_output_token_j)
        + 20.0
    )
    total = rows["total"]
    assert float(total["counterfactual_j"]) == pytest.approx(expected)
    assert float(total["energy_j"]) == pytest.approx(27.51)
    assert float(total["saved_j"]) == pytest.approx(expected - 27.51)
    assert int(total["requests"]) == 5 and int(total["errors"]) == 1


def test_report_csv_figures_are_rounded_plain_numbers(tmp_path: Path) -> None:
    """Sums of float joules came out as 0.30000000000000004 and 12.239999999999998 (and a measured share as
    0.6666666666666666); every float is 6 significant digits now, still a plain number without a unit."""
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    led = SQLiteLedger.from_url(url)
    for i, (joules, source) in enumerate(((0.1, "estimated:cpu-time"), (0.2, "measured:rapl"))):
        led.record(LedgerRecord(f"r{i}", "smollm2-135m", "small", joules, source, input_tokens=3, output_tokens=7,
                                latency_ms=100.1 + i * 0.1, co2e_g=joules))
    led.record(LedgerRecord("r2", "gemma3-270m", "large", 1234567.89, "measured:rapl", co2e_g=1e-7))
    led.close()
    rows = {r["model"]: r for r in csv.DictReader(io.StringIO(run("ledger", "report", "--ledger", url,
                                                                  "--format", "csv")))}
    small = rows["smollm2-135m"]
    assert [small[k] for k in ("energy_j", "co2e_g", "mean_latency_ms", "measured_share")] == [
        "0.3", "0.3", "100.15", "0.666667"], small
    assert float(small["saved_j"]) == pytest.approx(float(small["counterfactual_j"]) - 0.3, rel=1e-5)
    assert len(small["saved_j"].replace("-", "").replace(".", "").lstrip("0")) <= 6, small
    large = rows["gemma3-270m"]
    assert (large["energy_j"], large["co2e_g"], large["requests"]) == ("1234570", "1e-07", "1"), large
    assert rows["total"]["energy_j"] == "1234570", rows["total"]


def test_counts_of_one_read_in_the_singular(ledger: str) -> None:
    """`router ledger prune` and `retention` said "pruned 1 records older than 1 days"."""
    assert "pruned 1 record older than " in run("ledger", "prune", "--ledger", ledger, "--older-than", "27h")
    out = run("ledger", "retention", "--ledger", ledger, "1")
    assert "pruned 1 record older than 1 day\n" in out and "retention: 1 day\n" in out, out


def test_the_report_says_when_routing_cost_more_than_the_counterfactual(ledger: str) -> None:
    """The footer used to print "Saved ...: 0 J" for a negative saving (the table beside it said -2.3 J)."""
    led = SQLiteLedger.from_url(ledger)  # a small model that took far more than the large card's profile
    led.record(LedgerRecord("r9", "smollm2-135m", "small", 500.0, "measured:rapl", input_tokens=10, output_tokens=5))
    led.close()
    rows = csv.DictReader(io.StringIO(run("ledger", "report", "--ledger", ledger, "--format", "csv")))
    saved = float(next(r for r in rows if r["model"] == "total")["saved_j"])
    assert saved < 0
    table = run("ledger", "report", "--ledger", ledger)
    assert f"Routing used more than always gemma3-270m would have (estimate): {format_joules(-saved)}" in table
    assert _savings_sentence(5.0, "big", 475).startswith("Saved against always big (estimate): 5 J")


def test_report_formats(ledger: str, tmp_path: Path) -> None:
    table = run("ledger", "report", "--ledger", ledger, "--by", "tier")
    assert "Energy by tier" in table and "saved (est.)" in table and "estimate against always calling" in table
    data = json.loads(run("ledger", "report", "--ledger", ledger, "--format", "json", "--since", "3h"))
    assert data["total"]["requests"] == 3 and data["counterfactual_model"] == "gemma3-270m"
    assert data["equivalents"]["phone_charges"] > 0
    html_file, png = tmp_path / "r.html", tmp_path / "r.png"
    run("ledger", "report", "--ledger", ledger, "--format", "html", "-o", str(html_file), "--plot", str(png))
    assert "data:image/png;base64," in html_file.read_text()
    # the first column says what it groups by, as the table's and the CSV's do (the page said "group")
    assert "<thead><tr><th>model</th>" in html_file.read_text()
    run("ledger", "report", "--ledger", ledger, "--by", "key", "--format", "html", "-o", str(html_file))
    assert "<thead><tr><th>key</th>" in html_file.read_text()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_groups_since_applies_to_report_and_export(ledger: str, tmp_path: Path) -> None:
    """``router ledger --since 3h report`` used to report every record (only the group's own table read it)."""
    data = json.loads(run("ledger", "--ledger", ledger, "--since", "3h", "report", "--format", "json"))
    assert data["total"]["requests"] == 3
    out = tmp_path / "x.csv"
    run("ledger", "--ledger", ledger, "--since", "3h", "export", "-o", str(out))
    assert [r["request_id"] for r in csv.DictReader(out.open())] == ["r2", "r3", "r4"]
    assert "No records since" in run("ledger", "--ledger", ledger, "--since", "30m")


def test_the_groups_since_before_a_command_that_reads_no_range_is_a_usage_error(ledger: str) -> None:
    """``router ledger --since 1h prompts delete --all`` deleted every stored prompt (and ``--since 1h prune
    --older-than 1d`` pruned by --older-than alone): the group's --since went unread. Now it is refused, naming the
    command's own option, and nothing is deleted."""
    led = SQLiteLedger.from_url(ledger)
    led.store_prompt(StoredPrompt("r0", "p", "[]", ts=NOW - 7200))
    led.close()
    for command, own in ((["prompts", "delete", "--all"], "--before"), (["prompts", "count"], "--before"),
                         (["prune", "--older-than", "1h"], "--older-than"), (["budgets"], "current window"),
                         (["doctor"], "whole ledger"), (["retention"], "number of days")):
        code, said = router_main("ledger", "--ledger", ledger, "--since", "1h", *command)
        assert code == 2 and "--since" in said and f"not to {command[0]}" in said and own in said, (command, said)
    led = SQLiteLedger.from_url(ledger)
    assert led.prompt_summary()[0] == 1 and len(led.records()) == 5
    led.close()


def test_times_and_lengths_that_are_not_are_refused(ledger: str) -> None:
    """NaN, infinite and far-future times, an empty range and a zero window: a usage error, not a traceback."""
    for args in (["report", "--since", "nan"], ["report", "--since", "inf"],
                 ["report", "--since", "1d", "--until", "2d"], ["report", "--window", "0h"],
                 ["prune", "--older-than", "nan"], ["export", "-o", "x.csv", "--until", "1e20"],
                 ["prompts", "delete", "--before", "1e20"]):
        result = CliRunner().invoke(app, ["ledger", *args, "--ledger", ledger], env={"COLUMNS": "200"})
        assert result.exit_code == 2 and "Invalid value" in result.output, (args, result.output)


def test_a_report_until_a_date_names_that_date_in_its_title(ledger: str, tmp_path: Path) -> None:
    """`router ledger report --until 1d` (the records before yesterday) was titled "Energy by model", as a report of
    every record is, in the table and the HTML page; the title now says "until" and the date."""
    until = parse_when("1d")
    assert until is not None
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(until))
    out = " ".join(run("ledger", "report", "--ledger", ledger, "--until", str(int(until))).split())
    assert f"Energy by model, until {when}" in out and "│ total │ 2 │" in out, out
    page = tmp_path / "r.html"
    run("ledger", "report", "--ledger", ledger, "--until", str(int(until)), "-o", str(page))
    assert f"<h1>Energy by model, until {when}</h1>" in page.read_text(), page.read_text()


def test_doctor_refuses_a_journal_folder_that_is_not_there(ledger: str, tmp_path: Path) -> None:
    """`router ledger doctor --journal <a mistyped folder>` said "journal ...: nothing pending" and "no problems"
    (exit 0) while the ledger's real journal held records of a stopped process, never replayed. A --journal that
    is not a folder is now a usage error naming the ledger's own journal folder, and nothing is created."""
    from router.ledger.journal import encode

    journal = tmp_path / "ledger.sqlite3.journal"
    journal.mkdir()
    (journal / "j-h-424242-1.jsonl").write_bytes(encode(LedgerRecord("late", "m", "small", 2.0, "e:x")))
    typo = tmp_path / "ledger.sqlite3.jornal"
    for given in (typo, tmp_path / "ledger.sqlite3"):  # no such folder; a file
        code, said = router_main("ledger", "doctor", "--ledger", ledger, "--journal", str(given))
        said = " ".join(said.split())
        assert code == 2, said
        assert f"--journal {given} is not a folder" in said and f"this ledger's own ({journal})" in said, said
    assert not typo.exists()
    code, said = router_main("ledger", "doctor", "--ledger", ledger, "--journal", str(journal))
    assert code == 0 and "replayed 1 journaled records" in said, said


def test_export_csv_and_parquet(ledger: str, tmp_path: Path) -> None:
    out_csv = tmp_path / "x.csv"
    run("ledger", "export", "--ledger", ledger, "--format", "csv", "-o", str(out_csv))
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["request_id"] for r in rows] == ["r0", "r1", "r2", "r3", "r4"]
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow not installed: Parquet export unavailable")
    out_pq = tmp_path / "x.parquet"
    run("ledger", "export", "--ledger", ledger, "--format", "parquet", "-o", str(out_pq))
    table = pq.read_table(out_pq)
    assert table.num_rows == 5 and table.column("energy_j").to_pylist()[3] == 20.0


def test_export_and_report_make_the_folder_their_output_file_goes_in(ledger: str, tmp_path: Path) -> None:
    """`router ledger export -o reports/x.csv` failed "No such file or directory" where `report -o` made the
    folder: both make it now (CSV and Parquet), as the real command runs."""
    code, said = router_main("ledger", "export", "--ledger", ledger, "-o", str(tmp_path / "new" / "x.csv"))
    assert code == 0 and "wrote 5 records" in said, said
    assert len(list(csv.DictReader((tmp_path / "new" / "x.csv").open()))) == 5
    report = tmp_path / "other" / "deeper" / "r.json"
    code, said = router_main("ledger", "report", "--ledger", ledger, "-o", str(report))
    assert code == 0 and json.loads(report.read_text())["total"]["requests"] == 5, said
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow not installed: Parquet export unavailable")
    code, said = router_main("ledger", "export", "--ledger", ledger, "-o", str(tmp_path / "pq" / "x.parquet"))
    assert code == 0 and pq.read_table(tmp_path / "pq" / "x.parquet").num_rows == 5, said


def test_the_output_files_ending_picks_the_format_where_format_is_not_given(ledger: str, tmp_path: Path) -> None:
    """`router ledger export -o ledger.parquet` wrote CSV into ledger.parquet, and `router ledger report -o r.csv`
    (or .json, .html) a text table: the format was --format's default whatever the file was named."""
    run("ledger", "report", "--ledger", ledger, "-o", str(tmp_path / "r.json"))
    assert json.loads((tmp_path / "r.json").read_text())["total"]["requests"] == 5
    run("ledger", "report", "--ledger", ledger, "-o", str(tmp_path / "r.CSV"))
    rows = list(csv.DictReader((tmp_path / "r.CSV").open()))
    assert rows[0]["model"] and len(rows) == 4, "three models and the total"
    run("ledger", "report", "--ledger", ledger, "-o", str(tmp_path / "r.htm"))
    assert (tmp_path / "r.htm").read_text().lstrip().startswith("<")
    run("ledger", "report", "--ledger", ledger, "-o", str(tmp_path / "r.txt"))
    assert "┃" in (tmp_path / "r.txt").read_text(), "an ending that names no format: the table"
    run("ledger", "report", "--ledger", ledger, "-f", "table", "-o", str(tmp_path / "table.csv"))
    assert "┃" in (tmp_path / "table.csv").read_text(), "--format given wins"
    run("ledger", "export", "--ledger", ledger, "-o", str(tmp_path / "x.csv"))
    assert len(list(csv.DictReader((tmp_path / "x.csv").open()))) == 5
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow not installed: Parquet export unavailable")
    out = run("ledger", "export", "--ledger", ledger, "-o", str(tmp_path / "x.parquet"))
    assert "(parquet)" in out and pq.read_table(tmp_path / "x.parquet").num_rows == 5


def test_a_dash_as_the_output_is_stdout(ledger: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`-o -` wrote a file named '-' in the working folder and nothing on stdout, where a pipe waited for it."""
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["ledger", "export", "--ledger", ledger, "-o", "-"])
    assert res.exit_code == 0, res.output
    assert [r["request_id"] for r in csv.DictReader(io.StringIO(res.stdout))] == ["r0", "r1", "r2", "r3", "r4"]
    assert "wrote 5 records to stdout (csv)" in res.stderr, res.stderr
    res = CliRunner().invoke(app, ["ledger", "report", "--ledger", ledger, "-f", "json", "-o", "-"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["total"]["requests"] == 5
    res = CliRunner().invoke(app, ["ledger", "export", "--ledger", ledger, "-f", "parquet", "-o", "-"])
    assert res.exit_code == 2 and "Parquet is written to a file" in " ".join(res.stderr.split()), res.output
    assert not (tmp_path / "-").exists()


def test_prune_and_retention(ledger: str) -> None:
    assert "pruned 2 records" in run("ledger", "prune", "--ledger", ledger, "--older-than", "1d")
    assert "retention: keep everything" in run("ledger", "retention", "--ledger", ledger)
    out = run("ledger", "retention", "--ledger", ledger, "0.06")  # 1.44 hours: the two 2-hour-old records go
    assert "pruned 2 records" in out and "retention: 0.06 days" in out


def test_a_prune_cut_off_in_the_future_is_refused_unless_forced(ledger: str) -> None:
    """`router ledger prune --older-than 2099-01-01` (a date typed for a --since, a year mistyped) deleted every
    record without a word, those budgets and reports rely on too. A cut-off in the future is now a usage error
    saying how many records it would delete, and `--force` deletes them, saying so."""
    for future in ("2099-01-01", str(NOW + 3600)):
        result = CliRunner().invoke(app, ["ledger", "prune", "--ledger", ledger, "--older-than", future],
                                    env={"COLUMNS": "200"})
        assert result.exit_code == 2, result.output
        said = " ".join(result.output.split())
        assert "in the future" in said and "would delete 5 records" in said and "--force" in said, said
    assert len(_records(ledger)) == 5, "nothing was deleted"
    result = CliRunner().invoke(app, ["ledger", "prune", "--ledger", ledger, "--older-than", "2099-01-01", "--force"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "pruning 5 records older than 2099-01-01 00:00 UTC" in said, said
    assert "pruned 5 records older than 2099-01-01 00:00 UTC" in said and "in the future" in said, said
    assert _records(ledger) == []


def test_a_prune_says_how_many_records_it_deletes_before_it_deletes_them(ledger: str) -> None:
    result = CliRunner().invoke(app, ["ledger", "prune", "--ledger", ledger, "--older-than", "1d"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "pruning 2 records older than" in result.stderr and "pruned 2 records" in result.stdout, result.output
    assert len(_records(ledger)) == 3


def _records(url: str) -> list[LedgerRecord]:
    led = SQLiteLedger.from_url(url)
    try:
        return list(led.records())
    finally:
        led.close()


def test_a_retention_that_is_not_a_number_of_days_is_refused(ledger: str) -> None:
    for bad in ("nan", "inf", "0", "-3", "1e300"):
        result = CliRunner().invoke(app, ["ledger", "retention", "--ledger", ledger, "--", bad], env={"COLUMNS": "200"})
        assert result.exit_code == 2 and "give a number of days above 0" in result.output, (bad, result.output)
    assert "retention: keep everything" in run("ledger", "retention", "--ledger", ledger)


def test_retention_days_and_off_together_is_a_usage_error(ledger: str) -> None:
    run("ledger", "retention", "--ledger", ledger, "30")
    for args in (["5", "--off"], ["--off", "5"]):
        result = CliRunner().invoke(app, ["ledger", "retention", "--ledger", ledger, *args], env={"COLUMNS": "200"})
        assert result.exit_code == 2, (args, result.output)
        assert "give either a number of days or --off, not both" in result.output, (args, result.output)
    assert "retention: 30 days" in run("ledger", "retention", "--ledger", ledger), "neither was applied"


def test_parse_when() -> None:
    assert parse_when("7d", now=1_000_000.0) == 1_000_000.0 - 7 * 86400
    assert parse_when("90m", now=10_000.0) == 10_000.0 - 5400
    assert parse_when("2024-05-01") == 1714521600.0
    assert parse_when("1714521600") == 1714521600.0
    assert parse_when("20240501") == parse_when(" 20240501 ") == 1714521600.0, "a compact date, not 1970's seconds"
    assert parse_when("20241301") == 20241301.0  # not a date: seconds, as any other number
    assert parse_when(None) is None


def test_reading_a_ledger_that_is_not_there_says_so_and_creates_nothing(tmp_path: Path) -> None:
    """A mistyped --ledger used to open (and create, folders too) an empty ledger and report 0 J as if nothing
    had been routed; setting a retention on a ledger not written yet still creates it."""
    missing = tmp_path / "typo" / "ledger.sqlite3"
    url = f"sqlite:///{missing}"
    for args in (["ledger", "--ledger", url], ["ledger", "report", "--ledger", url],
                 ["ledger", "export", "--ledger", url, "-o", str(tmp_path / "out.csv")],
                 ["ledger", "prune", "--older-than", "30d", "--ledger", url], ["ledger", "retention", "--ledger", url]):
        result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
        assert result.exit_code == 2, (args, result.output)
        assert f"no ledger at {missing}" in result.output and "router demo" in result.output
        assert not (tmp_path / "typo").exists()
    result = CliRunner().invoke(app, ["ledger", "retention", "30", "--ledger", url], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "retention: 30 days" in result.output and missing.exists()


def test_a_mistyped_ledger_url_or_path_is_refused_and_creates_nothing(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain path that is not there, and `sqlite:` with one or two slashes, used to open (and create) an empty
    ledger named after the URL and report "No records yet" (or, for two slashes, an "unexpected ValueError")."""
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "typo" / "ledger.sqlite3"
    for url, message in ((str(missing), f"no ledger at {missing}"),
                         (f"sqlite:{missing}", "not a SQLite ledger URL; fix: write sqlite:///PATH"),
                         ("sqlite://ledger.sqlite3", "not a SQLite ledger URL; fix: write sqlite:///PATH")):
        for args in (["ledger", "--ledger", url], ["ledger", "report", "--ledger", url],
                     ["ledger", "export", "--ledger", url, "-o", str(tmp_path / "out.csv")],
                     ["ledger", "doctor", "--ledger", url]):
            result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
            assert result.exit_code == 2 and message in result.output, (args, result.output)
            assert list(tmp_path.iterdir()) == [], (args, "nothing created")


def test_one_ledger_however_its_url_is_written_is_read_with_its_journal_and_batches_beside_it(
        ledger: str, tmp_path: Path) -> None:
    """Whether a URL meant SQLite was decided in several places that disagreed: ``SQLITE:///PATH`` was taken for
    SQLite when the store was picked, then refused as "not a SQLite ledger URL; fix: write sqlite:///PATH", and
    the journal and the default batch store went to the user data dir instead of beside the file."""
    path = tmp_path / "ledger.sqlite3"
    for url in (ledger, f"SQLITE:///{path}", f"Sqlite:///{path}?durable=0", str(path)):
        assert "gemma3-270m" in run("ledger", "--ledger", url)
        assert f"journal {path}.journal: nothing pending" in run("ledger", "doctor", "--ledger", url)
        assert default_store_url(url) == f"sqlite:///{tmp_path / 'batches.sqlite3'}"


def test_report_and_export_refuse_to_write_over_the_ledger_they_read(ledger: str, tmp_path: Path) -> None:
    """`export -o` (or `report -o`/`--plot`) naming the ledger file itself truncated it: every record was lost."""
    path = tmp_path / "ledger.sqlite3"
    (tmp_path / "alias.sqlite3").symlink_to(path)
    for args in (["export", "-o", str(path)], ["export", "-f", "parquet", "-o", str(tmp_path / "alias.sqlite3")],
                 ["report", "-f", "csv", "-o", str(path)], ["report", "--plot", str(path)]):
        result = CliRunner().invoke(app, ["ledger", *args, "--ledger", ledger], env={"COLUMNS": "200"})
        assert result.exit_code == 2, (args, result.output)
        assert "is the ledger's own file" in result.output and "give another file" in result.output, result.output
    led = SQLiteLedger(path)
    assert [r.request_id for r in led.records(0)] == ["r0", "r1", "r2", "r3", "r4"]
    led.close()


def test_a_ledger_path_with_square_brackets_prints_as_it_is(tmp_path: Path) -> None:
    """`[v2]` in the ledger's path is text, not Rich markup (it vanished from "No records yet in ...")."""
    folder = tmp_path / "runs[v2]"
    folder.mkdir()
    ledger = folder / "ledger.sqlite3"
    SQLiteLedger(ledger).close()
    assert f"No records yet in {ledger}" in " ".join(run("ledger", "--ledger", str(ledger)).split())


def test_totals_and_report_read_the_summary_summed_over_what_they_do_not_show(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hourly summary keeps a row per key, policy and task: with many keys it holds about a row per record
    (1.37 million rows for 1.5 million records over 90 days), and `router ledger` and `router ledger report`
    read every one into Python (1.4 GB, where the store can sum them to a row per model, outcome and source)."""
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    led = SQLiteLedger.from_url(url)
    hour = (NOW // 3600 - 3) * 3600  # a whole hour: read from the stored summary
    keys = 40
    led.record_many([
        LedgerRecord(f"r{i}", "smollm2-135m", "small", 2.0, "estimated:cpu-time", input_tokens=10, output_tokens=5,
                     key_hash=f"key-{i:02d}", policy=("eco", "balanced")[i % 2], task=("qa", "chat")[i % 2],
                     co2e_g=0.1, ts=hour + 60 + i)
        for i in range(keys)
    ])  # fmt: skip
    led.close()
    read: list[int] = []
    summary = SQLiteLedger.summary

    def counted(self: SQLiteLedger, *args: Any, **kwargs: Any) -> list[SummaryRow]:
        # TEST DOUBLE: the real summary, counting the rows a command reads
        rows = summary(self, *args, **kwargs)
        read.append(len(rows))
        return rows

    totals = SQLiteLedger.summary_totals

    def counted_totals(self: SQLiteLedger, *args: Any, **kwargs: Any) -> list[SummaryRow]:
        # TEST DOUBLE: the real sums over the range, counting the rows a command reads
        rows = totals(self, *args, **kwargs)
        read.append(len(rows))
        return rows

    monkeypatch.setattr(SQLiteLedger, "summary", counted)
    monkeypatch.setattr(SQLiteLedger, "summary_totals", counted_totals)
    assert f"{keys:,}" in run("ledger", "--ledger", url)  # the model's requests
    assert read == [1]
    report = json.loads(run("ledger", "report", "--ledger", url, "--format", "json"))
    assert [(r["group"], r["requests"]) for r in report["rows"]] == [("smollm2-135m", keys)]
    assert read[1:] == [1]
    by_key = json.loads(run("ledger", "report", "--by", "key", "--ledger", url, "--format", "json"))
    assert [(r["group"], r["requests"]) for r in by_key["rows"]] == [(f"key-{i:02d}", 1) for i in range(keys)]
    assert read[2:] == [keys, 1]  # a row per key, summed over the range; the series' row per hour and model


DAY0 = 1_700_006_400.0  # a UTC midnight


@pytest.fixture
def paged_ledger(tmp_path: Path) -> str:
    """25,000 records over three days: more than two of the export's pages of 10,000."""
    url = f"sqlite:///{tmp_path / 'paged.sqlite3'}"
    led = SQLiteLedger.from_url(url)
    led.record_many([LedgerRecord(f"r{i}", "smollm2-135m", "small", 1.0 + i % 7, "estimated:cpu-time",
                                  input_tokens=i % 50, ts=DAY0 + 43_200 + i * 8.0)
                     for i in range(25_000)])  # day 0 noon to day 2 evening
    led.close()
    return url


def invoke(args: list[str], terminal: bool) -> tuple[str, str]:
    """The command's stdout and stderr, without the colour and cursor codes a terminal gets."""
    # TTY_COMPATIBLE=1: rich takes the runner's stderr for a terminal and draws there as on one
    env = {"COLUMNS": "200", **({"TTY_COMPATIBLE": "1"} if terminal else {})}
    res = CliRunner().invoke(app, args, env=env)
    assert res.exit_code == 0, res.output
    codes = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
    return codes.sub("", res.stdout), codes.sub("", res.stderr)


def test_export_shows_records_written_of_the_total_on_a_terminal_and_writes_the_same_bytes(
    paged_ledger: str, tmp_path: Path
) -> None:
    """An export of 1.5 million records ran two minutes without a word until its last line."""
    plain, shown = tmp_path / "plain.csv", tmp_path / "shown.csv"
    quiet_out, quiet_err = invoke(["ledger", "export", "--ledger", paged_ledger, "-o", str(plain)], terminal=False)
    drawn_out, drawn_err = invoke(["ledger", "export", "--ledger", paged_ledger, "-o", str(shown)], terminal=True)
    assert shown.read_bytes() == plain.read_bytes() and quiet_out == drawn_out == ""
    assert quiet_err.startswith("wrote 25,000 records") and "records written" not in quiet_err, quiet_err
    assert "records written" in drawn_err and "25000/25000" in drawn_err, drawn_err  # of the total
    assert "wrote 25,000 records" in drawn_err


def test_export_reports_its_progress_a_page_at_a_time(paged_ledger: str, tmp_path: Path) -> None:
    from router.ledger.export import export_csv

    told: list[int] = []
    led = SQLiteLedger.from_url(paged_ledger)
    assert export_csv(led, tmp_path / "x.csv", progress=told.append) == 25_000
    led.close()
    assert told == [10_000, 20_000, 25_000]


def test_doctor_shows_the_days_checked_on_a_terminal_and_prints_the_same_report(paged_ledger: str) -> None:
    """The doctor ran two minutes on a big ledger before its first line."""
    quiet_out, quiet_err = invoke(["ledger", "doctor", "--ledger", paged_ledger], terminal=False)
    drawn_out, drawn_err = invoke(["ledger", "doctor", "--ledger", paged_ledger], terminal=True)
    assert quiet_out == drawn_out and "no problems" in drawn_out
    assert quiet_err == "", quiet_err
    assert "checking the hourly summary: day 3 of 3, 25,000 records" in drawn_err, drawn_err


def test_the_summary_check_reports_once_a_day_with_the_records_read(tmp_path: Path) -> None:
    from router.ledger.doctor import summary_mismatches

    led = SQLiteLedger(tmp_path / "l.sqlite3")
    for d in (0, 1, 3):  # day 2 has no records: the check passes over it
        led.record_many([LedgerRecord(f"r{d}-{h}", "m", "small", 1.0, "e:x", ts=DAY0 + d * 86_400 + h * 3600)
                         for h in range(3)])
    told: list[tuple[float, float | None]] = []
    assert summary_mismatches(led, progress=lambda what, done, total: told.append((done, total))) == (0, [])
    led.close()
    assert told == [(1, 4), (2, 4), (4, 4)]


def test_names_from_the_records_are_shown_as_written_not_read_as_markup(tmp_path: Path) -> None:
    """Records an application writes itself (Ledger.record) may name a model, policy or zone with brackets: the
    tables read them as Rich markup, so `router ledger report --by policy` died with "unexpected MarkupError:
    closing tag '[/bold]'..." and `team[beta]` lost its `[beta]`."""
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    led = SQLiteLedger.from_url(url)
    led.record_many([
        LedgerRecord(f"r{i}", "llama[q4]", "small", 2.0, "estimated:cpu-time", input_tokens=10, output_tokens=5,
                     policy=("team[beta]", "[/bold]ops")[i % 2], zone="lab[2]", grid_g_per_kwh=100.0, co2e_g=0.1,
                     ts=NOW - 600 - i)
        for i in range(4)
    ])  # fmt: skip
    led.close()
    assert "llama[q4]" in run("ledger", "--ledger", url)
    out = run("ledger", "report", "--by", "policy", "--ledger", url)
    assert "team[beta]" in out and "[/bold]ops" in out and "lab[2]" in out, out
    assert "llama[q4]" in run("ledger", "report", "--ledger", url)
