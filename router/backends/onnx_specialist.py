"""Task specialists exported to ONNX (e.g. sentiment): one forward pass, a fixed label set as the answer."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def cut_at_stop(label: str, stop: list[str] | None) -> str:
    """``label`` up to the first stop string in it, as an LLM's answer would be cut: a routed request may be
    answered by the specialist or by an LLM, and either way the answer holds no stop string. (``max_tokens`` needs
    nothing: a label counts as one token, and ``max_tokens`` is at least 1.)"""
    found = [label.index(s) for s in stop or [] if s and s in label]
    return label[: min(found)] if found else label


_TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_CHARS_PER_TOKEN = 32
"""Text beyond ``max_length * 32`` characters is cut before tokenising (ordinary text needs ~5 characters per
word piece), so a 1 MB prompt costs the same as a short one."""


def padded_token_ids(tokenizer: Any, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``input_ids`` and ``attention_mask`` (int64, zero-padded to the longest) for one batch, from a
    ``tokenizers`` tokenizer; one place for the specialist, the MiniLM exporter and the fine-tune."""
    enc = tokenizer.encode_batch(texts)
    width = max(len(e.ids) for e in enc)
    ids = np.zeros((len(enc), width), dtype=np.int64)
    mask = np.zeros((len(enc), width), dtype=np.int64)
    for row, e in enumerate(enc):
        ids[row, : len(e.ids)] = e.ids
        mask[row, : len(e.ids)] = 1
    return ids, mask


class OnnxSpecialistBackend(Backend):
    """Runs an ONNX text classifier whose outputs include class probabilities (``probabilities``, else the
    last output); the answer is the card's label for the most probable class, its probability the confidence.

    The graph's inputs decide how text goes in: a string input gets the raw text as a ``[N, 1]`` tensor; token
    inputs (``input_ids``, ``attention_mask``, ``token_type_ids``) get the card's tokenizer output, truncated
    to ``backend.max_length`` word pieces. One session, one intra-op thread, calls serialised by a lock."""

    local = True
    concurrency = 1

    def __init__(self, card: ModelCard) -> None:
        super().__init__(card)
        import onnxruntime as ort

        spec = card.backend
        if not isinstance(spec, OnnxBackendSpec):
            raise ConfigError(f"{card.path}: backend.type must be 'onnx' for {type(self).__name__}")
        self.labels = spec.labels
        if spec.model_file is None:  # a card built in code, not by load_card: find its files now
            card.locate_files()
        model_path = spec.model_file
        assert model_path is not None
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types
            raise ConfigError(
                f"{card.path}: field `backend.path`: {model_path} is not a loadable ONNX model: {exc}"
            ) from exc
        self.model_path = Path(model_path)
        inputs = self.session.get_inputs()
        self._text_inputs = [i.name for i in inputs if i.type == "tensor(string)"]
        self._token_inputs = [i.name for i in inputs if i.name in _TOKEN_INPUTS]
        unknown = [i.name for i in inputs if i.name not in self._text_inputs + self._token_inputs]
        if unknown or not inputs:
            raise ConfigError(
                f"{card.path}: field `backend.path`: {model_path} has inputs {[i.name for i in inputs]}; a "
                f"specialist graph takes a string tensor and/or {', '.join(_TOKEN_INPUTS)}"
            )
        self.max_length = spec.max_length
        self.tokenizer = self._load_tokenizer(card, spec, model_path) if self._token_inputs else None
        outputs = self.session.get_outputs()
        names = [o.name for o in outputs]
        prob = outputs[names.index("probabilities")] if "probabilities" in names else outputs[-1]
        self._prob_output = prob.name
        width = prob.shape[-1] if prob.shape else None
        if isinstance(width, int) and width != len(self.labels):
            raise ConfigError(
                f"{card.path}: field `backend.labels`: {len(self.labels)} labels for a graph with {width} classes"
            )
        self._lock = threading.Lock()

    def _load_tokenizer(self, card: ModelCard, spec: OnnxBackendSpec, model_path: Path) -> Any:
        """The card's tokenizer, truncating to ``max_length`` without padding (the batch is padded here)."""
        from tokenizers import Tokenizer

        named = spec.tokenizer_file is not None
        path = spec.tokenizer_file or model_path.parent / "tokenizer.json"
        why = "" if named else " (not set: looked beside the ONNX file)"
        if not path.exists():
            raise ConfigError(
                f"{card.path}: field `backend.tokenizer`: {path} does not exist{why}; the graph "
                f"{model_path.name} takes token ids ({', '.join(self._token_inputs)}), so it needs its tokenizer.json"
            )
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a plain Exception on bad JSON
            raise ConfigError(
                f"{card.path}: field `backend.tokenizer`: {path} is not a tokenizers JSON file: {exc}"
            ) from exc
        tokenizer.enable_truncation(max_length=self.max_length)
        tokenizer.no_padding()
        return tokenizer

    def _feeds(self, texts: list[str]) -> dict[str, np.ndarray]:
        feeds: dict[str, np.ndarray] = {}
        if self._text_inputs:
            batch = np.array([[t] for t in texts], dtype=object)
            feeds.update({name: batch for name in self._text_inputs})
        if self.tokenizer is not None:
            cap = self.max_length * _CHARS_PER_TOKEN
            ids, mask = padded_token_ids(self.tokenizer, [t[:cap] for t in texts])
            tokens = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            feeds.update({name: tokens[name] for name in self._token_inputs})
        return feeds

    def predict_proba(self, texts: list[str], request: GenerationRequest | None = None) -> np.ndarray:
        """[N, classes] probabilities for raw texts (no subject extraction); ``request``'s turn starts once the
        session is this call's."""
        with self._lock:
            if request is not None:
                request.has_turn()
            (probs,) = self.session.run([self._prob_output], self._feeds(texts))
        return np.asarray(probs, dtype=np.float32)

    def stream(self, request: GenerationRequest) -> Iterator[StreamEvent]:
        request.check(self.card.name)  # one forward pass: the only point to stop at is before it
        users = [m.text for m in request.messages if m.role == "user"]  # a user turn always has content
        if not users:
            raise BackendError(f"{self.card.name}: a specialist needs a user message to classify")
        subject = extract_subject(users[-1])
        try:
            probs = self.predict_proba([subject], request)[0]
        except Exception as exc:  # onnxruntime raises its own types
            raise BackendError(f"{self.card.name}: ONNX inference failed: {exc}") from exc
        index = int(np.argmax(probs))
        yield StreamEvent(
            text=cut_at_stop(self.labels[index], request.stop),
            finish_reason="stop",
            prompt_tokens=self.prompt_tokens(request.messages),
            completion_tokens=1,
            confidence=float(probs[index]),
        )
