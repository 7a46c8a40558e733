"""Where a command's output goes, shared by every command that prints a table or writes a file.

Tables: rich fits a table to the console's width by cutting cell text (``sentiment-…``) or, at a narrow width,
leaving figure columns empty. Text piped to ``grep`` or redirected to a file has no width to fit, and a cut name or
a missing figure is lost for good there; on a narrow terminal a name can fold onto two lines, but a figure must be
whole. :func:`stdout_console` gives a Console that prints tables that way.

Files: ``-`` as an output file is stdout, as for most tools (not a file named ``-`` in the working folder);
:func:`text_output` hands a command's file-writing code a path either way, and :func:`make_folder_for` makes the
folder a file goes in. An output that is not text (a PNG, a folder, Parquet) cannot go to stdout:
:func:`refuse_stdout` says so."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

STDOUT = Path("-")
"""``-o -``: stdout, as for most tools, not a file named ``-`` in the working folder."""

STDIN = STDOUT
"""``--outcomes -``: stdin."""

_UNLIMITED = 1_000_000
"""A width no table reaches: measuring a table at it gives the width it needs to show every cell whole."""

_FOLD_WIDTH = 10
"""The narrowest a text column (a model name) folds to on a narrow terminal before the table is made wider."""


def is_stdout(path: Path | None) -> bool:
    return path == STDOUT


class _StdoutConsole(Console):
    """A Console whose tables never lose cell text. Where the table fits, it prints as any Console prints it. Where
    it does not: to a pipe or a file, it is printed as wide as it needs (lines wider than ``COLUMNS``, every cell
    whole); on a terminal, the columns of figures (right-justified) keep their whole text and the other columns
    fold, and where even that does not fit, the table is printed wider than the terminal (which wraps the lines)
    rather than cut."""

    def print(self, *objects: Any, **kwargs: Any) -> None:  # noqa: A003 - Console's own name
        tables = [obj for obj in objects if isinstance(obj, Table)]
        if not tables:
            super().print(*objects, **kwargs)
            return
        needed = max(self._width_needed(table) for table in tables)
        if needed <= self.width:
            super().print(*objects, **kwargs)
            return
        width = self.width
        self.width = needed
        try:
            super().print(*objects, **{**kwargs, "crop": False})
        finally:
            self.width = width

    def _measure(self, table: Table) -> Measurement:
        return Measurement.get(self, self.options.update_width(_UNLIMITED), table)

    def _width_needed(self, table: Table) -> int:
        """The width ``table`` is printed at: its full width where that fits or where the output is not a
        terminal; else the least that keeps its figures whole, its other columns folded to ``_FOLD_WIDTH``."""
        full = self._measure(table).maximum
        if full <= self.width or not self.is_terminal:
            return full
        options = self.options.update_width(_UNLIMITED)
        text_columns = []
        for column in table.columns:
            if column.justify == "right" and column.width is None:
                # every cell whole; the header's words whole, but a header of several ("mean latency ms") may wrap
                column.min_width = max([Measurement.get(self, options, column.header).minimum,
                                        *(Measurement.get(self, options, cell).maximum for cell in column.cells)])
            elif not column.no_wrap:
                column.overflow = "fold"
                text_columns.append(column)
        caps = [column.max_width for column in text_columns]
        for column in text_columns:
            column.max_width = _FOLD_WIDTH if column.max_width is None else min(column.max_width, _FOLD_WIDTH)
        try:
            least = self._measure(table).minimum
        finally:
            for column, cap in zip(text_columns, caps, strict=True):
                column.max_width = cap
        return max(self.width, least)


def stdout_console(**kwargs: Any) -> Console:
    """The Console for a command's results on stdout (or on ``file=``): see :class:`_StdoutConsole`."""
    return _StdoutConsole(**kwargs)


@contextmanager
def text_output(path: Path) -> Iterator[Path]:
    """The file a command writes its text output to: ``path`` itself, or for ``-`` a temporary file whose text goes
    to stdout once the command has written it (so the writers, which write files, need no second way of writing)."""
    if not is_stdout(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="router-stdout-") as folder:
        tmp = Path(folder) / "output"
        yield tmp
        if tmp.exists():
            sys.stdout.flush()
            with tmp.open("r", encoding="utf-8") as text:
                shutil.copyfileobj(text, sys.stdout)
            sys.stdout.flush()


def make_folder_for(path: Path | None) -> None:
    """Make the folder an output file goes in, as ``mkdir -p`` would (``-o reports/may.csv`` where ``reports/`` is
    not there yet), so every command that writes a file takes the same paths; ``-`` (stdout) and None: nothing.
    Called once the command's input has opened, so a command that fails on it leaves no empty folder."""
    if path is not None and not is_stdout(path):
        path.parent.mkdir(parents=True, exist_ok=True)


def refuse_stdout(option: str, path: Path | None, what: str) -> None:
    """Exit 2 when ``path`` is ``-`` for an output that cannot go to stdout; ``what`` says what it is ("a PNG")."""
    if is_stdout(path):
        hint = " / ".join(f"'{name}'" for name in option.split("/"))
        raise typer.BadParameter(f"- (stdout): {what}, written to a file, not to stdout; fix: name a file",
                                 param_hint=hint)


def refuse_two_on_stdout(outputs: dict[str, bool]) -> None:
    """Exit 2 when more than one of ``outputs`` (an option to whether it writes to stdout) does: their lines would
    be interleaved in one stream."""
    on_stdout = [option for option, to_stdout in outputs.items() if to_stdout]
    if len(on_stdout) > 1:
        raise typer.BadParameter(f"{' and '.join(on_stdout)} would all write to stdout; fix: name a file for all "
                                 "but one", param_hint=" / ".join(f"'{o}'" for o in on_stdout))


def counted(n: int, noun: str) -> str:
    """``n`` and ``noun`` as a sentence says them: ``1 record``, ``0 records``, ``1,500 stored prompts``."""
    return f"{n:,} {noun if n == 1 else noun + 's'}"

