"""Classify concurrent requests together: one ``classify_batch`` call per event-loop turn.

Why: an onnxruntime call has a fixed cost about as large as one text's features (~30 µs here), and under load
the proxy's requests arrive together. Texts submitted by the coroutines that run in the same loop turn are
classified in one call when the loop gets back to its queue, so a busy proxy pays the fixed cost once per
turn instead of once per request (``python benchmarks/bench_classifier.py`` prints both). A lone request waits
for one loop turn: microseconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar, overload

from .base import Classification, RequestClassifier

T = TypeVar("T")
_Batch = list[tuple[str, "Callable[[Classification], Any] | None", "asyncio.Future[Any]"]]


class ClassifyBatcher:
    """Gathers the texts of one event loop's turn and classifies them with one call.

    ``max_batch`` bounds one call (and so the time the loop spends in it); more texts in a turn start
    another batch. Safe with several event loops (each has its own batch); the classifier is thread-safe."""

    def __init__(self, classifier: RequestClassifier, max_batch: int = 64) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.classifier = classifier
        self.max_batch = max_batch
        self._open: dict[asyncio.AbstractEventLoop, _Batch] = {}
        self.calls = 0  # classify_batch calls made, and texts classified (batch size = texts / calls)
        self.texts = 0

    @overload
    async def classify(self, text: str) -> Classification: ...

    @overload
    async def classify(self, text: str, then: Callable[[Classification], T]) -> T: ...

    async def classify(self, text: str, then: Callable[[Classification], Any] | None = None) -> Any:
        """The text's classification, or ``then(classification)`` when given: ``then`` runs in the batch,
        right after the classifier, for every text of the batch in turn (the router decides there, so the
        policy engine's code runs for a whole batch while it is in the CPU's caches, not interleaved with the
        network code of every request). An exception from ``then`` goes to that request only."""
        loop = asyncio.get_running_loop()
        batch = self._open.get(loop)
        if batch is None or len(batch) >= self.max_batch:
            batch = []
            self._open[loop] = batch
            loop.call_soon(self._run, loop, batch)
        future: asyncio.Future[Any] = loop.create_future()
        batch.append((text, then, future))
        return await future

    def _run(self, loop: asyncio.AbstractEventLoop, batch: _Batch) -> None:
        if self._open.get(loop) is batch:
            del self._open[loop]
        try:
            results = self.classifier.classify_batch([text for text, _, _ in batch])
        except Exception as exc:  # every waiting request gets the error; none is left hanging
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        self.calls += 1
        self.texts += len(batch)
        for (_, then, future), result in zip(batch, results, strict=True):
            if future.done():  # a cancelled request (client gone) just drops its result
                continue
            if then is None:
                future.set_result(result)
                continue
            try:
                future.set_result(then(result))
            except Exception as exc:
                future.set_exception(exc)
