"""Train the sentiment specialist (the router's cheapest tier) from the shipped sentence-polarity data and
export it to ONNX.

Why this design: a TF-IDF (word + character n-grams) logistic regression runs in well under a millisecond on
one core and converts to plain ONNX operators, so the specialist needs nothing but onnxruntime. Feature
weights are scaled by naive-Bayes log-count ratios (NB-LR, Wang & Manning 2012), a known gain on short
movie-review sentences; the scaling is folded into the exported weights, so the ONNX graph stays a standard
vectoriser + linear model. The data is lower-cased and tokenised; the vectorisers lower-case inside the
graph, and training also sees a de-tokenised copy of every training sentence so raw user text scores alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.naive_bayes import MultinomialNB
from sklearn.pipeline import FeatureUnion, Pipeline

from .common import DATA_DIR, MODELS_DIR, SEED, detokenize, read_lines, seed_everything, write_json

LABELS = ("negative", "positive")
TEST_SIZE = 0.2
VALID_SIZE = 0.125  # of the training part: 70 / 10 / 20 overall

Progress = Callable[[str], None]


@dataclass
class SentimentSplit:
    """Stratified, seeded train / validation / test split of the polarity sentences."""

    train_x: list[str]
    train_y: np.ndarray
    valid_x: list[str]
    valid_y: np.ndarray
    test_x: list[str]
    test_y: np.ndarray


def load_polarity(data_dir: Path = DATA_DIR / "sentiment_polarity") -> tuple[list[str], np.ndarray]:
    """Sentences and labels (1 = positive), in file order."""
    pos = read_lines(data_dir / "rt-polarity.pos")
    neg = read_lines(data_dir / "rt-polarity.neg")
    return pos + neg, np.array([1] * len(pos) + [0] * len(neg), dtype=np.int64)


def split_polarity(data_dir: Path = DATA_DIR / "sentiment_polarity", seed: int = SEED) -> SentimentSplit:
    """The one split every consumer (specialist, classifier templates, local outcomes) uses, so the
    held-out sentences are never trained on anywhere."""
    texts, labels = load_polarity(data_dir)
    rest_x, test_x, rest_y, test_y = train_test_split(
        texts, labels, test_size=TEST_SIZE, random_state=seed, stratify=labels
    )
    train_x, valid_x, train_y, valid_y = train_test_split(
        rest_x, rest_y, test_size=VALID_SIZE, random_state=seed, stratify=rest_y
    )
    return SentimentSplit(train_x, train_y, valid_x, valid_y, test_x, test_y)


def _augment(texts: list[str], labels: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Each sentence as published plus its de-tokenised form (only where it differs)."""
    extra = [(detokenize(t), y) for t, y in zip(texts, labels, strict=False) if detokenize(t) != t]
    return list(texts) + [t for t, _ in extra], np.concatenate([labels, [y for _, y in extra]]).astype(np.int64)


TOKEN_PATTERN = r"[0-9A-Za-z_]+"
"""ASCII word characters, single letters included: exactly what onnxruntime's RE2 tokenizer matches, so the
ONNX graph and sklearn agree (sklearn's default drops 1-letter tokens only after n-grams are formed in ONNX,
and RE2 has no Unicode ``\\w``)."""


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
    _portable_lowercase(onx)
    names = [o.name for o in onx.graph.output]
    if names != ["label", "probabilities"]:
        raise RuntimeError(f"unexpected ONNX outputs {names}")
    onx.doc_string = "router sentiment specialist: TF-IDF word+char NB-LR; labels 0=negative 1=positive"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(onx.SerializeToString())


def _portable_lowercase(onx: Any) -> None:
    """skl2onnx's StringNormalizer carries no locale, so onnxruntime asks for en_US.UTF-8 and fails to load
    on machines without that locale (this one). The "C" locale always exists; it lower-cases ASCII, which
    covers the English training data (non-ASCII capitals stay as they are)."""
    from onnx import helper

    for node in onx.graph.node:
        if node.op_type == "StringNormalizer":
            kept = [a for a in node.attribute if a.name != "locale"]
            del node.attribute[:]
            node.attribute.extend([*kept, helper.make_attribute("locale", "C")])


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


def train_sentiment(
    data_dir: Path = DATA_DIR / "sentiment_polarity",
    out_dir: Path = MODELS_DIR / "sentiment",
    progress: Progress | None = None,
    compare_embeddings: bool = True,
) -> dict[str, Any]:
    """Select a model on the validation split, refit it on train + validation, test once on the held-out
    20 %, export to ONNX, check the graph agrees with sklearn, and write ``metrics.json``."""
    say = progress or (lambda _msg: None)
    seed_everything()
    split = split_polarity(data_dir)
    train_x, train_y = _augment(split.train_x, split.train_y)

    say("baselines")
    baselines = {
        f"bow-unigram-{kind}": _accuracy(
            fit_bow_baseline(split.train_x, split.train_y, kind), split.test_x, split.test_y
        )
        for kind in ("lr", "nb")
    }
    validation: dict[str, float] = {}
    fitted: dict[str, Pipeline] = {}
    for name, fit in CANDIDATES.items():
        say(f"candidate {name}")
        fitted[name] = fit(train_x, train_y)
        validation[name] = _accuracy(fitted[name], split.valid_x, split.valid_y)
    chosen = max(validation, key=lambda k: validation[k])

    say(f"refit {chosen} on train + validation")
    full_x, full_y = _augment(split.train_x + split.valid_x, np.concatenate([split.train_y, split.valid_y]))
    t0 = time.perf_counter()
    model = CANDIDATES[chosen](full_x, full_y)
    fit_s = time.perf_counter() - t0
    test_acc = _accuracy(model, split.test_x, split.test_y)
    detok_test = [detokenize(t) for t in split.test_x]
    test_acc_detok = _accuracy(model, detok_test, split.test_y)
    sk_probs = model.predict_proba(split.test_x)

    say("export ONNX and check agreement")
    onnx_path = out_dir / "sentiment.onnx"
    export_onnx(model, onnx_path)
    onnx_labels, onnx_probs = onnx_predict(onnx_path, split.test_x)
    agreement = float((onnx_labels == model.predict(split.test_x)).mean())
    max_prob_diff = float(np.abs(onnx_probs - sk_probs).max())
    onnx_acc = float((onnx_labels == split.test_y).mean())

    t0 = time.perf_counter()
    for sentence in split.test_x[:300]:
        onnx_predict_one = _session_cache(onnx_path)
        onnx_predict_one(sentence)
    per_request_ms = (time.perf_counter() - t0) / 300 * 1000

    metrics: dict[str, Any] = {
        "model": chosen,
        "labels": list(LABELS),
        "seed": SEED,
        "n_train": len(split.train_x) + len(split.valid_x),
        "n_train_augmented": len(full_x),
        "n_test": len(split.test_x),
        "validation_accuracy": {k: round(v, 4) for k, v in validation.items()},
        "test_accuracy": round(test_acc, 4),
        "test_accuracy_detokenized": round(test_acc_detok, 4),
        "test_accuracy_onnx": round(onnx_acc, 4),
        "baselines_test_accuracy": {k: round(v, 4) for k, v in baselines.items()},
        "onnx_sklearn_label_agreement": round(agreement, 6),
        "onnx_sklearn_max_prob_diff": float(f"{max_prob_diff:.3g}"),
        "onnx_bytes": onnx_path.stat().st_size,
        "onnx_ms_per_request_single_thread": round(per_request_ms, 4),
        "fit_seconds": round(fit_s, 1),
        "data": "data/sentiment_polarity (Pang & Lee 2005, sentence polarity v1.0)",
        "split": f"stratified, seed {SEED}: 70% train / 10% validation (model selection) / 20% test",
    }
    ensemble = embedding_ensemble(split, fitted, full_x, full_y, say) if compare_embeddings else None
    metrics["not_shipped_candidates"] = ensemble or {
        "skipped": "models/embeddings missing or --no-embeddings (run `router train embeddings`)"
    }
    write_json(out_dir / "metrics.json", metrics)
    return metrics


def embedding_ensemble(
    split: SentimentSplit, fitted: dict[str, Pipeline], full_x: list[str], full_y: np.ndarray, say: Progress
) -> dict[str, Any] | None:
    """Candidate measured but not shipped: a linear candidate's P(positive) averaged with a logistic
    regression on all-MiniLM-L6-v2 embeddings (partner, C and mixing weight picked on validation). It needs the
    MiniLM tokenizer + encoder in front of the head, which the single-graph string-input contract of the
    ONNX backend cannot hold, so the figures here say what shipping it would buy and cost."""
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
            "why_not_shipped": "needs WordPiece tokenisation + a second ONNX session; the backend contract is one "
            "graph with a string input (router/backends/onnx_specialist.py)",
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
