"""An experiment on the decision rule, not a shipped feature: on the FuseChat family (as in bench_alpaca.py), does
pricing energy beat the policy engine's threshold rule?

- threshold (what policies do): the cheapest model whose predicted score is at least ``r`` x the best predicted.
- energy price: the model with the highest ``predicted score - w x (its expected joules / the largest's)``.

Both rules read the same predictions: the shipped quality recipe refitted without the rows it is tested on. Each
rule's setting is chosen the honest way, as the cheapest one that keeps 95 % of always-best's quality in 4-fold
cross-validation on the training instructions (a refit per fold), and then applied once to the held-out 30 %; the
held-out curve's own cheapest point at 95 % is printed beside it, read off in hindsight as bench_alpaca.py does.

    python benchmarks/alpaca_tradeoff.py
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
from _quality_common import FUSECHAT, HeldOutQualityClassifier, alpaca_lines, alpaca_prompt_rows, is_test  # noqa: E402
from _simulate_common import md_table  # noqa: E402
from sklearn.model_selection import KFold  # noqa: E402

from router.cards import load_catalogue  # noqa: E402
from router.classify.features import window  # noqa: E402
from router.classify.onnx_classifier import OnnxRequestClassifier  # noqa: E402
from router.training.outcome_sources import load_sources  # noqa: E402
from router.training.quality_train import fit_recipe  # noqa: E402
from router.training.requests import build_request_set  # noqa: E402

Rule = Callable[[np.ndarray, np.ndarray, float], np.ndarray]
KEEP = 0.95


def threshold(pred: np.ndarray, rel_energy: np.ndarray, r: float) -> np.ndarray:
    adequate = pred >= r * pred.max(axis=1, keepdims=True) - 1e-12
    return np.where(adequate, rel_energy, np.inf).argmin(axis=1)


def energy_price(pred: np.ndarray, rel_energy: np.ndarray, w: float) -> np.ndarray:
    return (pred - w * rel_energy).argmax(axis=1)


RULES: dict[str, tuple[Rule, np.ndarray]] = {
    "threshold (relative_to_best r)": (threshold, np.round(np.linspace(0.5, 1.0, 51), 3)),
    "energy price (w)": (energy_price, np.round(np.linspace(0.0, 0.6, 121), 3)),
}


def outcomes(rows: list[dict], cards: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(judge scores, joules of each model's actual answer, card joules at a flat 500-token answer), per row."""
    score = np.array([[x["outcomes"][m]["correct"] for m in FUSECHAT] for x in rows])
    joules = np.array([[cards[m].energy.joules(len(x["prompt"]) // 4, x["outcomes"][m]["output_tokens"])
                        for m in FUSECHAT] for x in rows])
    expected = np.array([[cards[m].energy.joules(len(x["prompt"]) // 4, 500) for m in FUSECHAT] for x in rows])
    return score, joules, expected


def vs_best(chosen: np.ndarray, score: np.ndarray, joules: np.ndarray) -> tuple[float, float]:
    """(quality, energy) relative to the single model with the best mean score on these rows."""
    best = int(score.mean(axis=0).argmax())
    rows = np.arange(len(chosen))
    return float(score[rows, chosen].mean() / score[:, best].mean()), float(joules[rows, chosen].sum()
                                                                           / joules[:, best].sum())


def predictions(rows: list[dict], held_out: set[str], ctx: dict) -> np.ndarray:
    keep = ~alpaca_prompt_rows(ctx["obs"], held_out)
    recipe = fit_recipe(ctx["obs"], ctx["requests"], ctx["cards"], keep)
    clf = HeldOutQualityClassifier(ctx["base"], recipe, ctx["cards"])
    return np.array([[c.p_correct[m] for m in FUSECHAT] for c in clf.classify_batch([x["prompt"] for x in rows])])


def cheapest(points: dict[float, tuple[float, float]]) -> tuple[float, float, float] | None:
    ok = [(s, q, e) for s, (q, e) in points.items() if q >= KEEP - 1e-12]
    return min(ok, key=lambda p: p[2]) if ok else None


def main() -> None:
    cards = load_catalogue(ROOT / "models")
    ctx = {"cards": cards, "obs": load_sources(cards), "base": OnnxRequestClassifier(ROOT / "models" / "classifier"),
           "requests": [window(t)[0] for t in build_request_set()[0].texts]}
    lines = [x for x in alpaca_lines() if all(m in x["outcomes"] for m in FUSECHAT)]
    train, test = [x for x in lines if not is_test(x["id"])], [x for x in lines if is_test(x["id"])]
    test_prompts = {window(x["prompt"])[0] for x in test}

    folds = []
    for k, (_, fold) in enumerate(KFold(4, shuffle=True, random_state=0).split(train)):
        rows = [train[i] for i in fold]
        print(f"fold {k + 1}/4: refitting the quality model without {len(rows)} training instructions", flush=True)
        folds.append((rows, predictions(rows, test_prompts | {window(x["prompt"])[0] for x in rows}, ctx)))
    print("held-out split: refitting without its instructions", flush=True)
    test_pred = predictions(test, test_prompts, ctx)
    t_score, t_joules, t_expected = outcomes(test, cards)

    table = []
    for name, (rule, grid) in RULES.items():
        cv = {}
        for s in grid:
            per_fold = []
            for rows, pred in folds:
                score, joules, expected = outcomes(rows, cards)
                per_fold.append(vs_best(rule(pred, expected / expected[:, [-1]], s), score, joules))
            cv[s] = tuple(np.mean(per_fold, axis=0))
        held = {s: vs_best(rule(test_pred, t_expected / t_expected[:, [-1]], s), t_score, t_joules) for s in grid}
        chosen = cheapest(cv)
        hindsight = cheapest(held)
        row = [name]
        if chosen:
            q, e = held[chosen[0]]
            row += [f"{chosen[0]:g}", f"{100 * chosen[1]:.1f} % / {100 * chosen[2]:.1f} %",
                    f"{100 * q:.1f} % / {100 * e:.1f} %"]
        else:
            row += ["-", "never", "-"]
        row.append(f"{100 * hindsight[1]:.1f} % / {100 * hindsight[2]:.1f} % ({hindsight[0]:g})" if hindsight
                   else "never")
        table.append(row)
    print()
    print(md_table(["rule", "setting chosen in CV", "CV: quality / energy", "held-out: quality / energy",
                    "held-out, cheapest ≥ 95 % in hindsight"], table))


if __name__ == "__main__":
    main()
