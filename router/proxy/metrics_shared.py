"""How the workers of ``router serve --workers N`` share their counts, so that any worker's ``/metrics`` answers for
the whole server (:mod:`router.proxy.metrics` says what is counted): each worker's snapshot file in a directory the
serving process made for the run, written whole and only ever growing, and the other workers' files read at a
scrape."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

log = logging.getLogger("router.proxy")

ENV_METRICS_DIR = "ROUTER_METRICS_DIR"
"""The directory where the workers of ``router serve --workers N`` share their counts (made and removed by the
serving process; unset for a single process)."""
SNAPSHOT_INTERVAL_S = 1.0
"""How often a worker writes its snapshot: what another worker's scrape may lag behind this one's counts."""
LIVE_WITHIN_S = 5.0
"""A snapshot older than this, not marked as its worker's last, is from a worker that died: its counts still add
up, its gauges no longer do."""


Counted = TypeVar("Counted")


class Counting(Protocol[Counted]):
    """What a worker's snapshot is taken of (:class:`~router.proxy.metrics.ProxyMetrics`)."""

    def copies(self) -> list[Counted]:
        """The counts, copied under their lock."""
        ...

    def snapshot(self, counted: list[Counted]) -> dict[str, Any]:
        """``counted`` and the rest this worker shares, as JSON data."""
        ...


class Snapshots(Generic[Counted]):
    """This worker's snapshot file in the directory the workers share, and the other workers' files there.

    A file is named for its worker's pid and start time (a later worker may get a dead one's pid, and must not
    overwrite its counts), and replaced whole (written aside, then renamed) so a reader never sees half of it.
    The counts are copied and written under one lock, by the thread and by scrapes alike, so a file never goes
    back to older counts."""

    def __init__(self, directory: Path, metrics: Counting[Counted]) -> None:
        self.directory = directory
        self.path = directory / f"{os.getpid()}-{time.time_ns()}.json"
        self._metrics = metrics
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._write_lock = threading.Lock()
        self._failing = False

    def start(self, interval_s: float) -> None:
        self.write()
        self._thread = threading.Thread(target=self._run, args=(interval_s,), name="router-metrics-snapshot",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.write()

    def _run(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self.write()

    def write(self) -> list[Counted]:
        """Copies the counts and writes them (marked as the last once :meth:`stop` was called: this worker's
        gauges then no longer count); returns the copies."""
        with self._write_lock:
            counted = self._metrics.copies()
            data = self._metrics.snapshot(counted)
            data["written"] = time.time()
            data["last"] = self._stop.is_set()
            aside = self.path.with_name(f".{self.path.name}.tmp")
            try:
                aside.write_text(json.dumps(data))
                os.replace(aside, self.path)
            except OSError as exc:
                if not self._failing:  # once per failing spell, not every second
                    log.warning("could not write this worker's metrics to %s (%s): other workers' /metrics leave "
                                "out its counts since its last snapshot until it can", self.path, exc)
                self._failing = True
            else:
                self._failing = False
        return counted

    def others(self) -> list[tuple[dict[str, Any], bool]]:
        """The other snapshots, each with whether its worker is alive: its snapshot is not its last and is recent."""
        now = time.time()
        found = []
        for path in self.directory.glob("*.json"):
            if path == self.path:
                continue
            try:
                data = json.loads(path.read_bytes())
            except (OSError, ValueError):  # the directory going away as the server stops, or no snapshot
                continue
            found.append((data, not data["last"] and now - data["written"] < LIVE_WITHIN_S))
        return found
