"""The dashboard in a real browser: Debian's Chromium, headless, driven by Selenium through the system's
chromium-driver (nothing is downloaded), against a real ``router serve`` with API keys. The browser logs in the
way a person's browser does after the password prompt (HTTP Basic, the admin key as the password).

After a handful of requests the page must show the ledger's totals and models; after more requests it must show
the new figures without being reloaded. Screenshots are kept in ``test-artifacts/dashboard/`` (or
``$ROUTER_TEST_ARTIFACTS/dashboard/``); the test prints where."""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers.procs import ROOT, models_dir, remote_card, router_serve, upstream

from router.ledger import LedgerRecord, open_ledger

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
KEY_ADMIN = "sk-browser-admin-5f1e2d"
KEY_USER = "sk-browser-user-9a8b7c"
REVIEW = "Is this review positive or negative? 'a gorgeous, witty film with a heart of gold'"
QUESTION = "What is the capital of France?"
ARTIFACTS = Path(os.environ.get("ROUTER_TEST_ARTIFACTS") or ROOT / "test-artifacts") / "dashboard"


def _webdriver() -> Any:
    try:
        from selenium import webdriver
    except ImportError:
        pytest.skip("needs selenium (pip install -e '.[dev]')")
    if CHROMIUM is None or DRIVER is None:
        pytest.skip("needs Chromium and its driver from the distribution (apt-get install chromium chromium-driver; "
                    "`make test` installs them through scripts/ensure-services.sh)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="router-chromium-")
    # as root Chromium needs --no-sandbox; the rest keep it off the network (background services, QUIC, updates)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1360,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.profile_dir = profile
    return driver


@pytest.fixture
def browser() -> Iterator[Any]:
    driver = _webdriver()
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(driver.profile_dir, ignore_errors=True)


def _until(what: str, check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.time() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"the page did not show {what} within {timeout:g} s")
        time.sleep(0.2)


def _ledger(url: str) -> list[LedgerRecord]:
    ledger = open_ledger(url, journal=False)
    try:
        return ledger.records()
    finally:
        ledger.close()


def _snapshot(driver: Any) -> dict[str, Any]:
    """What the page shows, read in one script (the page redraws its tables every second: element handles held
    across a redraw go stale)."""
    return driver.execute_script("""
        const rows = (sel, key) => [...document.querySelectorAll(sel + " tbody tr")].map(tr => tr.dataset[key]);
        const groups = {};
        for (const tr of document.querySelectorAll("#groups tbody tr")) groups[tr.dataset.group] = +tr.dataset.requests;
        const el = (id) => document.getElementById(id);
        return {requests: el("total-requests").dataset.value, requests_text: el("total-requests").textContent,
                energy: el("total-energy").dataset.value, groups, recent: rows("#recent", "requestId"),
                budgets: rows("#budgets", "budget"), bars: document.querySelectorAll("#chart-energy rect").length,
                error_hidden: el("error").hidden, status: el("status").className,
                not_reloaded: window.__notReloaded === true};""")


def _shot(driver: Any, name: str) -> Path:
    """A screenshot of the whole page (the window is made as tall as the page first)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1360, min(4000, height + 40))
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    return path


def test_the_page_shows_the_ledger_and_follows_new_requests(
    browser: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    with upstream(tmp_path) as up:
        cards = {"remote-echo": remote_card("remote-echo", up, "echo", tier="small"),
                 "remote-large": remote_card("remote-large", up, "echo", tier="large", per_call_j=5.0)}
        models = models_dir(tmp_path / "models", cards)
        ledger_url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
        sha = {k: hashlib.sha256(k.encode()).hexdigest() for k in (KEY_ADMIN, KEY_USER)}
        config = tmp_path / "config.yaml"
        config.write_text(
            f"models_dir: {models}\npolicies_dir: {ROOT / 'policies'}\nledger_url: {ledger_url}\n"
            f"dashboard: {{refresh_s: 1}}\nkeys:\n  - {{name: ops, sha256: {sha[KEY_ADMIN]}, admin: true}}\n"
            f"  - {{name: app, sha256: {sha[KEY_USER]}}}\n")
        with router_serve(config, tmp_path) as url:
            def ask(rid: str, text: str, model: str = "router") -> None:
                r = httpx.post(f"{url}/v1/chat/completions", timeout=20, json={
                    "model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 16},
                    headers={"authorization": f"Bearer {KEY_USER}", "x-request-id": rid})
                assert r.status_code == 200, r.text

            for i in range(3):
                ask(f"review-{i}", REVIEW)
            ask("echo-0", QUESTION, "remote-echo")
            ask("echo-1", QUESTION, "remote-echo")
            host = url.removeprefix("http://")
            browser.get(f"http://ops:{KEY_ADMIN}@{host}/dashboard")  # the browser sends it as HTTP Basic

            def shows_ledger(least: int) -> tuple[list[LedgerRecord], dict[str, Any]] | None:
                records = _ledger(ledger_url)
                seen = _snapshot(browser)
                # the status reads "live" once a whole refresh is done (the first also fetches the simulation)
                ok = len(records) >= least and seen["requests"] == str(len(records)) and "live" in seen["status"]
                return (records, seen) if ok else None

            records, seen = _until("the ledger's request count", lambda: shows_ledger(5))
            assert seen["requests_text"] == f"{len(records):,}"
            assert math.isclose(float(seen["energy"]), sum(r.energy_j for r in records), rel_tol=1e-9)
            assert seen["groups"] == dict(Counter(r.model for r in records))
            assert {"sentiment-onnx", "remote-echo"} <= set(seen["groups"])
            assert seen["recent"][:2] == ["echo-1", "echo-0"] and {"review-0", "review-1", "review-2"} <= set(
                seen["recent"])
            assert seen["error_hidden"] and "live" in seen["status"]
            assert seen["bars"] > 0  # the stacked bars are drawn
            assert "tier:large:3600s" in seen["budgets"]  # the shipped policies' budget on the large tier
            first = _shot(browser, "dashboard-first.png")

            browser.execute_script("window.__notReloaded = true")
            for i in range(3):
                ask(f"large-{i}", QUESTION, "remote-large")
            ask("review-3", REVIEW)
            records, seen = _until("the new requests", lambda: shows_ledger(9))
            assert seen["not_reloaded"], "the page was reloaded"
            _until("remote-large in the table and the newest decision first", lambda: (
                (s := _snapshot(browser))["groups"] == dict(Counter(r.model for r in records))
                and s["recent"][0] == "review-3"))
            seen = _snapshot(browser)
            assert math.isclose(float(seen["energy"]), sum(r.energy_j for r in records), rel_tol=1e-9)

            Select(browser.find_element(By.ID, "by")).select_by_value("tier")
            _until("the totals by tier", lambda: _snapshot(browser)["groups"] == dict(Counter(r.tier for r in records)))
            Select(browser.find_element(By.ID, "by")).select_by_value("model")
            _until("the totals by model again", lambda: "remote-large" in _snapshot(browser)["groups"])
            second = _shot(browser, "dashboard.png")
            logs = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
            assert not logs, logs
    with capsys.disabled():
        print(f"\ndashboard screenshots: {first} and {second}")


def test_an_empty_ledger_and_the_note_on_stored_prompts(browser: Any, tmp_path: Path) -> None:
    """A new ledger draws zeros and no error; with ``prompts: {store: true}`` the note under the decisions says the
    ledger keeps prompts (and that the page never shows them), not that it keeps none."""
    config = _config(tmp_path, "prompts: {store: true}\n")
    with router_serve(config, tmp_path) as url:
        browser.get(f"{url}/dashboard")

        def live() -> dict[str, Any] | None:
            shown = browser.execute_script("""
                const el = (id) => document.getElementById(id);
                return {status: el("status").className, requests: el("total-requests").dataset.value,
                        kind: el("energy-kind").textContent, error_hidden: el("error").hidden,
                        note: document.querySelector("#recent + p.hint").textContent};""")
            return shown if "live" in shown["status"] else None

        seen = _until("the page live", live)
        assert seen["requests"] == "0" and seen["kind"] == "none" and seen["error_hidden"]
        assert seen["note"].startswith("Prompts are stored in the ledger") and "never shows them" in seen["note"]
        logs = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not logs, logs


def test_times_are_shown_in_utc_in_a_browser_elsewhere(browser: Any, tmp_path: Path) -> None:
    """The page labelled its UTC buckets and the decisions' times with the browser's clock: in India every hourly
    label ended in :30 and a day's bar in Los Angeles read 17:00 the day before, unlike `router ledger`."""
    import datetime

    ledger_url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    ts = time.time() - 600
    ledger = open_ledger(ledger_url)
    try:
        ledger.record(LedgerRecord("utc-check", "sentiment-onnx", "specialist", 0.5, "estimated:cpu-time", ts=ts))
    finally:
        ledger.close()
    config = _config(tmp_path)
    browser.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": "Asia/Kolkata"})
    with router_serve(config, tmp_path) as url:
        browser.get(f"{url}/dashboard")
        shown = _until("the decision", lambda: browser.execute_script("""
            const row = document.querySelector("#recent tbody tr");
            const labels = [...document.querySelectorAll("#chart-energy text")].map((t) => t.textContent);
            return row && {time: row.cells[0].textContent, head: document.querySelector("#recent th").textContent,
                           labels: labels, local: new Date(0).getTimezoneOffset()};"""))
    assert shown["local"] == -330, "the browser runs in India's time zone"
    assert shown["time"] == datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%H:%M:%S"), shown
    assert shown["head"] == "time (UTC)"
    assert shown["labels"] and not any(label.endswith(":30") for label in shown["labels"]), shown["labels"]


def test_the_co2e_total_says_how_many_records_have_no_figure(browser: Any, tmp_path: Path) -> None:
    """Records without a CO2e figure were counted as 0 g under the page's CO2e total, with no hint."""
    ledger_url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    ledger = open_ledger(ledger_url)
    try:
        for i, co2e in enumerate((300.0, None)):  # 1 kWh each
            ledger.record(LedgerRecord(f"r{i}", "sentiment-onnx", "specialist", 3.6e6, "measured:rapl", co2e_g=co2e,
                                       ts=time.time() - 600))
    finally:
        ledger.close()
    config = _config(tmp_path)
    with router_serve(config, tmp_path) as url:
        browser.get(f"{url}/dashboard")
        sub = _until("the CO2e total", lambda: browser.execute_script(
            'return document.getElementById("total-co2e").dataset.value && '
            'document.getElementById("total-co2e-sub").textContent'))
    assert sub == "at 300 g/kWh · 1 of 2 records have no CO2e figure (3.6 MJ not counted)", sub


def test_a_bad_grouping_in_the_address_falls_back_to_the_default_once(browser: Any, tmp_path: Path) -> None:
    """`#by=key` in the address (a grouping the API does not have) made every refresh fail with the same 400 until
    the address was edited; the page now draws the default grouping and says so once. The address here ends in a
    slash: the browser follows the relative redirect to the page."""
    config = _config(tmp_path, "dashboard: {refresh_s: 1}\n")
    with router_serve(config, tmp_path) as url:
        browser.get(f"{url}/dashboard/#window=6h&by=key")

        def shown() -> dict[str, Any]:
            return browser.execute_script("""
                const el = (id) => document.getElementById(id);
                return {status: el("status").className, updated: document.body.dataset.updated || "",
                        error_hidden: el("error").hidden, error: el("error").textContent,
                        notice_hidden: el("notice")?.hidden, notice: el("notice")?.textContent,
                        by: el("by").value, window: el("window").value,
                        path: location.pathname, hash: location.hash};""")

        def live_since(updated: str) -> dict[str, Any] | None:
            seen = shown()
            return seen if "live" in seen["status"] and seen["updated"] != updated else None

        first = _until("the page live", lambda: live_since(""))
        again = _until("a later refresh", lambda: live_since(first["updated"]))
    for seen in (first, again):
        assert seen["status"] == "status live" and seen["error_hidden"], seen
        assert not seen["notice_hidden"] and seen["by"] == "model" and seen["window"] == "6h", seen
        assert seen["notice"] == "#by=key is not a grouping of this page (model, tier): showing by model.", seen
        assert seen["path"] == "/dashboard" and seen["hash"] == "#window=6h&by=model", seen
    logs = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not logs, logs


def _config(tmp_path: Path, extra: str = "") -> Path:
    """A config for `router serve` on no model cards, the shipped policies and the ledger at
    ``tmp_path/ledger.sqlite3`` (what a test wrote there first, if anything), plus ``extra`` YAML lines."""
    models = models_dir(tmp_path / "models", {})
    config = tmp_path / "config.yaml"
    config.write_text(f"models_dir: {models}\npolicies_dir: {ROOT / 'policies'}\n"
                      f"ledger_url: sqlite:///{tmp_path / 'ledger.sqlite3'}\nproxy: {{warm_up: false}}\n{extra}")
    return config
