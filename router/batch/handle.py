"""``Router.batch(...)``'s answer: a handle on one batch, with OpenAI's batch object and the lines' results."""

from __future__ import annotations

import json
import time
from typing import Any

from ..errors import DeadlineExceededError
from ..keys import KeySpec

FINAL = ("completed", "failed", "expired", "cancelled")


class BatchHandle:
    """One batch: ``retrieve()`` its OpenAI batch object, ``wait()`` for it to end, ``results()`` by custom id,
    ``cancel()`` it. The scheduler runs it in the background (in this process, and in any other sharing the store)."""

    def __init__(self, batches: Any, batch_id: str, key: KeySpec | None) -> None:
        self._batches = batches
        self.id = batch_id
        self._key = key

    def retrieve(self) -> dict[str, Any]:
        """The batch object as OpenAI shapes it (status, request counts, file ids, ...), plus ``carbon``: the
        scheduler's current plan."""
        return self._batches.service.retrieve(self.id, self._key)

    @property
    def status(self) -> str:
        return str(self.retrieve()["status"])

    def wait(self, timeout: float | None = None, poll_s: float = 0.5) -> dict[str, Any]:
        """Block until the batch has ended (completed, failed, expired or cancelled); its batch object."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            doc = self.retrieve()
            if doc["status"] in FINAL:
                return doc
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExceededError(f"batch {self.id} is still {doc['status']} after {timeout:g} s")
            time.sleep(poll_s)

    def results(self) -> dict[str, dict[str, Any]]:
        """Every line's result by ``custom_id``: the output file's lines and the error file's, as OpenAI writes
        them (empty until the batch has ended)."""
        doc = self.retrieve()
        out: dict[str, dict[str, Any]] = {}
        for field in ("output_file_id", "error_file_id"):
            if doc.get(field):
                for raw in self._batches.service.file_content(doc[field], self._key).decode().splitlines():
                    line = json.loads(raw)
                    out[line["custom_id"]] = line
        return out

    def cancel(self) -> dict[str, Any]:
        return self._batches.service.cancel(self.id, self._key)

    def __repr__(self) -> str:
        return f"BatchHandle({self.id!r})"
