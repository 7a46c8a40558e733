"""Checks on the files a command is given, shared by the commands that read some files and write others."""

from __future__ import annotations

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
