"""Every outcome source the project has, as one :class:`~router.training.quality.Observations` table.

* ``mmlu``: RouteLLM MMLU (``data/routellm_mmlu``), Mixtral 8x7B and GPT-4 Turbo, right/wrong.
* ``alpaca_eval``: AlpacaEval instructions (``data/alpaca_eval/outcomes.jsonl``), 48 chat models, the judge's
  preference - 1.
* ``sentiment``: held-out polarity requests (``data/outcomes/sentiment_local.jsonl``), the 3 local models, label
  match.
* ``chat_checked``: short checkable chat (``data/outcomes/chat_local.jsonl``), the 2 local LLMs, reference match.
* ``math``: generated word problems (``data/outcomes/math_local.jsonl``), the 2 local LLMs, exact answer.

Which source scale each task is served on: :data:`TASK_SOURCES` (chat requests are read on the AlpacaEval scale,
the open-ended chat most traffic is; the checked chat questions train the representation and the local models'
abilities). Model names are card names (aliases resolved when the file is read).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..cards import ModelCard
from ..classify.features import window
from ..simulate.outcomes import ModelNames
from .common import DATA_DIR
from .quality import Observations
from .requests import load_mmlu

SOURCES = ("mmlu", "alpaca_eval", "sentiment", "chat_checked", "math")
TASK_SOURCES = {"multiple_choice": "mmlu", "chat": "alpaca_eval", "sentiment": "sentiment", "math": "math"}
FLOORS = {"mmlu": 0.25}
"""Chance level of a source's scorer (4-option multiple choice), the floor of the 3-parameter IRT curve."""
ALPACA = DATA_DIR / "alpaca_eval" / "outcomes.jsonl"
LOCAL = {"sentiment": "sentiment_local.jsonl", "chat_checked": "chat_local.jsonl", "math": "math_local.jsonl"}


class _Builder:
    def __init__(self) -> None:
        self.prompts: list[str] = []
        self.groups: list[str] = []
        self.index: dict[tuple[str, ...], int] = {}
        self.models: list[str] = []
        self.rows: list[tuple[int, int, int, float]] = []

    def prompt(self, text: str, group: str, key: tuple[str, ...] | None = None) -> int:
        """The prompt's index; one per (text, group) unless ``key`` says otherwise (MMLU rows stay one each, so
        the table lines up with the CSVs)."""
        key = key or (text, group)
        if key not in self.index:
            self.index[key] = len(self.prompts)
            self.prompts.append(text)
            self.groups.append(group)
        return self.index[key]

    def add(self, prompt: int, model: str, source: str, y: float) -> None:
        if model not in self.models:
            self.models.append(model)
        self.rows.append((prompt, self.models.index(model), SOURCES.index(source), float(y)))

    def build(self) -> Observations:
        arr = np.array(self.rows, dtype=np.float64).reshape(-1, 4)
        return Observations(
            prompts=self.prompts, prompt=arr[:, 0].astype(np.int64), model=arr[:, 1].astype(np.int64),
            source=arr[:, 2].astype(np.int64), y=arr[:, 3], models=self.models, sources=list(SOURCES),
            groups=np.array(self.groups, dtype=object),
        )


def load_sources(cards: Mapping[str, ModelCard], sources: tuple[str, ...] = SOURCES,
                 data_dir: Path = DATA_DIR) -> Observations:
    """Every outcome of the named sources; prompts are the classifier's bounded window of the text."""
    names = ModelNames(cards)
    out = _Builder()
    if "mmlu" in sources:
        for item in load_mmlu(data_dir / "routellm_mmlu"):
            i = out.prompt(window(item.prompt)[0], f"mmlu/{item.subject}", key=(item.id,))
            for model, ok in item.outcomes.items():
                out.add(i, model, "mmlu", 1.0 if ok else 0.0)
    files = [("alpaca_eval", data_dir / "alpaca_eval" / "outcomes.jsonl")]
    files += [(src, data_dir / "outcomes" / name) for src, name in LOCAL.items()]
    for source, path in files:
        if source not in sources or not path.exists():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            group = row.get("task", source) if source == "alpaca_eval" else source
            i = out.prompt(window(row["prompt"])[0], group)
            for model, outcome in row["outcomes"].items():
                card = names.resolve(model)
                if card is None:
                    raise ValueError(f"{path}: model {model!r} has no card (models/ or models/catalogue/)")
                out.add(i, card, source, float(outcome["correct"]))
    return out.build()
