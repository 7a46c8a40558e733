"""The first routing rule, kept as the fallback when no trained classifier is shipped: natural-language
sentiment requests go to the sentiment specialist, everything else is chat."""

from __future__ import annotations

import re

from .base import Classification, RequestClassifier

_SENTIMENT = re.compile(
    r"""(
        \b(is|was|does)\s+(this|the|that)\s+(review|tweet|comment|sentence|text|post|message)\s+
            (positive|negative|good\s+or\s+bad)
      | \bpositive\s+or\s+negative\b | \bnegative\s+or\s+positive\b
      | \b(classify|detect|label|determine|rate|analy[sz]e|what\s+is|what's)\s+(the\s+)?sentiment\b
      | ^\s*sentiment\s*[:?-]
      | \bsentiment\s+of\b
      | \bhow\s+does\s+(this|the|that)\s+\w+\s+feel\b
    )""",
    re.IGNORECASE | re.VERBOSE,
)
_GENERATION = re.compile(r"^\s*(please\s+)?(write|compose|generate|draft|create|make)\b", re.IGNORECASE)


class RuleClassifier(RequestClassifier):
    """Regex rules; no P(correct). Cheap, transparent, and replaced by the trained ONNX classifier."""

    def __init__(self, max_chars: int = 4000) -> None:
        self.max_chars = max_chars

    def classify(self, text: str) -> Classification:
        truncated = len(text) > self.max_chars
        head = text[: self.max_chars]
        is_sentiment = bool(_SENTIMENT.search(head)) and not _GENERATION.search(head)
        task = "sentiment" if is_sentiment else "chat"
        probs = {"sentiment": 0.9, "chat": 0.1} if is_sentiment else {"sentiment": 0.05, "chat": 0.95}
        return Classification(task=task, task_probs=probs, truncated=truncated, chars=len(text), method="rules")
