"""The ledger's CO2e and carbon intensity are the same in every view: ``router ledger``, ``router ledger report``
(table, JSON, HTML) and the dashboard, over one SQLite ledger written by the proxy app (Starlette's test client,
the shipped sentiment specialist answering) with a PUE and two grid zones configured."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from servers.procs import models_dir, remote_card
from starlette.testclient import TestClient
from typer.testing import CliRunner

from router.cli import app as cli
from router.config import RouterConfig
from router.ledger import LedgerRecord, SQLiteLedger
from router.proxy.app import create_app

REVIEW = "Is this review positive or negative? 'a gorgeous, witty film with a heart of gold'"
POLICY = "name: views\naccuracy: {min_accuracy: 0.0}\n"
CARBON = """carbon:
  zone: HOME
  hosted_zone: CLOUD
  pue: 1.5
  zones:
    HOME: {type: static, g_per_kwh: 300}
    CLOUD: {type: static, g_per_kwh: 600}
"""
SENTENCE = re.compile(r"([0-9.e+-]+) g CO2e at ([0-9.e+-]+) g/kWh")


def _cli(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    return result.output


def test_router_ledger_its_report_and_the_dashboard_show_the_same_co2e_and_intensity(tmp_path: Path) -> None:
    models = models_dir(tmp_path / "models", {"remote-big": remote_card("remote-big", "http://127.0.0.1:9/v1", "m")})
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "views.yaml").write_text(POLICY)
    ledger_url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    config = tmp_path / "config.yaml"
    config.write_text(f"models_dir: {models}\npolicies_dir: {policies}\ndefault_policy: views\n"
                      f"ledger_url: {ledger_url}\nproxy: {{warm_up: false}}\n{CARBON}")
    with TestClient(create_app(config=RouterConfig.load(config))) as c:
        for _ in range(3):  # the local specialist: its joules x PUE 1.5 x HOME's 300 g/kWh
            r = c.post("/v1/chat/completions", json={"model": "router", "messages": [{"role": "user",
                                                                                      "content": REVIEW}]})
            assert r.status_code == 200 and r.json()["routing"]["model"] == "sentiment-onnx", r.text
        router = c.app.state.router  # type: ignore[attr-defined]
        router.ledger.flush()
        local_j = sum(rec.energy_j for rec in router.ledger.records())
        co2e, g, zone = router.carbon_of(router.cards["remote-big"], local_j)  # a hosted call: CLOUD, no PUE
        router.ledger.record(LedgerRecord("hosted-1", "remote-big", "large", local_j, "estimated:card", co2e_g=co2e,
                                         grid_g_per_kwh=g, zone=zone, input_tokens=10, output_tokens=5))
        router.ledger.flush()
        dashboard = c.get("/dashboard/api/totals?window=all").json()

    led = SQLiteLedger.from_url(ledger_url)
    records = led.records()
    led.close()
    kwh = sum(r.energy_j for r in records) / 3.6e6
    grams = sum(r.co2e_g or 0.0 for r in records)
    intensity = grams / kwh
    assert {r.zone for r in records} == {"HOME", "CLOUD"}
    assert intensity == pytest.approx((300 * 1.5 + 600) / 2)  # half the joules each side
    grid_mean = sum(r.energy_j * (r.grid_g_per_kwh or 0) for r in records) / 3.6e6 / kwh
    assert abs(intensity - grid_mean) > 50 and abs(intensity - 475) > 25  # PUE and zones make a difference

    assert dashboard["co2e_g"] == pytest.approx(grams) and dashboard["g_per_kwh"] == pytest.approx(intensity)

    report = json.loads(_cli("ledger", "report", "--config", str(config), "--format", "json"))
    assert report["total"]["co2e_g"] == pytest.approx(grams)
    assert report["equivalents"]["co2e_g"] == pytest.approx(grams)
    assert report["equivalents"]["grid_g_per_kwh"] == pytest.approx(intensity)
    assert report["saved_equivalents"]["grid_g_per_kwh"] == pytest.approx(intensity)
    carbon = report["carbon"]
    assert carbon["total_co2e_g"] == pytest.approx(grams)
    zones = {z["zone"]: z for z in carbon["by_zone"]}
    assert zones["HOME"]["g_per_kwh"] == pytest.approx(450) and zones["CLOUD"]["g_per_kwh"] == pytest.approx(600)
    for rows in (carbon["by_zone"], carbon["by_hour_of_day"], carbon["by_hour"]):  # every table adds up to the total
        assert sum(z["energy_j"] / 3.6e6 * z["g_per_kwh"] for z in rows) == pytest.approx(grams)

    texts = {"router ledger": _cli("ledger", "--config", str(config)),
             "report table": _cli("ledger", "report", "--config", str(config)),
             "report html": _cli("ledger", "report", "--config", str(config), "--format", "html")}
    for view, text in texts.items():
        (g_text, per_kwh), *_ = SENTENCE.findall(text)
        assert float(g_text) == pytest.approx(grams, rel=1e-2), view
        assert float(per_kwh) == pytest.approx(intensity, rel=1e-5), view


def test_records_without_co2e_show_the_same_grams_on_the_dashboard_as_in_router_ledger(tmp_path: Path) -> None:
    """Records that carry no CO2e (written before the ledger had the column, or by an app's own
    ``Ledger.record``) are priced at the config's ``grid_g_per_kwh`` by ``router ledger``: the dashboard's total
    is those grams too, not 0 g beside that intensity."""
    models = models_dir(tmp_path / "models", {})
    ledger_url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    config = tmp_path / "config.yaml"
    config.write_text(f"models_dir: {models}\nledger_url: {ledger_url}\ngrid_g_per_kwh: 400\n"
                      "proxy: {warm_up: false}\n")
    led = SQLiteLedger.from_url(ledger_url)
    led.record(LedgerRecord("old-1", "sentiment-onnx", "specialist", 3600.0, "measured:rapl"))  # 1 Wh, no CO2e
    led.close()
    with TestClient(create_app(config=RouterConfig.load(config))) as c:
        dashboard = c.get("/dashboard/api/totals?window=all").json()

    (g_text, per_kwh), *_ = SENTENCE.findall(_cli("ledger", "--config", str(config)))
    assert float(g_text) == pytest.approx(0.4) and float(per_kwh) == pytest.approx(400)  # 0.001 kWh x 400 g/kWh
    assert dashboard["co2e_g"] == pytest.approx(0.4) and dashboard["g_per_kwh"] == pytest.approx(400)


def test_records_without_co2e_beside_records_with_it_are_not_counted_as_0_g(tmp_path: Path) -> None:
    """Records without a CO2e figure among records with one were summed as 0 g: every view showed a total too low,
    and an intensity of the recorded grams over all the joules, with no hint. The grams are the recorded ones,
    the intensity is over the joules that have a figure, and each view says how many records have none."""
    import time

    models = models_dir(tmp_path / "models", {})
    ledger_url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    config = tmp_path / "config.yaml"
    config.write_text(f"models_dir: {models}\nledger_url: {ledger_url}\nproxy: {{warm_up: false}}\n")
    now = time.time()
    led = SQLiteLedger.from_url(ledger_url)
    for i, (co2e, hours_ago) in enumerate(((300.0, 5), (None, 4), (100.0, 3), (None, 0.01))):  # 1 kWh each
        led.record(LedgerRecord(f"r{i}", "sentiment-onnx", "specialist", 3.6e6, "measured:rapl", co2e_g=co2e,
                                ts=now - hours_ago * 3600))
    led.close()
    note = "2 of 4 records have no CO2e figure (7.2 MJ not counted)"
    with TestClient(create_app(config=RouterConfig.load(config))) as c:
        dashboard = c.get("/dashboard/api/totals?window=all").json()
    assert dashboard["co2e_g"] == pytest.approx(400) and dashboard["g_per_kwh"] == pytest.approx(200)
    assert dashboard["records_without_co2e"] == 2 and dashboard["joules_without_co2e"] == pytest.approx(7.2e6)
    assert dashboard["co2e_note"] == note and dashboard["co2e_estimated"] is False

    texts = {"router ledger": _cli("ledger", "--config", str(config)),
             "report table": _cli("ledger", "report", "--config", str(config)),
             "report html": _cli("ledger", "report", "--config", str(config), "--format", "html")}
    for view, text in texts.items():
        (g_text, per_kwh), *_ = SENTENCE.findall(text)
        assert (float(g_text), float(per_kwh)) == (400, 200), view  # not 400 g at 100 g/kWh
        assert note in " ".join(text.split()), view
    report = json.loads(_cli("ledger", "report", "--config", str(config), "--format", "json"))
    assert report["records_without_co2e"] == 2 and report["equivalents"]["grid_g_per_kwh"] == pytest.approx(200)
    total = _cli("ledger", "report", "--config", str(config), "--format", "csv").splitlines()[-1].split(",")
    assert total[0] == "total" and total[-1] == "2"


def test_each_group_says_how_many_of_its_records_have_no_co2e_figure(tmp_path: Path) -> None:
    """Per-group CO2e (per model and per day in `router ledger`, per group in `router ledger report`'s table, HTML,
    CSV and JSON, per model and tier on the dashboard) summed records without a figure as 0 g with no word, while
    the total said so: a group whose records mostly lack one looked clean. Each group now counts its own."""
    import time

    models = models_dir(tmp_path / "models", {})
    ledger_url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    config = tmp_path / "config.yaml"
    config.write_text(f"models_dir: {models}\nledger_url: {ledger_url}\nproxy: {{warm_up: false}}\n")
    today = time.time() - 60
    yesterday = today - 86400  # a day apart: a row each in the tables per day
    led = SQLiteLedger.from_url(ledger_url)
    for i, (model, tier, co2e, ts) in enumerate((
        ("clean-model", "small", 100.0, yesterday), ("clean-model", "small", 100.0, yesterday),
        ("gappy-model", "large", 50.0, today), ("gappy-model", "large", None, today),
        ("gappy-model", "large", None, today),
    )):  # 1 kWh each
        led.record(LedgerRecord(f"r{i}", model, tier, 3.6e6, "measured:rapl", co2e_g=co2e, ts=ts))
    led.close()
    day = {ts: time.strftime("%Y-%m-%d", time.gmtime(ts)) for ts in (yesterday, today)}

    def cells(text: str, name: str) -> list[str]:
        """The cells of the table row for ``name`` (rich draws them between │)."""
        (line,) = [ln for ln in text.splitlines() if f" {name} " in ln]
        return [c.strip() for c in line.split("│") if c.strip()]

    ledger_text = _cli("ledger", "--config", str(config))
    assert cells(ledger_text, "gappy-model")[-1] == "2" and cells(ledger_text, "clean-model")[-1] == "0"
    assert cells(ledger_text, day[today])[-1] == "2" and cells(ledger_text, day[yesterday])[-1] == "0"
    table = _cli("ledger", "report", "--config", str(config))
    assert cells(table, "gappy-model")[-1] == "2" and cells(table, "clean-model")[-1] == "0"
    by_day = _cli("ledger", "report", "--config", str(config), "--by", "day")
    assert cells(by_day, day[today])[-1] == "2" and cells(by_day, day[yesterday])[-1] == "0"

    report = json.loads(_cli("ledger", "report", "--config", str(config), "--format", "json"))
    rows = {r["group"]: r for r in report["rows"]}
    assert rows["gappy-model"]["records_without_co2e"] == 2
    assert rows["gappy-model"]["joules_without_co2e"] == pytest.approx(7.2e6)
    assert rows["clean-model"]["records_without_co2e"] == 0 and report["total"]["records_without_co2e"] == 2
    csv_rows = {line.split(",")[0]: line.split(",")
                for line in _cli("ledger", "report", "--config", str(config), "--format", "csv").splitlines()}
    assert [csv_rows[g][-1] for g in ("gappy-model", "clean-model", "total")] == ["2", "0", "2"]
    html = _cli("ledger", "report", "--config", str(config), "--format", "html")
    html_rows = {row.split("</td>")[0]: row for row in html.split("<tr><td>")[1:]}
    assert "<th>without CO2e</th>" in html
    assert html_rows["gappy-model"].endswith("<td>2</td></tr>")
    assert html_rows["clean-model"].endswith("<td>0</td></tr>")

    with TestClient(create_app(config=RouterConfig.load(config))) as c:
        dashboard = c.get("/dashboard/api/totals?window=all").json()
    note = "2 of 3 records have no CO2e figure (7.2 MJ not counted)"
    for groups, gappy, clean in ((dashboard["by_model"], "gappy-model", "clean-model"),
                                 (dashboard["by_tier"], "large", "small")):
        by_name = {g["group"]: g for g in groups}
        assert by_name[gappy]["records_without_co2e"] == 2 and by_name[gappy]["co2e_note"] == note
        assert by_name[gappy]["joules_without_co2e"] == pytest.approx(7.2e6)
        assert by_name[clean]["records_without_co2e"] == 0 and by_name[clean]["co2e_note"] == ""
