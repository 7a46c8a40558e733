"""Models the router has no data for: leave-models-out error of a new model's predicted mean quality on AlpacaEval,
from its card's prior alone and after a few anchor requests (its own intercept and vector fitted with everything
else fixed, :func:`router.training.quality.fit_model_vector`, what ``router data measure MODEL --anchors N`` will
call).

    python benchmarks/bench_new_model.py

The 48 AlpacaEval models are split into 6 seeded folds; each fold's models lose all their AlpacaEval outcomes and
the quality model is refitted without them (and without the held-out ~30 % of instructions, the same split as
``bench_alpaca.py``). For each held-out model: the predicted mean judge score on the held-out instructions vs the
real one. Anchors are the first N training instructions in a fixed order (a hash of their id).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
from _quality_common import alpaca_lines, is_test  # noqa: E402
from _simulate_common import md_table  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import track  # noqa: E402

from router.cards import load_catalogue  # noqa: E402
from router.classify.features import window  # noqa: E402
from router.classify.quality import prior_logit  # noqa: E402
from router.training.outcome_sources import load_sources  # noqa: E402
from router.training.quality import _sigmoid, fit_model_vector  # noqa: E402
from router.training.quality_train import fit_recipe, quality_metadata  # noqa: E402
from router.training.requests import build_request_set  # noqa: E402

FOLDS = 6
ANCHORS = (10, 25, 50)
console = Console()


def main() -> None:
    cards = load_catalogue(ROOT / "models")
    obs = load_sources(cards)
    requests = [window(t)[0] for t in build_request_set()[0].texts]
    lines = alpaca_lines()
    test = [x for x in lines if is_test(x["id"])]
    train = sorted((x for x in lines if not is_test(x["id"])),
                   key=lambda x: hashlib.sha256(("anchor" + x["id"]).encode()).hexdigest())
    src = obs.sources.index("alpaca_eval")
    index = {p: i for i, p in enumerate(obs.prompts)}
    test_rows = np.array([index[window(x["prompt"])[0]] for x in test])
    models = sorted({m for x in lines for m in x["outcomes"]})
    rng = np.random.default_rng(20240605)
    order = rng.permutation(len(models))
    folds = [[models[i] for i in order[k::FOLDS]] for k in range(FOLDS)]
    is_test_prompt = np.isin(obs.prompt, test_rows)
    results = []
    for fold in track(folds, description="model folds", console=console):
        held = np.isin(obs.model, [obs.models.index(m) for m in fold])
        keep = ~((obs.source == src) & (held | is_test_prompt))
        recipe = fit_recipe(obs, requests, cards, keep)
        model = recipe.model
        prior = quality_metadata(recipe, cards, {})["priors"]["chat"]  # fitted on the other folds' models only
        h_test = model.represent(recipe.x[test_rows])
        others = [m for m in models if m not in fold]
        mean_of_others = float(np.mean([np.mean([x["outcomes"][m]["correct"] for x in train if m in x["outcomes"]])
                                        for m in others]))
        for name in fold:
            actual = float(np.mean([x["outcomes"][name]["correct"] for x in test if name in x["outcomes"]]))
            b0 = prior_logit(prior, cards[name])
            row = {"model": name, "actual": actual, "others_mean": mean_of_others, "prior": float(_sigmoid(b0))}
            for n in ANCHORS:
                anchors = [x for x in train if name in x["outcomes"]][:n]
                h_a = model.represent(recipe.vec.transform([window(x["prompt"])[0] for x in anchors]))
                y_a = np.array([x["outcomes"][name]["correct"] for x in anchors])
                b, v = fit_model_vector(h_a, y_a, prior_b=b0, prior_v=np.zeros(model.k))
                row[f"anchors{n}"] = float(_sigmoid(b + h_test @ v).mean())
                row[f"raw{n}"] = float(y_a.mean())
            results.append(row)
    cols = ["others_mean", "prior"] + [f"anchors{n}" for n in ANCHORS] + [f"raw{n}" for n in ANCHORS]
    names = {"others_mean": "mean of the other models (no card)", "prior": "card prior alone (size, family)",
             **{f"anchors{n}": f"prior + {n} anchors (fit_model_vector)" for n in ANCHORS},
             **{f"raw{n}": f"plain mean of the {n} anchor scores" for n in ANCHORS}}
    actual = np.array([r["actual"] for r in results])
    rows = []
    for c in cols:
        pred = np.array([r[c] for r in results])
        err = np.abs(pred - actual)
        rank = np.corrcoef(np.argsort(np.argsort(pred)), np.argsort(np.argsort(actual)))[0, 1]
        rows.append([names[c], f"{err.mean():.4f}", f"{np.median(err):.4f}", f"{err.max():.4f}", f"{rank:.2f}"])
    print(f"{len(results)} models, held-out instructions: {len(test)}; mean real score {actual.mean():.3f} "
          f"(range {actual.min():.3f}-{actual.max():.3f})")
    print(md_table(["predictor of a new model's mean judge score", "mean abs error", "median", "max",
                    "Spearman rank corr."], rows))
    worst = sorted(results, key=lambda r: -abs(r["anchors50"] - r["actual"]))[:5]
    print()
    print(md_table(["largest errors after 50 anchors", "real", "prior", "50 anchors"],
                   [[r["model"], f"{r['actual']:.3f}", f"{r['prior']:.3f}", f"{r['anchors50']:.3f}"]
                    for r in worst]))


if __name__ == "__main__":
    main()
