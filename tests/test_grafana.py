"""deploy/grafana/router.json queries only what ``/metrics`` exports: every metric name in its PromQL is a series
(or a declared family's series name) of the proxy's own exposition, and every label it groups by is a label of
those series, after the proxy has answered requests, refused one and read its budgets."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from servers.procs import ROOT, models_dir
from starlette.testclient import TestClient

from router.config import RouterConfig
from router.proxy.app import create_app

DASHBOARD = ROOT / "deploy" / "grafana" / "router.json"
_SERIES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
           "gauge": ("",), "summary": ("", "_sum", "_count", "_created")}
_FROM_PROMETHEUS = {"instance", "job", "le"}  # target labels Prometheus adds, and the histogram buckets'


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


def _exported(tmp: Path) -> tuple[set[str], dict[str, set[str]]]:
    """Series names /metrics declares, and the labels seen on each, after some traffic."""
    models = models_dir(tmp / "models", {})
    policies = tmp / "policies"
    policies.mkdir()
    (policies / "p.yaml").write_text("name: p\naccuracy: {min_accuracy: 0.0}\n"
                                     "budgets: [{model: sentiment-onnx, joules: 500, per: hour}]\n")
    config = RouterConfig(models_dir=models, policies_dir=policies, default_policy="p",
                          ledger_url=f"sqlite:///{tmp / 'ledger.sqlite3'}", proxy={"warm_up": False})
    with TestClient(create_app(config=config)) as c:
        for _ in range(3):
            r = c.post("/v1/chat/completions", json={"model": "router", "messages": [
                {"role": "user", "content": "Is this review positive or negative? 'a witty, warm film'"}]})
            assert r.status_code == 200, r.text
        assert c.post("/v1/chat/completions", json={"model": "router", "messages": []}).status_code == 400
        text = c.get("/metrics").text
    names: set[str] = set()
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in _SERIES.get(family.type, ("",)))
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    return names, labels


def test_every_metric_the_grafana_dashboard_queries_is_exported(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = list(_exprs(dashboard))
    assert len(exprs) >= 20
    used = {m for e in exprs for m in re.findall(r"\brouter_[a-z_]+\b", e)}
    names, labels = _exported(tmp_path)
    missing = used - names
    assert not missing, f"the Grafana dashboard queries metrics /metrics does not export: {sorted(missing)}"
    assert {"router_energy_joules_total", "router_requests_total", "router_budget_used_joules",
            "router_decision_seconds_bucket"} <= used
    for e in exprs:
        metrics = set(re.findall(r"\brouter_[a-z_]+\b", e))
        have = set().union(*(labels.get(m, set()) for m in metrics)) | _FROM_PROMETHEUS
        grouped = {lab.strip() for g in re.findall(r"\bby \(([^)]*)\)", e) for lab in g.split(",") if lab.strip()}
        grouped |= set(re.findall(r"\b([a-z_]+)=~", e))
        if all(m in labels for m in metrics):  # labels can be checked only on series that have samples here
            assert grouped <= have, f"{e}: no such label(s) {sorted(grouped - have)} on {sorted(metrics)}"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
