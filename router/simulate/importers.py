"""Turn RouteLLM response CSVs into the outcomes file format (docs/simulation.md).

RouteLLM (lm-sys/RouteLLM, ``routellm/evals``) ships one CSV per benchmark slice:

* MMLU ``mmlu_<subject>.csv``: ``prompt``, then one ``True``/``False`` column per model. RouteLLM generated the
  answers with ``max_new_tokens=1`` (one answer letter), so each outcome gets ``output_tokens: 1``.
* GSM8K ``gsm8k_responses.csv``: ``prompt``, one ``True``/``False`` column per model, then ``<model>_response``
  columns with the generated text; ``output_tokens`` is estimated from the response (its UTF-8 bytes / 4, as the Router
  estimates a text: :func:`~router.simulate.outcomes.estimated_answer_tokens`), and the
  text itself is kept as ``answer`` only with ``keep_responses``.

Ids are ``<benchmark>-<subject>-<row>`` (row = 0-based data row in the CSV, e.g. ``mmlu-anatomy-17``) and the
task is ``<benchmark>/<subject>`` (``mmlu/anatomy``; ``gsm8k`` for files without a subject). Model column names
are mapped to model card names through the cards' names and aliases (case-insensitive, ``org/`` optional).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..cards import ModelCard
from .outcomes import ModelNames, OutcomesError, estimated_answer_tokens

RESPONSE_SUFFIX = "_response"
_TRUE = {"true", "1", "1.0"}
_FALSE = {"false", "0", "0.0"}


@dataclass
class ImportReport:
    files: int = 0
    rows: int = 0
    models: dict[str, str] = field(default_factory=dict)
    """CSV column -> card name."""
    per_file: dict[str, int] = field(default_factory=dict)


def _slice_names(stem: str) -> tuple[str, str]:
    """(id prefix, task) from a CSV file name: mmlu_anatomy -> (mmlu-anatomy, mmlu/anatomy)."""
    if stem.startswith("mmlu_"):
        subject = stem.removeprefix("mmlu_")
        return f"mmlu-{subject}", f"mmlu/{subject}"
    if stem.startswith("gsm8k"):
        return "gsm8k", "gsm8k"
    return stem.replace("_", "-"), stem


def csv_files(path: str | Path) -> list[Path]:
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.csv"))
        if not files:
            raise OutcomesError(f"{path}: folder holds no .csv files")
        return files
    if path.is_file():
        return [path]
    raise OutcomesError(f"{path}: no such file or folder")


def import_routellm(
    path: str | Path,
    out: str | Path,
    cards: Mapping[str, ModelCard],
    *,
    keep_responses: bool = False,
    progress: Callable[[str, int], None] | None = None,
) -> ImportReport:
    """Convert ``path`` (a CSV or a folder of CSVs) into the outcomes JSONL ``out``. Returns counts."""
    names = ModelNames(cards)
    report = ImportReport()
    files = csv_files(path)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        with open(tmp, "w", encoding="utf-8") as sink:
            for file in files:
                n = _import_file(file, sink, names, report, keep_responses)
                report.per_file[file.name] = n
                report.files += 1
                report.rows += n
                if progress is not None:
                    progress(file.name, n)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return report


def routellm_lines(path: str | Path, cards: Mapping[str, ModelCard]) -> list[str]:
    """The outcomes lines :func:`import_routellm` would write for ``path``, in memory (``router calibrate`` reads
    the CSVs so, through the same reader as an outcomes file)."""
    names = ModelNames(cards)
    sink = io.StringIO()
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    for file in csv_files(path):
        _import_file(file, sink, names, ImportReport(), keep_responses=False)
    return sink.getvalue().split("\n")  # not splitlines(): a prompt may hold a raw U+2028, which JSON allows


def _import_file(file: Path, sink, names: ModelNames, report: ImportReport, keep_responses: bool) -> int:  # noqa: ANN001
    prefix, task = _slice_names(file.stem)
    is_mmlu = file.stem.startswith("mmlu_")
    # "utf-8-sig": Excel's "CSV UTF-8" starts the file with a byte-order mark, which is not part of the header
    with open(file, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            raise OutcomesError("empty CSV (no header)", file=file, line=1) from None
        if not header or header[0] != "prompt":
            raise OutcomesError(f"first column must be `prompt`, got {header[:1]}", file=file, line=1)
        columns = header[1:]
        response_cols = {c for c in columns if c.endswith(RESPONSE_SUFFIX) and c[: -len(RESPONSE_SUFFIX)] in columns}
        model_cols = [c for c in columns if c not in response_cols]
        if not model_cols:
            raise OutcomesError("no model columns after `prompt`", file=file, line=1)
        card_of: dict[str, str] = {}
        for col in model_cols:
            card = names.resolve(col)
            if card is None:
                raise OutcomesError(
                    f"column `{col}`: unknown model (no model card or alias matches; known: {names.known()}). "
                    "Add the name to a card's `aliases`.",
                    file=file,
                    line=1,
                )
            if card in card_of.values():
                raise OutcomesError(f"column `{col}`: a second column for model `{card}`", file=file, line=1)
            card_of[col] = card
            report.models[col] = card
        index = {c: i + 1 for i, c in enumerate(columns)}
        k = 0
        start = reader.line_num + 1
        for row in reader:
            line = start
            start = reader.line_num + 1
            if not row:
                continue
            if len(row) != len(header):
                raise OutcomesError(f"expected {len(header)} fields, got {len(row)}", file=file, line=line)
            prompt = row[0]
            outcomes: dict[str, dict[str, object]] = {}
            for col, card in card_of.items():
                raw = row[index[col]].strip()
                low = raw.lower()
                if low in _TRUE:
                    correct: bool | float = True
                elif low in _FALSE:
                    correct = False
                else:
                    try:
                        correct = float(raw)
                    except ValueError:
                        raise OutcomesError(
                            f"column `{col}`: expected True/False, got {raw!r}", file=file, line=line
                        ) from None
                    if not 0.0 <= correct <= 1.0:
                        raise OutcomesError(
                            f"column `{col}`: score {raw} is outside [0, 1]", file=file, line=line
                        )
                entry: dict[str, object] = {"correct": correct}
                resp_col = col + RESPONSE_SUFFIX
                if resp_col in response_cols:
                    text = row[index[resp_col]]
                    entry["output_tokens"] = estimated_answer_tokens(text)
                    if keep_responses:
                        entry["answer"] = text
                elif is_mmlu:
                    entry["output_tokens"] = 1
                outcomes[card] = entry
            record = {"id": f"{prefix}-{k}", "prompt": prompt, "task": task, "outcomes": outcomes}
            sink.write(json.dumps(record, ensure_ascii=False) + "\n")
            k += 1
    return k
