"""The fixed anchor sets ``router data measure MODEL --anchors N`` calls a new model on (``data/anchors/``), and
how their answers are scored.

* ``chat.jsonl``: 50 AlpacaEval instructions from the training split (the ~70 % whose id hashes above 0.3, the
  split every quality benchmark here holds out the rest of), in a fixed order (a hash of ``"anchor" + id``, as
  ``benchmarks/bench_new_model.py`` draws them), each with the judge's reference answer (gpt4_1106_preview's, the
  answer AlpacaEval's scores are preferences against). Scored by a judge model against that reference: the chat
  task's served scale.
* ``sentiment.jsonl``: 50 review sentences with their polarity (the first 50 of
  ``data/outcomes/sentiment_local.jsonl``, from the sentence polarity data), scored by reference match: the first
  ``positive`` / ``negative`` in the answer against the label.

``python -m router.training.anchor_sets [ALPACA_RESULTS]`` rewrites them (the references come from the shared
AlpacaEval results, ``../shared/data/alpaca_eval/results`` by default).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from ..config import embedded_dir
from .common import DATA_DIR

# shipped in the wheel: `router data measure` is a user's command, not only a checkout's
ANCHOR_DIR = embedded_dir("data") / "anchors"
TASKS = ("chat", "sentiment")
SIZE = 50
_TEST_SHARE = 0.3  # benchmarks/_quality_common.py's held-out share


def load_anchors(task: str, n: int | None = None, folder: Path = ANCHOR_DIR) -> list[dict[str, Any]]:
    """The first ``n`` anchors of ``task`` (all of them by default)."""
    if task not in TASKS:
        raise ValueError(f"no anchor set for task {task!r}; there are: {', '.join(TASKS)}")
    rows = [json.loads(x) for x in (folder / f"{task}.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
    return rows[:n] if n else rows


def _is_test(instruction_id: str) -> bool:
    return int(hashlib.sha256(instruction_id.encode()).hexdigest()[:8], 16) / 2**32 < _TEST_SHARE


def build(results: Path, folder: Path = ANCHOR_DIR) -> None:
    from ..simulate.alpaca_eval import instruction_id

    reference = json.loads((results / "gpt4_1106_preview" / "weighted_alpaca_eval_gpt4_turbo" / "annotations.json")
                           .read_text(encoding="utf-8"))
    rows = [{"id": instruction_id(a["instruction"]), "prompt": a["instruction"], "reference": a["output_2"],
             "source": f"alpaca_eval/{a['dataset']}"} for a in reference]
    train = sorted((r for r in rows if not _is_test(r["id"])),
                   key=lambda r: hashlib.sha256(("anchor" + r["id"]).encode()).hexdigest())
    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / "chat.jsonl", train[:SIZE])
    local = [json.loads(x) for x in (DATA_DIR / "outcomes" / "sentiment_local.jsonl").read_text(encoding="utf-8")
             .splitlines() if x.strip()]
    _write(folder / "sentiment.jsonl", [{"id": r["id"], "prompt": r["prompt"], "label": r["label"]}
                                        for r in local[:SIZE]])


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else DATA_DIR.parent.parent / "shared" / "data" / "alpaca_eval"
          / "results")
