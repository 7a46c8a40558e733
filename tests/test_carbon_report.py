"""`router ledger report`'s carbon: CO2e by hour and by zone as recorded, and the cleanest-hour counterfactual."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from conftest_postgres import postgres_server  # noqa: F401 - the fixture
from typer.testing import CliRunner

from router.carbon import Grid, SeriesIntensity
from router.carbon.grid import shipped_series
from router.cli import app
from router.ledger import Ledger, LedgerRecord, SQLiteLedger, open_ledger
from router.ledger.carbon_report import build_carbon
from router.ledger.report import build_report

DAY = datetime(2022, 7, 1, tzinfo=timezone.utc).timestamp()


def _fill(led: SQLiteLedger, series: SeriesIntensity) -> None:
    for h in range(24):
        t = DAY + h * 3600 + 60
        g = series.intensity(t).g_per_kwh
        led.record(LedgerRecord(request_id=f"r{h}", model="m", tier="small", energy_j=3.6e6, energy_source="x",
                                ts=t, zone="US-CAL", grid_g_per_kwh=g, co2e_g=g))
        led.record(LedgerRecord(request_id=f"s{h}", model="m", tier="small", energy_j=3.6e6, energy_source="x",
                                ts=t, zone="EU", grid_g_per_kwh=50.0, co2e_g=50.0))


def test_by_hour_by_zone_and_the_cleanest_hour(tmp_path: Path) -> None:
    series = SeriesIntensity(shipped_series("CA_2022_hourly.csv"))
    led = SQLiteLedger(tmp_path / "l.sqlite3")
    _fill(led, series)
    rep = build_carbon(led, 0.0, None, grid=Grid({"US-CAL": series}), window_s=86_400)
    zones = {z["zone"]: z for z in rep.by_zone}
    cal = [series.intensity(DAY + h * 3600).g_per_kwh for h in range(24)]
    assert zones["US-CAL"]["co2e_g"] == pytest.approx(sum(cal)) and zones["EU"]["co2e_g"] == pytest.approx(24 * 50)
    assert len(rep.by_hour) == 24 and rep.by_hour[3]["co2e_g"] == pytest.approx(cal[3] + 50)
    # the counterfactual: each California hour at the cleanest hour of the day that follows it (from the series)
    want = sum(min(series.intensity(DAY + (h + k) * 3600).g_per_kwh for k in range(24)) for h in range(24))
    assert zones["US-CAL"]["cleanest_hour_co2e_g"] == pytest.approx(want)
    assert zones["EU"]["cleanest_hour_co2e_g"] == pytest.approx(24 * 50), "a flat zone gains nothing"
    assert rep.cleanest_co2e_g < rep.total_co2e_g
    # without the series, the intensities the ledger recorded stand in (only the hours that had requests)
    alone = build_carbon(led, 0.0, None, grid=None, window_s=86_400)
    recorded = sum(min(cal[h:]) for h in range(24))
    assert {z["zone"]: z for z in alone.by_zone}["US-CAL"]["cleanest_hour_co2e_g"] == pytest.approx(recorded)
    led.close()


class NoFastCarbonQuery(SQLiteLedger):
    """TEST DOUBLE: SQLite without its one-query carbon sums, so the report takes the pass over the records that
    stores without such a query (Redis) get."""

    carbon_rows = None


@pytest.mark.parametrize("ledger_class", [SQLiteLedger, NoFastCarbonQuery], ids=["sqlite-query", "record-pass"])
def test_carbon_requests_are_model_calls_and_rejections_apart(tmp_path: Path, ledger_class: type) -> None:
    """A budget refusal's 0 J ``rejected`` record is no model call: the carbon tables count calls as the report does."""
    led = ledger_class(tmp_path / "l.sqlite3")
    outcomes = {"ok": 3, "error": 2, "rejected": 4}
    n = 0
    for outcome, count in outcomes.items():
        for _ in range(count):
            zone, hour = ["US-CAL", "EU"][n % 2], n % 3
            joules = 0.0 if outcome == "rejected" else 3.6e6
            led.record(LedgerRecord(request_id=f"r{n}", model="m", tier="small", energy_j=joules, energy_source="x",
                                    ts=DAY + hour * 3600 + 60, zone=zone, grid_g_per_kwh=100.0,
                                    co2e_g=joules / 3.6e6 * 100.0, outcome=outcome))
            n += 1
    main = build_report(led, {}, since=0.0).total
    carbon = build_carbon(led, 0.0, None)
    led.close()
    assert (main.requests, main.rejected) == (5, 4)
    for rows in (carbon.by_zone, carbon.by_hour, carbon.by_hour_of_day):
        assert sum(r["requests"] for r in rows) == main.requests
        assert sum(r["rejected"] for r in rows) == main.rejected
    zones = {z["zone"]: (z["requests"], z["rejected"]) for z in carbon.by_zone}
    assert zones == {"US-CAL": (3, 2), "EU": (2, 2)}  # US-CAL: records 0, 2, 4 called, 6 and 8 rejected


def _carbon_without_a_zone(led: Ledger) -> dict:
    """Records with no zone and with an empty one, in the same hours at different intensities: both are "no zone"."""
    for n, (zone, g, hour) in enumerate([(None, 400.0, 0), ("", 100.0, 0), (None, 200.0, 1), ("", 300.0, 2),
                                         ("EU", 50.0, 0)]):
        led.record(LedgerRecord(request_id=f"r{n}", model="m", tier="small", energy_j=3.6e6, energy_source="x",
                                ts=DAY + hour * 3600 + 60, zone=zone, grid_g_per_kwh=g, co2e_g=g))
    try:
        return build_carbon(led, 0.0, None).as_dict()
    finally:
        led.close()


def test_an_empty_zone_is_grouped_alike_by_the_query_and_the_record_pass(tmp_path: Path) -> None:
    by_query = _carbon_without_a_zone(SQLiteLedger(tmp_path / "q.sqlite3"))
    by_records = _carbon_without_a_zone(NoFastCarbonQuery(tmp_path / "p.sqlite3"))
    assert by_query == by_records
    # "-" holds all four; hour 0 (400 and 100 g/kWh, mean 250) at hour 1's 200, hours 1 and 2 as recorded: 400+200+300
    assert [z["zone"] for z in by_query["by_zone"]] == ["-", "EU"]
    assert by_query["by_zone"][0]["cleanest_hour_co2e_g"] == pytest.approx(900.0)


def test_an_empty_zone_is_grouped_alike_by_postgresql(tmp_path: Path, postgres_server) -> None:  # noqa: F811
    by_query = _carbon_without_a_zone(open_ledger(f"{postgres_server.url}?schema=carbon_empty_zone"))
    assert by_query == _carbon_without_a_zone(NoFastCarbonQuery(tmp_path / "p.sqlite3"))


def test_the_cli_report_shows_zone_hour_and_counterfactual(tmp_path: Path) -> None:
    series = SeriesIntensity(shipped_series("CA_2022_hourly.csv"))
    led = SQLiteLedger(tmp_path / "l.sqlite3")
    _fill(led, series)
    led.close()
    url = f"sqlite:///{tmp_path}/l.sqlite3"
    out = CliRunner().invoke(app, ["ledger", "report", "--ledger", url, "--window", "8h"], env={"COLUMNS": "160"})
    assert out.exit_code == 0, out.output
    assert "CO2e by zone" in out.output and "US-CAL" in out.output and "hour of day" in out.output
    assert "cleanest hour of its 8 h window" in out.output
    js = CliRunner().invoke(app, ["ledger", "report", "--ledger", url, "--format", "json"])
    carbon = json.loads(js.output)["carbon"]
    assert carbon["window_s"] == 86_400 and len(carbon["by_hour"]) == 24


def test_the_cli_report_needs_no_api_key_of_an_http_zone(tmp_path: Path) -> None:
    """With docs/energy.md's carbon block (a series zone and an HTTP zone with `api_key_env`), `router ledger report
    -c router.yaml` run where the provider's key is not exported (an operator's shell) failed with "the environment
    variable GRID_API_KEY is not set", though the report reads only the series and the ledger: it now reports, the
    series zone's counterfactual as before."""
    series = SeriesIntensity(shipped_series("CA_2022_hourly.csv"))
    led = SQLiteLedger(tmp_path / "l.sqlite3")
    _fill(led, series)
    led.close()
    config = tmp_path / "router.yaml"
    config.write_text(f"ledger_url: sqlite:///{tmp_path}/l.sqlite3\ncarbon:\n  zone: US-CAL\n  zones:\n"
                      "    US-CAL: {type: file, path: CA_2022_hourly.csv, replay: offset}\n"
                      "    DE: {type: http, url: 'http://127.0.0.1:9', api_key_env: ROUTER_TEST_UNSET_GRID_KEY}\n")
    env = {k: v for k, v in os.environ.items() if k != "ROUTER_TEST_UNSET_GRID_KEY"}
    out = CliRunner().invoke(app, ["ledger", "report", "-c", str(config), "--format", "json"], env=env)
    assert out.exit_code == 0, out.output
    zones = {z["zone"]: z for z in json.loads(out.output)["carbon"]["by_zone"]}
    want = sum(min(series.intensity(DAY + (h + k) * 3600).g_per_kwh for k in range(24)) for h in range(24))
    assert zones["US-CAL"]["cleanest_hour_co2e_g"] == pytest.approx(want)


def _records_with_and_without_co2e(led: Ledger) -> Ledger:
    """1 kWh each, no zone: 300 g at hour 0; 100 g and one without a figure at hour 1; one without at hour 3 (as a
    ledger from before the carbon columns, or an application's own ``Ledger.record``, holds)."""
    for n, (hour, g) in enumerate([(0, 300.0), (1, 100.0), (1, None), (3, None)]):
        led.record(LedgerRecord(request_id=f"r{n}", model="m", tier="small", energy_j=3.6e6, energy_source="x",
                                ts=DAY + hour * 3600 + 60, grid_g_per_kwh=g, co2e_g=g))
    return led


def test_records_without_co2e_are_left_out_of_the_carbon_tables_not_counted_as_0_g(tmp_path: Path) -> None:
    """The carbon tables counted a record without a CO2e figure as 0 g at 0 g/kWh: the zone's and the hour's g/kWh
    were the recorded grams over all the joules, and an hour of only such records was every hour's "cleanest"
    (0 g/kWh), so the counterfactual claimed 100% less, all without a word. Now the intensities are over the joules
    that have a figure, each row counts the records without one, and the summary line says what the grams leave
    out, in the words of the report's Total."""
    _records_with_and_without_co2e(SQLiteLedger(tmp_path / "l.sqlite3")).close()
    url = f"sqlite:///{tmp_path}/l.sqlite3"
    note = "2 of 4 records have no CO2e figure (7.2 MJ not counted)"
    table = CliRunner().invoke(app, ["ledger", "report", "--ledger", url], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    # hours 0 and 1 at the cleanest of their day (100 g/kWh); hour 3 has no figure to move
    summary = f"CO2e 400 g; had each request run at the cleanest hour of its 24 h window: 200 g (50% less); {note}"
    assert summary in table.output
    assert note in " ".join(table.output.split(summary)[1].split()), "the Total says the same"
    zone_row = next(line for line in table.output.splitlines() if line.strip("│ ").startswith("- "))
    assert zone_row.replace("│", " ").split() == ["-", "4", "0", "200", "400", "200", "2"]  # 2: without CO2e

    js = CliRunner().invoke(app, ["ledger", "report", "--ledger", url, "--format", "json"])
    assert js.exit_code == 0, js.output
    carbon = json.loads(js.output)["carbon"]
    assert (carbon["total_co2e_g"], carbon["cleanest_co2e_g"]) == (pytest.approx(400), pytest.approx(200))
    assert (carbon["records"], carbon["records_without_co2e"]) == (4, 2)
    assert carbon["joules_without_co2e"] == pytest.approx(7.2e6)
    assert any(n.startswith(note) for n in carbon["notes"])
    (zone,) = carbon["by_zone"]
    assert zone["g_per_kwh"] == pytest.approx(200) and zone["records_without_co2e"] == 2
    hours = {h["hour"][-5:]: (h["g_per_kwh"], h["records_without_co2e"], h["cleanest_hour_co2e_g"])
             for h in carbon["by_hour"]}
    assert hours == {"00:00": (pytest.approx(300), 0, pytest.approx(100)),
                     "01:00": (pytest.approx(100), 1, pytest.approx(100)), "03:00": (None, 1, 0.0)}


def test_records_without_co2e_are_counted_alike_by_the_query_and_the_record_pass(tmp_path: Path) -> None:
    by_query = build_carbon(_records_with_and_without_co2e(SQLiteLedger(tmp_path / "q.sqlite3")), 0.0, None)
    by_records = build_carbon(_records_with_and_without_co2e(NoFastCarbonQuery(tmp_path / "p.sqlite3")), 0.0, None)
    assert by_query.as_dict() == by_records.as_dict() and by_query.records_without_co2e == 2


_HUGE_WINDOW_CHILD = """
import json, resource, sys
from router.carbon import Grid, SeriesIntensity
from router.carbon.grid import shipped_series
from router.cli import app
from router.ledger import SQLiteLedger
from router.ledger.carbon_report import build_carbon

# every import done: cap the address space at what the process holds now plus 256 MB, which no hour-by-hour walk
# of the window fits in
with open("/proc/self/status") as status:
    held_kb = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, ((held_kb + 256 * 1024) * 1024,) * 2)
url, window_s = sys.argv[1], float(sys.argv[2])
led = SQLiteLedger(url.removeprefix("sqlite:///"))
grid = Grid({"US-CAL": SeriesIntensity(shipped_series("CA_2022_hourly.csv"))})
with_series = build_carbon(led, 0.0, None, grid=grid, window_s=window_s)
led.close()
print(json.dumps({z["zone"]: z["cleanest_hour_co2e_g"] for z in with_series.by_zone}))
sys.stdout.flush()
app(["ledger", "report", "--ledger", url, "--window", sys.argv[3], "--format", "json"], prog_name="router")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="caps memory with RLIMIT_AS and reads /proc")
def test_a_window_of_any_length_costs_what_the_ledger_holds(tmp_path: Path) -> None:
    """`--window 1000000000000w`: the counterfactual reads the hours that hold records (and a zone's series), not
    every hour of the window, so it runs within a small memory cap and gives the window's cleanest hours."""
    series = SeriesIntensity(shipped_series("CA_2022_hourly.csv"))
    led = SQLiteLedger(tmp_path / "l.sqlite3")
    _fill(led, series)
    led.close()
    weeks = 1_000_000_000_000
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", _HUGE_WINDOW_CHILD, f"sqlite:///{tmp_path}/l.sqlite3",
                          str(weeks * 7 * 86_400.0), f"{weeks}w"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    first, cli = out.stdout.split("\n", 1)
    # with the series, each California hour at the year's cleanest; alone, at the cleanest the ledger recorded
    # from that hour on (the EU zone is flat)
    assert json.loads(first) == pytest.approx({"US-CAL": 24 * float(series.values.min()), "EU": 24 * 50.0})
    cal = [series.intensity(DAY + h * 3600).g_per_kwh for h in range(24)]
    zones = {z["zone"]: z for z in json.loads(cli)["carbon"]["by_zone"]}
    assert zones["US-CAL"]["cleanest_hour_co2e_g"] == pytest.approx(sum(min(cal[h:]) for h in range(24)))
    assert zones["EU"]["cleanest_hour_co2e_g"] == pytest.approx(24 * 50.0)


def test_simulate_carbon_reports_co2e_per_policy_in_the_json_and_plot(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    outcomes = root / "data" / "outcomes" / "sentiment_local.jsonl"
    plot = tmp_path / "sim.png"
    res = CliRunner().invoke(app, ["simulate", "--outcomes", str(outcomes), "--policy", "eco", "--json",
                                   "--no-progress", "--carbon", "TX_2022_hourly.csv", "--carbon-span", "168",
                                   "--plot", str(plot)])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["carbon"]["series"] == "file:TX_2022_hourly.csv" and d["carbon"]["span_s"] == 168 * 3600
    assert d["co2e_g_total"] > 0 and d["co2e_g_per_request"] == pytest.approx(d["co2e_g_total"] / d["requests"])
    for base in d["baselines"].values():
        assert base["co2e_g_total"] > 0
    # the intensities a request meets are the series' own: CO2e / J lies within the series' range over the week
    ratio = d["co2e_g_total"] / d["energy_j_total"] * 3.6e6
    assert d["carbon"]["min_g_per_kwh"] <= ratio <= d["carbon"]["max_g_per_kwh"]
    assert plot.stat().st_size > 10_000
    plain = CliRunner().invoke(app, ["simulate", "--outcomes", str(outcomes), "--json", "--no-progress"])
    assert "co2e_g_total" not in json.loads(plain.output)
