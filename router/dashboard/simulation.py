"""The latest ``router simulate --json`` result as points on the quality/energy plane, with its Pareto frontier.

``dashboard.simulation`` in the config names a file written by ``router simulate ... --json > FILE``, or a folder
of such files, of which the newest result is shown. A file is read again only when it changes.

In a folder, a newer file that is not a result (yet) does not hide the last good one: ``> FILE`` creates the file
before a long simulation has written a byte, and a run that stops on a bad line leaves it empty. The page keeps
the newest readable result and names the newer files it passed over (``skipped``).
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
from pathlib import Path
from typing import Any, TypeGuard

from ..simulate.metrics import pareto_front


class SimulationView:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._cached: dict[str, tuple[tuple[float, int], dict[str, Any]]] = {}
        """File path -> ((mtime, size), its view or its error): each file is parsed again only when it changes."""

    def latest(self) -> dict[str, Any]:
        """``{"configured": false}``; or the newest result's points and frontier (in a folder, with ``skipped``
        naming newer files that are not results); or ``error`` saying what is wrong with the configured path (the
        page shows it; the rest of the dashboard works on)."""
        if self.path is None:
            return {"configured": False}
        files = _newest_first(self.path)
        if not files:
            return {"configured": True, "error": f"{self.path}: no simulation result there yet (write one with "
                    "`router simulate --outcomes FILE --sweep --json > RESULT.json`)"}
        with self._lock:  # files gone from the folder leave the cache
            self._cached = {name: kept for name, kept in self._cached.items() if Path(name) in files}
        skipped: list[str] = []
        for file in files:
            view = self._read(file)
            if "error" not in view:
                return {**view, "skipped": skipped} if skipped else view
            skipped.append(view["error"])
        return self._read(files[0])  # none is a result: the newest one's error

    def _read(self, file: Path) -> dict[str, Any]:
        try:
            stat = file.stat()
            key = (stat.st_mtime, stat.st_size)
            with self._lock:
                kept = self._cached.get(str(file))
            if kept is not None and kept[0] == key:
                return kept[1]
            view = {"configured": True, "file": file.name, "modified": stat.st_mtime,
                    **points(json.loads(file.read_text(encoding="utf-8")))}
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            view = {"configured": True, "file": file.name,
                    "error": f"{file}: not a `router simulate --json` result ({type(exc).__name__}: {exc})"}
            if isinstance(exc, OSError):  # gone or unreadable now: nothing to keep for its (mtime, size)
                return view
        with self._lock:
            self._cached[str(file)] = (key, view)
        return view


def _newest_first(path: Path) -> list[Path]:
    """The configured file, or the folder's ``*.json`` files, newest first."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        return []
    dated = []
    for f in path.glob("*.json"):
        with contextlib.suppress(OSError):  # removed between the listing and the stat
            if f.is_file():
                dated.append((f.stat().st_mtime, f))
    return [f for _, f in sorted(dated, key=lambda x: x[0], reverse=True)]


def points(result: dict[str, Any]) -> dict[str, Any]:
    """The policy, its accuracy-target sweep, the baselines and the plain threshold router as points (energy per
    request, accuracy), and ``frontier``: the indices of the points no other point beats, by energy (the oracle
    left out: no real router can reach it)."""
    found = [_point(result, "policy", f"policy {result['policy']}")]
    found += [_point(p, "baseline", name) for name, p in (result.get("baselines") or {}).items()]
    found += [_point(p, "sweep", f"target {p.get('target')}") for p in result.get("sweep") or []]
    found += [_point(p, "threshold", p.get("name", "threshold")) for p in result.get("threshold_sweep") or []]
    pts = [p for p in found if p is not None]
    real = [i for i, p in enumerate(pts) if p["name"] != "oracle"]
    front = pareto_front([pts[i]["energy_j_per_request"] for i in real], [pts[i]["accuracy"] for i in real])
    return {
        "policy": result["policy"], "outcomes": result.get("outcomes"), "requests": result.get("requests"),
        "models": result.get("models", []), "large_reference": result.get("large_reference"),
        "points": pts, "frontier": [real[int(i)] for i in front],
    }  # fmt: skip


def _point(p: dict[str, Any], kind: str, name: str) -> dict[str, Any] | None:
    energy, accuracy = p.get("energy_j_per_request"), p.get("accuracy")
    if not _finite(energy) or not _finite(accuracy):
        return None  # undefined figures are null in the JSON
    out = {"name": str(name), "kind": kind, "energy_j_per_request": float(energy), "accuracy": float(accuracy)}
    for k in ("quality_vs_large", "energy_vs_large", "target"):
        if _finite(p.get(k)):
            out[k] = float(p[k])
    return out


def _finite(x: Any) -> TypeGuard[int | float]:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
