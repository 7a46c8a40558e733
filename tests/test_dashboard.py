"""The dashboard's JSON API and who may see it: the proxy app in process (Starlette's test client) over a real
SQLite ledger, the shipped sentiment specialist answering. Figures are checked against the ledger's own records
and against ``router ledger report``'s code; the browser test is tests/test_dashboard_browser.py."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from servers.procs import ROOT, models_dir, remote_card, router_serve, upstream
from starlette.testclient import TestClient
from typer.testing import CliRunner

from router.cli import app as cli
from router.config import RouterConfig
from router.errors import ConfigError
from router.keys import KeyStore
from router.ledger import Ledger, LedgerRecord, SQLiteLedger
from router.ledger.report import build_report
from router.proxy.app import create_app

REVIEW = "Is this review positive or negative? 'a gorgeous, witty film with a heart of gold'"
KEY_ADMIN = "sk-dash-admin-0123456789"
KEY_USER = "sk-dash-user-abcdef"
POLICY = """name: dash
accuracy: {min_accuracy: 0.0}
budgets:
  - model: sentiment-onnx
    joules: 1000
    per: hour
on_budget_exhausted: reject
"""


def _config(tmp: Path, extra: str = "") -> Path:
    models = models_dir(tmp / "models", {})
    policies = tmp / "policies"
    policies.mkdir()
    (policies / "dash.yaml").write_text(POLICY)
    config = tmp / "config.yaml"
    config.write_text(f"models_dir: {models}\npolicies_dir: {policies}\ndefault_policy: dash\n"
                      f"ledger_url: sqlite:///{tmp / 'ledger.sqlite3'}\nproxy: {{warm_up: false}}\n{extra}")
    return config


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(config=RouterConfig.load(_config(tmp_path)))) as c:
        yield c


def _keys_config(tmp: Path, extra: str = "") -> Path:
    sha = {k: hashlib.sha256(k.encode()).hexdigest() for k in (KEY_ADMIN, KEY_USER)}
    return _config(tmp, f"keys:\n  - {{name: ops, sha256: {sha[KEY_ADMIN]}, admin: true}}\n"
                        f"  - {{name: app, sha256: {sha[KEY_USER]}}}\n{extra}")


def _chat(c: TestClient, rid: str, key: str | None = None) -> dict:
    headers = {"x-request-id": rid, **({"authorization": f"Bearer {key}"} if key else {})}
    r = c.post("/v1/chat/completions", json={"model": "router", "messages": [{"role": "user", "content": REVIEW}]},
               headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def _rec(i: int, ts: float, model: str, tier: str, energy_j: float, **kw: object) -> LedgerRecord:
    return LedgerRecord(request_id=f"old-{i}", model=model, tier=tier, energy_j=energy_j,
                        energy_source=str(kw.pop("energy_source", "estimated:cpu-time")), reason="written by the test",
                        input_tokens=20, output_tokens=5, latency_ms=100.0 + i, policy="dash", task="chat", ts=ts,
                        **kw)  # type: ignore[arg-type]


# -- figures ------------------------------------------------------------------------------------------------
def test_totals_series_recent_and_budgets_match_the_ledger(client: TestClient) -> None:
    router = client.app.state.router  # type: ignore[attr-defined]
    ledger: Ledger = router.ledger
    answers = [_chat(client, f"dash-{i}") for i in range(4)]
    assert {a["routing"]["model"] for a in answers} == {"sentiment-onnx"}
    now = time.time()
    older = [_rec(1, now - 2 * 3600, "remote-big", "large", 40.0, energy_source="measured:rapl"),
             _rec(2, now - 2 * 3600 + 1, "smollm2-135m", "small", 8.0, outcome="error"),
             _rec(3, now - 3 * 86400, "remote-big", "large", 60.0, energy_source="measured:rapl")]
    for r in older:
        ledger.record(r)
    ledger.flush()
    records = ledger.records()
    assert len(records) == 7

    def within(seconds: float | None) -> list[LedgerRecord]:
        return [r for r in records if seconds is None or r.ts >= time.time() - seconds]

    for window, seconds in (("1h", 3600), ("24h", 86400), ("7d", 7 * 86400), ("all", None)):
        t = client.get(f"/dashboard/api/totals?window={window}").json()
        want = within(seconds)
        assert t["window"] == window and t["requests"] == len(want)
        assert math.isclose(t["energy_j"], sum(r.energy_j for r in want), rel_tol=1e-9)
        assert t["errors"] == sum(r.outcome == "error" for r in want)
        assert t["answered"] == sum(r.outcome in ("ok", "cancelled") for r in want)
        by_model = {m["group"]: m for m in t["by_model"]}
        assert set(by_model) == {r.model for r in want}
        for name, m in by_model.items():
            mine = [r for r in want if r.model == name]
            assert m["requests"] == len(mine) and m["tier"] == mine[0].tier
            assert math.isclose(m["energy_j"], sum(r.energy_j for r in mine), rel_tol=1e-9)
        assert sum(x["requests"] for x in t["by_tier"]) == len(want)
        measured = sum(r.energy_j for r in want if r.energy_source.startswith("measured"))
        assert math.isclose(t["measured_share"], measured / t["energy_j"], rel_tol=1e-9)
        assert t["energy"] == ("estimated" if not measured else "mixed")
        report = build_report(ledger, router.cards, since=t["since"], grid_g_per_kwh=router.config.grid_g_per_kwh)
        assert math.isclose(t["saved_j"], report.total.saved_j, rel_tol=1e-9)  # the same estimate as the report
        assert math.isclose(t["co2e_g"], report.total.co2e_g, rel_tol=1e-9)
        assert t["counterfactual_model"] == report.counterfactual_model

    s = client.get("/dashboard/api/series?window=1h").json()
    assert s["step_s"] == 300 and s["groups"] == ["sentiment-onnx"]
    assert sum(p["requests"].get("sentiment-onnx", 0) for p in s["points"]) == 4
    assert all(b["t"] - a["t"] == 300 for a, b in zip(s["points"], s["points"][1:], strict=False))
    s = client.get("/dashboard/api/series?window=7d&by=tier").json()
    assert s["step_s"] == 3600 and set(s["groups"]) == {"large", "small", "specialist"}
    assert len(s["points"]) in (169, 170)  # every hour of the window, empty ones too
    for tier in s["groups"]:
        mine = [r for r in records if r.tier == tier]
        assert sum(p["requests"].get(tier, 0) for p in s["points"]) == len(mine)
        assert math.isclose(sum(p["energy_j"].get(tier, 0.0) for p in s["points"]), sum(r.energy_j for r in mine))

    recent = client.get("/dashboard/api/recent?limit=5").json()
    assert recent["prompts_stored"] is False
    assert [d["request_id"] for d in recent["records"]] == ["dash-3", "dash-2", "dash-1", "dash-0", "old-2"]
    assert recent["records"][0]["reason"] == answers[3]["routing"]["reason"]
    assert REVIEW not in json.dumps(recent) and "gorgeous" not in json.dumps(recent)

    budgets = client.get("/dashboard/api/budgets").json()["budgets"]
    (mine,) = [b for b in budgets if b["budget"] == "model:sentiment-onnx:3600s"]
    spent = sum(a["routing"]["energy_j"] for a in answers)  # settled to the measured joules
    assert mine["policy"] == "dash" and mine["limit_j"] == 1000 and math.isclose(mine["used_j"], spent, rel_tol=1e-6)
    assert math.isclose(mine["remaining_j"], 1000 - spent, rel_tol=1e-6)
    assert mine["rolls_at"] == mine["window_start"] + 3600 and 0 < mine["rolls_in_s"] <= 3600


def test_recent_says_whether_the_ledger_stores_prompts_and_shows_none(tmp_path: Path) -> None:
    """With ``prompts: {store: true}`` the ledger keeps each answered request's messages: ``prompts_stored`` says
    so (the page words its note after it), and the decisions still carry no prompt text."""
    with TestClient(create_app(config=RouterConfig.load(_config(tmp_path, "prompts: {store: true}\n")))) as c:
        _chat(c, "stored-1")
        ledger: Ledger = c.app.state.router.ledger  # type: ignore[attr-defined]
        ledger.flush()
        assert ledger.prompt_summary()[0] == 1  # the prompt is in the ledger
        recent = c.get("/dashboard/api/recent").json()
    assert recent["prompts_stored"] is True
    assert [d["request_id"] for d in recent["records"]] == ["stored-1"]
    assert "gorgeous" not in json.dumps(recent)


def test_a_model_moved_to_another_tier_counts_in_each_tier_as_the_ledger_report_counts_it(tmp_path: Path) -> None:
    """A card whose tier is edited between two runs of ``router serve``: the records keep the tier each call ran
    in, so the totals by tier split the model's calls as ``router ledger report --by tier`` and the series by tier
    do, and the table by model shows the tier the card has now."""
    ledger_url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    with upstream(tmp_path) as up:
        models = models_dir(tmp_path / "models", {}, specialist=False)
        config = tmp_path / "config.yaml"
        config.write_text(f"models_dir: {models}\npolicies_dir: {ROOT / 'policies'}\nledger_url: {ledger_url}\n"
                          "proxy: {warm_up: false}\n")
        for tier, calls in (("small", 2), ("large", 3)):  # the operator moves the model up a tier
            (models / "remote-echo.yaml").write_text(remote_card("remote-echo", up, "echo", tier=tier))
            with router_serve(config, tmp_path) as url:
                for i in range(calls):
                    r = httpx.post(f"{url}/v1/chat/completions", timeout=20, json={
                        "model": "remote-echo", "messages": [{"role": "user", "content": f"question {i}"}]})
                    assert r.status_code == 200, r.text
                totals = httpx.get(f"{url}/dashboard/api/totals?window=24h", timeout=20).json()
                series = httpx.get(f"{url}/dashboard/api/series?window=24h&by=tier", timeout=20).json()
    result = CliRunner().invoke(cli, ["ledger", "report", "--config", str(config), "--by", "tier", "--format",
                                      "json", "--since", repr(totals["since"])])
    assert result.exit_code == 0, result.output
    report = {row["group"]: row for row in json.loads(result.output)["rows"]}
    assert {g: row["requests"] for g, row in report.items()} == {"small": 2, "large": 3}
    by_tier = {row["group"]: row for row in totals["by_tier"]}
    assert {g: row["requests"] for g, row in by_tier.items()} == {"small": 2, "large": 3}
    for tier, row in by_tier.items():
        assert math.isclose(row["energy_j"], report[tier]["energy_j"], rel_tol=1e-9)
        assert math.isclose(row["saved_j"], report[tier]["saved_j"], rel_tol=1e-9)
        assert row["requests"] == sum(p["requests"].get(tier, 0) for p in series["points"])
    (model,) = totals["by_model"]
    assert model["group"] == "remote-echo" and model["tier"] == "large" and model["requests"] == 5


def test_a_series_keeps_at_most_400_points_whatever_the_records_timestamps(client: TestClient) -> None:
    ledger: Ledger = client.app.state.router.ledger  # type: ignore[attr-defined]
    now = time.time()
    stamps = [now - 60, now - 9 * 365 * 86400, now + 3600,  # drawn: a host's clock may run an hour ahead
              now + 5 * 365 * 86400, now * 1000, 1.0, -1e300]  # a broken clock: left out of the series
    for i, ts in enumerate(stamps):
        ledger.record(_rec(i, ts, "remote-big", "large", 1.0))
    ledger.flush()
    for window, drawn in (("1h", 2), ("24h", 2), ("3650d", 3), ("all", 3)):
        s = client.get(f"/dashboard/api/series?window={window}").json()
        assert 0 < len(s["points"]) <= 400, (window, len(s["points"]))
        assert sum(p["requests"].get("remote-big", 0) for p in s["points"]) == drawn, window
    assert client.get("/dashboard/api/totals?window=all").json()["requests"] >= 5  # those ahead still count there


def test_bad_parameters_are_400_and_unknown_routes_404(client: TestClient) -> None:
    for query, param in [("totals?window=0m", "window"), ("totals?window=5y", "window"),
                         ("series?window=abc", "window"), ("totals?window=4000d", "window"), ("series?by=key", "by"),
                         ("recent?limit=0", "limit"), ("recent?limit=many", "limit"), ("recent?limit=1001", "limit"),
                         ("totals?window=\uff11h", "window"), ("recent?limit=\uff11\uff10", "limit"),  # full-width
                         ("recent?limit=1_0", "limit"), ("recent?limit=" + "9" * 5000, "limit")]:
        r = client.get(f"/dashboard/api/{query}")
        assert r.status_code == 400 and r.json()["error"]["param"] == param, query
    r = client.get("/dashboard/api/prompts")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert client.get("/dashboard/static/../../config.yaml").status_code == 404
    assert client.get("/dashboard/static/secret.js").status_code == 404


def test_page_and_assets_are_served_from_the_package(client: TestClient) -> None:
    page = client.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert 'content="5"' in page.text and "{{" not in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from elsewhere
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        r = client.get(f"/dashboard/static/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
        assert "https://" not in r.text and "import " not in r.text


def test_dashboard_with_a_slash_leads_to_the_page_relatively_so_a_path_prefix_survives(client: TestClient) -> None:
    """`/dashboard/` redirected to an absolute URL built from the request (`http://testserver/dashboard`): behind a
    reverse proxy serving the router under `/prefix/`, it sent the browser to the proxy's inner host, without the
    prefix. The Location is relative now, and resolves (RFC 3986, as a browser does) to the page either way."""
    from urllib.parse import urljoin

    for path, query in (("/dashboard/", ""), ("/dashboard/?window=1h", "?window=1h")):
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 307 and r.headers["location"] == f"../dashboard{query}", r.headers
        for served_at in ("http://router.internal:8000/dashboard/", "https://example.org/prefix/dashboard/"):
            assert urljoin(served_at, r.headers["location"]) == served_at.removesuffix("/") + query
    page = client.get("/dashboard/")
    assert page.status_code == 200 and str(page.url) == "http://testserver/dashboard"
    assert '<script src="dashboard/static/app.js"' in page.text, "the page's links resolve from /dashboard"


# -- who may see it -----------------------------------------------------------------------------------------
def _basic(key: str, user: str = "anyone") -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode()}


def test_an_admin_key_is_needed_when_keys_are_configured(tmp_path: Path) -> None:
    with TestClient(create_app(config=RouterConfig.load(_keys_config(tmp_path)))) as c:
        _chat(c, "by-admin", KEY_ADMIN)  # an admin key is an API key like the others
        _chat(c, "by-user", KEY_USER)
        for path in ("/dashboard", "/dashboard/api/totals", "/dashboard/static/app.js"):
            r = c.get(path)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            assert 'Basic realm="router dashboard"' in r.headers.get_list("www-authenticate")[-1]
            r = c.get(path, headers={"authorization": "Bearer sk-nobody"})
            assert r.status_code == 401 and r.json()["error"]["message"] == "invalid API key"
            for headers in ({"authorization": f"Bearer {KEY_USER}"}, _basic(KEY_USER)):
                r = c.get(path, headers=headers)
                assert r.status_code == 403, r.text
                err = r.json()["error"]
                assert err["type"] == "permission_error" and err["code"] == "permission_denied"
                assert "admin: true" in err["message"]
            for headers in ({"authorization": f"Bearer {KEY_ADMIN}"}, _basic(KEY_ADMIN), _basic(KEY_ADMIN, "")):
                assert c.get(path, headers=headers).status_code == 200, path
        assert c.get("/dashboard", headers={"authorization": "Basic !!not-base64"}).status_code == 401
        keys = {d["key"] for d in c.get("/dashboard/api/recent", headers=_basic(KEY_ADMIN)).json()["records"]}
        assert keys == {"key-" + hashlib.sha256(k.encode()).hexdigest()[:16] for k in (KEY_ADMIN, KEY_USER)}
        metrics = c.get("/metrics", headers={"authorization": f"Bearer {KEY_ADMIN}"}).text
        assert 'router_errors_total{status="403",type="permission_denied"}' in metrics


def test_without_keys_the_dashboard_is_open_like_the_rest_of_the_proxy(client: TestClient) -> None:
    assert client.get("/dashboard/api/totals").status_code == 200


def test_the_switch_turns_it_off(tmp_path: Path) -> None:
    config = RouterConfig.load(_keys_config(tmp_path, "dashboard: {enabled: false}"))
    with TestClient(create_app(config=config)) as c:
        for path in ("/dashboard", "/dashboard/api/totals", "/dashboard/static/app.js"):
            r = c.get(path, headers={"authorization": f"Bearer {KEY_ADMIN}"})
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        _chat(c, "still-routing", KEY_USER)


def test_admin_is_a_checked_field_of_keys_files_and_the_config(tmp_path: Path) -> None:
    sha = hashlib.sha256(KEY_ADMIN.encode()).hexdigest()
    file = tmp_path / "keys.yaml"
    file.write_text(f"keys:\n  - {{name: ops, sha256: {sha}, admin: true}}\n  - {{name: app, env: DASH_KEY}}\n")
    os.environ["DASH_KEY"] = KEY_USER
    try:
        store = KeyStore.from_file(file)
    finally:
        del os.environ["DASH_KEY"]
    assert store.lookup(KEY_ADMIN).admin is True and store.lookup(KEY_USER).admin is False  # type: ignore[union-attr]
    file.write_text(f"keys:\n  - {{name: ops, sha256: {sha}, admin: 'yes'}}\n")
    with pytest.raises(ConfigError, match="admin"):
        KeyStore.from_file(file)
    with pytest.raises(ConfigError, match="admin"):
        RouterConfig.load(_config(tmp_path / "c", f"keys:\n  - {{sha256: {sha}, admin: 1}}\n"))
    with pytest.raises(ConfigError, match="refresh_s"):
        RouterConfig.load(_config(tmp_path / "d", "dashboard: {refresh_s: 0}\n"))


# -- the simulated frontier ---------------------------------------------------------------------------------
def test_the_latest_simulation_and_its_frontier(tmp_path: Path) -> None:
    outcomes = tmp_path / "mixed.jsonl"
    outcomes.write_text("".join((ROOT / "data" / "outcomes" / f).read_text()
                                for f in ("sentiment_local.jsonl", "chat_local.jsonl", "math_local.jsonl")))
    folder = tmp_path / "simulations"
    folder.mkdir()
    (folder / "old.json").write_text("{}")  # not a result, but older: not the one shown
    os.utime(folder / "old.json", (time.time() - 60, time.time() - 60))
    result = subprocess.run([sys.executable, "-m", "router", "simulate", "--outcomes", str(outcomes), "--sweep",
                             "--json", "--no-progress"], capture_output=True, text=True, check=True, timeout=300)
    (folder / "mixed.json").write_text(result.stdout)
    raw = json.loads(result.stdout)
    config = RouterConfig.load(_config(tmp_path, f"dashboard: {{simulation: {folder}}}\n"))
    with TestClient(create_app(config=config)) as c:
        sim = c.get("/dashboard/api/simulation").json()
        assert sim["configured"] and sim["file"] == "mixed.json" and sim["requests"] == raw["requests"] == 373
        pts = sim["points"]
        policy = pts[0]
        assert policy["kind"] == "policy" and policy["accuracy"] == raw["accuracy"]
        assert policy["energy_j_per_request"] == raw["energy_j_per_request"]
        assert {p["name"] for p in pts if p["kind"] == "baseline"} == set(raw["baselines"])
        assert sum(p["kind"] == "sweep" for p in pts) == len(raw["sweep"])
        front = [pts[i] for i in sim["frontier"]]
        assert front and all(p["name"] != "oracle" for p in front)
        assert all(a["energy_j_per_request"] <= b["energy_j_per_request"] and a["accuracy"] < b["accuracy"]
                   for a, b in zip(front, front[1:], strict=False))
        for p in pts:  # no real point beats the frontier
            if p["name"] != "oracle":
                assert any(f["energy_j_per_request"] <= p["energy_j_per_request"] and f["accuracy"] >= p["accuracy"]
                           for f in front), p
        # `router simulate ... --json > folder/next.json` creates the file long before the result is in it (and a
        # run that stops on a bad line leaves it empty): the last good result stays, the newer file is named
        (folder / "next.json").write_text("")
        sim = c.get("/dashboard/api/simulation").json()
        assert sim["file"] == "mixed.json" and sim["points"] == pts and "error" not in sim
        assert len(sim["skipped"]) == 1 and "next.json: not a `router simulate --json`" in sim["skipped"][0]
        (folder / "next.json").write_text(result.stdout)  # the run finished: the new result is shown
        sim = c.get("/dashboard/api/simulation").json()
        assert sim["file"] == "next.json" and "skipped" not in sim and sim["points"] == pts
        for good in ("mixed.json", "next.json"):  # no result in the folder: the newest file's error
            (folder / good).write_text("{not json")
        os.utime(folder / "mixed.json", (time.time() + 5, time.time() + 5))
        sim = c.get("/dashboard/api/simulation").json()
        assert sim["configured"] and sim["file"] == "mixed.json" and "not a `router simulate --json`" in sim["error"]
    with TestClient(create_app(config=RouterConfig.load(_config(tmp_path / "none")))) as c:
        assert c.get("/dashboard/api/simulation").json() == {"configured": False}


# -- the ledger read the dashboard relies on -----------------------------------------------------------------
class _WideningDefault(SQLiteLedger):
    """A SQLite ledger with ``Ledger.latest_records``'s default (the spans widening back from now) instead of its
    indexed query, to check that default on a real store."""

    latest_records = Ledger.latest_records


def test_latest_records_default_widens_until_it_has_enough(tmp_path: Path) -> None:
    led = _WideningDefault(tmp_path / "l.sqlite3")
    now = time.time()
    stamps = [now - 100 * 86400, now - 5 * 86400, now - 5 * 86400 + 1, now - 4 * 86400, now - 600, now - 60]
    for i, ts in enumerate(stamps):
        led.record(_rec(i, ts, "m", "small", 1.0))
    assert [r.request_id for r in led.latest_records(4)] == ["old-5", "old-4", "old-3", "old-2"]
    assert [r.request_id for r in led.latest_records(50)] == [f"old-{i}" for i in range(5, -1, -1)]
    assert led.latest_records(0) == []
    led.close()


def test_a_carbon_budget_is_shown_in_grams_co2e_on_the_dashboard_and_in_the_metrics(tmp_path: Path) -> None:
    """A ``g_co2e`` budget's figures are grams: the dashboard's budget row says so (``unit``) and puts nothing in
    the joule fields; ``/metrics`` lists it in the ``*_grams_co2e`` gauges, not the joule ones."""
    policy = POLICY.replace("    joules: 1000\n", "    g_co2e: 2\n")
    config = _config(tmp_path)
    (config.parent / "policies" / "dash.yaml").write_text(policy)
    key = "gco2e:model:sentiment-onnx:3600s"
    with TestClient(create_app(config=RouterConfig.load(config))) as c:
        answer = _chat(c, "carbon-1")
        router = c.app.state.router  # type: ignore[attr-defined]
        router.ledger.flush()
        grams = router.ledger.budget_used(key, 3600)
        assert grams == pytest.approx(answer["routing"]["co2e_g"]) and grams > 0
        (row,) = [b for b in c.get("/dashboard/api/budgets").json()["budgets"] if b["budget"] == key]
        assert row["unit"] == "gCO2e" and row["limit"] == 2 and row["used"] == pytest.approx(grams)
        assert row["remaining"] == pytest.approx(2 - grams) and row["used_share"] == pytest.approx(grams / 2)
        assert row["limit_j"] is None and row["used_j"] is None and row["remaining_j"] is None
        metrics = c.get("/metrics").text
    assert f'router_budget_used_grams_co2e{{budget="{key}"}} {grams!r}' in metrics
    assert f'router_budget_remaining_grams_co2e{{budget="{key}",policy="dash"}} {2 - grams!r}' in metrics
    assert key not in "".join(line for line in metrics.splitlines() if "_joules" in line)


class _Clock:
    """A monotonic clock the test moves by hand (what ``SeenBudgets`` reads), so windows pass without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_seen_budgets_forget_a_budget_after_its_window_and_beyond_their_bound() -> None:
    """The per-key budgets met in decisions are remembered while their counter can be above zero: a budget not met
    for longer than its window (the seconds its key ends in) is dropped, and past ``max_count`` the ones met
    longest ago go first, so thousands of keys, or keys rotated daily, neither grow memory nor slow every scrape."""
    from router.proxy.metrics import SeenBudgets

    clock = _Clock()
    seen = SeenBudgets(max_count=4, clock=clock)
    hourly, daily = "key:key-00000000000000aa:tier:small:3600s", "key:key-00000000000000aa:tier:small:86400s"
    seen.add([hourly, daily])
    clock.now += 3600
    assert sorted(seen.current()) == [hourly, daily]  # a full window since: its counter may still hold that call
    clock.now += 1
    assert seen.current() == [daily]  # its window has rolled over: nothing left to show
    seen.add([hourly])  # met again: shown again
    assert sorted(seen.current()) == [hourly, daily]

    # past max_count the oldest go, at the next scrape and, without scrapes, once a quarter more has come
    for i in range(4):
        clock.now += 1
        seen.add([f"key-{i}:3600s"])
    assert sorted(seen.current()) == [f"key-{i}:3600s" for i in range(4)]
    for i in range(4, 9):
        clock.now += 1
        seen.add([f"key-{i}:3600s"])
        assert len(seen) <= 5  # max_count plus a quarter: pruned by add itself
    assert sorted(seen.current()) == [f"key-{i}:3600s" for i in range(5, 9)]
    seen.add(["no-window", "key-9:3600s"])  # a key with no window is kept until the count bound drops it
    clock.now += 7 * 86400
    assert seen.current() == ["no-window"]


def test_a_per_key_budget_is_listed_while_it_is_fresh(tmp_path: Path) -> None:
    """Through the proxy app: a ``scope: per_key`` budget's counter for a key no policy names is in the dashboard's
    budget table and ``/metrics`` once a request of that key met it, and gone once a window passed without one
    (its counter is zero by then); the policy's global budget is listed throughout."""
    from router.proxy.metrics import SeenBudgets

    config = _keys_config(tmp_path)
    per_key = "  - {model: sentiment-onnx, joules: 500, per: hour, scope: per_key}\n"
    (config.parent / "policies" / "dash.yaml").write_text(POLICY.replace("on_budget", per_key + "on_budget"))
    own = f"key:key-{hashlib.sha256(KEY_USER.encode()).hexdigest()[:16]}:model:sentiment-onnx:3600s"
    admin = {"authorization": f"Bearer {KEY_ADMIN}"}
    clock = _Clock()
    with TestClient(create_app(config=RouterConfig.load(config))) as c:
        c.app.state.proxy.metrics.budgets_seen = SeenBudgets(clock=clock)  # type: ignore[attr-defined]

        def listed() -> tuple[set[str], str]:
            c.app.state.router.ledger.flush()  # type: ignore[attr-defined]
            rows = c.get("/dashboard/api/budgets", headers=admin).json()["budgets"]
            return {r["budget"] for r in rows}, c.get("/metrics", headers=admin).text

        assert own not in listed()[0]
        answer = _chat(c, "per-key-1", KEY_USER)
        shown, metrics = listed()
        assert {own, "model:sentiment-onnx:3600s"} <= shown
        (row,) = [r for r in c.get("/dashboard/api/budgets", headers=admin).json()["budgets"] if r["budget"] == own]
        assert row["policy"] == "dash" and row["limit_j"] == 500
        assert row["used_j"] == pytest.approx(answer["routing"]["energy_j"])
        assert f'router_budget_remaining_joules{{budget="{own}",policy="dash"}}' in metrics
        clock.now += 3601
        shown, metrics = listed()
        assert own not in shown and "model:sentiment-onnx:3600s" in shown
        assert own not in metrics
