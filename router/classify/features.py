"""What the shipped request classifier reads: a bounded window of the text, and its TF-IDF word features.

Shared by training (``router.training.classifier`` builds the shipped graph) and calibration
(``router.policy.calibration`` refits the same recipe out of fold), so both read requests the same way.
scikit-learn is imported only when a vectorizer is built: serving never needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sklearn.feature_extraction.text import TfidfVectorizer

TOKEN_PATTERN = r"[0-9A-Za-z_]+"
"""ASCII word characters, single letters included: exactly what onnxruntime's RE2 tokenizer matches, so the
ONNX graph and sklearn agree (sklearn's default drops 1-letter tokens only after n-grams are formed in ONNX,
and RE2 has no Unicode ``\\w``)."""
MAX_CHARS = 1000
HEAD_CHARS = 700
TAIL_CHARS = 300
MAX_FEATURES = 5000


def window(text: str, max_chars: int = MAX_CHARS, head: int = HEAD_CHARS, tail: int = TAIL_CHARS) -> tuple[str, bool]:
    """Bound what the classifier reads: long text keeps its head (the instruction) and tail (the question)."""
    if len(text) <= max_chars:
        return text, False
    return text[:head] + " \u2026 " + text[-tail:], True


def vectorizer() -> TfidfVectorizer:
    """Word 1-2 grams over ASCII tokens (what onnxruntime's RE2 tokenizer matches exactly)."""
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(
        ngram_range=(1, 2),
        token_pattern=TOKEN_PATTERN,
        sublinear_tf=True,
        min_df=2,
        max_features=MAX_FEATURES,
        lowercase=True,
        dtype=np.float32,
    )
