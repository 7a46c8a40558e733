"""Which quality model to ship: the per-model TF-IDF heads of the previous classifier, the shipped heads basis
(the same heads factorised into one shared request vector), and a bilinear model trained jointly (RouteLLM's
``mf`` style), on the same splits.

    python benchmarks/bench_quality.py              # both parts (~10 min on 2 busy cores)
    python benchmarks/bench_quality.py mmlu         # MMLU, 5 folds with whole subjects held out
    python benchmarks/bench_quality.py alpaca       # AlpacaEval, 4 folds of the training 70 % of instructions

MMLU: APGR / CPT of the score P(GPT-4) - P(Mixtral) out of fold (GroupKFold by subject, as
``router train classifier``), every other outcome source in training. AlpacaEval: squared error of the five
FuseChat models' judge scores on held-out instructions of the training split only (the benchmark's held-out 30 %
is not touched here), against the constant (each model's training mean).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
from _quality_common import FUSECHAT, alpaca_lines, alpaca_prompt_rows, is_test, ridge_baseline  # noqa: E402
from _simulate_common import md_table  # noqa: E402
from sklearn.model_selection import GroupKFold, KFold  # noqa: E402

from router.cards import load_catalogue  # noqa: E402
from router.classify.features import window  # noqa: E402
from router.training.classifier import (  # noqa: E402  # noqa: E402
    HOSTED,
    McData,
    held_out_metrics,
    mmlu_data,
    subject_held_out_eval,
    tfidf_featurizer,
)
from router.training.outcome_sources import FLOORS, load_sources  # noqa: E402
from router.training.quality import QualityModel  # noqa: E402
from router.training.quality_train import fit_recipe  # noqa: E402
from router.training.requests import build_request_set  # noqa: E402

BILINEAR = {"k": 16, "l2_w": 1e-4, "l2_v": 1e-3}
"""The bilinear model's best setting of a small grid (k 8/16/32, penalties 3e-5..1e-2) by 4-fold CV on the
training instructions; lower penalties overfit (squared error 0.19-0.21 against 0.16 for the constant)."""


def mmlu_part(cards, obs, requests) -> None:  # noqa: ANN001
    mc: McData = mmlu_data()
    src = obs.sources.index("mmlu")
    rows = np.unique(obs.prompt[obs.source == src])
    subjects = np.array([obs.groups[i] for i in rows])
    oof = {"basis": {m: np.zeros(len(rows)) for m in HOSTED}, "bilinear": {m: np.zeros(len(rows)) for m in HOSTED}}
    for f, (_, te) in enumerate(GroupKFold(n_splits=5).split(rows, groups=subjects)):
        print(f"fold {f + 1}/5", flush=True)
        keep = ~((obs.source == src) & np.isin(obs.prompt, rows[te]))
        recipe = fit_recipe(obs, requests, cards, keep)
        joint = QualityModel(floors=FLOORS, **BILINEAR).fit(recipe.x, obs.take(keep))
        for m in HOSTED:
            oof["basis"][m][te] = recipe.model.predict(recipe.x[rows[te]], m, "mmlu")
            oof["bilinear"][m][te] = joint.predict(recipe.x[rows[te]], m, "mmlu")
    results = {
        "per-model TF-IDF heads (previous classifier)": subject_held_out_eval(mc, tfidf_featurizer(requests), 0.3),
        "heads basis, every source (shipped)": held_out_metrics(oof["basis"], mc),
        "bilinear, trained jointly (RouteLLM mf style)": held_out_metrics(oof["bilinear"], mc),
    }
    out = []
    for name, r in results.items():
        s = r["P(strong) - P(weak)"]
        out.append([name, f"{s['apgr']:.3f}", f"{100 * s['cpt50']:.1f} %", f"{100 * s['cpt80']:.1f} %",
                    f"{r['ece']['mixtral-8x7b-instruct']:.3f} / {r['ece']['gpt-4-1106-preview']:.3f}"])
    print(md_table(["MMLU, 5 folds, subjects held out", "APGR", "CPT(50 %)", "CPT(80 %)", "ECE Mixtral / GPT-4"],
                   out))


def alpaca_part(cards, obs, requests) -> None:  # noqa: ANN001
    lines = [x for x in alpaca_lines() if not is_test(x["id"])]
    y = np.array([[x["outcomes"][m]["correct"] for m in FUSECHAT] for x in lines])
    index = {p: i for i, p in enumerate(obs.prompts)}
    prompt_rows = np.array([index[window(x["prompt"])[0]] for x in lines])
    errors: dict[str, list[float]] = {k: [] for k in ("constant", "ridge", "basis", "bilinear")}
    for f, (tr, te) in enumerate(KFold(4, shuffle=True, random_state=0).split(lines)):
        print(f"fold {f + 1}/4", flush=True)
        test_prompts = {window(lines[i]["prompt"])[0] for i in te}
        all_test = {window(x["prompt"])[0] for x in alpaca_lines() if is_test(x["id"])}
        keep = ~alpaca_prompt_rows(obs, test_prompts | all_test)
        recipe = fit_recipe(obs, requests, cards, keep)
        joint = QualityModel(floors=FLOORS, **BILINEAR).fit(recipe.x, obs.take(keep))
        x_te = recipe.x[prompt_rows[te]]
        pred = {
            "constant": np.tile(y[tr].mean(axis=0), (len(te), 1)),
            "basis": np.stack([recipe.model.predict(x_te, m, "alpaca_eval") for m in FUSECHAT], axis=1),
            "bilinear": np.stack([joint.predict(x_te, m, "alpaca_eval") for m in FUSECHAT], axis=1),
        }
        ridge, _ = ridge_baseline([lines[i] for i in tr], [lines[i] for i in te], FUSECHAT)
        pred["ridge"] = np.array([[ridge[lines[i]["prompt"]][m] for m in FUSECHAT] for i in te])
        for k, p in pred.items():
            errors[k].append(float(((p - y[te]) ** 2).mean()))
    names = {"constant": "constant (each model's training mean)", "ridge": "TF-IDF ridge per model (baseline)",
             "basis": "heads basis, every source (shipped)", "bilinear": "bilinear, trained jointly"}
    print(md_table(["AlpacaEval FuseChat scores, 4 folds of the training split", "mean squared error"],
                   [[names[k], f"{np.mean(v):.5f}"] for k, v in errors.items()]))


def main() -> None:
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    cards = load_catalogue(ROOT / "models")
    obs = load_sources(cards)
    requests = [window(t)[0] for t in build_request_set()[0].texts]
    if which in ("mmlu", "all"):
        mmlu_part(cards, obs, requests)
    if which in ("alpaca", "all"):
        alpaca_part(cards, obs, requests)


if __name__ == "__main__":
    main()
