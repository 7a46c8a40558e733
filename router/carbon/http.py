"""A grid-intensity API as an intensity source, in the shape of Electricity Maps' v3 endpoints::

    GET {url}/v3/carbon-intensity/latest?zone=Z     {"zone": "Z", "carbonIntensity": 302, "datetime": "...Z", ...}
    GET {url}/v3/carbon-intensity/forecast?zone=Z   {"zone": "Z", "forecast": [{"carbonIntensity": 326,
                                                      "datetime": "...Z"}, ...], "updatedAt": "...Z"}

with the key in an ``auth-token`` header. Other providers with the same shape (or a small adapter in front) work
too.

Why it never blocks a request: :meth:`HttpIntensity.intensity` runs for every ledger record, so it answers from
its cache at once; when the cached value is older than ``cache_s`` one background thread fetches a new one (each
call bounded by ``timeout_s``). When the API fails the last good value stays in use (its label says
``last good``); before any answer has arrived the fallback intensity (the config's ``grid_g_per_kwh``) is used
and labelled so. Forecasts are read by the batch scheduler, off the request path, and cached ``forecast_cache_s``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from datetime import datetime, timezone
from typing import Any

import httpx

from .._forks import renew_after_fork
from .sources import HOUR_S, Intensity, IntensitySource, hour_of, hours

log = logging.getLogger("router.carbon")


def _ts(text: str) -> float:
    dt = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()


def _usable(g: float) -> bool:
    """JSON readers accept ``Infinity``, ``NaN`` and ``1e400`` (inf): none is an intensity a CO2e can be priced at."""
    return math.isfinite(g) and g >= 0


class HttpIntensity(IntensitySource):
    def __init__(self, url: str, zone: str, *, api_key: str | None = None, timeout_s: float = 5.0,
                 cache_s: float = 300.0, forecast_cache_s: float = 1800.0, fallback_g_per_kwh: float = 475.0,
                 client: httpx.Client | None = None) -> None:
        self.url = url.rstrip("/")
        self.zone = zone
        self.label = f"http:{zone}"
        self.timeout_s = timeout_s
        self.cache_s = cache_s
        self.forecast_cache_s = forecast_cache_s
        self.fallback = fallback_g_per_kwh
        self._headers = {"auth-token": api_key} if api_key else {}
        self._own_client = client is None
        self._client = client or httpx.Client(timeout=timeout_s, headers=self._headers)
        self._lock = threading.Lock()
        self._latest: float | None = None
        self._latest_at = -float("inf")  # monotonic time of the last fetch attempt
        self._seen: dict[float, float] = {}  # hour start -> g/kWh, from latest and forecast answers
        self._forecast: list[tuple[float, float]] = []
        self._forecast_at = -float("inf")
        self._refreshing = False
        self.failures = 0
        renew_after_fork(self)

    def _renew_after_fork(self) -> None:
        """A forked child (gunicorn --preload, multiprocessing's fork, Celery's prefork pool) has none of the
        parent's threads: a refresh in flight at the fork would have left the child's flag up for good, and the
        child on the last good figure. Its own lock, and its own client (on the parent's keep-alive socket each
        process could read the other's answer); the inherited one is dropped, not closed through its pool."""
        self._lock = threading.Lock()
        self._refreshing = False
        if self._own_client:
            self._client = httpx.Client(timeout=self.timeout_s, headers=self._headers)

    # -- the API ---------------------------------------------------------------------------------------------
    def _get(self, endpoint: str) -> dict[str, Any]:
        resp = self._client.get(f"{self.url}/v3/carbon-intensity/{endpoint}", params={"zone": self.zone},
                                timeout=self.timeout_s)
        resp.raise_for_status()
        body = resp.json()
        if not isinstance(body, dict):
            raise ValueError("the answer is not a JSON object")
        return body

    def refresh_latest(self) -> float | None:
        """Fetch the current value now (blocking, at most ``timeout_s``); ``None`` when the API failed."""
        try:
            body = self._get("latest")
            g = float(body["carbonIntensity"])
            at = _ts(body.get("datetime") or datetime.now(timezone.utc).isoformat())
            if not _usable(g):
                raise ValueError(f"carbonIntensity {g!r} (expected a finite number >= 0)")
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            self.failures += 1
            log.warning("%s: latest intensity unavailable (%s); using the last good value", self.label, exc)
            with self._lock:
                self._latest_at = time.monotonic()
            return None
        with self._lock:
            self._latest = g
            self._latest_at = time.monotonic()
            self._seen[hour_of(at)] = g
        return g

    def refresh_forecast(self) -> bool:
        try:
            body = self._get("forecast")
            points = [(hour_of(_ts(p["datetime"])), float(p["carbonIntensity"])) for p in body["forecast"]]
            if not all(_usable(g) for _, g in points):
                raise ValueError("a negative, infinite or missing carbonIntensity")
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            self.failures += 1
            log.warning("%s: forecast unavailable (%s); using the last one", self.label, exc)
            with self._lock:
                self._forecast_at = time.monotonic()
            return False
        with self._lock:
            self._forecast = sorted(points)
            self._forecast_at = time.monotonic()
            for h, g in points:
                self._seen.setdefault(h, g)
        return True

    # -- the source ------------------------------------------------------------------------------------------
    def intensity(self, at: float) -> Intensity:
        with self._lock:
            stale = time.monotonic() - self._latest_at > self.cache_s
            start = stale and not self._refreshing
            if start:
                self._refreshing = True
            latest = self._latest
            seen = self._seen.get(hour_of(at))
        if start:
            threading.Thread(target=self._background, name="carbon-http", daemon=True).start()
        if seen is not None:
            return Intensity(seen, self.label)
        if latest is not None:
            return Intensity(latest, self.label + (" (last good)" if self.failures else ""))
        return Intensity(self.fallback, self.label + " (fallback: no answer yet)")

    def _background(self) -> None:
        try:
            self.refresh_latest()
        finally:
            with self._lock:
                self._refreshing = False

    def forecast(self, start: float, end: float, now: float) -> list[tuple[float, float]]:
        if time.monotonic() - self._forecast_at > self.forecast_cache_s:
            self.refresh_forecast()
        if self._latest is None:
            self.refresh_latest()
        with self._lock:
            known = dict(self._forecast)
            seen = dict(self._seen)
            latest = self._latest
        out = []
        last = latest if latest is not None else self.fallback
        for h in hours(start, end):
            g = known.get(h, seen.get(h))
            if g is None:
                g = last  # beyond the forecast's horizon: the last value it gave
            last = g
            out.append((h, g))
        return out

    def close(self) -> None:
        self._client.close()


__all__ = ["HOUR_S", "HttpIntensity"]
