"""The request classifier contract: text in, task and per-model P(correct) out, in well under a millisecond."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

TASKS = ("sentiment", "multiple_choice", "math", "chat")


@dataclass(slots=True)
class Classification:
    """What the classifier says of one request. Read-only by convention, not frozen: one is made per request, and a
    frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``, about three times the cost."""

    task: str
    """One of :data:`TASKS`."""
    task_probs: dict[str, float]
    """Calibrated probability of each task."""
    p_correct: dict[str, float] = field(default_factory=dict)
    """Model name -> predicted probability that the model answers this request correctly."""
    truncated: bool = False
    """True when the text was longer than the classifier reads and was cut (head + tail kept)."""
    chars: int = 0
    method: str = "rules"

    @property
    def confidence(self) -> float:
        return self.task_probs.get(self.task, 0.0)


class RequestClassifier(ABC):
    """Inspects a request's text. Must never raise on odd text (empty, binary, huge, emoji): it returns a
    defined decision (``chat`` with low confidence) in bounded time."""

    @abstractmethod
    def classify(self, text: str) -> Classification:
        """Classify one request's text."""

    def classify_batch(self, texts: list[str]) -> list[Classification]:
        return [self.classify(t) for t in texts]
