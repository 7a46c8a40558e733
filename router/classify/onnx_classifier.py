"""The trained request classifier: one ONNX graph (TF-IDF -> task softmax + per-model P(correct)) plus a
small JSON of metadata, both written by `router train classifier` into ``models/classifier/``.

Why ONNX and a linear graph: classification runs on every request, so it must cost far less than the
cheapest model it routes to; one onnxruntime call on a bounded window of text (1,000 chars) is ~0.1 ms
here (p50 0.13 ms per request including the Python around it, benchmarks/bench_classifier.py).
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np

from .base import TASKS, Classification, RequestClassifier
from .rules import RuleClassifier

# A request that *asks for text* (write/rewrite/summarise ...) is generation even when it talks about reviews
# or sentiment: "Write a positive review of this film" must not reach the sentiment specialist.
_GENERATION = re.compile(
    r"^\W*(please\s+|can\s+you\s+|could\s+you\s+)?(write|rewrite|compose|generate|draft|create|make|summari[sz]e|"
    r"translate|continue|explain|fix|give\s+me|list|improve|paraphrase|edit|reply|respond)\b",
    re.IGNORECASE,
)
_OPTIONS = re.compile(r"(?:^|\s)\(?[A-Da-d][.):]\s")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def generation_guard(text: str) -> bool:
    """True when the request starts with an instruction to produce text (so it is not classification)."""
    return bool(_GENERATION.search(text[:200]))


def has_options(text: str) -> bool:
    """Multiple choice means listed options ("A. ...", "(b) ..."): at least two option markers."""
    return len(_OPTIONS.findall(text)) >= 2


def apply_guards(probs: np.ndarray, tasks: list[str], text: str) -> tuple[np.ndarray, list[str]]:
    """Two structural rules on top of the learned probabilities, measured on held-out phrasings:
    generation requests are not sentiment classification, and no listed options means not multiple choice
    (the mass moves to chat)."""
    probs = probs.copy()
    fired = []
    chat = tasks.index("chat")
    for task, rule, name in (
        ("sentiment", generation_guard, "generation-guard"),
        ("multiple_choice", lambda t: not has_options(t), "options-guard"),
    ):
        i = tasks.index(task)
        if probs[i] > 0 and rule(text):
            probs[chat] += probs[i]
            probs[i] = 0.0
            fired.append(name)
    return probs, fired


def bound_text(text: str, max_chars: int, head: int, tail: int) -> tuple[str, bool]:
    """Valid UTF-8, no control bytes, at most ``max_chars`` (head + tail kept): bounded time on any input."""
    truncated = len(text) > max_chars
    if truncated:
        text = text[:head] + " \u2026 " + text[-tail:]
    text = text.encode("utf-8", "replace").decode("utf-8")
    return _CONTROL.sub(" ", text), truncated


class OnnxRequestClassifier(RequestClassifier):
    """Task and P(correct) from ``models/classifier/classifier.onnx`` + ``classifier.json``.

    ``p_correct`` has every model named in the metadata: hosted models get the per-request head (learned
    on MMLU) weighted by P(multiple_choice), and every model gets its measured task-level accuracy for the
    other tasks (metadata ``task_accuracy``), mixed by the task probabilities.
    """

    def __init__(self, folder: str | Path) -> None:
        import onnxruntime as ort

        folder = Path(folder)
        self.meta: dict[str, Any] = json.loads((folder / "classifier.json").read_text(encoding="utf-8"))
        self.tasks: list[str] = list(self.meta["tasks"])
        if set(self.tasks) != set(TASKS):
            raise ValueError(f"{folder}/classifier.json: tasks {self.tasks} differ from {list(TASKS)}")
        self.pc_models: list[str] = list(self.meta["p_correct_models"])
        self.max_chars = int(self.meta["max_chars"])
        self.head = int(self.meta["head_chars"])
        self.tail = int(self.meta["tail_chars"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(folder / self.meta["onnx"]), options, providers=["CPUExecutionProvider"]
        )
        self._lock = threading.Lock()
        self._mc = self.tasks.index(self.meta.get("p_correct_task", "multiple_choice"))
        self._sent = self.tasks.index("sentiment")
        self._chat = self.tasks.index("chat")
        self.models, self._acc = self._accuracy_table(self.meta["task_accuracy"])
        self._pc_rows = [self.models.index(m) for m in self.pc_models]
        self._feed = np.empty((1, 1), dtype=object)  # reused single-request input (guarded by the lock)

    def _accuracy_table(self, table: dict[str, dict[str, Any]]) -> tuple[list[str], np.ndarray]:
        """[model, task] accuracy; unmeasured cells get the model's mean over its measured tasks."""
        models = sorted(set(table) | set(self.pc_models))
        acc = np.zeros((len(models), len(self.tasks)))
        for i, model in enumerate(models):
            cells = {t: float(v["accuracy"]) for t, v in table.get(model, {}).items()}
            fill = float(np.mean(list(cells.values()))) if cells else 0.5
            acc[i] = [cells.get(t, fill) for t in self.tasks]
        return models, acc

    def raw(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Task probabilities [N, 4] and hosted-model P(correct) [N, M] for already bounded texts."""
        batch = np.array([[t] for t in texts], dtype=object)
        with self._lock:
            task_probs, p_correct = self.session.run(None, {"text": batch})
        return task_probs, p_correct

    def classify(self, text: str) -> Classification:
        if not isinstance(text, str):
            text = str(text)
        chars = len(text)
        bounded, truncated = bound_text(text, self.max_chars, self.head, self.tail)
        if not bounded.strip():
            probs = {t: (1.0 if t == "chat" else 0.0) for t in self.tasks}
            return Classification(
                "chat", probs, self._mix(np.array(list(probs.values())), None), truncated, chars, "onnx:empty"
            )
        with self._lock:
            self._feed[0, 0] = bounded
            task_probs, p_correct = self.session.run(None, {"text": self._feed})
        probs = task_probs[0].astype(np.float64)
        probs, fired = apply_guards(probs, self.tasks, bounded)
        method = "+".join(["onnx", *fired])
        task = self.tasks[int(np.argmax(probs))]
        return Classification(
            task=task,
            task_probs={t: float(p) for t, p in zip(self.tasks, probs, strict=True)},
            p_correct=self._mix(probs, p_correct[0]),
            truncated=truncated,
            chars=chars,
            method=method,
        )

    def _mix(self, probs: np.ndarray, hosted: np.ndarray | None) -> dict[str, float]:
        acc = self._acc @ probs
        if hosted is not None:
            rows = self._pc_rows
            acc[rows] += probs[self._mc] * (hosted.astype(np.float64) - self._acc[rows, self._mc])
        return dict(zip(self.models, acc.tolist(), strict=True))


def load_default_classifier(models_dir: str | Path) -> RequestClassifier:
    """The trained ONNX classifier when ``models_dir/classifier`` holds its artifacts, else the rules."""
    folder = Path(models_dir) / "classifier"
    if (folder / "classifier.json").exists() and (folder / "classifier.onnx").exists():
        return OnnxRequestClassifier(folder)
    return RuleClassifier()
