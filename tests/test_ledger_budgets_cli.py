"""`router ledger budgets`: each budget's spent + held, limit and what is left, from the counters the router
reserves against, the same rows as the dashboard's budgets panel."""

from __future__ import annotations

import json
from pathlib import Path

from cli_helpers import router_main
from servers.procs import models_dir
from starlette.testclient import TestClient

from router.config import RouterConfig
from router.ledger import SQLiteLedger
from router.proxy.app import create_app

REVIEW = "Is this review positive or negative? 'a gorgeous, witty film with a heart of gold'"
POLICY = """name: capped
accuracy: {min_accuracy: 0.0}
budgets:
  - model: sentiment-onnx
    joules: 1000
    per: hour
  - model: sentiment-onnx
    joules: 50
    per: day
    scope: per_key
on_budget_exhausted: reject
"""
PER_KEY = "key:key-0123456789abcdef:model:sentiment-onnx:86400s"


def _config(tmp: Path) -> tuple[Path, str]:
    policies = tmp / "policies"
    policies.mkdir()
    (policies / "capped.yaml").write_text(POLICY)
    url = f"sqlite:///{tmp / 'ledger.sqlite3'}"
    config = tmp / "config.yaml"
    config.write_text(f"models_dir: {models_dir(tmp / 'models', {})}\npolicies_dir: {policies}\n"
                      f"default_policy: capped\nledger_url: {url}\nproxy: {{warm_up: false}}\n")
    return config, url


def _without_clock(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "rolls_in_s"} for r in rows]


def test_budgets_show_spent_and_held_as_the_router_counts_them(tmp_path: Path) -> None:
    config, url = _config(tmp_path)
    with TestClient(create_app(config=RouterConfig.load(config))) as client:
        r = client.post("/v1/chat/completions", json={"model": "router",
                                                      "messages": [{"role": "user", "content": REVIEW}]})
        assert r.status_code == 200, r.text
        led = SQLiteLedger.from_url(url)
        held = led.try_reserve("model:sentiment-onnx:3600s", 100.0, 1000.0, 3600.0)  # a call still running
        assert held is not None
        led.try_reserve(PER_KEY, 20.0, 50.0, 86400.0)  # a key's own counter, which no policy names
        used = led.budget_used("model:sentiment-onnx:3600s", 3600.0)
        led.close()
        dashboard = client.get("/dashboard/api/budgets").json()["budgets"]
    assert used > 100.0  # the routed request's joules and the hold

    code, out = router_main("ledger", "budgets", "--config", str(config), "--json")
    assert code == 0, out
    rows = json.loads(out)["budgets"]
    (hourly,) = [b for b in rows if b["budget"] == "model:sentiment-onnx:3600s"]
    assert hourly["policy"] == "capped" and hourly["limit"] == 1000.0 and hourly["used"] == used
    assert hourly["remaining"] == 1000.0 - used and hourly["unit"] == "J"
    (key_row,) = [b for b in rows if b["budget"] == PER_KEY]  # listed from the ledger's counters
    assert key_row["limit"] == 50.0 and key_row["used"] == 20.0 and key_row["remaining"] == 30.0
    # one computation: the dashboard's panel shows the same figures (the per-key one once a request meets it)
    assert _without_clock([b for b in rows if b["budget"] != PER_KEY]) == _without_clock(dashboard)

    code, out = router_main("ledger", "budgets", "--config", str(config))
    assert code == 0, out
    line = next(ln for ln in out.splitlines() if "model:sentiment-onnx:3600s" in ln)
    assert "capped" in line and "1 kJ" in line and f"{100 * used / 1000:.1f} %" in line and "1 h" in line, out
    assert PER_KEY in out and "spent by finished calls plus held" in out


def test_budgets_of_a_ledger_that_is_not_there_is_an_error(tmp_path: Path) -> None:
    config, _ = _config(tmp_path)
    code, out = router_main("ledger", "budgets", "--config", str(config), "--ledger",
                            f"sqlite:///{tmp_path / 'typo.sqlite3'}")
    assert code == 2 and "no ledger at" in out and not (tmp_path / "typo.sqlite3").exists(), out
