"""Train the sentiment specialist (the router's cheapest tier) from the shipped sentence-polarity data and
export it to ONNX.

Two recipes, both chosen on the validation split and scored once on the held-out 20 %:

* ``minilm`` (shipped; needs torch, the ``embeddings`` extra): all-MiniLM-L6-v2 fine-tuned end to end
  (router/training/sentiment_finetune.py), exported to an int8 ONNX graph that takes word-piece ids, plus
  its ``tokenizer.json``. N-gram features see word order only a few words wide, so negation and contrast
  across a clause ("not as bad as ...", "... but") are out of their reach; a fine-tuned transformer reads
  the whole sentence, at a few ms per request on one core.
* ``linear`` (torch-free): TF-IDF (word + character n-grams) logistic regression with naive-Bayes scaled
  features (NB-LR, Wang & Manning 2012), folded into a plain vectoriser + linear model that onnxruntime
  runs from the raw string in under 2 ms. It is also trained by the ``minilm`` recipe, as the comparison.

The data is lower-cased and tokenised; the linear vectorisers lower-case inside the graph, and both recipes
also train on de-tokenised sentences so raw user text scores alike.

Length: both recipes, their choice on the validation split and the one held-out score, in the order they run; the
fine-tune is its own module.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import MultinomialNB
from sklearn.pipeline import FeatureUnion, Pipeline

from ..classify.features import TOKEN_PATTERN
from .common import DATA_DIR, MODELS_DIR, SEED, detokenize, seed_everything, staged_outputs, write_json
from .onnx_text import portable_lowercase, sklearn_sublinear_tf
from .polarity import LABELS, SentimentSplit, split_polarity

Progress = Callable[[str], None]


def _augment(texts: list[str], labels: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Each sentence as published plus its de-tokenised form (only where it differs)."""
    extra = [(detokenize(t), y) for t, y in zip(texts, labels, strict=False) if detokenize(t) != t]
    return list(texts) + [t for t, _ in extra], np.concatenate([labels, [y for _, y in extra]]).astype(np.int64)


def _features(word_ngrams: tuple[int, int] = (1, 3), char: bool = True) -> FeatureUnion:
    """Word (and optionally character) n-gram TF-IDF; both convert to ONNX (char_wb does not)."""
    parts: list[tuple[str, Any]] = [
        (
            "word",
            TfidfVectorizer(
                ngram_range=word_ngrams, sublinear_tf=True, min_df=1, lowercase=True, token_pattern=TOKEN_PATTERN
            ),
        )
    ]
    if char:
        parts.append(
            (
                "char",
                TfidfVectorizer(analyzer="char", ngram_range=(2, 5), sublinear_tf=True, min_df=3, lowercase=True),
            )
        )
    return FeatureUnion(parts)


def fit_nblr(texts: list[str], labels: np.ndarray, c: float, alpha: float = 1.0, char: bool = True) -> Pipeline:
    """NB-LR: logistic regression on TF-IDF features scaled by log-count ratios r; returns an equivalent
    plain pipeline whose weights are ``coef * r`` (same decision function, exportable as-is)."""
    features = _features(char=char)
    matrix = features.fit_transform(texts).tocsr()
    present = (matrix > 0).astype(np.float64)
    y = np.asarray(labels)
    p = alpha + np.asarray(present[y == 1].sum(axis=0)).ravel()
    q = alpha + np.asarray(present[y == 0].sum(axis=0)).ravel()
    ratio = np.log((p / p.sum()) / (q / q.sum()))
    clf = LogisticRegression(C=c, max_iter=5000, random_state=SEED)
    clf.fit(matrix @ sparse.diags(ratio), y)
    folded = LogisticRegression(C=c, max_iter=5000, random_state=SEED)
    folded.classes_ = clf.classes_
    folded.coef_ = clf.coef_ * ratio[None, :]
    folded.intercept_ = clf.intercept_.copy()
    folded.n_features_in_ = matrix.shape[1]
    folded.n_iter_ = clf.n_iter_
    return Pipeline([("features", features), ("clf", folded)])


def fit_tfidf_lr(texts: list[str], labels: np.ndarray, c: float) -> Pipeline:
    """Plain TF-IDF (word + char) logistic regression, the NB-LR candidate's ablation."""
    pipe = Pipeline([("features", _features((1, 2))), ("clf", LogisticRegression(C=c, max_iter=5000))])
    return pipe.fit(texts, labels)


def fit_bow_baseline(texts: list[str], labels: np.ndarray, kind: str) -> Pipeline:
    """Plain bag-of-words baselines the specialist must beat: unigram counts with LR or multinomial NB."""
    clf = MultinomialNB() if kind == "nb" else LogisticRegression(max_iter=5000, random_state=SEED)
    return Pipeline([("features", CountVectorizer()), ("clf", clf)]).fit(texts, labels)


CANDIDATES: dict[str, Callable[[list[str], np.ndarray], Pipeline]] = {
    "tfidf-word12-char25-lr-C10": lambda x, y: fit_tfidf_lr(x, y, 10.0),
    "nblr-word13-C1": lambda x, y: fit_nblr(x, y, 1.0, char=False),
    "nblr-word13-char25-C1": lambda x, y: fit_nblr(x, y, 1.0),
    "nblr-word13-char25-C4": lambda x, y: fit_nblr(x, y, 4.0),
}


def export_onnx(pipeline: Pipeline, path: Path) -> None:
    """ONNX contract the backend relies on: input ``text`` [None, 1] strings; outputs ``label`` int64 [N]
    and ``probabilities`` float32 [N, 2] (no ZipMap)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import StringTensorType

    onx = convert_sklearn(
        pipeline,
        initial_types=[("text", StringTensorType([None, 1]))],
        options={id(pipeline.steps[-1][1]): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    portable_lowercase(onx)
    sklearn_sublinear_tf(onx)
    names = [o.name for o in onx.graph.output]
    if names != ["label", "probabilities"]:
        raise RuntimeError(f"unexpected ONNX outputs {names}")
    onx.doc_string = "router sentiment specialist: TF-IDF word+char NB-LR; labels 0=negative 1=positive"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(onx.SerializeToString())


def onnx_predict(path: Path, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities from the exported graph (one thread, as the backend runs it)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    labels, probs = session.run(["label", "probabilities"], {"text": np.array([[t] for t in texts], dtype=object)})
    return np.asarray(labels), np.asarray(probs)


def _accuracy(model: Pipeline, texts: list[str], labels: np.ndarray) -> float:
    return float((model.predict(texts) == labels).mean())


@dataclass
class LinearResult:
    """The TF-IDF recipe's outcome: candidates fitted on train (for validation), the chosen one refitted on
    train + validation (what ``--model linear`` ships) and its figures."""

    chosen: str
    validation: dict[str, float]
    fitted: dict[str, Pipeline]
    model: Pipeline
    full_x: list[str]
    full_y: np.ndarray
    metrics: dict[str, Any]


def train_linear(split: SentimentSplit, say: Progress) -> LinearResult:
    """Select a TF-IDF candidate on validation, refit it on train + validation and test it once."""
    train_x, train_y = _augment(split.train_x, split.train_y)
    validation: dict[str, float] = {}
    fitted: dict[str, Pipeline] = {}
    for name, fit in CANDIDATES.items():
        say(f"linear candidate {name}")
        fitted[name] = fit(train_x, train_y)
        validation[name] = _accuracy(fitted[name], split.valid_x, split.valid_y)
    chosen = max(validation, key=lambda k: validation[k])
    say(f"refit {chosen} on train + validation")
    full_x, full_y = _augment(split.train_x + split.valid_x, np.concatenate([split.train_y, split.valid_y]))
    t0 = time.perf_counter()
    model = CANDIDATES[chosen](full_x, full_y)
    fit_s = time.perf_counter() - t0
    metrics = {
        "model": chosen,
        "validation_accuracy": {k: round(v, 4) for k, v in validation.items()},
        "test_accuracy": round(_accuracy(model, split.test_x, split.test_y), 4),
        "test_accuracy_detokenized": round(
            _accuracy(model, [detokenize(t) for t in split.test_x], split.test_y), 4
        ),
        "n_train_augmented": len(full_x),
        "fit_seconds": round(fit_s, 1),
    }
    return LinearResult(chosen, validation, fitted, model, full_x, full_y, metrics)


def _export_linear(model: Pipeline, onnx_path: Path, split: SentimentSplit) -> dict[str, Any]:
    """Export the linear pipeline and check the graph against sklearn; returns the checks and the latency."""
    export_onnx(model, onnx_path)
    onnx_labels, onnx_probs = onnx_predict(onnx_path, split.test_x)
    run = _session_cache(onnx_path)
    for sentence in split.test_x[:10]:
        run(sentence)
    t0 = time.perf_counter()
    for sentence in split.test_x[:300]:
        run(sentence)
    return {
        "test_accuracy_onnx": round(float((onnx_labels == split.test_y).mean()), 4),
        "onnx_sklearn_label_agreement": round(float((onnx_labels == model.predict(split.test_x)).mean()), 6),
        "onnx_sklearn_max_prob_diff": float(f"{np.abs(onnx_probs - model.predict_proba(split.test_x)).max():.3g}"),
        "onnx_bytes": onnx_path.stat().st_size,
        "onnx_ms_per_request_single_thread": round((time.perf_counter() - t0) / 300 * 1000, 4),
    }


ENSEMBLE_WEIGHTS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)
ENSEMBLE_MAX_P = 0.05
"""Averaging with the linear model would only be worth a second graph (~7 MB, ~1.5 ms) if it beat the
fine-tuned model alone on validation beyond noise: exact McNemar test on the sentences where they differ."""


def train_sentiment(
    data_dir: Path = DATA_DIR / "sentiment_polarity",
    out_dir: Path = MODELS_DIR / "sentiment",
    progress: Progress | None = None,
    compare_embeddings: bool = True,
    model: str = "minilm",
    learning_rates: tuple[float, ...] | None = None,
    epochs: int | None = None,
) -> dict[str, Any]:
    """Train the specialist and write ``sentiment.onnx`` (+ ``tokenizer.json`` for MiniLM) and ``metrics.json``.

    ``model="minilm"`` (default, needs torch): fine-tune all-MiniLM-L6-v2 (router/training/sentiment_finetune.py);
    ``model="linear"``: the torch-free TF-IDF recipe. Both record the bag-of-words baselines and the linear
    model's held-out accuracy, so the table always compares against them. Every choice is made on the
    validation split; the test split is scored once per shipped candidate. The outputs are written beside
    ``out_dir`` and moved in together at the end (:func:`~router.training.common.staged_outputs`): a run stopped
    partway leaves the previous ones intact."""
    if model not in ("minilm", "linear"):
        raise ValueError(f"unknown sentiment model {model!r}; known: minilm, linear")
    if model == "minilm":
        from .sentiment_finetune import require_torch

        require_torch()
    say = progress or (lambda _msg: None)
    # a string-input graph (linear) has nothing to tokenise: a MiniLM run's tokenizer.json goes with its graph
    with staged_outputs(out_dir, drop=("tokenizer.json",) if model == "linear" else ()) as stage:
        return _train_into(stage, data_dir, say, compare_embeddings, model, learning_rates, epochs)


def _train_into(out_dir: Path, data_dir: Path, say: Progress, compare_embeddings: bool, model: str,
                learning_rates: tuple[float, ...] | None, epochs: int | None) -> dict[str, Any]:
    seed_everything()
    split = split_polarity(data_dir)

    say("bag-of-words baselines")
    baselines = {
        f"bow-unigram-{kind}": _accuracy(
            fit_bow_baseline(split.train_x, split.train_y, kind), split.test_x, split.test_y
        )
        for kind in ("lr", "nb")
    }
    linear = train_linear(split, say)
    metrics: dict[str, Any] = {
        "labels": list(LABELS),
        "seed": SEED,
        "n_train": len(split.train_x),
        "n_validation": len(split.valid_x),
        "n_test": len(split.test_x),
        "baselines_test_accuracy": {k: round(v, 4) for k, v in baselines.items()},
        "data": "data/sentiment_polarity (Pang & Lee 2005, sentence polarity v1.0)",
        "split": f"stratified, seed {SEED}: 70% train / 10% validation (model selection) / 20% test",
    }
    onnx_path = out_dir / "sentiment.onnx"
    if model == "linear":
        say("export linear ONNX and check agreement")
        checks = _export_linear(linear.model, onnx_path, split)
        metrics.update(
            {
                "model": linear.chosen,
                "n_train": len(split.train_x) + len(split.valid_x),
                "test_accuracy": linear.metrics["test_accuracy"],
                "test_accuracy_detokenized": linear.metrics["test_accuracy_detokenized"],
                "linear": {**linear.metrics, **checks},
                **checks,
            }
        )
    else:
        from .sentiment_finetune import EPOCHS, LEARNING_RATES, MAX_LENGTH, train_finetuned

        with tempfile.TemporaryDirectory(prefix="router-linear-") as tmp:
            checks = _export_linear(linear.model, Path(tmp) / "linear.onnx", split)
        metrics["linear_not_shipped"] = {**linear.metrics, **checks}
        result = train_finetuned(split, out_dir, say, learning_rates or LEARNING_RATES, epochs or EPOCHS)
        fine = result.metrics
        shipped = fine[f"onnx_{fine['shipped_precision']}"]
        metrics.update(
            {
                "model": f"minilm-l6-finetuned-{fine['shipped_precision']}",
                "onnx": "sentiment.onnx",
                "tokenizer": "tokenizer.json",
                "max_length": MAX_LENGTH,
                "test_accuracy": shipped["test_accuracy"],
                "test_accuracy_detokenized": shipped["test_accuracy_detokenized"],
                "onnx_bytes": shipped["onnx_bytes"],
                "onnx_ms_per_request_single_thread": shipped["ms_per_sentence_single_thread"],
                "finetune": fine,
                "ensemble_with_linear": _ensemble_check(split, linear, result.valid_probs, result.test_probs),
            }
        )
    if compare_embeddings:
        ensemble = embedding_ensemble(split, linear.fitted, linear.full_x, linear.full_y, say)
        metrics["not_shipped_candidates"] = ensemble or {
            "skipped": "models/embeddings missing (run `router train embeddings`)"
        }
    write_json(out_dir / "metrics.json", metrics)
    return metrics


def _ensemble_check(
    split: SentimentSplit, linear: LinearResult, valid_probs: np.ndarray, test_probs: np.ndarray
) -> dict[str, Any]:
    """Would averaging P(positive) with the linear model help? Weight picked on validation (the linear model
    fitted on train only, like the fine-tune) and tested for significance there; the test figure uses the
    linear model refitted on train + validation and is recorded, not used to choose."""
    from scipy.stats import binomtest

    p_lin_valid = linear.fitted[linear.chosen].predict_proba(split.valid_x)[:, 1]

    def right(w: float) -> np.ndarray:
        return ((w * valid_probs + (1 - w) * p_lin_valid) > 0.5) == split.valid_y

    valid = {f"{w:g}": float(right(w).mean()) for w in ENSEMBLE_WEIGHTS}
    best = max(valid, key=lambda k: (valid[k], float(k)))
    w = float(best)
    alone, mixed = right(1.0), right(w)
    only_mixed, only_alone = int((mixed & ~alone).sum()), int((alone & ~mixed).sum())
    p_value = binomtest(only_mixed, only_mixed + only_alone, 0.5).pvalue if only_mixed > only_alone else 1.0
    p_test = w * test_probs + (1 - w) * linear.model.predict_proba(split.test_x)[:, 1]
    return {
        "linear_model": linear.chosen,
        "minilm_weight_validation_accuracy": {k: round(v, 4) for k, v in valid.items()},
        "best_weight": w,
        "validation_gain_points": round(100 * (valid[best] - valid["1"]), 2),
        "validation_sentences_only_ensemble_right": only_mixed,
        "validation_sentences_only_minilm_right": only_alone,
        "mcnemar_p": round(float(p_value), 4),
        "shipped": False,
        "why": (
            f"not significant on validation (McNemar p {p_value:.2f} >= {ENSEMBLE_MAX_P})"
            if p_value >= ENSEMBLE_MAX_P
            else "significant on validation, but one graph holding both models is not built yet"
        ),
        "test_accuracy_at_best_weight": round(float(((p_test > 0.5) == split.test_y).mean()), 4),
    }


def embedding_ensemble(
    split: SentimentSplit, fitted: dict[str, Pipeline], full_x: list[str], full_y: np.ndarray, say: Progress
) -> dict[str, Any] | None:
    """Candidate measured but not shipped: a linear candidate's P(positive) averaged with a logistic
    regression on frozen all-MiniLM-L6-v2 embeddings (partner, C and mixing weight picked on validation).
    Kept as the comparison the fine-tune had to beat: same encoder cost per request, weights not adapted."""
    from .embeddings import EMBED_DIR, OnnxEncoder, available

    if not available(EMBED_DIR):
        return None
    say("MiniLM ensemble candidate: encode sentences")
    encoder = OnnxEncoder(EMBED_DIR, threads=2)
    e_tr, e_va, e_te = (encoder.encode(x, batch_size=64) for x in (split.train_x, split.valid_x, split.test_x))
    valid: dict[str, float] = {}
    heads: dict[float, LogisticRegression] = {}
    for c in (0.3, 1.0, 3.0):
        heads[c] = LogisticRegression(C=c, max_iter=3000, random_state=SEED).fit(e_tr, split.train_y)
    grid: dict[str, tuple[str, float, float]] = {}
    for name, on_train in fitted.items():
        p_lin = on_train.predict_proba(split.valid_x)[:, 1]
        for c, head in heads.items():
            p_emb = head.predict_proba(e_va)[:, 1]
            for w in (0.3, 0.5, 0.7):
                key = f"{name}+minilm-C{c}-w{w}"
                grid[key] = (name, c, w)
                valid[key] = float((((w * p_emb + (1 - w) * p_lin) > 0.5) == split.valid_y).mean())
    best = max(valid, key=lambda k: valid[k])
    partner, c, w = grid[best]
    say(f"MiniLM ensemble candidate: refit {partner} on train + validation")
    on_full = CANDIDATES[partner](full_x, full_y)
    head = LogisticRegression(C=c, max_iter=3000, random_state=SEED).fit(
        np.concatenate([e_tr, e_va]), np.concatenate([split.train_y, split.valid_y])
    )
    p_emb_te = head.predict_proba(e_te)[:, 1]
    p_ens = w * p_emb_te + (1 - w) * on_full.predict_proba(split.test_x)[:, 1]
    single = OnnxEncoder(EMBED_DIR, threads=1)
    single.encode(split.test_x[:20])
    t0 = time.perf_counter()
    for sentence in split.test_x[:200]:
        single.encode([sentence])
    encoder_ms = (time.perf_counter() - t0) / 200 * 1000
    return {
        "linear+minilm-lr-ensemble": {
            "validation_accuracy": {k: round(v, 4) for k, v in valid.items()},
            "chosen": best,
            "test_accuracy": round(float(((p_ens > 0.5) == split.test_y).mean()), 4),
            "test_accuracy_minilm_lr_alone": round(float(((p_emb_te > 0.5) == split.test_y).mean()), 4),
            "encoder_ms_per_sentence_single_thread": round(encoder_ms, 3),
            "why_not_shipped": "the fine-tuned MiniLM costs the same encoder pass and scores higher; this "
            "ensemble would also need two graphs",
        }
    }


_SESSIONS: dict[Path, Callable[[str], np.ndarray]] = {}


def _session_cache(path: Path) -> Callable[[str], np.ndarray]:
    """One ONNX session per path, for the per-request latency figure in metrics.json."""
    if path not in _SESSIONS:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        def run(text: str) -> np.ndarray:
            return session.run(["probabilities"], {"text": np.array([[text]], dtype=object)})[0]

        _SESSIONS[path] = run
    return _SESSIONS[path]


if __name__ == "__main__":  # pragma: no cover - `router train specialist sentiment` is the entry point
    import json

    print(json.dumps(train_sentiment(progress=print), indent=2))
