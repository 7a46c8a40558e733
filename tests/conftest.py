"""Shared fixtures: the real shipped model cards and backends, temporary ledgers, a real llama.cpp server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import procs

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"


@pytest.fixture(autouse=True)
def _router_environment_unchanged() -> Iterator[None]:
    """A test that leaves a ``ROUTER_*`` variable changed in this process (``router serve`` run in-process sets
    ``ROUTER_LEDGER_URL`` for its workers) fails here, at the test that leaked it: every later test would read it
    (a ledger URL from the environment wins over a config file's), and fail far from the cause."""
    before = {k: v for k, v in os.environ.items() if k.startswith("ROUTER_")}
    yield
    after = {k: v for k, v in os.environ.items() if k.startswith("ROUTER_")}
    if after != before:
        os.environ.update(before)
        for name in set(after) - set(before):
            del os.environ[name]
        changed = sorted(set(before.items()) ^ set(after.items()))
        pytest.fail(f"the test changed the environment's ROUTER_* variables and left them so: {changed}")


@pytest.fixture(scope="session")
def cards():
    from router.cards import load_cards

    return load_cards(MODELS)


@pytest.fixture(scope="session")
def catalogue():
    """The shipped cards plus the backend-less catalogue cards (hosted and public models, for simulation)."""
    from router.cards import load_catalogue

    return load_catalogue(MODELS)


@pytest.fixture(scope="session")
def onnx_classifier():
    """The shipped request classifier (models/classifier), loaded once."""
    from router.classify.onnx_classifier import OnnxRequestClassifier, load_default_classifier

    clf = load_default_classifier(MODELS)
    assert isinstance(clf, OnnxRequestClassifier), "run `router train classifier`"
    return clf


@pytest.fixture
def ledger_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.sqlite3'}"


@pytest.fixture(scope="session")
def specialist_backend(cards):
    from router.backends import create_backend

    return create_backend(cards["sentiment-onnx"])


@pytest.fixture(scope="session")
def small_backend(cards):
    from router.backends import create_backend

    backend = create_backend(cards["smollm2-135m"])
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def large_backend(cards):
    from router.backends import create_backend

    backend = create_backend(cards["gemma3-270m"])
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def llama_server(cards, tmp_path_factory) -> Iterator[str]:
    """A real OpenAI-compatible server: llama.cpp's own, serving the shipped SmolLM2 GGUF."""
    from router.backends.weights import resolve_gguf

    card = cards["smollm2-135m"]
    with procs.llama_server(resolve_gguf(card.backend.weights, card), tmp_path_factory.mktemp("llama_server"),
                             timeout=90) as base:
        yield base


@pytest.fixture(scope="session")
def http_card(llama_server, tmp_path_factory):
    """A model card pointing the HTTP backend at the running llama.cpp server."""
    from router.cards import load_card

    folder = tmp_path_factory.mktemp("http_card")
    file = folder / "remote-smollm2.yaml"
    file.write_text(
        f"""name: remote-smollm2
tier: large
backend:
  type: openai
  base_url: {llama_server}
  model: smollm2
  timeout_s: 60
  max_retries: 1
context_length: 2048
energy:
  per_call_j: 1.0
  per_input_token_j: 0.01
  per_output_token_j: 0.1
  source: estimate
  citation: test card
"""
    )
    return load_card(file)
