"""Checks on the files a command is given, shared by the commands that read some files and write others."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import typer

from .output import is_stdout


def refuse_overwriting_inputs(outputs: Mapping[str, Path | None], inputs: Mapping[Path, str]) -> None:
    """Exit 2, naming the option, when an output file is one of the command's inputs: opening it for writing
    would destroy what the command is about to read. ``outputs`` maps an option (``"-o/--out"``) to its file or
    None (``-``, stdout, is no file); ``inputs`` maps each input file to what it is ("the outcomes file").
    Compared with ``samefile``, so a link or another spelling of the same path is caught; a file not there yet
    cannot be an input."""
    existing = [(path, what) for path, what in inputs.items() if path.exists()]
    for option, output in outputs.items():
        if output is None or is_stdout(output) or not output.exists():
            continue
        for path, what in existing:
            if output.samefile(path):
                hint = " / ".join(f"'{name}'" for name in option.split("/"))
                named = "" if output == path else f" ({path})"  # a link or another spelling: say what it reaches
                raise typer.BadParameter(f"{output} is {what}{named}; writing there would destroy it before it is "
                                         "read; fix: give another file, one the command does not read",
                                         param_hint=hint)


def refuse_unwritable_outputs(outputs: Mapping[str, Path | None], *, folders: bool = False) -> None:
    """Exit 2, naming the option, when an output cannot be written: checked before a command's work starts, so a
    mistyped ``--plot reports/`` is told at once, not after a simulation or a training run of many minutes.
    ``outputs`` maps an option to its path or None; ``-`` (stdout) is no file. ``folders``: the outputs are folders
    the command fills (``router train --out``), not files. A folder missing on the way is no fault: the command
    makes it (:func:`~router.cli.output.make_folder_for`), so the check is on the nearest one that exists."""
    for option, output in outputs.items():
        if output is None or is_stdout(output):
            continue
        problem = _why_unwritable(output, folders)
        if problem is not None:
            raise typer.BadParameter(problem, param_hint=" / ".join(f"'{name}'" for name in option.split("/")))


def _why_unwritable(path: Path, folder: bool) -> str | None:
    """Why ``path`` (a file, or a folder when ``folder``) cannot be written, in words with the fix; None if it can."""
    if path.is_dir() and not folder:
        return f"{path} is a folder; fix: name a file, in it or elsewhere"
    if folder and path.exists() and not path.is_dir():
        return f"{path} is a file; fix: name a folder (one that is not there yet is made)"
    if path.exists():
        needed = os.W_OK | os.X_OK if folder else os.W_OK
        return None if os.access(path, needed) else (f"{path} cannot be written (permission denied); fix: name "
                                                      "one you can write, or change its permissions")
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, so nothing can be made in it; fix: name a path inside a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return (f"cannot write in the folder {existing} (permission denied); fix: name a path in a folder you can "
                "write to")
    return None


def own_classifier_folder(models_dir: Path, purpose: str) -> Path:
    """``models_dir/classifier``, refused (ConfigError naming the fix) unless it holds a trained classifier.
    A models folder of cards alone routes with the shipped classifier, but what a command fits into the
    classifier is saved beside it (added_models.json): without one of its own there, the fit would land in the
    installed package's data instead of the folder the user named. ``purpose`` completes "... to <purpose>"."""
    from ..classify.onnx_classifier import classifier_fix
    from ..errors import ConfigError

    folder = models_dir / "classifier"
    if not ((folder / "classifier.json").is_file() and (folder / "classifier.onnx").is_file()):
        raise ConfigError(f"{folder} holds no trained classifier (classifier.json and classifier.onnx) to "
                          f"{purpose}; {classifier_fix(folder)}")
    return folder
