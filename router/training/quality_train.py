"""Train the shipped quality model (:mod:`router.training.quality`) on every outcome source, fill the cells without
outcomes from card priors, and evaluate it with MMLU subjects held out.

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
from ..classify.features import vectorizer
from .outcome_sources import FLOORS, TASK_SOURCES
from .quality import (
    MIN_MODELS_FOR_PRIOR,
    HeadsBasis,
    Observations,
    SourcePrior,
    card_features,
    fit_source_prior,
    level,
)

Progress = Callable[[str], None]

ENERGY = 0.999
"""Rank of the factorisation: the fewest singular vectors that keep 99.9 % of the heads' squared norm (a rule, not
tuned): the served predictions are the heads' own to within that."""
C = {"mmlu": 0.3, "alpaca_eval": 1.0}
"""Regularisation of the logistic heads: the previous classifier's C for MMLU (0.3) and the small local sources;
AlpacaEval's 1.0 was the best of {0.1, 0.3, 1, 3, 10} by squared error of the FuseChat scores in 4-fold
cross-validation on the training 70 % of instructions (0.1602 / 0.1589 / 0.1577 / 0.1609 / 0.1738; constant
0.1613); the benchmark's held-out 30 % took no part."""
PRIOR_BENCHMARKS = {"mmlu": "mmlu"}
"""The public score a source's card prior reads. ``alpaca_eval_lc`` is on the catalogue cards, but it is computed
on the evaluated instructions, so the shipped AlpacaEval prior does not use it."""
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
    model: HeadsBasis
    x: sparse.csr_matrix
    obs: Observations


def fit_recipe(obs: Observations, request_texts: Sequence[str], cards: Mapping[str, ModelCard],
               keep: np.ndarray | None = None, progress: Progress | None = None) -> Recipe:
    """The shipped recipe on the observations where ``keep`` (all by default): vocabulary from the request set
    and the kept prompts only, then the heads and their factorisation."""
    train = obs if keep is None else obs.take(keep)
    used = np.unique(train.prompt)
    is_mmlu = np.array([str(g).startswith("mmlu/") for g in obs.groups])
    mmlu = [obs.prompts[i] for i in used if is_mmlu[i]]
    other = [obs.prompts[i] for i in used if not is_mmlu[i]]
    vec = quality_vectorizer(request_texts, mmlu, other)
    x = vec.transform(obs.prompts).tocsr()
    model = HeadsBasis(c=C, energy=ENERGY).fit(x, train, progress)
    return Recipe(vec, model, x, train)


def mean_scores(obs: Observations) -> np.ndarray:
    """[models, sources] mean observed score (NaN where none)."""
    m, s = len(obs.models), len(obs.sources)
    total, count = np.zeros((m, s)), np.zeros((m, s))
    np.add.at(total, (obs.model, obs.source), obs.y)
    np.add.at(count, (obs.model, obs.source), 1.0)
    with np.errstate(invalid="ignore"):
        return total / count


def source_priors(recipe: Recipe, cards: Mapping[str, ModelCard]) -> dict[str, SourcePrior]:
    """A card prior per source with enough measured models (AlpacaEval's 48; MMLU's two are too few)."""
    means = mean_scores(recipe.obs)
    out = {}
    for s, src in enumerate(recipe.obs.sources):
        js = [j for j in range(len(recipe.obs.models)) if np.isfinite(means[j, s])
              and recipe.obs.models[j] in cards and cards[recipe.obs.models[j]].tier != "specialist"]
        if len(js) < MIN_MODELS_FOR_PRIOR:
            continue
        names = [recipe.obs.models[j] for j in js]
        feats = np.stack([card_features(cards[n], PRIOR_BENCHMARKS.get(src)) for n in names])
        out[src] = fit_source_prior(np.array([level(means[j, s]) for j in js]), feats,
                                    [cards[n].family for n in names])
    return out


def quality_metadata(recipe: Recipe, cards: Mapping[str, ModelCard], extra: Mapping[str, Any]) -> dict[str, Any]:
    """What the classifier serves: the representation size, each task's source, and per model and task an
    intercept and a vector, with where the numbers come from (measured, the card's prior_accuracy, the source's
    card prior, the model's other sources); specialists fixed at 0 on tasks they do not serve."""
    model, obs = recipe.model, recipe.obs
    means = mean_scores(obs)
    priors = source_priors(recipe, cards)
    tasks = list(TASK_SOURCES)
    meta: dict[str, Any] = {
        "k": model.k,
        "explained": round(model.explained_, 5),
        "task_sources": dict(TASK_SOURCES),
        "chance": {t: FLOORS.get(src, 0.0) for t, src in TASK_SOURCES.items()},
        "priors": {},
        "models": {},
        **extra,
    }
    for t, src in TASK_SOURCES.items():
        s = obs.sources.index(src)
        measured = means[:, s][np.isfinite(means[:, s])]
        entry: dict[str, Any] = {"source": src, "level": round(level(float(measured.mean())), 4) if len(measured)
                                 else 0.0, "benchmark": PRIOR_BENCHMARKS.get(src)}
        if src in priors:
            entry["beta"] = [round(float(x), 4) for x in priors[src].beta]
            entry["family"] = {k: round(v, 4) for k, v in sorted(priors[src].family.items())}
            entry["n_models"] = priors[src].n_models
        meta["priors"][t] = entry
    for j, name in enumerate(obs.models):
        card = cards.get(name)
        row: dict[str, Any] = {"vectors": {}, "intercepts": {}, "from": {}, "measured": {}}
        for t, src in TASK_SOURCES.items():
            s = obs.sources.index(src)
            row["measured"][t] = int(model.counts_[j, s])
            if model.measured_[j, s]:
                b, v, origin = model.b_[j, s], model.v_[j, s], "measured"
            else:
                b, origin = prior_level(card, t, meta["priors"][t], means[j]), "prior"
                b = max(b, level(meta["chance"][t])) if meta["chance"][t] else b  # never below guessing
                v = np.zeros(model.k)
            row["intercepts"][t] = round(float(b), 4)
            row["vectors"][t] = [round(float(x), 5) for x in v]
            row["from"][t] = origin
        if card is not None and card.tier == "specialist":
            row["fixed"] = {t: 0.0 for t in tasks if not card.serves(t)}
        meta["models"][name] = row
    return meta


def prior_level(card: ModelCard | None, task: str, prior: Mapping[str, Any], own_means: np.ndarray) -> float:
    """The logit level of a (model, task) cell without outcomes: the card's ``prior_accuracy[task]``, else the
    source's card prior, else the model's mean over the sources it was measured on, else the source's mean."""
    from ..classify.quality import prior_logit

    if card is not None and task in card.prior_accuracy:
        return level(card.prior_accuracy[task])
    if "beta" in prior and card is not None:
        return prior_logit(prior, card)
    own = own_means[np.isfinite(own_means)]
    return level(float(own.mean())) if len(own) else float(prior["level"])


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
        recipe = fit_recipe(obs, request_texts, cards, keep, progress)
        for m in models:
            out[m][te] = recipe.model.predict(recipe.x[held], m, "mmlu")
    out["_rows"] = rows
    return out
