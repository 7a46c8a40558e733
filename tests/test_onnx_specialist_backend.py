"""OnnxSpecialistBackend: the token-id path (tokenizer named on the card), the string-input path, bad cards."""

from __future__ import annotations

import shutil
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from router.backends import GenerationRequest, create_backend
from router.backends.onnx_specialist import OnnxSpecialistBackend
from router.cards import load_card
from router.errors import ConfigError
from router.types import ChatMessage

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "models" / "sentiment"
ONNX = FOLDER / "sentiment.onnx"
TOKENIZER = FOLDER / "tokenizer.json"
pytestmark = pytest.mark.skipif(
    not (ONNX.exists() and TOKENIZER.exists()), reason="run `router train specialist sentiment` first"
)


def _request(text: str) -> GenerationRequest:
    return GenerationRequest(messages=[ChatMessage(role="user", content=text)], max_tokens=4)


def _card(folder: Path, backend: str) -> Path:
    file = folder / "spec.yaml"
    file.write_text(
        textwrap.dedent("""\
            name: spec
            tier: specialist
            tasks: [sentiment]
            context_length: 100000
            energy: {per_call_j: 0.05, source: estimate, citation: test card}
            """)
        + f"backend: {backend}\n"
    )
    return file


def test_card_names_tokenizer_and_max_length(specialist_backend: OnnxSpecialistBackend) -> None:
    spec = specialist_backend.card.backend
    assert spec.tokenizer and (specialist_backend.card.folder / spec.tokenizer).resolve() == TOKENIZER
    assert specialist_backend.tokenizer is not None and specialist_backend.max_length == spec.max_length


def test_one_megabyte_prompt_is_truncated_in_bounded_time(specialist_backend: OnnxSpecialistBackend) -> None:
    prompt = "Is this review positive or negative? " + "a gorgeous, witty film " * 45_000  # ~1 MB
    assert len(prompt) > 1_000_000
    feeds = specialist_backend._feeds([prompt])
    assert feeds["input_ids"].shape == (1, specialist_backend.max_length)
    specialist_backend.generate(_request("warm up"))
    t0 = time.perf_counter()
    gen = specialist_backend.generate(_request(prompt))
    assert time.perf_counter() - t0 < 0.5
    assert gen.text in ("negative", "positive") and 0.5 <= gen.confidence <= 1.0


@pytest.mark.parametrize(
    "prompt",
    ["Sentiment: ''", "   ", "''", "😀😀😀", "Is this positive? 'これは素晴らしい映画です'", "\x00\x01\x02",
     "Critique : « un film très ennuyeux »", "👍" * 10_000],
)
def test_empty_emoji_and_non_english_subjects_answer(specialist_backend: OnnxSpecialistBackend, prompt: str) -> None:
    gen = specialist_backend.generate(_request(prompt))
    assert gen.text in ("negative", "positive")
    assert gen.confidence is not None and 0.5 <= gen.confidence <= 1.0


def test_obvious_reviews(specialist_backend: OnnxSpecialistBackend) -> None:
    good = specialist_backend.generate(_request("Is this review positive or negative? 'a gorgeous, witty film'"))
    bad = specialist_backend.generate(_request("Sentiment: dull, predictable and far too long."))
    assert (good.text, bad.text) == ("positive", "negative")


def test_concurrent_calls_agree_with_sequential(specialist_backend: OnnxSpecialistBackend) -> None:
    texts = [f"review {i}: {'a moving, funny film' if i % 2 else 'a tedious mess'}" for i in range(24)]
    expected = np.stack([specialist_backend.predict_proba([t])[0] for t in texts])
    got: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        got[i] = specialist_backend.predict_proba([texts[i]])[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert np.array_equal(np.stack([got[i] for i in range(len(texts))]), expected)


def test_tokenizer_file_missing_names_field_and_file_at_load(tmp_path: Path) -> None:
    spec = f"{{type: onnx, path: {ONNX}, labels: [negative, positive], tokenizer: missing/tokenizer.json}}"
    with pytest.raises(ConfigError, match=r"spec\.yaml: field `backend\.tokenizer`: .*missing/tokenizer\.json"):
        load_card(_card(tmp_path, spec))


def test_tokenizer_defaults_to_the_file_beside_the_graph(tmp_path: Path) -> None:
    card = load_card(_card(tmp_path, f"{{type: onnx, path: {ONNX}, labels: [negative, positive]}}"))
    assert create_backend(card).generate(_request("Sentiment: a joyous delight")).text == "positive"
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(ONNX, alone / "sentiment.onnx")
    card = load_card(_card(tmp_path, f"{{type: onnx, path: {alone / 'sentiment.onnx'}, labels: [negative, positive]}}"))
    with pytest.raises(ConfigError, match=r"field `backend\.tokenizer`: .*alone/tokenizer\.json does not exist"):
        create_backend(card)


def test_bad_tokenizer_file_and_label_count(tmp_path: Path) -> None:
    (tmp_path / "tok.json").write_text("{not json")
    spec = f"{{type: onnx, path: {ONNX}, labels: [negative, positive], tokenizer: tok.json}}"
    card = load_card(_card(tmp_path, spec))
    with pytest.raises(ConfigError, match=r"field `backend\.tokenizer`: .*tok\.json is not a tokenizers JSON file"):
        create_backend(card)
    card = load_card(_card(tmp_path, f"{{type: onnx, path: {ONNX}, labels: [negative, neutral, positive]}}"))
    with pytest.raises(ConfigError, match=r"field `backend\.labels`: 3 labels for a graph with 2 classes"):
        create_backend(card)


def test_max_length_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"spec\.yaml: field `backend\.onnx\.max_length`"):
        load_card(_card(tmp_path, f"{{type: onnx, path: {ONNX}, labels: [negative, positive], max_length: 0}}"))


def test_string_input_graph_still_works(tmp_path: Path) -> None:
    """The torch-free linear recipe's graph (raw text in) runs through the same backend, tokenizer unused."""
    from router.training.sentiment import export_onnx, fit_nblr, split_polarity

    split = split_polarity()
    export_onnx(fit_nblr(split.train_x[:2000], split.train_y[:2000], 1.0, char=False), tmp_path / "linear.onnx")
    card = load_card(_card(tmp_path, "{type: onnx, path: linear.onnx, labels: [negative, positive]}"))
    backend = create_backend(card)
    assert backend.tokenizer is None
    gen = backend.generate(_request("Is this review positive or negative? 'a gorgeous, witty and moving film'"))
    assert gen.text == "positive" and 0.5 <= gen.confidence <= 1.0
    assert backend.generate(_request("   ")).text in ("negative", "positive")


def test_a_specialist_file_that_does_not_load_is_a_failed_attempt_and_the_request_falls_back(
        tmp_path: Path, cards, small_backend, caplog: pytest.LogCaptureFixture) -> None:
    """The card's files exist (checked at load) but the graph is not an ONNX model: found at the model's first
    call, which then fails like any backend (a record, the next model answers); the path stays in the log."""
    import logging

    from router import BackendError, Router, RouterConfig

    folder = tmp_path / "cards"
    shutil.copytree(Path(cards["sentiment-onnx"].path).parent / "sentiment", folder / "sentiment")
    (folder / "sentiment" / "sentiment.onnx").write_bytes(b"not a graph")
    text = Path(cards["sentiment-onnx"].path).read_text()
    (folder / "broken.yaml").write_text(text.replace("name: sentiment-onnx", "name: broken-onnx"))
    broken = load_card(folder / "broken.yaml")
    config = RouterConfig.load(ledger_url=f"sqlite:///{tmp_path / 'l.sqlite3'}")
    review = [{"role": "user", "content": "Is this review positive or negative? 'a gorgeous film'"}]
    router = Router(config, cards={"broken-onnx": broken, "smollm2-135m": cards["smollm2-135m"]},
                    backends={"smollm2-135m": small_backend})
    with caplog.at_level(logging.WARNING):
        resp = router.complete(messages=review, model="broken-onnx", max_tokens=4)
    assert [(a.model, a.outcome) for a in resp.routing.attempts] == [("broken-onnx", "error"), ("smollm2-135m", "ok")]
    assert [r.outcome for r in router.ledger.records()] == ["error", "ok"]
    assert "not a loadable ONNX model" in caplog.text
    alone = Router(config, cards={"broken-onnx": broken})
    with pytest.raises(BackendError) as err:
        alone.complete(messages=review)
    assert "broken-onnx" in err.value.message and str(tmp_path) not in err.value.message


def test_a_backend_that_cannot_start_is_not_tried_again_until_its_cooldown_ends(
        tmp_path: Path, cards, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a bad graph costs the time to read it; requests in the cooldown get its error at once (and fall
    back), then one tries again."""
    import router._router as router_module
    from router import BackendError, Router, RouterConfig

    folder = tmp_path / "cards"
    shutil.copytree(Path(cards["sentiment-onnx"].path).parent / "sentiment", folder / "sentiment")
    (folder / "sentiment" / "sentiment.onnx").write_bytes(b"not a graph")
    text = Path(cards["sentiment-onnx"].path).read_text()
    (folder / "broken.yaml").write_text(text.replace("name: sentiment-onnx", "name: broken-onnx"))
    config = RouterConfig.load(ledger_url=f"sqlite:///{tmp_path / 'l.sqlite3'}", cooldown={"seconds": 0.5})
    router = Router(config, cards={"broken-onnx": load_card(folder / "broken.yaml")})
    starts: list[str] = []
    real_create = router_module.create_backend

    def counting_create(card):  # noqa: ANN001, ANN202 - a spy around the real factory
        starts.append(card.name)
        return real_create(card)

    review = [{"role": "user", "content": "Is this review positive or negative? 'a gorgeous film'"}]
    monkeypatch.setattr(router_module, "create_backend", counting_create)
    for _ in range(3):
        with pytest.raises(BackendError):
            router.complete(messages=review)
    assert starts == ["broken-onnx"]
    time.sleep(0.6)
    with pytest.raises(BackendError):
        router.complete(messages=review)
    assert starts == ["broken-onnx", "broken-onnx"]
    assert [r.outcome for r in router.ledger.records()] == ["error"] * 4


def test_a_stop_string_cuts_the_label_as_it_cuts_an_llms_answer(tmp_path: Path, cards) -> None:
    """A routed request may be answered by the specialist or an LLM: either way the answer holds no stop string
    (it used to answer 'positive' to ``stop="pos"``). A label counts as one token, so any ``max_tokens`` holds it."""
    from router import Router, RouterConfig

    review = [{"role": "user", "content": "Is this review positive or negative? 'a gorgeous, witty and moving film'"}]
    config = RouterConfig.load(ledger_url=f"sqlite:///{tmp_path / 'l.sqlite3'}")
    with Router(config, cards={"sentiment-onnx": cards["sentiment-onnx"]}) as router:
        whole = router.complete(review, model="sentiment-onnx", max_tokens=1).choices[0]
        assert whole.message.content == "positive" and whole.finish_reason == "stop"
        for stop, content in (("pos", ""), (["x", "itive"], "pos"), ("negative", "positive")):
            resp = router.complete(review, model="sentiment-onnx", stop=stop).choices[0]
            assert resp.message.content == content and resp.finish_reason == "stop"
            chunks = [c for c in router.complete(review, model="sentiment-onnx", stop=stop, stream=True) if c.choices]
            assert "".join(c.choices[0].delta.content or "" for c in chunks) == content
