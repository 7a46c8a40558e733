"""An experiment, not a shipped feature: on the FuseChat family (as in bench_alpaca.py), can a cascade that
judges the small model's answer by its length reach 95 % of always-best's quality at <= 70 % of its energy?

AlpacaEval's judge favours long answers, and a cascade sees the small model's answer before deciding, so its
length is the cheapest signal of the answer's quality that a live proxy could read. The rule: call the small
model; keep its answer when it has at least ``L`` tokens, else call the large model too (both calls' joules
count). ``L`` is chosen the honest way, as the cheapest setting that keeps 95 % of always-best's quality in 4-fold
cross-validation on the training instructions, then applied once to the held-out 30 %; the held-out curve's own
cheapest point at 95 % is printed beside it, read off in hindsight. Energy is each card's estimate for the
model's actual answer, as in bench_alpaca.py.

    python benchmarks/alpaca_cascade.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
from _quality_common import FUSECHAT, alpaca_lines, is_test  # noqa: E402
from _simulate_common import md_table  # noqa: E402
from sklearn.model_selection import KFold  # noqa: E402

from router.cards import load_catalogue  # noqa: E402

KEEP = 0.95
SETTINGS = np.array([0, *range(50, 1001, 25), 10**9])
"""Answer lengths (tokens) at or above which the small model's answer is kept; the last one never keeps it."""
BEST = "fusechat-gemma-2-9b"  # the best single model on these rows (bench_alpaca.py)
PAIRS = [(small, large) for small in FUSECHAT[:3] for large in ("fusechat-qwen-2.5-7b", BEST) if small != large]


def outcomes(rows: list[dict], cards: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(judge scores, answer lengths in tokens, joules of each model's actual answer), per row and model."""
    score = np.array([[x["outcomes"][m]["correct"] for m in FUSECHAT] for x in rows])
    tokens = np.array([[x["outcomes"][m]["output_tokens"] for m in FUSECHAT] for x in rows], dtype=float)
    joules = np.array([[cards[m].energy.joules(len(x["prompt"]) // 4, int(t))
                        for m, t in zip(FUSECHAT, row, strict=True)] for x, row in zip(rows, tokens, strict=True)])
    return score, tokens, joules


def cascade(score: np.ndarray, tokens: np.ndarray, joules: np.ndarray, small: int, large: int,
            min_tokens: float) -> tuple[float, float]:
    """(quality, energy) of the cascade, each relative to always-best on the same rows."""
    keep = tokens[:, small] >= min_tokens
    best = FUSECHAT.index(BEST)
    quality = np.where(keep, score[:, small], score[:, large]).mean() / score[:, best].mean()
    energy = (joules[:, small].sum() + np.where(keep, 0.0, joules[:, large]).sum()) / joules[:, best].sum()
    return float(quality), float(energy)


def cheapest_keeping(curve: list[tuple[float, float]]) -> int | None:
    """Index of the cheapest setting whose quality is at least KEEP (None: none is)."""
    ok = [i for i, (q, _) in enumerate(curve) if q >= KEEP]
    return min(ok, key=lambda i: curve[i][1]) if ok else None


def chosen_in_cv(score: np.ndarray, tokens: np.ndarray, joules: np.ndarray, small: int, large: int) -> int | None:
    """The setting whose mean quality over 4 training folds keeps KEEP at the least mean energy."""
    folds = KFold(4, shuffle=True, random_state=0).split(score)
    curves = [[cascade(score[te], tokens[te], joules[te], small, large, s) for s in SETTINGS] for _, te in folds]
    mean = [(float(np.mean([c[i][0] for c in curves])), float(np.mean([c[i][1] for c in curves])))
            for i in range(len(SETTINGS))]
    return cheapest_keeping(mean)


def cell(curve: list[tuple[float, float]], i: int | None) -> str:
    if i is None:
        return "never"
    q, e = curve[i]
    where = "never keep" if SETTINGS[i] >= 10**9 else f"L {SETTINGS[i]}"
    return f"{q:.1%} / {e:.1%} ({where})"


def main() -> None:
    cards = load_catalogue(ROOT / "models")
    rows = [x for x in alpaca_lines() if all(m in x["outcomes"] for m in FUSECHAT)]
    test = np.array([is_test(x["id"]) for x in rows])
    score, tokens, joules = outcomes(rows, cards)
    table = []
    for small_name, large_name in PAIRS:
        small, large = FUSECHAT.index(small_name), FUSECHAT.index(large_name)
        pick = chosen_in_cv(score[~test], tokens[~test], joules[~test], small, large)
        held = [cascade(score[test], tokens[test], joules[test], small, large, s) for s in SETTINGS]
        hindsight = cheapest_keeping(held)
        table.append([f"{small_name} -> {large_name}", cell(held, pick), cell(held, hindsight)])
    print(f"Cascade on the small model's answer length; {int(test.sum())} held-out instructions, quality / energy "
          f"vs always {BEST}\n")
    print(md_table(["cascade", "setting chosen in CV: held-out quality / energy",
                    "held-out, cheapest >= 95 % in hindsight"], table))


if __name__ == "__main__":
    main()
