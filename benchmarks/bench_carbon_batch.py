"""Deferrable work on real grids: 1,000 requests with a 24 h window, submitted at each hour of a week, run at once
against run by the batch scheduler's plan, on the shipped 2022 series of California, Texas and New York.

Workload: the project's own measured outcomes (``data/outcomes/{sentiment,chat,math}_local.jsonl``: what each
local model answered, whether it was right, and the joules it took), routed by the ``balanced`` policy through
the classifier and policy engine (``router simulate``'s machinery); 1,000 requests drawn from those rows (seed 0).
Routing does not depend on the hour, so every way of scheduling runs the same models on the same requests: the
quality is unchanged by construction and only *when* the joules are drawn changes.

Running: the batch runs ``--lines-per-hour`` lines an hour (default 1,000: the batch fits in one hour). Each
submission is replayed hour by hour as the scheduler does it: at every hour :func:`router.carbon.schedule.plan`
(the scheduler's own function) decides from the forecast whether this hour runs lines; the emissions are charged
at the series' real intensity of the hour they ran in. Forecasts:

* **perfect foresight**: the series itself (what a file source gives the scheduler: the future is known);
* **persistence**: the same hour of the previous day (the honest forecast a file can give);
* the **bound**: every line at the cleanest hour of its window.

    python benchmarks/bench_carbon_batch.py [--week 2022-07-04] [--lines-per-hour 1000] [--no-readme]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _simulate_common import IMG, ROOT, md_table, write_section  # noqa: E402

from router.carbon import PersistenceForecast, SeriesIntensity, plan  # noqa: E402
from router.carbon.grid import shipped_series  # noqa: E402

SERIES = {"California (CAISO)": "CA_2022_hourly.csv", "Texas (ERCOT)": "TX_2022_hourly.csv",
          "New York (NYISO)": "NY_2022_hourly.csv"}
N = 1000
WINDOW_S = 86_400.0


def routed_workload(policy: str) -> tuple[np.ndarray, float, str]:
    """(joules of each of the 1,000 requests under the policy, their accuracy, a description)."""
    from router.cards import load_cards
    from router.classify.onnx_classifier import load_default_classifier
    from router.config import RouterConfig
    from router.simulate.outcomes import load_outcomes
    from router.simulate.policy_bridge import PolicyEngineBridge
    from router.simulate.simulator import Simulator

    cfg = RouterConfig.load()
    cards = load_cards(cfg.models_dir)
    with tempfile.TemporaryDirectory() as tmp:
        mixed = Path(tmp) / "mixed.jsonl"
        parts = [ROOT / "data" / "outcomes" / f"{t}_local.jsonl" for t in ("sentiment", "chat", "math")]
        mixed.write_text("".join(p.read_text(encoding="utf-8") for p in parts if p.exists()), encoding="utf-8")
        table = load_outcomes(mixed, cards)
        engine = PolicyEngineBridge(policy, cfg.policies_dir)
        sim = Simulator(table, cards, load_default_classifier(cfg.models_dir), engine)
        result = sim.run(policy_name=engine.name, classifier_name="onnx")
    rows = np.arange(table.n)
    energy = sim._energy[rows, result.chosen]
    score = sim._score[rows, result.chosen]
    pick = np.random.default_rng(0).choice(table.n, size=N, replace=True)
    what = (f"{N:,} requests drawn (seed 0) from {table.n} measured rows (sentiment, chat, math), routed by "
            f"`{engine.name}`: {energy[pick].sum():,.0f} J in all")
    return energy[pick], float(score[pick].mean()), what


def run_batch(series: SeriesIntensity, forecaster: SeriesIntensity | PersistenceForecast | None, submit: float,
              joules: np.ndarray, lines_per_hour: float) -> float:
    """Grams CO2e of one batch submitted at ``submit``: at once (``forecaster`` None) or by the scheduler's plan,
    replanned every hour as the scheduler does."""
    deadline = submit + WINDOW_S
    left = len(joules)
    grams = 0.0
    t = submit
    per_line = float(joules.mean())
    while left > 0:
        if forecaster is None:
            run = True
        else:
            p = plan(forecaster.forecast(t, deadline, t), now=t, deadline=deadline, lines_left=left,
                     lines_per_hour=lines_per_hour)
            run = p.run_now
        if run:
            n = int(min(left, lines_per_hour))
            grams += n * per_line / 3.6e6 * series.intensity(t).g_per_kwh
            left -= n
        t += 3600.0
        if t > deadline + 48 * 3600:
            raise AssertionError("the plan missed the deadline")
    return grams


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--week", default="2022-07-04", help="Monday the week of submissions starts (UTC).")
    ap.add_argument("--lines-per-hour", type=float, default=1000.0)
    ap.add_argument("--policy", default="balanced")
    ap.add_argument("--no-readme", action="store_true")
    args = ap.parse_args()
    start = datetime.fromisoformat(args.week).replace(tzinfo=timezone.utc).timestamp()
    joules, accuracy, what = routed_workload(args.policy)
    print(what)
    print(f"accuracy of the routed requests: {accuracy:.1%} (the same whenever they run: routing does not depend on "
          "the hour)")
    submissions = [start + h * 3600.0 for h in range(168)]
    rows, curves = [], {}
    for label, name in SERIES.items():
        series = SeriesIntensity(shipped_series(name))
        at_once = np.array([run_batch(series, None, s, joules, args.lines_per_hour) for s in submissions])
        perfect = np.array([run_batch(series, series, s, joules, args.lines_per_hour) for s in submissions])
        persist = np.array([run_batch(series, PersistenceForecast(series), s, joules, args.lines_per_hour)
                            for s in submissions])
        bound = np.array([joules.sum() / 3.6e6 * min(series.intensity(s + k * 3600).g_per_kwh for k in range(24))
                          for s in submissions])
        curves[label] = (at_once, persist, perfect, series)
        rows.append([label, f"{at_once.mean():.3f}", f"{persist.mean():.3f}",
                     f"{1 - persist.sum() / at_once.sum():.1%}", f"{perfect.mean():.3f}",
                     f"{1 - perfect.sum() / at_once.sum():.1%}", f"{1 - bound.sum() / at_once.sum():.1%}"])
    header = ["grid (2022 series)", "at once g CO2e / batch", "scheduled, persistence g", "saved",
              "scheduled, perfect foresight g", "saved", "bound (cleanest hour)"]
    table = md_table(header, rows)
    print(table)
    IMG.mkdir(parents=True, exist_ok=True)
    png = IMG / "carbon_batch.png"
    _plot(curves, submissions, png, args.week)
    print(f"plot: {png}")
    if not args.no_readme:
        body = (f"`python benchmarks/bench_carbon_batch.py` (week of {args.week}, {args.lines_per_hour:g} lines an "
                f"hour): {what}; accuracy {accuracy:.1%} whichever way they run. Mean grams CO2e per batch over "
                f"the 168 submissions:\n\n{table}\n\n![CO2e per batch by submission hour](img/carbon_batch.png)")
        write_section("carbon-batch", body)


def _plot(curves: dict, submissions: list[float], path: Path, week: str) -> None:  # noqa: ANN001
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(curves), 1, figsize=(11, 2.9 * len(curves)), sharex=True)
    hours = np.arange(len(submissions))
    for ax, (label, (at_once, persist, perfect, series)) in zip(axes, curves.items(), strict=True):
        ax.plot(hours, at_once, color="#b91c1c", lw=1.4, label="run at once")
        ax.plot(hours, persist, color="#2563eb", lw=1.4, label="scheduled, persistence forecast")
        ax.plot(hours, perfect, color="#15803d", lw=1.2, ls="--", label="scheduled, perfect foresight")
        ax.set_ylabel("g CO2e / batch")
        ax.set_title(f"{label}: at once {at_once.mean():.2f} g, persistence {persist.mean():.2f} g, perfect "
                     f"{perfect.mean():.2f} g per batch", fontsize=10)
        ax.grid(alpha=0.3)
        bx = ax.twinx()
        bx.plot(hours, [series.intensity(s).g_per_kwh for s in submissions], color="#9ca3af", lw=0.8, alpha=0.6)
        bx.set_ylabel("grid g/kWh", color="#6b7280")
    axes[0].legend(fontsize=8, loc="upper right")
    axes[-1].set_xlabel(f"submission hour of the week starting {week} (UTC)")
    fig.suptitle("1,000 deferrable requests with a 24 h window, submitted at each hour of a week", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
