"""Train the request classifier: task detection plus the quality model's request representation, one ONNX graph,
and the per-model quality table beside it (``classifier.json``).

Graph: ``text`` [N, 1] string -> word 1-2 gram counts (a vocabulary of ~7,000, ASCII tokens, lower-cased in
the graph) -> for the n-grams a text has, their sublinear TF-IDF weights times their rows of a [V, 4 + k] head,
summed per text and divided by the row's L2 norm -> softmax over the 4 task logits (``task_probs``) and the k
numbers of the request representation (``request_vector``), which the classifier turns into P(correct) of every
model (:mod:`router.classify.quality`). Why one linear graph: a single product keeps classification far below a
millisecond on one core, and logistic models give probabilities that can be checked (ECE) and
temperature-calibrated, which the policy engine needs for accuracy targets.

Why this shape: a call's cost is in passes over vocabulary-wide rows, not in the text. So the vocabulary is
small (as accurate on held-out data as one six times larger), only the n-grams present are touched, and the
L2 norm divides the product (``x W / ||x||`` equals ``normalize(x) W``) rather than normalising the row. The
measurements: benchmarks/README.md, sections *Classifier* and *Quality model*.

P(correct) is learned from every outcome source (:mod:`router.training.quality_train`) and evaluated the way
RouteLLM does on MMLU, with subjects held out (GroupKFold by subject, never by row): APGR, CPT(50 %), CPT(80 %)
vs random, the oracle and the previous per-model TF-IDF heads.

Length: one training recipe (data, fit, choice on validation, ONNX export, the export's check against the fitted
model) read in the order it runs; the request data and the quality model are modules of their own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold

from ..cards import load_catalogue
from ..classify.base import TASKS
from ..classify.features import HEAD_CHARS, MAX_CHARS, TAIL_CHARS, vectorizer, window
from ..classify.onnx_classifier import apply_guards
from .common import MODELS_DIR, SEED, seed_everything, staged_outputs, write_json
from .onnx_text import portable_lowercase
from .outcome_sources import load_sources
from .quality_train import fit_recipe, quality_metadata, subject_held_out_quality
from .requests import MMLU_MODELS, build_request_set, load_mmlu

HOSTED = tuple(MMLU_MODELS.values())  # ("mixtral-8x7b-instruct", "gpt-4-1106-preview")
WEAK, STRONG = HOSTED
REQUEST_FEATURES = 4000
MMLU_FEATURES = 3000

Progress = Callable[[str], None]


# --- routing metrics ----------------------------------------------------------------------------------------
def routing_curve(score: np.ndarray, weak: np.ndarray, strong: np.ndarray, steps: int = 101) -> np.ndarray:
    """Accuracy when the top-``x`` share of requests by ``score`` go to the strong model, x = 0..1."""
    order = np.argsort(-score, kind="stable")
    n = len(score)
    acc = []
    for share in np.linspace(0, 1, steps):
        k = int(round(share * n))
        chosen = weak.astype(float).copy()
        chosen[order[:k]] = strong[order[:k]]
        acc.append(chosen.mean())
    return np.array(acc)


def routing_metrics(score: np.ndarray, weak: np.ndarray, strong: np.ndarray) -> dict[str, float]:
    """RouteLLM's metrics: APGR (mean performance-gap recovered over the cost range) and CPT(x) (the
    smallest share of strong-model calls that recovers x of the gap)."""
    curve = routing_curve(score, weak, strong)
    lo, hi = weak.mean(), strong.mean()
    pgr = (curve - lo) / (hi - lo)
    shares = np.linspace(0, 1, len(curve))

    def cpt(target: float) -> float:
        hit = np.nonzero(pgr >= target - 1e-9)[0]
        return float(shares[hit[0]]) if len(hit) else 1.0

    return {"apgr": float(np.trapezoid(pgr, shares)), "cpt50": cpt(0.5), "cpt80": cpt(0.8)}


def expected_calibration_error(probs: np.ndarray, outcome: np.ndarray, bins: int = 10) -> float:
    """ECE with equal-width bins: mean |confidence - accuracy| weighted by bin size."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(probs, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.mean() * abs(probs[mask].mean() - outcome[mask].mean())
    return float(total)


def reliability(probs: np.ndarray, outcome: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Reliability table rows (bin, mean predicted, observed, count) for the metrics JSON."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(probs, edges[1:-1]), 0, bins - 1)
    rows = []
    for b in range(bins):
        mask = which == b
        if mask.any():
            rows.append(
                {
                    "bin": round(float(edges[b]), 2),
                    "predicted": round(float(probs[mask].mean()), 4),
                    "observed": round(float(outcome[mask].mean()), 4),
                    "n": int(mask.sum()),
                }
            )
    return rows


# --- P(correct) ---------------------------------------------------------------------------------------------
@dataclass
class McData:
    texts: list[str]
    subjects: np.ndarray
    outcomes: dict[str, np.ndarray]


def mmlu_data() -> McData:
    items = load_mmlu()
    return McData(
        [window(it.prompt)[0] for it in items],
        np.array([it.subject for it in items]),
        {m: np.array([it.outcomes[m] for it in items], dtype=np.int64) for m in HOSTED},
    )


def _fit_binary(x: Any, y: np.ndarray, c: float) -> LogisticRegression:
    return LogisticRegression(C=c, max_iter=3000, random_state=SEED).fit(x, y)


def subject_held_out_eval(
    mc: McData,
    featurize: Callable[[list[str], list[str]], tuple[Any, Any]],
    c: float,
    folds: int = 5,
    say: Progress | None = None,
) -> dict[str, Any]:
    """Out-of-fold P(correct) with whole subjects held out, then routing metrics and calibration."""
    oof = {m: np.zeros(len(mc.texts)) for m in HOSTED}
    for k, (tr, te) in enumerate(GroupKFold(n_splits=folds).split(mc.texts, groups=mc.subjects)):
        if say:
            say(f"fold {k + 1}/{folds}")
        x_tr, x_te = featurize([mc.texts[i] for i in tr], [mc.texts[i] for i in te])
        for m in HOSTED:
            oof[m][te] = _fit_binary(x_tr, mc.outcomes[m][tr], c).predict_proba(x_te)[:, 1]
    return held_out_metrics(oof, mc)


def held_out_metrics(oof: dict[str, np.ndarray], mc: McData) -> dict[str, Any]:
    """Routing metrics (two scores), calibration and Brier of out-of-fold P(correct) for the two MMLU models."""
    weak, strong = mc.outcomes[WEAK], mc.outcomes[STRONG]
    scores = {
        "1 - P(weak)": 1 - oof[WEAK],
        "P(strong) - P(weak)": oof[STRONG] - oof[WEAK],
    }
    result: dict[str, Any] = {name: routing_metrics(s, weak, strong) for name, s in scores.items()}
    result["ece"] = {m: expected_calibration_error(oof[m], mc.outcomes[m]) for m in HOSTED}
    result["reliability"] = {m: reliability(oof[m], mc.outcomes[m]) for m in HOSTED}
    result["brier"] = {m: float(np.mean((oof[m] - mc.outcomes[m]) ** 2)) for m in HOSTED}
    result["brier_constant"] = {m: float(np.var(mc.outcomes[m])) for m in HOSTED}
    return result


def reference_routers(mc: McData, seed: int = SEED) -> dict[str, dict[str, float]]:
    """Random routing (mean of 20 seeded shuffles) and the oracle (strong only where it alone is right)."""
    weak, strong = mc.outcomes[WEAK], mc.outcomes[STRONG]
    rng = np.random.default_rng(seed)
    runs = [routing_metrics(rng.random(len(weak)), weak, strong) for _ in range(20)]
    random = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
    oracle_score = ((weak == 0) & (strong == 1)).astype(float)
    return {"random": random, "oracle": routing_metrics(oracle_score, weak, strong)}


def shared_vectorizer(request_texts: list[str], mmlu_texts: list[str]) -> TfidfVectorizer:
    """One vocabulary for both heads: the top words of the request set united with the top words of the MMLU
    prompts. Why: a single top-5,000 list over both let ten thousand long MMLU prompts crowd out the phrasing
    words task detection needs (held-out sentiment requests 85 % -> 94 % with this, the vocabulary is smaller)."""
    top_requests = vectorizer().set_params(max_features=REQUEST_FEATURES).fit(request_texts)
    top_mmlu = vectorizer().set_params(max_features=MMLU_FEATURES).fit(mmlu_texts)
    words = sorted(set(top_requests.vocabulary_) | set(top_mmlu.vocabulary_))
    return vectorizer().set_params(max_features=None, vocabulary=words).fit(request_texts + mmlu_texts)


def tfidf_featurizer(request_texts: list[str]) -> Callable[[list[str], list[str]], tuple[Any, Any]]:
    """The shipped feature recipe for the subject-held-out folds (the fold's MMLU prompts + the request set)."""

    def featurize(train: list[str], test: list[str]) -> tuple[Any, Any]:
        vec = shared_vectorizer(request_texts, train)
        return vec.transform(train), vec.transform(test)

    return featurize


def tfidf_featurize(train: list[str], test: list[str]) -> tuple[Any, Any]:
    """MMLU-only TF-IDF (the baseline the embedding comparison concatenates with)."""
    vec = vectorizer()
    return vec.fit_transform(train), vec.transform(test)


EMBED_C = 0.3
"""Regularisation of the logistic heads on MiniLM embeddings: the middle of a {0.1, 0.3, 1} grid run once on
the same subject folds (APGR 0.587 / 0.589 / 0.589, so the choice does not flatter the comparison)."""


def embedding_comparison(
    mc: McData,
    say: Progress | None = None,
    sample: int = 300,
    tfidf: Callable[[list[str], list[str]], tuple[Any, Any]] = tfidf_featurize,
) -> dict[str, Any] | None:
    """P(correct) from all-MiniLM-L6-v2 embeddings (int8 ONNX, ``router train embeddings``), alone and
    concatenated with TF-IDF, on the same subject-held-out folds, plus the per-request latency of the
    encoder; ``None`` when the exported encoder is not in ``models/embeddings``."""
    from scipy import sparse

    from .embeddings import EMBED_DIR, OnnxEncoder, available

    if not available(EMBED_DIR):
        return None
    if say:
        say("embeddings: encode MMLU prompts")
    emb = OnnxEncoder(EMBED_DIR, threads=2).encode(mc.texts, batch_size=64)  # training-time batch pass
    row = {t: i for i, t in enumerate(mc.texts)}

    def emb_featurize(train: list[str], test: list[str]) -> tuple[Any, Any]:
        return emb[[row[t] for t in train]], emb[[row[t] for t in test]]

    def both_featurize(train: list[str], test: list[str]) -> tuple[Any, Any]:
        (xa, xb), (ea, eb) = tfidf(train, test), emb_featurize(train, test)
        return sparse.hstack([xa, sparse.csr_matrix(ea)]).tocsr(), sparse.hstack([xb, sparse.csr_matrix(eb)]).tocsr()

    out: dict[str, Any] = {}
    for name, featurize, c in (("minilm", emb_featurize, EMBED_C), ("tfidf+minilm", both_featurize, 0.3)):
        if say:
            say(f"embeddings: {name} subject-held-out")
        result = subject_held_out_eval(mc, featurize, c)
        out[name] = {k: v for k, v in result.items() if k != "reliability"}
    texts = mc.texts[:: max(1, len(mc.texts) // sample)][:sample]
    encoder = OnnxEncoder(EMBED_DIR, threads=1)  # per-request latency, as the router would run it
    encoder.encode(texts[:20])
    times = []
    for text in texts:
        t0 = time.perf_counter()
        encoder.encode([text])
        times.append(time.perf_counter() - t0)
    out["encoder_ms_single_thread"] = {
        "p50": float(np.percentile(times, 50) * 1000),
        "p99": float(np.percentile(times, 99) * 1000),
        "n": len(texts),
        "input": f"MMLU prompts, {MAX_CHARS}-char window, at most 128 word pieces",
    }
    return out


# --- task detection -------------------------------------------------------------------------------------------
def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """One temperature that minimises held-out log loss (grid search; deterministic)."""
    best, best_t = np.inf, 1.0
    for t in np.exp(np.linspace(np.log(0.25), np.log(4.0), 61)):
        z = logits / t
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        loss = -logp[np.arange(len(labels)), labels].mean()
        if loss < best:
            best, best_t = loss, float(t)
    return best_t


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# --- export -----------------------------------------------------------------------------------------------------
def export_classifier(vec: TfidfVectorizer, weights: np.ndarray, bias: np.ndarray, path: Path) -> None:
    """skl2onnx's tokenizer and n-gram counts, then the sparse head below: Softmax over the first four columns
    (the task logits), the rest as they are (the request representation ``h`` of the quality model)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import StringTensorType

    base = convert_sklearn(
        vec, initial_types=[("text", StringTensorType([None, 1]))], target_opset={"": 17, "ai.onnx.ml": 3}
    )
    portable_lowercase(base)
    graph = base.graph
    n_tasks = len(TASKS)
    # drop skl2onnx's L2 Normalizer (slow on a dense row): normalise the [N, 4 + M] product instead
    (norm_node,) = [n for n in graph.node if n.op_type == "Normalizer"]
    dropped = {norm_node.output[0]}
    keep = [n for n in graph.node if n is not norm_node and not (n.op_type == "Identity" and n.input[0] in dropped)]
    counts, idf = _drop_dense_tfidf(keep)
    del graph.node[:]
    graph.node.extend(keep)
    graph.initializer.extend(
        [
            numpy_helper.from_array(weights.astype(np.float32), "head_W"),
            numpy_helper.from_array(bias.astype(np.float32), "head_b"),
            numpy_helper.from_array(np.array([0], dtype=np.int64), "s0"),
            numpy_helper.from_array(np.array([n_tasks], dtype=np.int64), "s1"),
            numpy_helper.from_array(np.array([weights.shape[1]], dtype=np.int64), "s2"),
            numpy_helper.from_array(np.array([weights.shape[1] + 1], dtype=np.int64), "s3"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "ax1"),
            numpy_helper.from_array(np.array(0, dtype=np.int64), "i0"),
            numpy_helper.from_array(np.array(1, dtype=np.int64), "i1"),
            numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
            numpy_helper.from_array(np.array(1e-12, dtype=np.float32), "eps"),
        ]
    )
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])
    graph.node.extend(
        [
            # Only the n-grams a text has are touched: sklearn's sublinear weight (1 + log tf) * idf of those,
            # their rows of head_W, summed per text. The numbers of the dense TF-IDF row @ head_W (to float
            # rounding) without five passes over ~4,700 mostly-zero columns per text (~30 % of the classifier's
            # time). skl2onnx's dense graph computes log(1 + tf), which differs from training for repeated words.
            helper.make_node("NonZero", [counts], ["nz"]),
            helper.make_node("Gather", ["nz", "i0"], ["nz_rows"], axis=0),
            helper.make_node("Gather", ["nz", "i1"], ["nz_cols"], axis=0),
            helper.make_node("Transpose", ["nz"], ["nz_pairs"], perm=[1, 0]),
            helper.make_node("GatherND", [counts, "nz_pairs"], ["tf"]),
            helper.make_node("Log", ["tf"], ["tf_log"]),
            helper.make_node("Add", ["tf_log", "one"], ["tf_sublinear"]),
            helper.make_node("Gather", [idf, "nz_cols"], ["nz_idf"], axis=0),
            helper.make_node("Mul", ["tf_sublinear", "nz_idf"], ["u"]),
            helper.make_node("Unsqueeze", ["u", "ax1"], ["u_col"]),
            helper.make_node("Gather", ["head_W", "nz_cols"], ["nz_W"], axis=0),
            helper.make_node("Mul", ["nz_W", "u_col"], ["nz_terms"]),
            helper.make_node("Mul", ["u_col", "u_col"], ["nz_squares"]),
            helper.make_node("Concat", ["nz_terms", "nz_squares"], ["nz_all"], axis=1),
            helper.make_node("Shape", [counts], ["n_rows"], start=0, end=1),
            helper.make_node("Concat", ["n_rows", "s3"], ["sums_shape"], axis=0),
            helper.make_node("ConstantOfShape", ["sums_shape"], ["sums0"], value=zero),
            helper.make_node("Unsqueeze", ["nz_rows", "ax1"], ["nz_row_col"]),
            helper.make_node("ScatterND", ["sums0", "nz_row_col", "nz_all"], ["sums"], reduction="add"),
            helper.make_node("Slice", ["sums", "s0", "s2", "ax1"], ["head_raw"]),
            helper.make_node("Slice", ["sums", "s2", "s3", "ax1"], ["feat_ss"]),
            helper.make_node("Sqrt", ["feat_ss"], ["feat_norm"]),
            helper.make_node("Max", ["feat_norm", "eps"], ["feat_norm_safe"]),
            helper.make_node("Div", ["head_raw", "feat_norm_safe"], ["head_mm"]),
            helper.make_node("Add", ["head_mm", "head_b"], ["head_logits"]),
            helper.make_node("Slice", ["head_logits", "s0", "s1", "ax1"], ["task_logits"]),
            helper.make_node("Slice", ["head_logits", "s1", "s2", "ax1"], ["request_vector"]),
            helper.make_node("Softmax", ["task_logits"], ["task_probs"], axis=1),
        ]
    )
    used = {name for n in graph.node for name in n.input}
    inits = [i for i in graph.initializer if i.name in used]  # skl2onnx's dense-only constants go
    del graph.initializer[:]
    graph.initializer.extend(inits)
    for opset in base.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, 18)  # ScatterND with reduction="add"
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info("task_probs", TensorProto.FLOAT, [None, n_tasks]),
            helper.make_tensor_value_info("request_vector", TensorProto.FLOAT, [None, weights.shape[1] - n_tasks]),
        ]
    )
    base.doc_string = "router request classifier: TF-IDF -> task softmax + the request's quality representation"
    onnx.checker.check_model(base)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base.SerializeToString())


def _drop_dense_tfidf(nodes: list[Any]) -> tuple[str, str]:
    """Remove skl2onnx's dense sublinear TF-IDF (Add, Log, Mul after the TfIdfVectorizer) from ``nodes``; return
    the names of the raw counts tensor and of the idf initializer, for the sparse head to use."""
    (tfidf,) = [n for n in nodes if n.op_type == "TfIdfVectorizer"]
    counts = tfidf.output[0]
    add = next(n for n in nodes if n.op_type == "Add" and counts in n.input)
    log = next(n for n in nodes if n.op_type == "Log" and n.input[0] == add.output[0])
    mul = next(n for n in nodes if n.op_type == "Mul" and log.output[0] in n.input)
    if any(mul.output[0] in n.input for n in nodes if n is not mul):  # e.g. skl2onnx's Normalizer, not dropped
        raise RuntimeError("unexpected skl2onnx TF-IDF graph: the sublinear TF-IDF output is used elsewhere")
    (idf,) = [name for name in mul.input if name != log.output[0]]
    for node in (add, log, mul):
        nodes.remove(node)
    return counts, idf


def train_classifier(
    out_dir: Path = MODELS_DIR / "classifier",
    progress: Progress | None = None,
    c_task: float = 10.0,
    c_pc: float = 0.3,
    compare_embeddings: bool = True,
) -> dict[str, Any]:
    """Build the request set, train and evaluate both heads, export ONNX + metadata JSON, written beside
    ``out_dir`` and moved in together at the end (:func:`~router.training.common.staged_outputs`): a run stopped
    partway leaves the previous classifier intact."""
    with staged_outputs(out_dir) as stage:
        return _train_into(stage, progress or (lambda _msg: None), c_task, c_pc, compare_embeddings)


def _train_into(out_dir: Path, say: Progress, c_task: float, c_pc: float, compare_embeddings: bool) -> dict[str, Any]:
    seed_everything()
    say("request set")
    train_set, test_set = build_request_set()
    mc = mmlu_data()
    task_index = {t: i for i, t in enumerate(TASKS)}
    y_tr = np.array([task_index[t] for t in train_set.labels])
    y_te = np.array([task_index[t] for t in test_set.labels])

    train_texts = [window(t)[0] for t in train_set.texts]
    cards = load_catalogue(MODELS_DIR)
    obs = load_sources(cards)
    say("per-model TF-IDF heads (the previous recipe), subjects held out")
    heads_eval = subject_held_out_eval(mc, tfidf_featurizer(train_texts), c_pc, say=say)
    oof = subject_held_out_quality(obs, train_texts, cards, HOSTED, progress=say)
    pc_eval = held_out_metrics({m: oof[m] for m in HOSTED}, mc)
    refs = reference_routers(mc)
    emb_cmp = embedding_comparison(mc, say, tfidf=tfidf_featurizer(train_texts)) if compare_embeddings else None

    say("quality model on every outcome source")
    recipe = fit_recipe(obs, train_texts, cards, progress=say)
    vec = recipe.vec
    x_tr = vec.transform(train_texts)
    x_te = vec.transform([window(t)[0] for t in test_set.texts])

    say("task head")
    # calibration split: a seeded 20 % of the training rows, for the temperature only
    rng = np.random.default_rng(SEED)
    cal = rng.random(len(y_tr)) < 0.2

    def task_model() -> LogisticRegression:
        return LogisticRegression(C=c_task, max_iter=5000, random_state=SEED, class_weight="balanced")

    task_lr = task_model().fit(x_tr[~cal], y_tr[~cal])
    # the calibration rows share templates with training, so they look easier than new phrasings: never
    # sharpen (temperature >= 1), only soften when they say so
    temperature = max(1.0, fit_temperature(task_lr.decision_function(x_tr[cal]), y_tr[cal]))
    task_lr = task_model().fit(x_tr, y_tr)
    probs_te = _softmax(task_lr.decision_function(x_te) / temperature)
    raw_acc = float((probs_te.argmax(1) == y_te).mean())
    probs_te = np.stack(
        [apply_guards(p, list(TASKS), window(t)[0])[0] for p, t in zip(probs_te, test_set.texts, strict=True)]
    )
    pred = probs_te.argmax(1)
    task_acc = float((pred == y_te).mean())
    per_group = {
        g: round(float((pred[np.array(test_set.groups) == g] == y_te[np.array(test_set.groups) == g]).mean()), 4)
        for g in sorted(set(test_set.groups))
    }
    conf = probs_te.max(1)
    task_ece = expected_calibration_error(conf, (pred == y_te).astype(float))
    confusion = np.zeros((len(TASKS), len(TASKS)), dtype=int)
    for a, b in zip(y_te, pred, strict=True):
        confusion[a, b] += 1

    w_q = recipe.model.w_
    weights = np.concatenate([task_lr.coef_.T / temperature, w_q], axis=1)
    bias = np.concatenate([task_lr.intercept_ / temperature, np.zeros(w_q.shape[1])])
    onnx_path = out_dir / "classifier.onnx"
    say("export ONNX")
    export_classifier(vec, weights, bias, onnx_path)

    # the graph must agree with the numpy computation it encodes
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    sample = [window(t)[0] for t in test_set.texts[:500]] + obs.prompts[:: max(1, len(obs.prompts) // 300)]
    o_task, o_vec = session.run(None, {"text": np.array([[t] for t in sample], dtype=object)})
    np_task = _softmax(task_lr.decision_function(vec.transform(sample)) / temperature)
    np_vec = recipe.model.represent(vec.transform(sample))
    agreement = {
        "task_argmax_agreement": float((o_task.argmax(1) == np_task.argmax(1)).mean()),
        "task_max_abs_diff": float(np.abs(o_task - np_task).max()),
        "request_vector_max_abs_diff": float(np.abs(o_vec - np_vec).max()),
    }

    t0 = time.perf_counter()
    for text in sample[:300]:
        session.run(None, {"text": np.array([[text]], dtype=object)})
    onnx_ms = (time.perf_counter() - t0) / 300 * 1000

    hosted_mean = {m: round(float(mc.outcomes[m].mean()), 4) for m in HOSTED}
    metrics: dict[str, Any] = {
        "seed": SEED,
        "task_detection": {
            "n_train": len(y_tr),
            "n_test": len(y_te),
            "held_out_accuracy": round(task_acc, 4),
            "held_out_accuracy_by_group": per_group,
            "ece_top_label": round(task_ece, 4),
            "guards": ["generation-guard", "options-guard"],
            "held_out_accuracy_without_guards": round(raw_acc, 4),
            "temperature": round(temperature, 4),
            "confusion_rows_true_cols_pred": confusion.tolist(),
        },
        "p_correct_subject_held_out": _round(pc_eval),
        "p_correct_subject_held_out_tfidf_heads": _round(heads_eval),
        "reference_routers": _round(refs),
        "quality_model": {"kind": "per-(model, source) logistic heads factorised by SVD", "k": recipe.model.k,
                          "explained": recipe.model.explained_, "c": dict(recipe.model.c),
                          "observations": int(len(obs.y)), "prompts": len(obs.prompts),
                          "per_source": {src: int((obs.source == i).sum()) for i, src in enumerate(obs.sources)}},
        "hosted_mean_accuracy": hosted_mean,
        "onnx_agreement": _round(agreement),
        "onnx_ms_per_request_single_thread": round(onnx_ms, 4),
        "feature_comparison": _round(
            emb_cmp
            if emb_cmp is not None
            else {"skipped": "models/embeddings missing or --no-embeddings (run `router train embeddings`)"}
        ),
        "features": {"kind": "tfidf-word12", "vocabulary": len(vec.vocabulary_), "window_chars": MAX_CHARS},
    }
    meta = {
        "tasks": list(TASKS),
        "max_chars": MAX_CHARS,
        "head_chars": HEAD_CHARS,
        "tail_chars": TAIL_CHARS,
        "onnx": "classifier.onnx",
        "quality": quality_metadata(recipe, cards, {"trained_on": {
            src: int((obs.source == i).sum()) for i, src in enumerate(obs.sources)}}),
        "metrics": metrics,
    }
    write_json(out_dir / "classifier.json", meta)
    return metrics


def _round(obj: Any) -> Any:
    if isinstance(obj, float):
        return round(obj, 4)
    if isinstance(obj, dict):
        return {k: _round(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_round(v) for v in obj]
    return obj


if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(train_classifier(progress=print), indent=2))
