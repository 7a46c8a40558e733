"""Open-ended chat routing among the five FuseChat models of the AlpacaEval data (Llama-3.2-1B, Llama-3.2-3B,
Qwen-2.5-7B, Llama-3.1-8B, Gemma-2-9B), energy = the cards' active-parameter estimate x each answer's length, on
instructions the quality model never saw; then leave-one-source-out over AlpacaEval's five source sets.

    python benchmarks/bench_alpaca.py            # held-out 30 % of instructions + leave-one-source-out
    python benchmarks/bench_alpaca.py --quick    # held-out split only

The held-out instructions are a fixed ~30 % chosen by a hash of their id (``_quality_common.is_test``); nothing
is chosen on them. Each router is the real policy engine (``PolicyEngineBridge``) over P(correct) from the shipped
recipe refitted without the held-out instructions' outcomes (every other source included), or from the baseline's
predictions. Quality and energy are relative to always-best: the single model with the best mean score on the
same rows (Gemma-2-9B here).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
from _quality_common import (  # noqa: E402
    FUSECHAT,
    FixedScores,
    HeldOutQualityClassifier,
    alpaca_lines,
    alpaca_prompt_rows,
    is_test,
    ridge_baseline,
    write_subset,
)
from _simulate_common import IMG, md_table  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from router.cards import load_catalogue  # noqa: E402
from router.classify.features import window  # noqa: E402
from router.classify.onnx_classifier import OnnxRequestClassifier  # noqa: E402
from router.policy.loader import load_policy  # noqa: E402
from router.policy.schema import Policy  # noqa: E402
from router.simulate.outcomes import load_outcomes  # noqa: E402
from router.simulate.policy_bridge import PolicyEngineBridge  # noqa: E402
from router.simulate.simulator import RunStats, Simulator  # noqa: E402
from router.training.outcome_sources import load_sources  # noqa: E402
from router.training.quality_train import fit_recipe  # noqa: E402
from router.training.requests import build_request_set  # noqa: E402

SHIPPED = ("eco", "balanced", "quality")
CURVE = tuple(round(x, 3) for x in np.linspace(0.5, 1.0, 51))
console = Console()


def curve(sim: Simulator, targets: tuple[float, ...] = CURVE) -> list[RunStats]:
    """The relative_to_best target swept: one routing per target, classifications reused."""
    out = []
    for r in targets:
        sim.engine = PolicyEngineBridge(Policy(name=f"best-{r:g}", accuracy={"relative_to_best": r}))
        chosen, _ = sim.decide()
        out.append(sim.stats(f"relative_to_best {r:g}", chosen[sim.t.group], target=r))
    return out


def energy_at(points: list[RunStats], quality: float = 0.95) -> RunStats | None:
    """The least-energy point of a curve that keeps ``quality`` of always-best's score."""
    ok = [p for p in points if p.quality_vs_best >= quality - 1e-12]
    return min(ok, key=lambda p: p.energy_vs_best) if ok else None


def evaluate(cards, obs, requests, base, train: list[dict], test: list[dict], tmp: Path, tag: str,  # noqa: ANN001
             shipped: bool = True) -> dict:
    keep = ~alpaca_prompt_rows(obs, {window(x["prompt"])[0] for x in test})
    console.print(f"[dim]{tag}: fitting the quality model without {len(test)} held-out instructions[/]")
    recipe = fit_recipe(obs, requests, cards, keep)
    table = load_outcomes(write_subset(tmp / f"{tag}.jsonl", test, FUSECHAT), cards)
    sim = Simulator(table, cards, HeldOutQualityClassifier(base, recipe, cards), PolicyEngineBridge("balanced",
                    ROOT / "policies"))
    sim.classify()
    result = {"n": table.n, "curve": curve(sim)}
    if shipped:
        result["policies"] = {}
        for name in SHIPPED:
            sim.engine = PolicyEngineBridge(load_policy(ROOT / "policies" / f"{name}.yaml"))
            chosen, _ = sim.decide()
            result["policies"][name] = sim.stats(name, chosen[sim.t.group])
    preds, alpha = ridge_baseline(train, test, FUSECHAT)
    rsim = Simulator(table, cards, FixedScores(preds), sim.engine)
    rsim.classify()
    result["ridge"], result["ridge_alpha"] = curve(rsim), alpha
    result["singles"] = {m: sim.stats(m, np.full(table.n, table.models.index(m))) for m in FUSECHAT}
    result["oracle"] = sim.stats("oracle", sim.oracle())
    result["best"] = next(iter(sim.best_single.values()))
    return result


def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 6))
    for key, label, color in (("curve", "quality model (shipped recipe), relative_to_best swept", "#2563eb"),
                              ("ridge", "TF-IDF ridge per model (baseline), same sweep", "#9ca3af")):
        pts = sorted(result[key], key=lambda p: p.energy_vs_best)
        ax.plot([100 * p.energy_vs_best for p in pts], [100 * p.quality_vs_best for p in pts], "o-", ms=3,
                color=color, label=label)
    for name, p in result["singles"].items():
        ax.scatter(100 * p.energy_vs_best, 100 * p.quality_vs_best, marker="s", color="#6b7280")
        ax.annotate(name.removeprefix("fusechat-"), (100 * p.energy_vs_best, 100 * p.quality_vs_best), fontsize=8,
                    xytext=(4, -10), textcoords="offset points")
    o = result["oracle"]
    ax.scatter(100 * o.energy_vs_best, 100 * o.quality_vs_best, marker="P", s=120, color="#15803d", label="oracle")
    for name, p in result.get("policies", {}).items():
        ax.scatter(100 * p.energy_vs_best, 100 * p.quality_vs_best, marker="*", s=200, edgecolor="black",
                   label=f"shipped policy `{name}`", zorder=5)
    ax.axhline(95, color="#b91c1c", lw=0.8, ls="--")
    ax.axvline(70, color="#b91c1c", lw=0.8, ls="--", label="target: ≥ 95 % quality at ≤ 70 % energy")
    ax.set_xlabel("energy, % of always-best (Gemma-2-9B)")
    ax.set_ylabel("judge score, % of always-best")
    ax.set_title(f"FuseChat family on {result['n']} held-out AlpacaEval instructions")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(result: dict) -> None:
    t = Table(title=f"FuseChat family, {result['n']} held-out instructions: quality and energy vs always-best "
                    f"({result['best']})")
    for col in ("router", "quality vs best", "energy vs best", "share per model (1B/3B/7B/8B/9B)"):
        t.add_column(col, justify="left" if col == "router" else "right")
    rows = []
    for name, p in result["policies"].items():
        rows.append([f"shipped policy `{name}`", p])
    a, b = energy_at(result["curve"]), energy_at(result["ridge"])
    if a:
        rows.append([f"quality model, cheapest point ≥ 95 % ({a.name})", a])
    if b:
        rows.append([f"TF-IDF ridge (alpha {result['ridge_alpha']:g}), cheapest point ≥ 95 % ({b.name})", b])
    rows.append(["oracle (hindsight)", result["oracle"]])
    rows += [[f"always {m}", p] for m, p in result["singles"].items()]
    md = []
    for name, p in rows:
        shares = "/".join(f"{100 * p.share_requests.get(m, 0):.0f}" for m in FUSECHAT)
        t.add_row(name, pct(p.quality_vs_best), pct(p.energy_vs_best), shares)
        md.append([name, pct(p.quality_vs_best), pct(p.energy_vs_best), shares])
    console.print(t)
    print(md_table(["router", "quality vs best", "energy vs best", "share 1B/3B/7B/8B/9B (%)"], md))
    print()
    curve_rows = [[f"{p.target:g}", pct(p.quality_vs_best), pct(p.energy_vs_best), pct(q.quality_vs_best),
                   pct(q.energy_vs_best)] for p, q in zip(result["curve"], result["ridge"], strict=True)
                  if round(p.target * 100) % 5 == 0]
    print(md_table(["relative_to_best", "quality model: quality", "energy", "ridge: quality", "energy"],
                   curve_rows))


def main() -> None:
    quick = "--quick" in sys.argv
    cards = load_catalogue(ROOT / "models")
    obs = load_sources(cards)
    requests = [window(t)[0] for t in build_request_set()[0].texts]
    base = OnnxRequestClassifier(ROOT / "models" / "classifier")
    lines = alpaca_lines()
    with tempfile.TemporaryDirectory() as tmp:
        train = [x for x in lines if not is_test(x["id"])]
        test = [x for x in lines if is_test(x["id"])]
        result = evaluate(cards, obs, requests, base, train, test, Path(tmp), "held-out")
        report(result)
        plot(result, IMG / "alpaca_fusechat.png")
        print(f"plot: {IMG / 'alpaca_fusechat.png'}")
        if quick:
            return
        rows = []
        for source in sorted({x["task"] for x in lines}):
            held = [x for x in lines if x["task"] == source]
            rest = [x for x in lines if x["task"] != source]
            r = evaluate(cards, obs, requests, base, rest, held, Path(tmp), source.split("/")[1], shipped=True)
            a, b = energy_at(r["curve"]), energy_at(r["ridge"])
            bal = r["policies"]["balanced"]
            rows.append([source, str(r["n"]), pct(bal.quality_vs_best), pct(bal.energy_vs_best),
                         pct(a.energy_vs_best) if a else "never", pct(b.energy_vs_best) if b else "never",
                         f"{pct(r['oracle'].quality_vs_best)} @ {pct(r['oracle'].energy_vs_best)}", r["best"]])
        print()
        print(md_table(["held-out source", "instructions", "balanced: quality vs best", "energy vs best",
                        "quality model: energy at 95 %", "ridge: energy at 95 %", "oracle", "best single"], rows))


if __name__ == "__main__":
    main()
