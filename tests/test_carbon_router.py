"""The Router with the grid: records carry intensity and zone, carbon budgets reserve and refuse in grams, a
policy switches with the grid, and Router.batch runs at once on a flat grid and reports refused lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from router import Router
from router.config import RouterConfig
from router.errors import BudgetExhaustedError

ROOT = Path(__file__).resolve().parents[1]
REVIEW = [{"role": "user", "content": "Is this review positive or negative? 'a gorgeous, witty film'"}]


def _router(tmp: Path, policies: dict[str, str] | None = None, **carbon: object) -> Router:
    pol = tmp / "policies"
    pol.mkdir(exist_ok=True)
    for name in ("eco", "balanced", "quality"):
        (pol / f"{name}.yaml").write_text((ROOT / "policies" / f"{name}.yaml").read_text())
    for name, text in (policies or {}).items():
        (pol / f"{name}.yaml").write_text(text)
    cfg = RouterConfig.model_validate({
        "ledger_url": f"sqlite:///{tmp}/ledger.sqlite3", "policies_dir": str(pol), "journal": {"enabled": False},
        "carbon": carbon, "batch": {"poll_s": 0.05}})
    return Router(cfg)


def test_every_record_carries_the_intensity_and_zone_it_was_computed_at(tmp_path: Path) -> None:
    clock = tmp_path / "clock"
    clock.write_text("1656633600")
    with _router(tmp_path, zone="US-CAL", zones={"US-CAL": {"type": "file", "path": "CA_2022_hourly.csv"}},
                 clock_file=str(clock), pue=1.2) as r:
        resp = r.complete(REVIEW)
        rec = r.ledger.records()[-1]
        g = r.grid.intensity("US-CAL", 1656633600).g_per_kwh
        assert rec.zone == "US-CAL" and rec.grid_g_per_kwh == pytest.approx(g)
        assert rec.co2e_g == pytest.approx(rec.energy_j / 3.6e6 * g * 1.2)
        assert resp.routing.co2e_g == pytest.approx(rec.co2e_g)


def carbon_policy(tmp: Path) -> str:
    """A budget with room for one call's estimated grams (at the default 475 g/kWh), not for two."""
    probe = tmp / "probe"
    probe.mkdir()
    with _router(probe) as r:
        grams = r.prepare(REVIEW, policy="eco").decision.estimated_j / 3.6e6 * 475.0
    return f"""name: tight
accuracy: {{min_accuracy: 0.0}}
budgets:
  - model: "*"
    g_co2e: {grams * 1.0001!r}
    per: day
on_budget_exhausted: reject
"""


def test_a_carbon_budget_reserves_and_refuses_in_grams(tmp_path: Path) -> None:
    with _router(tmp_path, {"tight": carbon_policy(tmp_path)}) as r:
        r.complete(REVIEW, policy="tight")
        key = "gco2e:model:sentiment-onnx:86400s"
        used = r.ledger.budget_used(key, 86400)
        rec = r.ledger.records()[-1]
        assert used == pytest.approx(rec.co2e_g) and 0 < used < 0.01, "settled to the call's grams"
        assert r.ledger.budget_used("model:sentiment-onnx:86400s", 86400) == 0.0, "joule budgets are apart"
        with pytest.raises(BudgetExhaustedError, match="g CO2e|gCO2e"):
            r.complete(REVIEW, policy="tight")


SWITCH = """name: follow
accuracy: {relative_to_largest: 0.99}
grid: {above_g_per_kwh: 300, use_policy: eco}
"""


def test_a_policy_turns_eco_when_the_grid_is_dirty(tmp_path: Path) -> None:
    with _router(tmp_path, {"follow": SWITCH}, zones={"local": {"type": "static", "g_per_kwh": 420}}) as r:
        d = r.prepare(REVIEW, policy="follow").decision
        assert d.policy == "eco" and d.reason.startswith("grid 420 g/kWh > 300: policy `eco` instead of `follow`")
    clean = tmp_path / "clean"
    clean.mkdir()
    with _router(clean, {"follow": SWITCH}, zones={"local": {"type": "static", "g_per_kwh": 120}}) as r:
        assert r.prepare(REVIEW, policy="follow").decision.policy == "follow"


def test_router_batch_starts_at_once_on_a_flat_grid_and_reports_refused_lines(tmp_path: Path) -> None:
    with _router(tmp_path, {"tight": carbon_policy(tmp_path)}) as r:
        handle = r.batch([{"model": "router:tight", "messages": REVIEW} for _ in range(3)])
        doc = handle.wait(timeout=60)
        assert doc["status"] == "completed" and doc["request_counts"] == {"total": 3, "completed": 1, "failed": 2}
        results = handle.results()
        assert sorted(results) == ["request-1", "request-2", "request-3"]
        refused = [x for x in results.values() if x["response"]["status_code"] == 429]
        assert len(refused) == 2
        for x in refused:
            err = x["response"]["body"]["error"]
            assert err["code"] == "budget_exhausted" and "carbon budget" in err["message"]
        assert "this hour is among the cleanest" in doc["carbon"]["plan"]
