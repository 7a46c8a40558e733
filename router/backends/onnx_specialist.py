"""Task specialists exported to ONNX (e.g. sentiment): one forward pass, a fixed label set as the answer."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..cards import ModelCard, OnnxBackendSpec
from ..errors import BackendError, ConfigError
from .base import Backend, GenerationRequest, StreamEvent

_QUOTED = re.compile(r"""["“”«»]([^"“”«»]{2,})["“”«»]|(?<![A-Za-z])'([^']{2,})'(?![A-Za-z])""", re.S)
_LEAD = re.compile(r"^.*?(?:\?|:|-{1,2}|–|—)\s+(?=\S)", re.S)


def extract_subject(text: str) -> str:
    """The text to classify inside a request: the longest quoted passage, else what follows the question or
    colon ("Sentiment: great film" -> "great film"), else the whole text."""
    quoted = [a or b for a, b in _QUOTED.findall(text)]
    if quoted:
        return max(quoted, key=len).strip()
    match = _LEAD.match(text)
    if match and len(text) - match.end() >= 3:
        return text[match.end() :].strip()
    return text.strip()


class OnnxSpecialistBackend(Backend):
    """Runs an ONNX text classifier whose input ``text`` is a [N, 1] string tensor and whose outputs are a
    class index and class probabilities; the answer is the card's label for the predicted class."""

    local = True

    def __init__(self, card: ModelCard) -> None:
        super().__init__(card)
        import onnxruntime as ort

        spec = card.backend
        if not isinstance(spec, OnnxBackendSpec):
            raise ConfigError(f"{card.path}: backend.type must be 'onnx' for {type(self).__name__}")
        self.labels = spec.labels
        model_path = (card.folder / spec.path).resolve()
        if not model_path.exists():
            raise ConfigError(
                f"{card.path}: field `backend.path`: {model_path} does not exist "
                f"(train it with `router train specialist`)"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        self.model_path = Path(model_path)
        self._input = self.session.get_inputs()[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        self._prob_output = "probabilities" if "probabilities" in outputs else outputs[-1]
        self._lock = threading.Lock()

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        batch = np.array([[t] for t in texts], dtype=object)
        with self._lock:
            (probs,) = self.session.run([self._prob_output], {self._input: batch})
        return np.asarray(probs, dtype=np.float32)

    def stream(self, request: GenerationRequest) -> Iterator[StreamEvent]:
        users = [m.content for m in request.messages if m.role == "user"]
        if not users:
            raise BackendError(f"{self.card.name}: a specialist needs a user message to classify")
        subject = extract_subject(users[-1])
        try:
            probs = self.predict_proba([subject])[0]
        except Exception as exc:  # onnxruntime raises its own types
            raise BackendError(f"{self.card.name}: ONNX inference failed: {exc}") from exc
        index = int(np.argmax(probs))
        yield StreamEvent(
            text=self.labels[index],
            finish_reason="stop",
            prompt_tokens=self.prompt_tokens(request.messages),
            completion_tokens=1,
            confidence=float(probs[index]),
        )
