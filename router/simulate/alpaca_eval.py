"""Turn an AlpacaEval ``results/`` folder into an outcomes file (docs/simulation.md).

AlpacaEval (tatsu-lab/alpaca_eval) keeps, per model, ``results/<model>/weighted_alpaca_eval_gpt4_turbo/
annotations.json``: a list of ``{instruction, dataset, generator_1, generator_2, output_2, preference, ...}`` where
``generator_2`` is the model, ``output_2`` its answer and ``preference`` (1..2) the GPT-4 Turbo judge's probability
that the answer beats the fixed reference's (``generator_1``, gpt4_1106_preview). This reads the project's copy of
the shared data or a full upstream checkout alike.

* ``correct`` = preference - 1, a score in [0, 1] (a missing preference skips that outcome, counted; one that is
  not a number in [1, 2] stops the import, naming the file and line, as a bad score in a RouteLLM CSV does).
* ``output_tokens``: from the answer, with the model's own tokenizer when the caller passes one
  (``tokenizers``), else the Router's own estimate of a text, its UTF-8 bytes / 4 (at least 1; 0 for an empty
  answer), as for RouteLLM's GSM8K answers: :func:`~router.simulate.outcomes.estimated_answer_tokens`.
  The project ships none of these models' tokenizers, so the command line uses the estimate.
* One line per instruction (id ``alpaca_eval-<sha1 of the instruction, 12 hex>``, stable across models and
  checkouts), ``task`` = ``alpaca_eval/<dataset>`` (helpful_base, koala, oasst, selfinstruct, vicuna), every model
  that answered it in ``outcomes``.
* Model names: the generator name is looked up among the cards' names and aliases (as every outcomes file is).
  **Variants**: a generator named ``<base><suffix>`` for a suffix in :data:`VARIANT_SUFFIXES` (another provider
  serving the same weights, or the same model asked to be concise or verbose) maps to the base model's card when
  no card names the variant itself. When the folder also holds the base model (``vicuna-13b-v1.5`` beside
  ``vicuna-13b-v1.5-togetherai``), the variant is skipped, so one card has one column; the report lists it.
* The judge's reference (``gpt4_1106_preview``) scores 0.5 on every row by construction: a fixed point of the
  scale, not an outcome of the model, so it is left out unless ``include_reference``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cards import ModelCard
from .outcomes import ModelNames, OutcomesError, estimated_answer_tokens

ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"
REFERENCE = "gpt4_1106_preview"
PREFERENCE_SLACK = 1e-6
"""How far outside [1, 2] a preference may step by the judge's float rounding: less than the 6 decimals written."""
VARIANT_SUFFIXES = ("-togetherai", "_together", "_concise", "_verbose", "-concise", "-verbose")
Tokenizer = Callable[[str], int]
_BETWEEN_ITEMS = re.compile(r"[\s,]*")


@dataclass
class AlpacaImport:
    rows: int = 0
    outcomes: int = 0
    models: dict[str, str] = field(default_factory=dict)
    """Generator name -> card name, for every model written."""
    variants_skipped: dict[str, str] = field(default_factory=dict)
    """Variant generator -> the base generator whose column it would duplicate."""
    missing_preference: int = 0
    tokens_from: dict[str, str] = field(default_factory=dict)
    """Card name -> ``tokenizer`` or ``utf8-bytes/4``."""
    per_dataset: dict[str, int] = field(default_factory=dict)


def instruction_id(instruction: str) -> str:
    return "alpaca_eval-" + hashlib.sha1(instruction.encode("utf-8")).hexdigest()[:12]


def annotation_files(path: str | Path, annotator: str = ANNOTATOR) -> dict[str, Path]:
    """Model folder name -> its annotations file, under ``path`` (a ``results/`` folder or a checkout root)."""
    root = Path(path)
    if (root / "results").is_dir():
        root = root / "results"
    if not root.is_dir():
        raise OutcomesError(f"{path}: no such folder (give AlpacaEval's results/ folder)")
    files = {p.parent.parent.name: p for p in sorted(root.glob(f"*/{annotator}/annotations.json"))}
    if not files:
        raise OutcomesError(f"{root}: no */{annotator}/annotations.json files (is this AlpacaEval's results/?)")
    return files


def base_of(generator: str) -> str | None:
    """The base model name of a variant (``vicuna-13b-v1.5-togetherai`` -> ``vicuna-13b-v1.5``), else None."""
    for suffix in VARIANT_SUFFIXES:
        if generator.endswith(suffix) and len(generator) > len(suffix):
            return generator[: -len(suffix)]
    return None


def resolve_generators(generators: list[str], cards: Mapping[str, ModelCard],
                       include_reference: bool = False) -> tuple[dict[str, str], dict[str, str]]:
    """(generator -> card name, skipped variant -> base) by the alias and variant rules above."""
    names = ModelNames(cards)
    present = set(generators)
    mapping: dict[str, str] = {}
    skipped: dict[str, str] = {}
    unknown = []
    for gen in generators:
        if gen == REFERENCE and not include_reference:
            continue
        card = names.resolve(gen)
        base = base_of(gen)
        if card is None and base is not None:
            if base in present:
                skipped[gen] = base
                continue
            card = names.resolve(base)
        if card is None:
            unknown.append(gen)
            continue
        mapping[gen] = card
    if unknown:
        raise OutcomesError(
            f"unknown model(s) {', '.join(sorted(unknown))}: no model card or alias matches (cards are read from "
            "the models folder and its catalogue/); add the name to a card's `aliases`"
        )
    seen: dict[str, str] = {}
    for gen, card in mapping.items():
        if card in seen:
            raise OutcomesError(f"`{gen}` and `{seen[card]}` both map to card `{card}`: one card, one column")
        seen[card] = gen
    return mapping, skipped


def import_alpaca_eval(
    path: str | Path,
    out: str | Path,
    cards: Mapping[str, ModelCard],
    *,
    tokenizers: Mapping[str, Tokenizer] | None = None,
    include_reference: bool = False,
    annotator: str = ANNOTATOR,
    progress: Callable[[str, int], None] | None = None,
) -> AlpacaImport:
    """Read every model's annotations under ``path`` and write the outcomes JSONL ``out``."""
    files = annotation_files(path, annotator)
    mapping, skipped = resolve_generators(list(files), cards, include_reference)
    report = AlpacaImport(variants_skipped=skipped)
    tokenizers = tokenizers or {}
    lines: dict[str, dict[str, Any]] = {}
    for k, (folder, file) in enumerate(files.items()):
        if folder not in mapping:
            continue
        card = mapping[folder]
        count = tokenizers.get(card)
        report.tokens_from[card] = "tokenizer" if count else "utf8-bytes/4"
        for line_no, item in _read(file):
            pref = item.get("preference")
            instruction = item.get("instruction")
            if not isinstance(instruction, str):
                raise OutcomesError("an annotation without `instruction`", file=file, line=line_no)
            if pref is None:
                report.missing_preference += 1
                continue
            score = _score(pref, file, line_no)
            answer = item.get("output_2") or ""
            tokens = int(count(answer)) if count else estimated_answer_tokens(answer)
            line = lines.setdefault(instruction, {
                "id": instruction_id(instruction), "prompt": instruction,
                "task": f"alpaca_eval/{item.get('dataset') or 'unknown'}", "outcomes": {},
            })
            line["outcomes"][card] = {"correct": round(score, 6), "output_tokens": tokens}
            report.outcomes += 1
        report.models[folder] = card
        if progress is not None:
            progress(folder, k + 1)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    try:
        with open(tmp, "w", encoding="utf-8") as sink:
            for line in sorted(lines.values(), key=lambda x: x["id"]):
                line["outcomes"] = dict(sorted(line["outcomes"].items()))
                sink.write(json.dumps(line, ensure_ascii=False) + "\n")
                report.per_dataset[line["task"]] = report.per_dataset.get(line["task"], 0) + 1
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    report.rows = len(lines)
    return report


def _score(pref: object, file: Path, line: int) -> float:
    """``preference`` - 1 in [0, 1]; anything else is an error, never a value made up for it."""
    if (isinstance(pref, bool) or not isinstance(pref, int | float) or not math.isfinite(pref)
            or not 1.0 - PREFERENCE_SLACK <= pref <= 2.0 + PREFERENCE_SLACK):
        raise OutcomesError(f"`preference` {json.dumps(pref)} is not a number in [1, 2] (the judge's probability "
                            "+ 1); fix or drop that annotation", file=file, line=line)
    return min(1.0, max(0.0, float(pref) - 1.0))  # within the slack: the rounding, not the judge


def _read(file: Path) -> list[tuple[int, dict[str, Any]]]:
    """The annotations of ``file``, each with the line its object starts on (for error messages)."""
    try:
        text = file.read_text(encoding="utf-8")
        data = json.loads(text)
    except (OSError, ValueError) as exc:
        raise OutcomesError(f"not readable JSON ({exc})", file=file, line=1) from None
    if not isinstance(data, list):
        raise OutcomesError("expected a JSON list of annotations", file=file, line=1)
    # json.loads keeps no positions: walk the list once more, item by item, to know where each starts
    decoder = json.JSONDecoder()
    out: list[tuple[int, dict[str, Any]]] = []
    pos = text.index("[") + 1
    line = 1 + text.count("\n", 0, pos)
    for _ in data:
        start = _BETWEEN_ITEMS.match(text, pos).end()  # type: ignore[union-attr]
        line += text.count("\n", pos, start)
        item, pos = decoder.raw_decode(text, start)
        if isinstance(item, dict):
            out.append((line, item))
        line += text.count("\n", start, pos)
    return out
