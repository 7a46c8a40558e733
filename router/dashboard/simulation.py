"""The latest ``router simulate --json`` result as points on the quality/energy plane, with its Pareto frontier.

``dashboard.simulation`` in the config names a file written by ``router simulate ... --json > FILE``, or a folder
of such files, of which the newest is shown. The file is read again only when it changes.
"""

from __future__ import annotations

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
        self._cached: tuple[tuple[str, float, int], dict[str, Any]] | None = None

    def latest(self) -> dict[str, Any]:
        """``{"configured": false}``; or the newest file's points and frontier; or ``error`` saying what is wrong
        with the configured path (the page shows it; the rest of the dashboard works on)."""
        if self.path is None:
            return {"configured": False}
        file = _newest(self.path)
        if file is None:
            return {"configured": True, "error": f"{self.path}: no simulation result there yet (write one with "
                    "`router simulate --outcomes FILE --sweep --json > RESULT.json`)"}
        try:
            stat = file.stat()
            key = (str(file), stat.st_mtime, stat.st_size)
            with self._lock:
                if self._cached is not None and self._cached[0] == key:
                    return self._cached[1]
            view = {"configured": True, "file": file.name, "modified": stat.st_mtime,
                    **points(json.loads(file.read_text(encoding="utf-8")))}
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            return {"configured": True, "file": file.name,
                    "error": f"{file}: not a `router simulate --json` result ({type(exc).__name__}: {exc})"}
        with self._lock:
            self._cached = (key, view)
        return view


def _newest(path: Path) -> Path | None:
    if path.is_file():
        return path
    if path.is_dir():
        files = [f for f in path.glob("*.json") if f.is_file()]
        return max(files, key=lambda f: f.stat().st_mtime, default=None)
    return None


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
