"""Shared by the simulation benchmarks: building outcome files, a held-out classifier, README writing."""

from __future__ import annotations

import json
import random
import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from router.cards import ModelCard
from router.classify.base import Classification, RequestClassifier
from router.simulate.importers import import_routellm

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "benchmarks" / "README.md"
IMG = ROOT / "benchmarks" / "img"
MMLU_DIR = ROOT / "data" / "routellm_mmlu"
SENTIMENT = ROOT / "data" / "outcomes" / "sentiment_local.jsonl"
CHAT = ROOT / "data" / "outcomes" / "chat_local.jsonl"


def held_out_subjects() -> set[str]:
    """The MMLU subjects `router train classifier` holds out of its task-detection training
    (router.training.requests.build_request_set: seeded shuffle, first quarter)."""
    from router.training.common import SEED

    subjects = sorted(p.stem.removeprefix("mmlu_") for p in MMLU_DIR.glob("mmlu_*.csv"))
    rng = random.Random(SEED)
    rng.shuffle(subjects)
    return set(subjects[: max(1, len(subjects) // 4)])


def import_mmlu(out: Path, cards: dict[str, ModelCard]) -> Path:
    import_routellm(MMLU_DIR, out, cards)
    return out


class HeldOutClassifier(RequestClassifier):
    """The shipped classifier for task detection, with its hosted-model P(correct) heads refitted by the
    shipped recipe (router.training.classifier: TF-IDF + logistic regression, same C) on the MMLU subjects
    *not* in ``test_subjects``, so the benchmark's MMLU requests are subjects the heads never saw."""

    def __init__(self, models_dir: Path, test_subjects: set[str]) -> None:
        from router.classify.onnx_classifier import OnnxRequestClassifier
        from router.training import classifier as tc
        from router.training.requests import build_request_set, load_mmlu

        self.base = OnnxRequestClassifier(models_dir / "classifier")
        items = [it for it in load_mmlu() if it.subject not in test_subjects]
        texts = [tc.window(it.prompt)[0] for it in items]
        # the request set's training part draws its MMLU rows from the same non-held-out subjects
        requests = [tc.window(t)[0] for t in build_request_set()[0].texts]
        self.vec = tc.shared_vectorizer(requests, texts)
        x = self.vec.transform(texts)
        c = float(self.base.meta.get("p_correct_c", 0.3))
        self.heads = [tc._fit_binary(x, np.array([it.outcomes[m] for it in items], dtype=np.int64), c)
                      for m in self.base.pc_models]
        self.window = tc.window
        self.trained_rows = len(items)

    def _hosted(self, texts: list[str]) -> np.ndarray:
        x = self.vec.transform([self.window(t)[0] for t in texts])
        return np.stack([h.predict_proba(x)[:, 1] for h in self.heads], axis=1)

    def classify(self, text: str) -> Classification:
        return self.classify_batch([text])[0]

    def classify_batch(self, texts: list[str]) -> list[Classification]:
        hosted = self._hosted(texts)
        out = []
        for text, h in zip(texts, hosted, strict=True):
            c = self.base.classify(text)
            probs = np.array([c.task_probs[t] for t in self.base.tasks])
            out.append(replace(c, p_correct=self.base._mix(probs, h), method=c.method + "+held-out-heads"))
        return out


def write_section(block: str, body: str) -> None:
    """Replace ``<!-- sim:block -->...<!-- /sim:block -->`` inside ``## Simulation`` of benchmarks/README.md
    (creating the section or the block if absent); nothing else in the file changes."""
    text = README.read_text(encoding="utf-8") if README.exists() else "# Benchmarks\n"
    start, end = f"<!-- sim:{block} -->", f"<!-- /sim:{block} -->"
    chunk = f"{start}\n{body.strip()}\n{end}"
    if start in text and end in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: chunk, text, flags=re.S)
    else:
        m = re.search(r"^## Simulation\s*$", text, flags=re.M)
        if m is None:
            text = text.rstrip("\n") + "\n\n## Simulation\n\n" + chunk + "\n"
        else:
            nxt = re.search(r"^## ", text[m.end():], flags=re.M)
            at = m.end() + (nxt.start() if nxt else len(text) - m.end())
            text = text[:at].rstrip("\n") + "\n\n" + chunk + "\n\n" + text[at:].lstrip("\n")
    README.write_text(text.rstrip("\n") + "\n", encoding="utf-8")


def md_table(header: list[str], rows: list[list[str]]) -> str:
    align = ["---" if i == 0 else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").split("\n") if x.strip()]
