"""Concurrent requests classified together (ClassifyBatcher), and batches giving each text its own answer."""

from __future__ import annotations

import asyncio

import pytest

from router.classify.base import Classification, RequestClassifier
from router.classify.batching import ClassifyBatcher
from router.classify.onnx_classifier import OnnxRequestClassifier
from router.training.common import MODELS_DIR

needs_model = pytest.mark.skipif(not (MODELS_DIR / "classifier" / "classifier.onnx").exists(),
                                 reason="run `router train classifier`")

TEXTS = [
    "Is this review positive or negative? 'a gorgeous, witty film'",
    "Which planet is largest?\nA. Mars\nB. Jupiter\nC. Venus\nD. Earth\nAnswer:",
    "Maya has 12 apples and buys 7 more. How many apples does she have?",
    "Write a positive review of this film.",
    "",
    "   ",
    "\x00\x01 binary \xff junk",
    "word " * 2000,
    "これは素晴らしい映画でした。",
    "great great great great film",
]


class RecordingClassifier(RequestClassifier):
    """Test double: wraps a real classifier and records every ``classify_batch`` call (or fails on demand)."""

    def __init__(self, inner: RequestClassifier, fail: bool = False) -> None:
        self.inner = inner
        self.fail = fail
        self.batches: list[list[str]] = []

    def classify(self, text: str) -> Classification:
        return self.classify_batch([text])[0]

    def classify_batch(self, texts: list[str]) -> list[Classification]:
        self.batches.append(list(texts))
        if self.fail:
            raise RuntimeError("classifier failed (injected)")
        return self.inner.classify_batch(texts)


@needs_model
def test_a_batch_gives_each_text_what_it_gets_alone(onnx_classifier: OnnxRequestClassifier) -> None:
    together = onnx_classifier.classify_batch(TEXTS)
    for text, batched in zip(TEXTS, together, strict=True):
        alone = onnx_classifier.classify(text)
        assert (batched.task, batched.method, batched.truncated, batched.chars) == \
            (alone.task, alone.method, alone.truncated, alone.chars)
        assert batched.task_probs == pytest.approx(alone.task_probs, abs=1e-6)
        assert batched.p_correct == pytest.approx(alone.p_correct, abs=1e-6)
    assert onnx_classifier.classify_batch([]) == []


@needs_model
def test_requests_of_one_loop_turn_share_one_call(onnx_classifier: OnnxRequestClassifier) -> None:
    recorder = RecordingClassifier(onnx_classifier)
    batcher = ClassifyBatcher(recorder, max_batch=64)

    async def main() -> list[Classification]:
        return await asyncio.gather(*(batcher.classify(t) for t in TEXTS))

    results = asyncio.run(main())
    assert recorder.batches == [TEXTS]
    assert [r.task for r in results] == [c.task for c in onnx_classifier.classify_batch(TEXTS)]
    assert (batcher.calls, batcher.texts) == (1, len(TEXTS))


@needs_model
def test_a_lone_request_and_max_batch(onnx_classifier: OnnxRequestClassifier) -> None:
    recorder = RecordingClassifier(onnx_classifier)
    batcher = ClassifyBatcher(recorder, max_batch=4)

    async def lone() -> Classification:
        return await batcher.classify(TEXTS[0])

    assert asyncio.run(lone()).task == "sentiment"
    assert recorder.batches == [[TEXTS[0]]]

    async def many() -> list[Classification]:
        return await asyncio.gather(*(batcher.classify(t) for t in TEXTS))

    recorder.batches.clear()
    results = asyncio.run(many())
    assert [len(b) for b in recorder.batches] == [4, 4, 2]
    assert [t for b in recorder.batches for t in b] == TEXTS  # order kept, nothing lost or doubled
    assert len(results) == len(TEXTS)
    with pytest.raises(ValueError, match="max_batch"):
        ClassifyBatcher(recorder, max_batch=0)


@needs_model
def test_a_failing_batch_fails_every_waiter_and_the_next_batch_works(onnx_classifier: OnnxRequestClassifier) -> None:
    recorder = RecordingClassifier(onnx_classifier, fail=True)
    batcher = ClassifyBatcher(recorder)

    async def main() -> list[object]:
        return await asyncio.gather(*(batcher.classify(t) for t in TEXTS[:3]), return_exceptions=True)

    outcomes = asyncio.run(main())
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    recorder.fail = False
    assert all(isinstance(o, Classification) for o in asyncio.run(main()))


@needs_model
def test_a_cancelled_request_does_not_disturb_the_others(onnx_classifier: OnnxRequestClassifier) -> None:
    batcher = ClassifyBatcher(RecordingClassifier(onnx_classifier))

    async def main() -> tuple[bool, list[Classification]]:
        tasks = [asyncio.ensure_future(batcher.classify(t)) for t in TEXTS[:4]]
        await asyncio.sleep(0)  # every task has submitted its text
        tasks[1].cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        return isinstance(done[1], asyncio.CancelledError), [d for d in done if isinstance(d, Classification)]

    cancelled, results = asyncio.run(main())
    assert cancelled
    assert len(results) == 3


@needs_model
def test_router_aprepare_decides_as_prepare(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from router import Router
    from router.config import RouterConfig
    from router.ledger.sqlite import SQLiteLedger

    config = RouterConfig.load(None, models_dir=MODELS_DIR, policies_dir=MODELS_DIR.parent / "policies")
    router = Router(config, ledger=SQLiteLedger(tmp_path / "ledger.sqlite3"))
    try:
        for text in TEXTS[:4]:
            messages = [{"role": "user", "content": text}]
            sync = router.prepare(messages, request_id="r1")
            async_ctx = asyncio.run(router.aprepare(messages, request_id="r1"))
            assert (async_ctx.decision.model, async_ctx.decision.reason, async_ctx.classification.task) == \
                (sync.decision.model, sync.decision.reason, sync.classification.task)
    finally:
        router.close()


@needs_model
def test_then_runs_in_the_batch_and_its_errors_stay_with_their_request(
        onnx_classifier: OnnxRequestClassifier) -> None:
    recorder = RecordingClassifier(onnx_classifier)
    batcher = ClassifyBatcher(recorder)
    seen: list[str] = []

    def decide(c: Classification) -> str:
        seen.append(c.task)
        if c.task == "math":
            raise ValueError("no model for math (injected)")
        return f"decided {c.task}"

    async def main() -> list[object]:
        return await asyncio.gather(*(batcher.classify(t, decide) for t in TEXTS[:4]), return_exceptions=True)

    outcomes = asyncio.run(main())
    assert len(recorder.batches) == 1 and len(seen) == 4  # one classifier call, then every decision
    assert outcomes[0] == "decided sentiment" and outcomes[1] == "decided multiple_choice"
    assert isinstance(outcomes[2], ValueError)
    assert outcomes[3] == "decided chat"
