"""The trained request classifier: one ONNX graph (TF-IDF -> task softmax + the request's representation) plus a
JSON of metadata (the per-model quality table), both written by `router train classifier` into
``models/classifier/``.

Why ONNX and a linear graph: classification runs on every request, so it must cost far less than the
cheapest model it routes to: one onnxruntime call on a bounded window of text (1,000 chars), a fraction of a
millisecond (``python benchmarks/bench_classifier.py``; figures in benchmarks/README.md, *Classifier*).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError
from .base import TASKS, Classification, RequestClassifier
from .quality import ADDED_FILE, QualityTable, read_added
from .rules import RuleClassifier

log = logging.getLogger("router.classify")

if TYPE_CHECKING:
    from ..cards import ModelCard

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
# The end of a marker ("A. ": an option letter, ".", ")" or ":", whitespace) whose letter follows whitespace, "(" or
# the start of the text: every marker has one, most requests have none or one. One pattern per punctuation mark,
# each starting with that literal character, which the regex engine finds with a plain scan rather than testing
# every character against a set or against whitespace: on request texts, has_options costs a quarter of what the
# exact count alone does.
_MARKER_ENDS = tuple(re.compile(re.escape(mark) + r"(?<=[A-Da-d].)(?<![^\s(][A-Da-d].)\s") for mark in ".):")
# Control characters become spaces. They are all ASCII, and an ASCII character's UTF-8 byte never occurs inside
# another character's encoding, so translating the UTF-8 bytes replaces exactly these characters: one table lookup
# per byte, on the bytes the encoding makes anyway, instead of a regex scan of the text.
_CONTROL_BYTES = bytes([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])
_CONTROL_TO_SPACE = bytes.maketrans(_CONTROL_BYTES, b" " * len(_CONTROL_BYTES))


def generation_guard(text: str) -> bool:
    """True when the request starts with an instruction to produce text (so it is not classification)."""
    return bool(_GENERATION.search(text[:200]))


def has_options(text: str) -> bool:
    """Multiple choice means listed options ("A. ...", "(b) ..."): at least two option markers (counted as
    ``re.findall`` would, without overlaps)."""
    if not _two_marker_ends(text):
        return False
    first = _OPTION_AT_START.match(text)
    count = 1 if first else 0
    for _ in _OPTION_AFTER_SPACE.finditer(text, first.end() if first else 0):
        count += 1
        if count == 2:
            return True
    return False


def _two_marker_ends(text: str) -> bool:
    """At least two marker ends (:data:`_MARKER_ENDS`): needed for two markers, and far cheaper to rule out."""
    seen = False
    for marker_end in _MARKER_ENDS:
        first = marker_end.search(text)
        if first is not None:
            if seen or marker_end.search(text, first.end()) is not None:
                return True
            seen = True
    return False


def apply_guards(probs: Sequence[float], tasks: list[str], text: str) -> tuple[list[float], list[str]]:
    """Two structural rules on top of the learned probabilities, measured on held-out phrasings:
    generation requests are not sentiment classification, and no listed options means not multiple choice
    (the mass moves to chat). Works on plain floats: four numbers do not need numpy (a third of the cost)."""
    probs = [float(p) for p in probs]
    fired = guard_in_place(probs, text, tasks.index("chat"), tasks.index("sentiment"), tasks.index("multiple_choice"))
    return probs, list(fired)


def guard_in_place(probs: list[float], text: str, chat: int, sentiment: int, choice: int) -> tuple[str, ...]:
    """:func:`apply_guards` on a list of Python floats, changed in place, given the positions of chat, sentiment and
    multiple_choice in it (the classifier finds them once, not per request). Returns the names of the guards that
    fired."""
    fired: tuple[str, ...] = ()
    if probs[sentiment] > 0 and generation_guard(text):
        probs[chat] += probs[sentiment]
        probs[sentiment] = 0.0
        fired = ("generation-guard",)
    if probs[choice] > 0 and not has_options(text):
        probs[chat] += probs[choice]
        probs[choice] = 0.0
        fired += ("options-guard",)
    return fired


def bound_text(text: str, max_chars: int, head: int, tail: int) -> tuple[str, bool]:
    """Valid UTF-8, no control bytes, at most ``max_chars`` (head + tail kept): bounded time on any input."""
    truncated = len(text) > max_chars
    if truncated:
        text = text[:head] + " \u2026 " + text[-tail:]
    return text.encode("utf-8", "replace").translate(_CONTROL_TO_SPACE).decode("utf-8"), truncated


def classifier_fix(folder: Path) -> str:
    """How to give ``folder`` a trained classifier of its own, for the errors that find none there."""
    from ..config import embedded_dir

    return (f"copy the shipped classifier ({embedded_dir('models') / 'classifier'}) into {folder}, or train one "
            f"with `router train classifier --out {folder}`")


def _unreadable(folder: Path, name: str, exc: BaseException) -> ConfigError:
    """A classifier file that cannot be read is a configuration fault naming the file and the fix, not a traceback
    (and not a silent fall-back to the rules: a router routing differently than its files say is worse)."""
    return ConfigError(f"{folder / name}: not a readable trained classifier ({type(exc).__name__}: {exc}); fix: "
                       f"{classifier_fix(folder)}")


class OnnxRequestClassifier(RequestClassifier):
    """Task and P(correct) from ``models/classifier/classifier.onnx`` + ``classifier.json``.

    The graph gives the task probabilities and the request's representation ``h``; ``p_correct`` has every model
    of the metadata's quality table (:class:`~router.classify.quality.QualityTable`), the models fitted after
    training (``added_models.json``), and any ``cards`` passed in that neither holds, from their card's prior.
    """

    def __init__(self, folder: str | Path, cards: Mapping[str, ModelCard] | None = None) -> None:
        import onnxruntime as ort

        folder = Path(folder)
        self.folder = folder
        try:
            self.meta: dict[str, Any] = json.loads((folder / "classifier.json").read_text(encoding="utf-8"))
            self.tasks: list[str] = list(self.meta["tasks"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise _unreadable(folder, "classifier.json", exc) from None
        if set(self.tasks) != set(TASKS):
            raise _unreadable(folder, "classifier.json", ValueError(f"its tasks {self.tasks} are not this router's "
                                                                   f"{list(TASKS)}"))
        self._guard_positions = tuple(self.tasks.index(t) for t in ("chat", "sentiment", "multiple_choice"))
        try:
            self.max_chars = int(self.meta["max_chars"])
            self.head = int(self.meta["head_chars"])
            self.tail = int(self.meta["tail_chars"])
            graph = str(self.meta["onnx"])
            self.quality = QualityTable(self.meta["quality"], self.tasks)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise _unreadable(folder, "classifier.json", exc) from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(folder / graph), options, providers=["CPUExecutionProvider"])
        # onnxruntime's load errors (InvalidProtobuf, Fail, NoSuchFile, ...) share no base narrower than Exception
        except Exception as exc:  # noqa: BLE001
            raise _unreadable(folder, graph, exc) from None
        # Every run's fixed part is paid by a lone request alone: named outputs spare the wrapper listing them,
        # and one RunOptions spares onnxruntime making a default one per call (~10k instructions a call together)
        self._outputs = [output.name for output in self.session.get_outputs()]
        self._run_options = ort.RunOptions()
        self._lock = threading.Lock()
        try:
            added = read_added(folder)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{folder / ADDED_FILE}: not readable ({exc}); fix: repair it, or delete it to drop "
                              "the models added by `router data measure` / `router train feedback`") from None
        if added:
            self.quality.add(added, source="anchors")
        if cards:
            self.add_card_priors(cards)
        self._feed = np.empty((1, 1), dtype=object)  # reused single-request input (guarded by the lock)

    @property
    def models(self) -> list[str]:
        return self.quality.names

    def only(self, names: set[str]) -> OnnxRequestClassifier:
        """Predict for ``names`` only (a Router's candidates); returns self."""
        self.quality.keep(names)
        return self

    def add_card_priors(self, cards: Mapping[str, ModelCard]) -> list[str]:
        """Give every card the classifier has no row for a row from its card (size, family, a public benchmark):
        a new model is routable at once. Returns the names added."""
        rows = {name: self.quality.prior_row(card) for name, card in cards.items() if name not in self.quality.names}
        for name, card in cards.items():
            if name in rows and card.tier == "specialist":
                rows[name]["fixed"] = {t: 0.0 for t in self.tasks if not card.serves(t)}
        if rows:
            self.quality.add(rows, source="card prior")
        return list(rows)

    def raw(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Task probabilities [N, 4] and request representations [N, k] for already bounded texts."""
        batch = np.array(texts, dtype=object).reshape(-1, 1)  # numpy keeps a str whole: one column of texts
        with self._lock:
            task_probs, vectors = self.session.run(self._outputs, {"text": batch}, self._run_options)
        return task_probs, vectors

    def classify(self, text: str) -> Classification:
        bounded, truncated, chars = self._bound(text)
        if not bounded.strip():
            return self._empty(truncated, chars)
        with self._lock:
            self._feed[0, 0] = bounded
            task_probs, vectors = self.session.run(self._outputs, {"text": self._feed}, self._run_options)
        return self._finish(bounded, truncated, chars, task_probs[0].tolist(), vectors[0])

    def classify_batch(self, texts: list[str]) -> list[Classification]:
        """One onnxruntime call for the whole batch: the call itself costs about as much as one text's
        features, so concurrent requests classified together cost about half as much each (see
        :class:`router.classify.batching.ClassifyBatcher` and benchmarks/bench_classifier.py)."""
        bounded = [self._bound(t) for t in texts]
        run = [i for i, (b, _, _) in enumerate(bounded) if b.strip()]
        out: list[Classification | None] = [None] * len(texts)
        if run:
            task_probs, vectors = self.raw([bounded[i][0] for i in run])
            probs = task_probs.tolist()  # Python floats, which the guards change in place
            chat, sentiment, choice = self._guard_positions
            fired = [guard_in_place(p, bounded[i][0], chat, sentiment, choice) for i, p in zip(run, probs, strict=True)]
            p_correct = self.quality.p_correct_batch(vectors, probs)
            for i, p, f, pc in zip(run, probs, fired, p_correct, strict=True):
                _, truncated, chars = bounded[i]
                out[i] = self._classification(truncated, chars, p, f, pc)
        return [c if c is not None else self._empty(*bounded[i][1:]) for i, c in enumerate(out)]

    def _bound(self, text: str) -> tuple[str, bool, int]:
        if not isinstance(text, str):
            text = str(text)
        bounded, truncated = bound_text(text, self.max_chars, self.head, self.tail)
        return bounded, truncated, len(text)

    def _empty(self, truncated: bool, chars: int) -> Classification:
        probs = [1.0 if t == "chat" else 0.0 for t in self.tasks]
        return Classification("chat", dict(zip(self.tasks, probs, strict=True)), self.quality.p_correct(None, probs),
                              truncated, chars, "onnx:empty")

    def _finish(self, bounded: str, truncated: bool, chars: int, task_probs: list[float],
                h: np.ndarray) -> Classification:
        fired = guard_in_place(task_probs, bounded, *self._guard_positions)
        return self._classification(truncated, chars, task_probs, fired, self.quality.p_correct(h, task_probs))

    def _classification(self, truncated: bool, chars: int, probs: list[float], fired: tuple[str, ...],
                        p_correct: dict[str, float]) -> Classification:
        task = self.tasks[probs.index(max(probs))]  # the first of equal maxima, as np.argmax
        task_probs = dict(zip(self.tasks, probs, strict=True))
        method = "+".join(("onnx", *fired))
        # By position: a frozen dataclass's keyword call costs a quarter more, once per request
        return Classification(task, task_probs, p_correct, truncated, chars, method)


def load_default_classifier(models_dir: str | Path, *, catalogue: bool = False,
                            shipped: str | Path | None = None, max_chars: int = 4000) -> RequestClassifier:
    """The trained ONNX classifier of ``models_dir/classifier``; where that folder has none (a models dir of one's
    own cards), the shipped one (``shipped``, default: the package's ``models/classifier``), so a custom models dir
    does not lose the trained classifier; else the rules, reading at most ``max_chars`` (the config's
    ``classifier_max_chars``; the trained classifier reads the window it was trained on). Which one is logged.
    Cards of ``models_dir`` (and of its catalogue when asked: simulation) that the classifier was not trained on
    get a row from their card's prior."""
    from ..config import embedded_dir

    own = Path(models_dir) / "classifier"
    fallback = Path(shipped) if shipped is not None else embedded_dir("models") / "classifier"
    for folder in (own, fallback):
        if (folder / "classifier.json").exists() and (folder / "classifier.onnx").exists():
            break
    else:
        log.warning("classifier: rules (no trained classifier in %s or %s)", own, fallback)
        return RuleClassifier(max_chars)
    from ..cards import load_cards, load_catalogue
    from ..errors import ConfigError

    try:
        cards = load_catalogue(models_dir) if catalogue else load_cards(models_dir)
    except ConfigError:
        cards = {}
    log.info("classifier: the trained ONNX classifier in %s%s", folder,
             "" if folder == own else f" (the shipped one: {own} has none)")
    return OnnxRequestClassifier(folder, cards)
