"""Train the shipped quality model (:mod:`router.training.quality`) on every outcome source, link the scales, and
evaluate it against the per-model TF-IDF heads it replaces with MMLU subjects held out.

Kept apart from :mod:`router.training.classifier` (task detection and the graph export) so the benchmarks can refit
exactly the shipped recipe on a training split: :func:`fit_recipe` is that recipe.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.model_selection import GroupKFold

from ..cards import ModelCard
from ..classify.base import TASKS
from ..classify.features import vectorizer
from .outcome_sources import FLOORS, TASK_SOURCES
from .quality import Linking, Observations, QualityModel, card_features, link_scales, metadata

Progress = Callable[[str], None]

K = 16
L2_W = 1e-4
L2_V = 1e-3
"""Rank and ridge penalties of the shipped model: chosen by 4-fold cross-validation on the training 70 % of the
AlpacaEval instructions (the benchmark's held-out 30 % never seen; ``benchmarks/bench_alpaca.py``) among
k in {8, 16, 32} and a few penalties, by squared error of the FuseChat models' scores."""
PRIOR_BENCHMARK: str | None = None
"""The public score the card prior reads (none: size and the undisclosed flag only). ``alpaca_eval_lc`` is on
the catalogue cards, but it is computed on the evaluated instructions, so the shipped prior does not use it."""
VOCAB = (4000, 3000, 2000)
"""Top words of the request set, of the MMLU prompts and of every other outcome prompt, united."""


def quality_vectorizer(request_texts: Sequence[str], mmlu_texts: Sequence[str],
                       other_texts: Sequence[str]) -> TfidfVectorizer:
    """One vocabulary: each group's top words (so ten thousand MMLU prompts do not crowd out the phrasing words
    of task detection or the open-ended chat words), fitted for idf on all of them."""
    words: set[str] = set()
    for texts, top in zip((request_texts, mmlu_texts, other_texts), VOCAB, strict=True):
        if texts:
            words |= set(vectorizer().set_params(max_features=top).fit(list(texts)).vocabulary_)
    everything = [*request_texts, *mmlu_texts, *other_texts]
    return vectorizer().set_params(max_features=None, vocabulary=sorted(words)).fit(everything)


@dataclass
class Recipe:
    vec: TfidfVectorizer
    model: QualityModel
    link: Linking
    x: sparse.csr_matrix


def fit_recipe(obs: Observations, request_texts: Sequence[str], cards: Mapping[str, ModelCard],
               keep: np.ndarray | None = None, progress: Progress | None = None, k: int = K, l2_w: float = L2_W,
               l2_v: float = L2_V) -> Recipe:
    """The shipped recipe on the observations where ``keep`` (all by default): vocabulary from the request set
    and the kept prompts only, the quality model, the scale linking."""
    train = obs if keep is None else obs.take(keep)
    used = np.unique(train.prompt)
    is_mmlu = np.array([str(g).startswith("mmlu/") for g in obs.groups])
    mmlu = [obs.prompts[i] for i in used if is_mmlu[i]]
    other = [obs.prompts[i] for i in used if not is_mmlu[i]]
    vec = quality_vectorizer(request_texts, mmlu, other)
    x = vec.transform(obs.prompts).tocsr()
    model = QualityModel(k=k, l2_w=l2_w, l2_v=l2_v, floors=FLOORS).fit(x, train, progress)
    return Recipe(vec, model, link(model, cards), x)


def link(model: QualityModel, cards: Mapping[str, ModelCard]) -> Linking:
    """Scale linking with the card prior; specialists take no part (their other tasks are zero by construction)."""
    feats = np.stack([card_features(cards.get(name), PRIOR_BENCHMARK) for name in model.models_])
    exclude = [j for j, name in enumerate(model.models_) if name in cards and cards[name].tier == "specialist"]
    return link_scales(model.b_, model.measured_, feats, anchor=model.sources_.index("alpaca_eval"),
                       exclude=exclude)


def quality_metadata(recipe: Recipe, cards: Mapping[str, ModelCard], extra: Mapping[str, Any]) -> dict[str, Any]:
    """The classifier's quality table, with specialists fixed at 0 on tasks they do not serve."""
    meta = metadata(recipe.model, recipe.link, TASK_SOURCES, {"prior_benchmark": PRIOR_BENCHMARK, **extra})
    for name, row in meta["models"].items():
        card = cards.get(name)
        if card is not None and card.tier == "specialist":
            row["fixed"] = {t: 0.0 for t in TASKS if not card.serves(t)}
        row["from"] = {t: ("measured" if row["measured"][t] else "linked") for t in TASK_SOURCES}
    return meta


def subject_held_out_quality(obs: Observations, request_texts: Sequence[str], cards: Mapping[str, ModelCard],
                             models: Sequence[str], folds: int = 5,
                             progress: Progress | None = None) -> dict[str, np.ndarray]:
    """Out-of-fold P(correct) on MMLU with whole subjects held out (GroupKFold by subject, as RouteLLM's
    evaluation and the TF-IDF heads'), the model refitted on everything else, every other source included."""
    mmlu_src = obs.sources.index("mmlu")
    rows = np.unique(obs.prompt[obs.source == mmlu_src])
    subjects = np.array([obs.groups[i] for i in rows])
    out = {m: np.zeros(len(rows)) for m in models}
    for f, (_, te) in enumerate(GroupKFold(n_splits=folds).split(rows, groups=subjects)):
        if progress:
            progress(f"quality model, subjects held out: fold {f + 1}/{folds}")
        held = rows[te]
        keep = ~((obs.source == mmlu_src) & np.isin(obs.prompt, held))
        recipe = fit_recipe(obs, request_texts, cards, keep)
        for m in models:
            out[m][te] = recipe.model.predict(recipe.x[held], m, "mmlu")
    out["_rows"] = rows
    return out
