"""Paths, seeds and small helpers shared by the training scripts, so every artifact is rebuilt the same way."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

SEED = 20240605
"""One seed for every split and model, so a rerun from a clean clone reproduces the shipped metrics."""

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = PROJECT_ROOT / "data"
MODELS_DIR = PROJECT_ROOT / "models"

CHECKOUT_FIX = "run it in a checkout of the repository, installed with `pip install -e .`"


def source_data(command: str, fix: str = CHECKOUT_FIX) -> Path:
    """The source repository's data/, which training and measuring read; an installed package (a wheel) ships the
    trained models but not their training data, so there the command is refused up front with ``fix`` instead of
    failing on the first file it opens."""
    if not DATA_DIR.is_dir():
        raise ConfigError(f"{command} reads the source repository's data/ folder, which an installed package does "
                          f"not ship (there is no {DATA_DIR}); fix: {fix}")
    return DATA_DIR


def seed_everything(seed: int = SEED) -> np.random.Generator:
    """Fix Python's and NumPy's global RNGs (some sklearn code paths read them) and return a Generator."""
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    random.seed(seed)
    np.random.seed(seed % (2**32))
    return np.random.default_rng(seed)


def read_lines(path: Path) -> list[str]:
    """Non-empty stripped lines; the polarity files hold a few Latin-1 bytes, replaced rather than dropped."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        return [line.strip() for line in handle if line.strip()]


_DETOK = [
    (re.compile(r" ([.,!?;:%)\]])"), r"\1"),
    (re.compile(r"([(\[$]) "), r"\1"),
    (re.compile(r" (n't|'s|'re|'ve|'ll|'d|'m)\b"), r"\1"),
    (re.compile(r"\s+"), " "),
]


def detokenize(text: str) -> str:
    """Undo the Penn-style tokenisation of the polarity data ("it 's a film ." -> "it's a film."), so models
    also see text the way users type it."""
    for pattern, repl in _DETOK:
        text = pattern.sub(repl, text)
    return text.strip()


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Stable, diff-friendly JSON (sorted keys, rounded floats are the caller's job)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")


@contextmanager
def staged_outputs(out_dir: Path, drop: Sequence[str] = ()) -> Iterator[Path]:
    """A temporary folder beside ``out_dir`` for one training's outputs, moved into ``out_dir`` only when the block
    ends without an error, so a run stopped partway (an error, Ctrl-C) leaves the previous outputs as they were
    instead of a new graph beside old or missing metrics. The staging folder is on ``out_dir``'s filesystem, so each
    file is moved by ``os.replace`` (a rename): the graphs (``*.onnx``) go last, after their companions (tokenizer,
    metadata, metrics), so a complete set is in place once the graph is; then the names in ``drop`` that this
    training does not produce are removed from ``out_dir``. Files of ``out_dir`` the training does not write (the
    classifier's ``added_models.json``) are kept."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        yield stage
        out_dir.mkdir(exist_ok=True)
        for path in sorted(stage.iterdir(), key=lambda p: (p.suffix == ".onnx", p.name)):
            os.replace(path, out_dir / path.name)
        for name in drop:
            (out_dir / name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
