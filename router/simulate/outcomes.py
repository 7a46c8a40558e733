"""Read and validate an outcomes file (JSON Lines, the format in docs/simulation.md) into compact columns.

One line = one request::

    {"id": "mmlu-anatomy-17", "prompt": "...", "task": "mmlu/anatomy",
     "outcomes": {"mixtral-8x7b-instruct": {"correct": true, "output_tokens": 12},
                  "gpt-4-1106-preview":    {"correct": false}}}

``correct`` is a boolean or a score in [0, 1]. Optional per-outcome fields: ``output_tokens`` (an integer in
[0, 100,000,000]), ``energy_j`` (measured joules for that call, finite, >= 0, which wins over the card's
estimate) and ``requests`` (how many requests of this prompt that model answered, as ``router data from-ledger`` writes
it): the line is replayed once per request it stands for, the sum of its outcomes' ``requests`` (1 when none
says).
Optional per-line ``input_tokens`` (same range as ``output_tokens``); when absent it is the Router's estimate,
the prompt's UTF-8 bytes over four (:func:`~router.backends.base.estimated_tokens`).

The reader streams: it never holds the JSON objects, only columns (float arrays per model) and one copy of each
distinct prompt, so a 1,000,000-line file that resamples ~10,000 prompts takes tens of MB. Every problem is a
:class:`OutcomesError` naming the file and the line, unless ``skip_bad`` is set, in which case the line is
skipped and counted (:attr:`OutcomesTable.skipped`), never silently turned into a wrong number. A file with no
usable line at all is an :class:`OutcomesError` either way.

Length: one streaming reader and the check of every field it reads, each with the message that names the fix.
"""

from __future__ import annotations

import json
import math
import os
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np

from ..backends.base import estimated_tokens, utf8_size
from ..cards import MAX_TOKENS, ModelCard
from ..errors import BadRequestError

DEFAULT_OUTPUT_TOKENS = 64
"""Output tokens assumed for an outcome without ``output_tokens`` (counted in ``defaulted_output_tokens``)."""


def estimated_answer_tokens(answer: str) -> int:
    """The output tokens of an imported answer no tokenizer counts: the Router's own estimate of a text, its UTF-8
    bytes over four (:func:`~router.backends.base.estimated_tokens`), so an answer in Chinese or Hindi counts as many
    tokens in a simulation as the same answer served would; 0 for an empty answer (the model said nothing)."""
    text = answer.strip()
    return estimated_tokens(utf8_size(text)) if text else 0
MAX_REQUESTS = 1_000_000
"""The most requests one line may stand for (``requests`` per outcome): each is a row of the table."""
MAX_ENERGY_J = 1e15
"""The largest ``energy_j`` taken for one call (278 GWh): more is a unit mistake, and totals must stay finite."""


def _token_count(value: object) -> bool:
    """An integer token count that the energy formula can use (a 400-digit count overflows a float)."""
    return type(value) is int and 0 <= value <= MAX_TOKENS


def _joules(value: object) -> bool:
    # cast: the type check has made it an int or a float (mypy narrows `type(x) is`, not `type(x) in`)
    return type(value) in (int, float) and 0 <= cast(float, value) <= MAX_ENERGY_J  # NaN fails the comparison


class OutcomesError(BadRequestError):
    """A line of an outcomes file is not usable. ``line`` is 1-based."""

    code = "bad_outcomes"

    def __init__(self, message: str, *, file: str | Path | None = None, line: int | None = None) -> None:
        where = f"{file}:{line}: " if file is not None and line is not None else (f"line {line}: " if line else "")
        super().__init__(where + message)
        self.file = str(file) if file is not None else None
        self.line = line
        self.reason = message


class ModelNames:
    """Maps the names used in outcome files (card names, aliases, `org/Name` forms, any casing) to card names."""

    def __init__(self, cards: Mapping[str, ModelCard]) -> None:
        self.cards = cards
        self._map: dict[str, str] = {}
        for card in cards.values():
            for name in (card.name, *card.aliases):
                for key in self._keys(name):
                    self._map.setdefault(key, card.name)

    @staticmethod
    def _keys(name: str) -> list[str]:
        low = name.strip().lower()
        tail = low.rsplit("/", 1)[-1]
        return [low, tail] if tail != low else [low]

    def resolve(self, name: str) -> str | None:
        for key in self._keys(name):
            if key in self._map:
                return self._map[key]
        return None

    def known(self) -> str:
        return ", ".join(sorted(self.cards))


@dataclass
class OutcomesTable:
    """Columns of a validated outcomes file. Row i is the i-th good line; model j is ``models[j]``."""

    path: str
    models: list[str]
    ids: list[str]
    tasks: np.ndarray
    """int32 code per row into :attr:`task_names`."""
    task_names: list[str]
    score: np.ndarray
    """float32 [n, M]: the outcome's score in [0, 1]; NaN where the line has no outcome for that model."""
    energy_j: np.ndarray
    """float64 [n, M]: measured ``energy_j`` where given, else the model card's estimate; NaN where no outcome."""
    measured: np.ndarray
    """bool [n, M]: True where ``energy_j`` came from the file (a measurement)."""
    group: np.ndarray
    """int32 [n]: index into :attr:`prompts` / :attr:`group_mask` (rows with the same prompt and model set)."""
    prompts: list[str]
    group_mask: np.ndarray
    """bool [G, M]: which models have an outcome in each group."""
    lines_read: int = 0
    skipped: int = 0
    skipped_reasons: Counter[str] = field(default_factory=Counter)
    skipped_examples: list[str] = field(default_factory=list)
    defaulted_output_tokens: int = 0

    @property
    def n(self) -> int:
        return len(self.ids)

    def model_sets(self) -> list[tuple[str, ...]]:
        return sorted({tuple(m for m, on in zip(self.models, row, strict=True) if on) for row in self.group_mask})


def _short(value: object, limit: int = 60) -> str:
    """``repr`` cut to ``limit`` characters, so a 400-digit number does not fill the report."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _reason_key(problem: str) -> str:
    """Group skip reasons for the summary: the problem (without the request it is about) up to its first detail
    (a parenthesis, or the offending value after ", got")."""
    for sep in (" (", ", got "):
        problem = problem.split(sep, 1)[0]
    return problem


def load_outcomes(
    path: str | Path,
    cards: Mapping[str, ModelCard],
    *,
    skip_bad: bool = False,
    progress: Callable[[int], None] | None = None,
    default_output_tokens: int = DEFAULT_OUTPUT_TOKENS,
) -> OutcomesTable:
    """Stream ``path`` into an :class:`OutcomesTable`. ``progress(bytes_read)`` is called every ~64k lines."""
    path = Path(path)
    if path.is_dir():
        raise OutcomesError(f"{path}: is a folder, not an outcomes file; fix: name one JSON Lines file in it")
    if not path.is_file():
        raise OutcomesError(f"{path}: outcomes file does not exist")
    with open(path, "rb") as handle:
        return _read(handle, str(path), cards, skip_bad, progress, default_output_tokens)


def parse_outcomes_lines(
    lines: Iterable[bytes | str],
    cards: Mapping[str, ModelCard],
    *,
    name: str = "<lines>",
    skip_bad: bool = False,
) -> OutcomesTable:
    """Like :func:`load_outcomes` on lines already in memory (tests, small inputs)."""
    return _read(lines, name, cards, skip_bad, None, DEFAULT_OUTPUT_TOKENS)


def _read(
    lines: Iterable[bytes | str],
    name: str,
    cards: Mapping[str, ModelCard],
    skip_bad: bool,
    progress: Callable[[int], None] | None,
    default_output_tokens: int,
) -> OutcomesTable:
    names = ModelNames(cards)
    resolved: dict[str, str | None] = {}
    col_of: dict[str, int] = {}
    models: list[str] = []
    coeffs: list[tuple[float, float, float]] = []
    scores: list[array] = []  # per model column, one float per row (NaN = no outcome)
    energies: list[array] = []
    measured: list[array] = []
    ids: list[str] = []
    task_codes = array("i")
    task_index: dict[str, int] = {}
    group = array("i")
    group_index: dict[tuple[str, int], int] = {}
    prompts: list[str] = []
    masks: list[int] = []
    table_skipped: Counter[str] = Counter()
    examples: list[str] = []
    defaulted = 0
    nan = math.nan
    loads = json.loads
    n_rows = 0
    lineno = 0
    bytes_read = 0

    def column(card_name: str) -> int:
        j = col_of.get(card_name)
        if j is None:
            j = col_of[card_name] = len(models)
            models.append(card_name)
            e = cards[card_name].energy
            coeffs.append((e.per_call_j, e.per_input_token_j, e.per_output_token_j))
            for store, code in ((scores, "f"), (energies, "d"), (measured, "b")):
                fill = 0 if code == "b" else nan
                store.append(array(code, [fill]) * n_rows)
        return j

    def bad(problem: str, rid: str | None = None) -> None:
        message = problem if rid is None else f"request {rid!r}: {problem}"
        if not skip_bad:
            raise OutcomesError(message, file=name, line=lineno)
        table_skipped[_reason_key(problem)] += 1
        if len(examples) < 5:
            examples.append(f"line {lineno}: {message}")

    for raw in lines:
        lineno += 1
        bytes_read += len(raw)
        if progress is not None and lineno % 65536 == 0:
            progress(bytes_read)
        if not raw.strip():
            continue  # blank lines (e.g. a trailing newline) carry no request
        try:
            obj = loads(raw)
        except ValueError as exc:  # UnicodeDecodeError included
            bad(f"not valid JSON ({exc})")
            continue
        except RecursionError:
            bad("not valid JSON (nested too deeply)")
            continue
        if type(obj) is not dict:
            bad(f"a line must be a JSON object, got {type(obj).__name__}")
            continue
        rid = obj.get("id")
        prompt = obj.get("prompt")
        outs = obj.get("outcomes")
        if type(rid) is not str or not rid:
            bad("missing `id` (a non-empty string)")
            continue
        if type(prompt) is not str:
            bad("missing `prompt` (a string)", rid)
            continue
        if type(outs) is not dict or not outs:
            bad('missing outcomes (`outcomes` must map model names to {"correct": ...})', rid)
            continue
        task = obj.get("task", "unknown")
        if type(task) is not str:
            bad(f"`task` must be a string, got {task!r}", rid)
            continue
        in_tok = obj.get("input_tokens")
        if in_tok is None:
            in_tok = estimated_tokens(utf8_size(prompt))
        elif not _token_count(in_tok):
            bad(f"`input_tokens` must be an integer in [0, {MAX_TOKENS:,}], got {_short(in_tok)}", rid)
            continue
        row: list[tuple[int, float, float, bool]] = []
        weight = 0  # the requests the line stands for (``router data from-ledger`` merges repeats of a prompt)
        problem = None
        for model, out in outs.items():
            if model in resolved:
                card_name = resolved[model]
            else:
                card_name = resolved[model] = names.resolve(model)
            if card_name is None:
                problem = f"unknown model `{model}` (no model card or alias; known: {names.known()})"
                break
            if type(out) is not dict or "correct" not in out:
                problem = f"missing outcome `correct` for model `{model}`"
                break
            c = out["correct"]
            if c is True or c is False:
                s = 1.0 if c else 0.0
            elif type(c) in (int, float) and 0.0 <= c <= 1.0:
                s = float(c)
            elif type(c) in (int, float):
                problem = f"score for model `{model}` is outside [0, 1], got {_short(c)}"
                break
            else:
                problem = (
                    f"`correct` for model `{model}` must be true/false or a score in [0, 1], "
                    f"got {_short(c)}"
                )
                break
            times = out.get("requests", 0)
            if "requests" in out and (type(times) is not int or not 1 <= times <= MAX_REQUESTS):
                problem = (f"`requests` for model `{model}` must be an integer in [1, {MAX_REQUESTS:,}], "
                           f"got {_short(times)}")
                break
            weight += times
            ej = out.get("energy_j")
            if ej is not None:
                if not _joules(ej):
                    problem = (
                        f"`energy_j` for model `{model}` must be a number in "
                        f"[0, {MAX_ENERGY_J:g}], got {_short(ej)}"
                    )
                    break
                row.append((column(card_name), s, float(ej), True))
                continue
            ot = out.get("output_tokens")
            if ot is None:
                ot = default_output_tokens
                defaulted += 1
            elif not _token_count(ot):
                problem = (
                    f"`output_tokens` for model `{model}` must be an integer in "
                    f"[0, {MAX_TOKENS:,}], got {_short(ot)}"
                )
                break
            j = column(card_name)
            pc, pi, po = coeffs[j]
            row.append((j, s, pc + pi * in_tok + po * ot, False))
        if problem is not None:
            bad(problem, rid)
            continue
        mask = 0
        for j, *_ in row:
            if mask >> j & 1:
                problem = f"two outcomes for model `{models[j]}` (names that alias the same card)"
                break
            mask |= 1 << j
        if problem is not None:
            bad(problem, rid)
            continue
        code = task_index.get(task)
        if code is None:
            code = task_index[task] = len(task_index)
        key = (prompt, mask)
        g = group_index.get(key)
        if g is None:
            g = group_index[key] = len(prompts)
            prompts.append(prompt)
            masks.append(mask)
        for _ in range(max(weight, 1)):  # commit the row, once per request it stands for
            for j in range(len(models)):
                scores[j].append(nan)
                energies[j].append(nan)
                measured[j].append(0)
            for j, s, e, meas in row:
                scores[j][n_rows] = s
                energies[j][n_rows] = e
                measured[j][n_rows] = meas
            ids.append(rid)
            task_codes.append(code)
            group.append(g)
            n_rows += 1

    if progress is not None:
        progress(bytes_read)
    if n_rows == 0 and not table_skipped:
        raise OutcomesError(f"{name}: no requests in the outcomes file")
    if n_rows == 0:
        reasons = "; ".join(f"{reason} ({count})" for reason, count in table_skipped.most_common(3))
        raise OutcomesError(
            f"{name}: no usable line: all {sum(table_skipped.values())} request lines are bad ({reasons}); "
            f"first: {examples[0]}; fix the file (run without --skip-bad to stop at the first bad line)"
        )
    m = len(models)
    score = np.stack([np.frombuffer(a, dtype=np.float32) for a in scores], axis=1) if m else np.zeros((n_rows, 0))
    energy = np.stack([np.frombuffer(a, dtype=np.float64) for a in energies], axis=1) if m else np.zeros((n_rows, 0))
    meas_arr = (
        np.stack([np.frombuffer(a, dtype=np.int8) for a in measured], axis=1).astype(bool)
        if m
        else np.zeros((n_rows, 0), bool)
    )
    group_mask = np.array([[bool(mk >> j & 1) for j in range(m)] for mk in masks], dtype=bool).reshape(-1, m)
    return OutcomesTable(
        path=name,
        models=models,
        ids=ids,
        tasks=np.frombuffer(task_codes, dtype=np.int32).copy(),
        task_names=list(task_index),
        score=score,
        energy_j=energy,
        measured=meas_arr,
        group=np.frombuffer(group, dtype=np.int32).copy(),
        prompts=prompts,
        group_mask=group_mask,
        lines_read=lineno,
        skipped=sum(table_skipped.values()),
        skipped_reasons=table_skipped,
        skipped_examples=examples,
        defaulted_output_tokens=defaulted,
    )


def file_size(path: str | Path) -> int:
    return os.path.getsize(path)
