"""Shared fixtures: the real shipped model cards and backends, temporary ledgers, a real llama.cpp server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from servers.procs import LLAMA_SERVER, free_port

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"


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
    gguf = resolve_gguf(card.backend.weights, card)
    port = free_port()
    log = tmp_path_factory.mktemp("llama_server") / "server.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [sys.executable, str(LLAMA_SERVER), "--model", str(gguf), "--host", "127.0.0.1",
             "--port", str(port), "--n_ctx", "2048", "--model_alias", "smollm2"],
            stdout=fh, stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama.cpp server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{base}/models", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    else:
        proc.kill()
        raise RuntimeError("llama.cpp server did not start in 90 s")
    yield base
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


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
