"""The sentence-polarity data (``data/sentiment_polarity``) and the one seeded split of it that every consumer
uses: the sentiment specialist, the request classifier's templates, the local outcomes and the embeddings check."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from .common import DATA_DIR, SEED, read_lines

LABELS = ("negative", "positive")
TEST_SIZE = 0.2
VALID_SIZE = 0.125  # of the training part: 70 / 10 / 20 overall


@dataclass
class SentimentSplit:
    """Stratified, seeded train / validation / test split of the polarity sentences."""

    train_x: list[str]
    train_y: np.ndarray
    valid_x: list[str]
    valid_y: np.ndarray
    test_x: list[str]
    test_y: np.ndarray


def load_polarity(data_dir: Path = DATA_DIR / "sentiment_polarity") -> tuple[list[str], np.ndarray]:
    """Sentences and labels (1 = positive), in file order."""
    pos = read_lines(data_dir / "rt-polarity.pos")
    neg = read_lines(data_dir / "rt-polarity.neg")
    return pos + neg, np.array([1] * len(pos) + [0] * len(neg), dtype=np.int64)


def split_polarity(data_dir: Path = DATA_DIR / "sentiment_polarity", seed: int = SEED) -> SentimentSplit:
    """The one split every consumer (specialist, classifier templates, local outcomes) uses, so the
    held-out sentences are never trained on anywhere."""
    texts, labels = load_polarity(data_dir)
    rest_x, test_x, rest_y, test_y = train_test_split(
        texts, labels, test_size=TEST_SIZE, random_state=seed, stratify=labels
    )
    train_x, valid_x, train_y, valid_y = train_test_split(
        rest_x, rest_y, test_size=VALID_SIZE, random_state=seed, stratify=rest_y
    )
    return SentimentSplit(train_x, train_y, valid_x, valid_y, test_x, test_y)
