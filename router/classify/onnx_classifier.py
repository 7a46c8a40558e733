"""The trained request classifier: one ONNX graph (TF-IDF -> task softmax + per-model P(correct)) plus a
small JSON of metadata, both written by `router train classifier` into ``models/classifier/``.

Why ONNX and a linear graph: classification runs on every request, so it must cost far less than the
cheapest model it routes to: one onnxruntime call on a bounded window of text (1,000 chars), a fraction of a
millisecond (``python benchmarks/bench_classifier.py``; figures in benchmarks/README.md, *Classifier*).
"""

from __future__ import annotations

import json
import operator
import re
import threading
from collections.abc import Sequence
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
# An option marker is "A. ", "(b) ", "C: " at the start or after whitespace. Two patterns rather than
# r"(?:^|\s)\(?[A-Da-d][.):]\s": one that starts with \s lets the regex engine skip ahead to whitespace instead of
# trying the alternation at every character (half the time per request; same matches, checked on every
# request-set text and 200,000 random strings of marker characters).
_OPTION_AT_START = re.compile(r"\(?[A-Da-d][.):]\s")
_OPTION_AFTER_SPACE = re.compile(r"\s\(?[A-Da-d][.):]\s")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def generation_guard(text: str) -> bool:
    """True when the request starts with an instruction to produce text (so it is not classification)."""
    return bool(_GENERATION.search(text[:200]))


def has_options(text: str) -> bool:
    """Multiple choice means listed options ("A. ...", "(b) ..."): at least two option markers (counted as
    ``re.findall`` would, without overlaps)."""
    first = _OPTION_AT_START.match(text)
    count = 1 if first else 0
    for _ in _OPTION_AFTER_SPACE.finditer(text, first.end() if first else 0):
        count += 1
        if count == 2:
            return True
    return False


def apply_guards(probs: Sequence[float], tasks: list[str], text: str) -> tuple[list[float], list[str]]:
    """Two structural rules on top of the learned probabilities, measured on held-out phrasings:
    generation requests are not sentiment classification, and no listed options means not multiple choice
    (the mass moves to chat). Works on plain floats: four numbers do not need numpy (a third of the cost)."""
    probs = [float(p) for p in probs]
    fired = []
    chat = tasks.index("chat")
    sentiment = tasks.index("sentiment")
    if probs[sentiment] > 0 and generation_guard(text):
        probs[chat] += probs[sentiment]
        probs[sentiment] = 0.0
        fired.append("generation-guard")
    choice = tasks.index("multiple_choice")
    if probs[choice] > 0 and not has_options(text):
        probs[chat] += probs[choice]
        probs[choice] = 0.0
        fired.append("options-guard")
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
        self.models, acc = self._accuracy_table(self.meta["task_accuracy"])
        self._acc: list[list[float]] = acc.tolist()  # [model][task], plain floats (see _mix)
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
        bounded, truncated, chars = self._bound(text)
        if not bounded.strip():
            return self._empty(truncated, chars)
        with self._lock:
            self._feed[0, 0] = bounded
            task_probs, p_correct = self.session.run(None, {"text": self._feed})
        return self._finish(bounded, truncated, chars, task_probs[0].tolist(), p_correct[0].tolist())

    def classify_batch(self, texts: list[str]) -> list[Classification]:
        """One onnxruntime call for the whole batch: the call itself costs about as much as one text's
        features, so concurrent requests classified together cost about half as much each (see
        :class:`router.classify.batching.ClassifyBatcher` and benchmarks/bench_classifier.py)."""
        bounded = [self._bound(t) for t in texts]
        run = [i for i, (b, _, _) in enumerate(bounded) if b.strip()]
        out: list[Classification | None] = [None] * len(texts)
        if run:
            task_probs, p_correct = self.raw([bounded[i][0] for i in run])
            for i, probs, hosted in zip(run, task_probs.tolist(), p_correct.tolist(), strict=True):
                out[i] = self._finish(*bounded[i], probs, hosted)
        return [c if c is not None else self._empty(*bounded[i][1:]) for i, c in enumerate(out)]

    def _bound(self, text: str) -> tuple[str, bool, int]:
        if not isinstance(text, str):
            text = str(text)
        bounded, truncated = bound_text(text, self.max_chars, self.head, self.tail)
        return bounded, truncated, len(text)

    def _empty(self, truncated: bool, chars: int) -> Classification:
        probs = [1.0 if t == "chat" else 0.0 for t in self.tasks]
        return Classification("chat", dict(zip(self.tasks, probs, strict=True)), self._mix(probs, None), truncated,
                              chars, "onnx:empty")

    def _finish(self, bounded: str, truncated: bool, chars: int, task_probs: list[float],
                hosted: list[float]) -> Classification:
        probs, fired = apply_guards(task_probs, self.tasks, bounded)
        best = max(range(len(probs)), key=probs.__getitem__)  # first of equal maxima, as np.argmax
        return Classification(
            task=self.tasks[best],
            task_probs=dict(zip(self.tasks, probs, strict=True)),
            p_correct=self._mix(probs, hosted),
            truncated=truncated,
            chars=chars,
            method="+".join(["onnx", *fired]),
        )

    def _mix(self, probs: Sequence[float], hosted: Sequence[float] | None) -> dict[str, float]:
        """Per-model P(correct): task-level accuracy mixed by the task probabilities, with the hosted models'
        per-request head in place of their multiple-choice accuracy. Plain floats (``apply_guards`` made them):
        a 5x4 table."""
        acc = [sum(map(operator.mul, row, probs)) for row in self._acc]
        if hosted is not None:
            mc = probs[self._mc]
            for row, h in zip(self._pc_rows, hosted, strict=True):
                acc[row] += mc * (float(h) - self._acc[row][self._mc])
        return dict(zip(self.models, acc, strict=True))


def load_default_classifier(models_dir: str | Path) -> RequestClassifier:
    """The trained ONNX classifier when ``models_dir/classifier`` holds its artifacts, else the rules."""
    folder = Path(models_dir) / "classifier"
    if (folder / "classifier.json").exists() and (folder / "classifier.onnx").exists():
        return OnnxRequestClassifier(folder)
    return RuleClassifier()
