"""Shared by the simulation benchmarks: building outcome files, a held-out classifier, README writing."""

from __future__ import annotations

import json
import random
import re
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
    """The shipped classifier for task detection, with its quality model refitted by the shipped recipe
    (router.training.quality_train.fit_recipe, every outcome source) without the MMLU subjects in
    ``test_subjects``, so the benchmark's MMLU requests are subjects it never saw."""

    def __init__(self, models_dir: Path, test_subjects: set[str]) -> None:
        from _quality_common import HeldOutQualityClassifier

        from router.cards import load_catalogue
        from router.classify.features import window
        from router.classify.onnx_classifier import OnnxRequestClassifier
        from router.training.outcome_sources import load_sources
        from router.training.quality_train import fit_recipe
        from router.training.requests import build_request_set

        cards = load_catalogue(models_dir)
        obs = load_sources(cards)
        held = np.array([str(g).removeprefix("mmlu/") in test_subjects and str(g).startswith("mmlu/")
                         for g in obs.groups])
        keep = ~held[obs.prompt]
        requests = [window(t)[0] for t in build_request_set()[0].texts]
        recipe = fit_recipe(obs, requests, cards, keep)
        self.inner = HeldOutQualityClassifier(OnnxRequestClassifier(models_dir / "classifier"), recipe, cards)
        self.trained_rows = int(keep.sum())

    def classify(self, text: str) -> Classification:
        return self.inner.classify(text)

    def classify_batch(self, texts: list[str]) -> list[Classification]:
        return self.inner.classify_batch(texts)


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
