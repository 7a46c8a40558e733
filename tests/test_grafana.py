"""deploy/grafana/router.json and ``/metrics`` match: every metric name in the dashboard's PromQL is a series (or
a declared family's series name) of the proxy's own exposition, every label it groups by is a label of those
series, after the proxy has answered requests, refused one and read its energy and carbon budgets; and every
metric family the proxy exports has a panel, unless :data:`NOT_ON_THE_DASHBOARD` says why not."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from servers.procs import ROOT, models_dir
from starlette.testclient import TestClient

from router.config import RouterConfig
from router.proxy.app import create_app

DASHBOARD = ROOT / "deploy" / "grafana" / "router.json"
_SERIES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
           "gauge": ("",), "summary": ("", "_sum", "_count", "_created")}
_FROM_PROMETHEUS = {"instance", "job", "le"}  # target labels Prometheus adds, and the histogram buckets'
NOT_ON_THE_DASHBOARD: dict[str, str] = {}
"""Metric families /metrics exports that the dashboard shows no panel for, each with the reason."""


def _exprs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("expr", "query", "definition") and isinstance(v, str):
                yield v
            else:
                yield from _exprs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _exprs(v)


Exported = tuple[dict[str, set[str]], dict[str, set[str]]]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """Each metric family /metrics declares with its series names, and the labels seen on each series, after
    some traffic."""
    tmp = tmp_path_factory.mktemp("grafana")
    models = models_dir(tmp / "models", {})
    policies = tmp / "policies"
    policies.mkdir()
    (policies / "p.yaml").write_text("name: p\naccuracy: {min_accuracy: 0.0}\n"
                                     "budgets: [{model: sentiment-onnx, joules: 500, per: hour},\n"
                                     "          {model: sentiment-onnx, g_co2e: 5, per: hour}]\n")
    config = RouterConfig(models_dir=models, policies_dir=policies, default_policy="p",
                          ledger_url=f"sqlite:///{tmp / 'ledger.sqlite3'}", proxy={"warm_up": False})
    with TestClient(create_app(config=config)) as c:
        for _ in range(3):
            r = c.post("/v1/chat/completions", json={"model": "router", "messages": [
                {"role": "user", "content": "Is this review positive or negative? 'a witty, warm film'"}]})
            assert r.status_code == 200, r.text
        assert c.post("/v1/chat/completions", json={"model": "router", "messages": []}).status_code == 400
        text = c.get("/metrics").text
    families: dict[str, set[str]] = {}
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        if family.name.endswith("_created") and family.name.removesuffix("_created") in families:
            continue  # the creation time the text format writes as a gauge of its own after a counter or histogram
        families[family.name] = {family.name + suffix for suffix in _SERIES.get(family.type, ("",))}
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    return families, labels


def _queried(dashboard: dict[str, Any]) -> set[str]:
    return {m for e in _exprs(dashboard) for m in re.findall(r"\brouter_[a-z0-9_]+\b", e)}


def test_every_metric_the_grafana_dashboard_queries_is_exported(exported: Exported) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = list(_exprs(dashboard))
    assert len(exprs) >= 20
    used = _queried(dashboard)
    families, labels = exported
    names = set().union(*families.values())
    missing = used - names
    assert not missing, f"the Grafana dashboard queries metrics /metrics does not export: {sorted(missing)}"
    assert {"router_energy_joules_total", "router_requests_total", "router_budget_used_joules",
            "router_budget_used_grams_co2e", "router_decision_seconds_bucket"} <= used
    for e in exprs:
        metrics = set(re.findall(r"\brouter_[a-z0-9_]+\b", e))
        have = set().union(*(labels.get(m, set()) for m in metrics)) | _FROM_PROMETHEUS
        grouped = {lab.strip() for g in re.findall(r"\bby \(([^)]*)\)", e) for lab in g.split(",") if lab.strip()}
        grouped |= set(re.findall(r"\b([a-z_]+)=~", e))
        if all(m in labels for m in metrics):  # labels can be checked only on series that have samples here
            assert grouped <= have, f"{e}: no such label(s) {sorted(grouped - have)} on {sorted(metrics)}"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]


def test_every_metric_the_proxy_exports_has_a_panel(exported: Exported) -> None:
    """A metric added to /metrics without a panel (the carbon budget gauges were) fails here until the dashboard
    shows it or :data:`NOT_ON_THE_DASHBOARD` says why it does not."""
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {m for panel in dashboard["panels"] if panel["type"] != "row" for m in _queried(panel)}
    families, _ = exported
    assert set(NOT_ON_THE_DASHBOARD) <= set(families), "an exemption for a metric /metrics no longer exports"
    unshown = sorted(f for f, series in families.items() if not series & queried and f not in NOT_ON_THE_DASHBOARD)
    assert not unshown, f"/metrics exports these with no panel on the Grafana dashboard: {unshown}"
