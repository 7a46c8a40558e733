"""Deferrable work: the OpenAI Batch API, run in the cleanest hours of each batch's window. See docs/batch.md.

``Router.batch(...)`` (the library) and ``router serve``'s ``/v1/files`` and ``/v1/batches`` routes share one
:class:`Batches`: the store (:mod:`router.batch.store`), the API's objects and JSONL (:mod:`router.batch.service`)
and the scheduler (:mod:`router.batch.scheduler`).
"""

from __future__ import annotations

from typing import Any

from .handle import BatchHandle
from .scheduler import BatchScheduler
from .service import ENDPOINT, BatchService, parse_lines
from .store import BatchStore, default_store_url


class Batches:
    """The store, the API and (unless ``batch.scheduler`` is off) a scheduler running in this process."""

    def __init__(self, router: Any, *, scheduler: bool | None = None) -> None:
        settings = router.config.batch
        # a PostgreSQL store that is down now is an outage: the API answers 503 and the scheduler waits for it.
        # When it is back nobody knows; the scheduler tries it again every poll_s, so a client is told that pace
        self.store = BatchStore(settings.store_url or default_store_url(router.config.ledger_url), wait_if_down=True,
                                retry_after_s=settings.poll_s)
        self.service = BatchService(self.store, router.grid.clock, max_file_bytes=settings.max_file_bytes,
                                    max_lines=settings.max_lines, zone=settings.zone or router.grid.host_zone,
                                    forecast=settings.forecast)
        run = settings.scheduler if scheduler is None else scheduler
        self.scheduler: BatchScheduler | None = BatchScheduler(router, self.service, settings) if run else None

    def start(self) -> Batches:
        if self.scheduler is not None:
            self.scheduler.start()
        return self

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.close()
        self.store.close()

    def __getattr__(self, name: str) -> Any:  # retrieve, list, cancel, create_file, ... of the service
        return getattr(self.service, name)


__all__ = ["BatchHandle", "BatchScheduler", "BatchService", "BatchStore", "Batches", "ENDPOINT",
           "default_store_url", "parse_lines"]
